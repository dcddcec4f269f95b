"""Training curves with the overfitting onset and the best epoch marked."""

import os

from kreg._extras import require
from kreg._validation import check_choice


def plot_training_curves(
    history,
    path,
    metrics=("loss", "val_loss"),
    onset_epoch=None,
    best_epoch=None,
    title=None,
    yscale="linear",
):
    """Draws `history`'s curves to a PNG file and returns its path.

    Args:
        history: A `keras.callbacks.History` (what `fit` returns) or its
            `.history` dict of per-epoch lists.
        path: The PNG file to write (folders are created).
        metrics: The keys of `history` to draw.
        onset_epoch: 0-based epoch where overfitting began
            (`OverfittingDetector.onset_epoch`), drawn as a dashed line.
        best_epoch: 0-based epoch whose weights were kept
            (`EarlyStoppingWithCheckpoint.best_epoch`), drawn as a dotted line.
        title: Optional figure title.
        yscale: `"linear"` (default) or `"log"`, which keeps a large first-epoch
            loss from flattening the rest of the curves.

    Returns:
        `path`.

    Example:

    >>> import os, tempfile
    >>> from kreg.callbacks import plot_training_curves
    >>> history = {"loss": [1.0, 0.6, 0.4, 0.3], "val_loss": [1.1, 0.8, 0.7, 0.9]}
    >>> path = os.path.join(tempfile.mkdtemp(), "curves.png")
    >>> plot_training_curves(history, path, best_epoch=2) == path
    True
    >>> open(path, "rb").read(4)
    b'\x89PNG'
    """
    # A bare Figure, not pyplot: no global backend switch (notebooks keep theirs),
    # no display needed.
    Figure = require("matplotlib.figure", extra="plot", feature="plot_training_curves").Figure

    check_choice("yscale", yscale, ("linear", "log"))
    curves = getattr(history, "history", history)
    missing = [metric for metric in metrics if metric not in curves]
    if missing:
        raise ValueError(
            f"Invalid value received for argument `metrics`: {missing} not in the "
            f"history. Available: {sorted(curves)}"
        )
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for metric in metrics:
        values = curves[metric]
        axes.plot(range(1, len(values) + 1), values, label=metric)
    if onset_epoch is not None:
        axes.axvline(
            onset_epoch + 1,
            color="tab:red",
            linestyle="--",
            label=f"overfitting onset ({onset_epoch + 1})",
        )
    if best_epoch is not None:
        axes.axvline(
            best_epoch + 1, color="tab:green", linestyle=":", label=f"best epoch ({best_epoch + 1})"
        )
    axes.set_xlabel("epoch")
    axes.set_yscale(yscale)
    axes.legend()
    if title:
        axes.set_title(title)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path

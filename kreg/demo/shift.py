"""Demo: the trained CNN under covariate shift, before and after adaptation."""

import numpy as np

from kreg.adapt import METHODS as ADAPTATION_METHODS
from kreg.adapt import adapt_batchnorm
from kreg.adapt import set_test_time_mode
from kreg.datasets import CORRUPTIONS
from kreg.datasets import corrupt_images

# What is compared on each corrupted test set (all start from the trained weights).
METHODS = {
    "no adaptation": "running",
    'test_time_mode="batch"': "batch",
    'adapt_batchnorm("reestimate")': "reestimate",
}


def accuracy_after(model, weights, method, x, y, batch_size=64):
    """Accuracy on `(x, y)` of `model` reset to `weights`, then adapted by `method`.

    `method` is a test-time mode (`"running"` is no adaptation) or an
    `adapt_batchnorm` method (which adapts on `x` itself, then predicts in the
    running mode). The model is left in the running mode.
    """
    model.set_weights(weights)
    if method in ADAPTATION_METHODS:
        adapt_batchnorm(model, x, method=method, batch_size=batch_size, verbose=0)
    else:
        set_test_time_mode(model, method)
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    set_test_time_mode(model, "running")
    return float(np.mean(predictions.argmax(-1) == y))


def adaptation_under_shift(model, data, out, severity=5, log=print):
    """Returns `(Markdown table, summary rows)` and writes `accuracy_under_shift.png`."""
    weights = model.get_weights()
    test_sets = {"clean": data.x_test}
    for corruption in CORRUPTIONS:
        test_sets[f"{corruption} {severity}"] = corrupt_images(
            data.x_test, corruption, severity, seed=1
        )
    accuracy = {}
    for name, x in test_sets.items():
        accuracy[name] = {
            label: accuracy_after(model, weights, m, x, data.y_test) for label, m in METHODS.items()
        }
        log(
            f"  {name}: "
            + ", ".join(f"{label} {value:.3f}" for label, value in accuracy[name].items())
        )
    model.set_weights(weights)

    shifted = [name for name in test_sets if name != "clean"]
    lost = accuracy["clean"]["no adaptation"] - np.mean(
        [accuracy[n]["no adaptation"] for n in shifted]
    )
    recovered = np.mean(
        [
            accuracy[n]['adapt_batchnorm("reestimate")'] - accuracy[n]["no adaptation"]
            for n in shifted
        ]
    )
    header = "| test set | " + " | ".join(METHODS) + " |\n|" + " --- |" * (len(METHODS) + 1) + "\n"
    table = header + "\n".join(
        f"| {name} | " + " | ".join(f"{row[label]:.3f}" for label in METHODS) + " |"
        for name, row in accuracy.items()
    )
    share = 100 * recovered / lost if lost > 0 else float("nan")
    table += (
        f"\n\nRe-estimating the statistics recovers {share:.0f}% of the accuracy lost to shift."
    )
    plot = _plot(accuracy, out / "accuracy_under_shift.png")
    log(f"  wrote {plot}")
    rows = [
        (
            "adaptive BN: shifted accuracy, before -> after reestimate",
            f"{accuracy['clean']['no adaptation'] - lost:.3f} -> "
            f"{accuracy['clean']['no adaptation'] - lost + recovered:.3f} ({share:.0f}% recovered)",
        )
    ]
    return table, rows


def _plot(accuracy, path):
    from matplotlib.figure import Figure

    names = list(accuracy)
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    width = 0.8 / len(METHODS)
    for i, label in enumerate(METHODS):
        positions = np.arange(len(names)) + (i - (len(METHODS) - 1) / 2) * width
        axes.bar(positions, [accuracy[n][label] for n in names], width, label=label)
    axes.set_xticks(np.arange(len(names)), names)
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("Digits under corruption: batch norm adaptation")
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path

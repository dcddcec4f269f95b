"""What a kreg callback monitors: the number it compares, and which way is better.

Every kreg callback that watches a logged metric (`EarlyStoppingWithCheckpoint`,
`OverfittingDetector`, the pruning callbacks of `kreg.tuning`) reads it through
these functions, so they agree on the value of a vector-valued metric, on the
epochs that ran no validation, and on the direction of `mode="auto"`.
"""

import numpy as np

from kreg._keras_compat import declared_direction

MODES = ("auto", "min", "max")


def monitored_scalar(value):
    """The number a monitored value is compared by.

    A vector-valued metric (such as `keras.metrics.F1Score()`, one value per
    class) counts by its mean, the macro average. Keras's own `EarlyStopping`
    and `ModelCheckpoint` fail on such a metric at its second epoch (an array
    in an `if`).
    """
    return float(np.mean(np.asarray(value, dtype="float64")))


def all_finite(value):
    """Whether every entry of a logged value is finite (no NaN, no infinity)."""
    return bool(np.all(np.isfinite(np.asarray(value, dtype="float64"))))


def without_validation(logs, needed):
    """Whether `logs` are those of an epoch that ran no validation while a name in
    `needed` (a monitor, a file name's placeholders) is a validation one.

    `fit(validation_freq=k)` validates every k-th epoch only; Keras's
    `EarlyStopping` skips the other epochs (its monitor is missing there).
    """
    return any(name.startswith("val_") for name in needed) and not any(
        key.startswith("val_") for key in logs
    )


def check_declared_direction(model, monitor, mode, argument="mode"):
    """The direction `model`'s compiled metric `monitor` declares (`None` where it
    declares none); a `mode` of `"min"` or `"max"` against it is a `ValueError`
    naming `argument`. Call it once the metrics are built (at an epoch's end)."""
    direction = declared_direction(model, monitor)
    if direction is not None and mode not in ("auto", direction):
        raise ValueError(
            f"Invalid value received for argument `{argument}`: the model's metric "
            f"{monitor!r} declares that it is "
            f"{'maximized' if direction == 'max' else 'minimized'}. Use {argument}='auto' or "
            f"{direction!r}. Received: {argument}={mode!r}"
        )
    return direction


def monitor_direction(model, monitor, mode="auto"):
    """`"min"` or `"max"`: which way `monitor` improves.

    `mode="min"` and `mode="max"` are taken as given. `mode="auto"` reads the
    direction `model`'s compiled metric of that name declares, as Keras's own
    callbacks do (`MonitorCallback._set_monitor_op`,
    keras/src/callbacks/monitor_callback.py): `loss` is minimized, and
    `CosineSimilarity` is maximized although no name list could know it. Call it
    once the metrics are built (at the end of the first epoch in `fit`). Where
    the model declares no direction the answer is a `ValueError` asking for
    `mode`, as Keras's callbacks raise, never a guess from the name.
    """
    if mode not in MODES:
        raise ValueError(
            f"Invalid value received for argument `mode`. Expected one of {MODES}. Received: "
            f"mode={mode!r}"
        )
    if mode != "auto":
        return mode
    direction = declared_direction(model, monitor)
    if direction is None:
        raise ValueError(
            f"Invalid value received for argument `mode`. With mode='auto' the direction of "
            f"`{monitor}` is read from the model's compiled metric of that name, and the model "
            "declares none. Pass mode='min' or mode='max'. Received: mode='auto'"
        )
    return direction

"""How each recorded run of `bench/data/corpus/` is labelled, and which half it is in.

Written and committed before any detector was run on the corpus: the labels
read only a run's whole validation and training loss curves, never a
detector's output, and the split reads only the run's name.

The label, from the whole curve:

1. **Noise of the validation loss** (`validation_noise`): the residuals of
   each epoch around the median of its 5-epoch neighbourhood, scaled to a
   standard deviation by the median absolute deviation (1.4826 * MAD). A
   floor of 0.1% of the lowest value keeps a perfectly smooth curve from
   having a zero band.
2. **The validation minimum** `m` is the epoch of the lowest validation loss.
   Its noise band is `[v_min, v_min + BAND * sigma]`.
3. The run is labelled, in this order:
   - `"diverged"`: a loss is NaN or infinite at some epoch.
   - `"improving"`: `m` lies in the last 10% of the epochs (validation still
     improves when the run ends). No detector may call such a run overfitting.
   - `"overfit"`: the median of the last 5 validation values lies above the
     band (validation rose beyond its noise after its minimum). Onset `m`.
   - `"saturated"`: validation ended within its band while the training loss
     kept falling after `m`: at the end it is below `TRAIN_DROP` (0.8) times its
     value at `m` (memorizing: training improves, validation does not).
   - `"underfit"`: the training loss stalled high: at the end it is above half
     its first-epoch value, and fell by less than 5% over the last quarter of
     the run.
   - `"converged"`: everything else (both curves flat, training loss low).

The split: a run is in the tuning half when the first byte of the SHA-256 of
its name is even, in the held-out half otherwise. Defaults are chosen on the
tuning half and quoted on the held-out half.
"""

import hashlib
import math
import statistics

BAND = 3.0
TRAIN_DROP = 0.8
LAST_FRACTION = 0.1
TAIL = 5


def split(name):
    """`"tuning"` or `"held-out"`, from the run's name alone."""
    return "tuning" if hashlib.sha256(name.encode("utf-8")).digest()[0] % 2 == 0 else "held-out"


def validation_noise(values):
    """Robust standard deviation of the residuals around a 5-epoch running median."""
    residuals = []
    for i, value in enumerate(values):
        window = values[max(0, i - 2) : i + 3]
        residuals.append(value - statistics.median(window))
    mad = statistics.median(abs(r) for r in residuals)
    return max(1.4826 * mad, 1e-3 * abs(min(values)))


def last_tenth_start(epochs):
    """The first epoch (0-based) of the last 10% of `epochs` epochs."""
    return epochs - max(1, round(LAST_FRACTION * epochs))


def label(train_loss, val_loss):
    """`(label, minimum epoch, sigma)` of one run, from its whole loss curves."""
    if not all(math.isfinite(v) for v in [*train_loss, *val_loss]):
        return "diverged", None, None
    epochs = len(val_loss)
    sigma = validation_noise(val_loss)
    minimum = min(range(epochs), key=val_loss.__getitem__)
    if minimum >= last_tenth_start(epochs):
        return "improving", minimum, sigma
    end = statistics.median(val_loss[-TAIL:])
    if end > val_loss[minimum] + BAND * sigma:
        return "overfit", minimum, sigma
    if train_loss[-1] < TRAIN_DROP * train_loss[minimum]:
        return "saturated", minimum, sigma
    quarter = train_loss[-(epochs // 4) - 1]
    if train_loss[-1] > 0.5 * train_loss[0] and train_loss[-1] > 0.95 * quarter:
        return "underfit", minimum, sigma
    return "converged", minimum, sigma

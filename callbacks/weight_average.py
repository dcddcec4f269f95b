"""The running average of a model's weights: EMA with a decay warmup, or SWA's equal mean.

Pure NumPy, apart from Keras: `WeightAveraging` feeds it the trainable values
and writes its values back into the model. Kept apart so that the arithmetic can
be checked against its references (timm's `ModelEmaV3`, PyTorch's
`torch.optim.swa_utils.AveragedModel` and `SWALR`) without training anything.
"""

import math

import numpy as np


def ema_decay(step, momentum, warmup_power=None, warmup_gamma=1.0):
    """The decay of the `step`-th EMA update (1-based), as timm's `ModelEmaV3.get_decay`.

    The first update copies the weights (decay 0). With `warmup_power`, the decay
    then rises as `1 - (1 + (step - 1) / warmup_gamma) ** -warmup_power`, capped
    at `momentum`: an average over the first steps is not dominated by the random
    initial weights. Without it, every update after the first uses `momentum`.
    """
    step = step - 1
    if step <= 0:
        return 0.0
    if warmup_power is None:
        return momentum
    return min(1.0 - (1.0 + step / warmup_gamma) ** -warmup_power, momentum)


def annealed_learning_rate(start_rate, swa_rate, epochs_into_swa, annealing_epochs, strategy):
    """The learning rate `epochs_into_swa` epochs (1 at SWA's first) after SWA began.

    From `start_rate` to `swa_rate` over `annealing_epochs`, as PyTorch's `SWALR`
    (`torch/optim/swa_utils.py`, `_cosine_anneal` / `_linear_anneal`), then
    `swa_rate`.
    """
    progress = min(max(epochs_into_swa / annealing_epochs, 0.0), 1.0)
    alpha = progress if strategy == "linear" else (1.0 - math.cos(math.pi * progress)) / 2.0
    return swa_rate * alpha + start_rate * (1.0 - alpha)


class WeightAverage:
    """An average of a sequence of weight lists (each a list of arrays).

    `update_ema(weights, decay)` moves it towards `weights` by `1 - decay`
    (timm's `lerp_`); `update_mean(weights)` makes it the equal mean of every list
    given so far (`AveragedModel`'s default `avg_fn`). `count` is the number of
    updates, `values` the average (`None` before the first): views of one flat
    buffer, updated in place (`update_ema_flat` and `update_mean_flat` take the
    weights already flattened, in that order), so an update allocates nothing.
    """

    def __init__(self):
        self.values = None
        self.count = 0
        self._flat = self._scratch = None

    def _start(self, flat, shapes):
        # Kept in float32 at least (float64 stays): see `FlatWeights.dtype`.
        dtype = np.float64 if flat.dtype == np.float64 else np.float32
        self._flat = np.array(flat, dtype=dtype, copy=True)
        self._scratch = np.empty_like(self._flat)
        self.values = unflatten(self._flat, shapes)

    def update_ema_flat(self, flat, shapes, decay):
        self.count += 1
        if self._flat is None or decay == 0.0:
            self._start(flat, shapes)
            return
        # average += (1 - decay) * (weights - average), as timm's `lerp_`.
        np.subtract(flat, self._flat, out=self._scratch)
        np.multiply(self._scratch, 1.0 - decay, out=self._scratch)
        np.add(self._flat, self._scratch, out=self._flat)

    def update_mean_flat(self, flat, shapes):
        self.count += 1
        if self._flat is None:
            self._start(flat, shapes)
            return
        np.subtract(flat, self._flat, out=self._scratch)
        np.divide(self._scratch, self.count, out=self._scratch)
        np.add(self._flat, self._scratch, out=self._flat)

    def update_ema(self, weights, decay):
        self.update_ema_flat(*_flatten(weights), decay=decay)

    def update_mean(self, weights):
        self.update_mean_flat(*_flatten(weights))

    def state(self):
        """`{"count": n, "values": [arrays]}`: everything to continue the average."""
        return {
            "count": self.count,
            "values": None if self.values is None else [v.copy() for v in self.values],
        }

    def set_state(self, state):
        self.count = int(state["count"])
        if state["values"] is None:
            self.values = self._flat = self._scratch = None
        else:
            self._start(*_flatten(state["values"]))


def _flatten(weights):
    """`(flat, shapes)`: the arrays of `weights` end to end in one 1-D array."""
    arrays = [np.asarray(w) for w in weights]
    dtype = np.result_type(*arrays) if arrays else np.float32
    flat = (
        np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False)
        if arrays
        else np.zeros(0, dtype)
    )
    return flat, [a.shape for a in arrays]


def unflatten(flat, shapes):
    """Views of the 1-D `flat` with the given shapes, end to end."""
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return views

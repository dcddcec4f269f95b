"""The running average of a model's weights: EMA with a decay warmup, or SWA's equal mean.

`WeightAveraging` feeds it the trainable values and writes its values back into
the model. Kept apart so that the arithmetic can
be checked against its references (timm's `ModelEmaV3`, PyTorch's
`torch.optim.swa_utils.AveragedModel` and `SWALR`) without training anything.
"""

import math

import keras
import numpy as np
from keras import ops

from kreg import _keras_compat


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
    """An average of a sequence of weight lists, held in backend variables.

    `update_ema(weights, decay)` moves it towards `weights` by `1 - decay`
    (timm's `lerp_`); `update_mean(weights)` makes it the equal mean of every list
    given so far (`AveragedModel`'s default `avg_fn`). `weights` are arrays or
    backend tensors (the values of `model.trainable_variables`, or JAX's training
    state between two steps of `fit`). `count` is the number of updates, `values`
    the average as `keras.Variable`s (`None` before the first).

    An update is `keras.ops` on the device that holds the weights, all of them in
    one compiled function per update, no copy through the host (which made an
    update per training step cost as much as the step itself). Only the first
    update (and `set_state`) copies values in through NumPy.
    """

    def __init__(self):
        self.values = None
        self.count = 0
        self._lerp = _keras_compat.compiled_assignment(_lerp)
        self._mean = _keras_compat.compiled_assignment(_mean)

    def update_ema(self, weights, decay):
        self.count += 1
        if self.values is None or decay == 0.0:
            self._copy_in(weights)
            return
        self._lerp(self.values, list(weights), np.float32(1.0 - decay))

    def update_mean(self, weights):
        self.count += 1
        if self.values is None:
            self._copy_in(weights)
            return
        self._mean(self.values, list(weights), np.float32(self.count))

    def numpy(self):
        """The average as NumPy arrays (copies), or `None` before the first update."""
        return None if self.values is None else [np.array(ops.convert_to_numpy(v), copy=True) for v in self.values]

    def state(self):
        """`{"count": n, "values": [arrays]}`: everything to continue the average."""
        return {"count": self.count, "values": self.numpy()}

    def set_state(self, state):
        self.count = int(state["count"])
        self.values = None
        if state["values"] is not None:
            self._copy_in(state["values"])

    def _copy_in(self, weights):
        # Through NumPy, once: on JAX a variable assigned a training-state array
        # would share its buffer, which the next compiled step donates (deletes).
        arrays = [np.array(ops.convert_to_numpy(weight), copy=True) for weight in weights]
        if self.values is None:
            self.values = [
                keras.Variable(array, dtype=array.dtype, trainable=False, name="weight_average") for array in arrays
            ]
            return
        for average, array in zip(self.values, arrays):
            average.assign(array)


def _lerp(averages, weights, rate):
    # timm's `ema_v.lerp_(model_v, weight=1 - decay)`.
    return [average + (ops.cast(weight, average.dtype) - average) * ops.cast(rate, average.dtype)
            for average, weight in zip(averages, weights)]  # fmt: skip


def _mean(averages, weights, count):
    # `AveragedModel`'s default avg_fn: `averaged + (current - averaged) / (n + 1)`.
    return [average + (ops.cast(weight, average.dtype) - average) / ops.cast(count, average.dtype)
            for average, weight in zip(averages, weights)]  # fmt: skip

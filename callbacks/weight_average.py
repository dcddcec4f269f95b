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
    updates, `values` the average (`None` before the first).
    """

    def __init__(self):
        self.values = None
        self.count = 0

    def update_ema(self, weights, decay):
        self.count += 1
        if self.values is None or decay == 0.0:
            self.values = [np.array(w, copy=True) for w in weights]
            return
        for average, weight in zip(self.values, weights):
            average += (1.0 - decay) * (np.asarray(weight, average.dtype) - average)

    def update_mean(self, weights):
        self.count += 1
        if self.values is None:
            self.values = [np.array(w, copy=True) for w in weights]
            return
        for average, weight in zip(self.values, weights):
            average += (np.asarray(weight, average.dtype) - average) / self.count

    def state(self):
        """`{"count": n, "values": [arrays]}`: everything to continue the average."""
        return {
            "count": self.count,
            "values": None if self.values is None else [v.copy() for v in self.values],
        }

    def set_state(self, state):
        self.count = int(state["count"])
        self.values = (
            None if state["values"] is None else [np.array(v, copy=True) for v in state["values"]]
        )

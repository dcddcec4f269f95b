"""What the benchmarks share: the quiet start, interleaved timing, random batch norms.

Import it before Keras: it sets TensorFlow's log level first (the user's own
value wins), as every benchmark did in its own preamble.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from kreg import model_graph  # noqa: E402
from kreg.datasets import load_digit_images  # noqa: E402


def time_predict(model, x, batch_size):
    """Seconds of one `model.predict` over `x`."""
    start = time.perf_counter()
    model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def interleaved_predict_times(variants, x, batch_size, rounds, rng):
    """`{label: [seconds, ...]}`: every model of `variants` timed once per round,
    in a new random order each round, after one untimed warm-up call each (which
    traces or compiles), so that machine noise falls on all of them alike."""
    for model in variants.values():
        time_predict(model, x, batch_size)
    times = {label: [] for label in variants}
    order = list(variants)
    for _ in range(rounds):
        rng.shuffle(order)
        for label in order:
            times[label].append(time_predict(variants[label], x, batch_size))
    return times


def randomize_batch_norms(model, seed=0):
    """Moving statistics, gamma and beta of every batch norm (nested ones too)
    set to random values, as after training: a fold of fresh statistics
    (mean 0, variance 1) would hide a wrong fold."""
    rng = np.random.default_rng(seed)
    for layer in model_graph.batch_norm_layers(model):
        shape = layer.moving_mean.shape
        layer.moving_mean.assign(rng.normal(0, 0.1, shape))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))
        if layer.gamma is not None:
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
        if layer.beta is not None:
            layer.beta.assign(rng.normal(0, 0.1, shape))


class DigitData:
    """Few training digits (so a small CNN overfits), a validation and a test set."""

    def __init__(self, train_size=300, val_size=500):
        (self.x_train, self.y_train), (x_rest, y_rest) = load_digit_images(train_size=train_size)
        self.x_val, self.y_val = x_rest[:val_size], y_rest[:val_size]
        self.x_test, self.y_test = x_rest[val_size:], y_rest[val_size:]

"""Training runs whose metrics follow a script, for testing callbacks' decisions."""

import keras
import numpy as np


class ScriptedMetrics(keras.callbacks.Callback):
    """Overwrites logged metrics with scripted values and records weights per epoch.

    Placed before the callback under test, so that callback sees the script.
    """

    def __init__(self, **scripts):
        super().__init__()
        self.scripts = scripts
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        for key, values in self.scripts.items():
            logs[key] = float(values[epoch])
        self.weights.append([w.copy() for w in self.model.get_weights()])


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    # "accuracy" only so that scripts can stand in for it (and for val_accuracy).
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["accuracy"])
    return model


def tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def fit_scripted(model, callback, epochs, **scripts):
    """Fits for `epochs` with `scripts` as the logged metrics; returns the script callback."""
    script = ScriptedMetrics(**scripts)
    x, y = tiny_data()
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=16,
        verbose=0,
        callbacks=[script, callback],
    )
    return script


class Crash(Exception):
    """Stands in for a process killed at the end of an epoch."""


class CrashAt(keras.callbacks.Callback):
    """Raises `Crash` at the end of epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash(epoch)

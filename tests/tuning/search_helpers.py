"""What several tuning tests share: a hypermodel that overfits fast, and worker processes."""

import os
import subprocess
import time

import keras
import keras_tuner
import numpy as np

from kreg.tuning import OverfittingPruning
from kreg.tuning import RegularizedHyperModel


class Memorizer(RegularizedHyperModel):
    """A wide MLP that memorizes noise: validation loss rises within a few epochs."""

    def build_model(self, hp):
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(256, activation="relu"),
                self.space.dropout(hp, "dense"),
                keras.layers.Dense(4, activation="softmax"),
            ]
        )
        model.compile(
            keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        return model


class GroupsBreakSomeModels(RegularizedHyperModel):
    """Six channels: group norm with 4 groups cannot be built; 2 groups or layer norm can."""

    def build_model(self, hp):
        model = keras.Sequential(
            [
                keras.Input((4, 6)),
                self.space.norm(hp),  # no `channels`: the mismatch shows only when building
                keras.layers.Flatten(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
        return self.compile_model(model)


class PrunedRandomSearch(OverfittingPruning, keras_tuner.RandomSearch):
    pass


def replay(detector, curve, epochs=30, search_best=None):
    """Feeds `curve(epoch)` logs to a pruning detector, as one trial's `fit`; the
    epoch it ended the trial after, or `None`."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    detector.set_model(model)
    detector.set_params({"epochs": epochs})
    detector.on_train_begin()
    detector.search.value = search_best
    stopped = None
    for epoch in range(epochs):
        detector.on_epoch_end(epoch, curve(epoch))
        if getattr(model, "stop_training", False):
            stopped = epoch
            break
    detector.on_train_end()
    return stopped


def noise(n, seed):
    """`n` samples of 64 Gaussian features with random labels among 4."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)).astype("float32"), rng.integers(0, 4, n)


def run_processes(commands, log_directory, timeout=240):
    """Runs `{name: (argv, env)}` at once; fails with the log tail of any that exits non-zero."""
    processes = {}
    for name, (argv, env) in commands.items():
        log = open(log_directory / f"{name}.log", "w")
        processes[name] = (
            subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT),
            log,
        )
    try:
        for name, (process, log) in processes.items():
            code = process.wait(timeout=timeout)
            log.close()
            tail = (log_directory / f"{name}.log").read_text()[-3000:]
            assert code == 0, f"{name} exited with {code}:\n{tail}"
    finally:
        for process, log in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def wait_for_each_other(directory, name, count, timeout=120):
    """Marks worker `name` ready in `directory` and waits until `count` workers are, so
    that they start asking for trials at about the same time and each gets some."""
    open(os.path.join(directory, f"ready_{name}"), "w").close()
    deadline = time.time() + timeout
    while len([f for f in os.listdir(directory) if f.startswith("ready_")]) < count:
        if time.time() > deadline:
            raise TimeoutError("the other workers never started")
        time.sleep(0.2)

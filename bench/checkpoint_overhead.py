"""Per-epoch cost: kreg's EarlyStoppingWithCheckpoint vs the Keras trio it replaces.

The trio is `EarlyStopping(restore_best_weights=True)` +
`ModelCheckpoint(save_best_only=True)` + `BackupAndRestore`: the best model is
saved every time the monitored loss improves (here, every epoch), the best
weights are kept in memory, and weights and optimizer state are backed up after
every epoch. kreg does the same with exact resume on (`resume=True`, the
default), and writes every file atomically (temporary file, fsync, rename) with
its state file; its files are written by a background thread from host copies
taken at the epoch's end. Where orbax-checkpoint is installed (an optional
benchmark dependency: `pip install orbax-checkpoint`), Keras's
`EarlyStopping(restore_best_weights=True)` + `OrbaxCheckpoint(save_best_only=True)`
(asynchronous saves of weights and optimizer state) runs beside them. One
process; fits interleaved round by round, in a new random order each round;
medians and minima of the time per epoch, as ratios to no callbacks (the
target: kreg at most 1.10x) and to the Keras trio.

    python bench/checkpoint_overhead.py --rounds 7
"""

import argparse
import importlib.util
import os
import random
import statistics
import tempfile
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kreg.callbacks import EarlyStoppingWithCheckpoint  # noqa: E402


def make_model(width):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def variants(folder):
    keras_path = os.path.join(folder, "keras.keras")
    kreg_path = os.path.join(folder, "kreg.keras")
    runs = {
        NONE: lambda: [],
        TRIO: lambda: [
            keras.callbacks.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(keras_path, monitor="loss", save_best_only=True),
            keras.callbacks.BackupAndRestore(os.path.join(folder, "backup")),
        ],
        "kreg EarlyStoppingWithCheckpoint (exact resume)": lambda: [
            EarlyStoppingWithCheckpoint(kreg_path, monitor="loss", patience=100)
        ],
        "kreg EarlyStoppingWithCheckpoint (resume=False)": lambda: [
            EarlyStoppingWithCheckpoint(kreg_path, monitor="loss", patience=100, resume=False)
        ],
    }
    if importlib.util.find_spec("orbax") is not None:
        # A new folder per fit: OrbaxCheckpoint numbers its checkpoints by epoch
        # and would find the last fit's there.
        fits = iter(range(10**6))
        runs[ORBAX] = lambda: [
            keras.callbacks.EarlyStopping(monitor="loss", patience=100, restore_best_weights=True),
            keras.callbacks.OrbaxCheckpoint(
                os.path.join(folder, f"orbax-{next(fits)}"), monitor="loss", save_best_only=True
            ),
        ]
    return runs


TRIO = "Keras EarlyStopping + ModelCheckpoint + BackupAndRestore"
NONE = "no callbacks"
ORBAX = "Keras EarlyStopping + OrbaxCheckpoint (async)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 64)).astype("float32")
    y = rng.integers(0, 10, args.samples)
    with tempfile.TemporaryDirectory() as folder:
        runs = variants(folder)
        models = {name: make_model(args.width) for name in runs}
        params = models[NONE].count_params()
        print(
            f"backend={keras.backend.backend()} MLP 64-{args.width}-{args.width}-10 "
            f"({params} parameters), {args.samples} samples, {args.epochs} epochs per fit, "
            f"{args.rounds} rounds",
            flush=True,
        )
        for name, model in models.items():
            model.fit(x, y, epochs=1, verbose=0, callbacks=runs[name]())  # warm up
        times = {name: [] for name in runs}
        order = list(models)
        shuffle = random.Random(0).shuffle
        for round_index in range(args.rounds):
            shuffle(order)
            for name in order:
                model = models[name]
                start = time.perf_counter()
                model.fit(
                    x, y, epochs=args.epochs, batch_size=256, verbose=0, callbacks=runs[name]()
                )
                times[name].append((time.perf_counter() - start) / args.epochs)
            print(f"  round {round_index + 1}/{args.rounds}", flush=True)
    for statistic in (statistics.median, min):
        print(
            f"\n{statistic.__name__} over rounds: ms/epoch, ratio to no callbacks, to the Keras trio"
        )
        bare, trio = statistic(times[NONE]), statistic(times[TRIO])
        for name, values in times.items():
            value = statistic(values)
            print(f"  {name:55s} {value * 1e3:8.1f} {value / bare:7.3f}x {value / trio:7.3f}x")


if __name__ == "__main__":
    main()

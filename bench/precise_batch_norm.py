"""PreciseBatchNorm against the moving statistics of Keras's BatchNormalization.

The CNN of the demo (two Conv-BN-ReLU blocks, a dense head) with Keras's
`BatchNormalization` at its default momentum 0.99, trained on 300 digits
(10 steps per epoch), validated on 500 others every epoch:

- accuracy: every epoch's validation accuracy with the moving statistics (no
  callback) and with `PreciseBatchNorm` for several `K` (`steps`) and batch sizes,
  each against the validation accuracy of the same weights with statistics fully
  re-estimated on the whole training set (`adapt_batchnorm` on a copy, batch 32).
  The weights of all runs are the same (batch norm trains on batch statistics;
  the moving ones never reach the gradients), so they are compared epoch by epoch.
- cost: seconds per epoch (training and validation) with and without the
  callback, runs interleaved, median over epochs 2..N of every round.

    python bench/precise_batch_norm.py
    python bench/precise_batch_norm.py --epochs 15 --rounds 3
"""

import argparse
import statistics
import time

from _common import DigitData  # noqa: E402  (first: it quiets TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402
from kreg.callbacks import PreciseBatchNorm  # noqa: E402

BATCH_SIZE = 32
# (label, PreciseBatchNorm arguments); None is no callback.
VARIANTS = [
    ("moving statistics (no callback)", None),
    ("K=1 x 32", dict(steps=1, batch_size=32)),
    ("K=3 x 32", dict(steps=3, batch_size=32)),
    ("K=10 x 32 (the training set)", dict(batch_size=32)),
    ("K=1 x 300 (the training set)", dict(batch_size=300)),
]


def cnn():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)  # momentum 0.99, Keras's default
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


class FullyReestimated(keras.callbacks.Callback):
    """Validation accuracy of the current weights with statistics re-estimated on
    the whole training set, on a copy (the trained model is not touched)."""

    def __init__(self, data):
        super().__init__()
        self.data, self.accuracy, self.twin = data, [], None

    def on_epoch_end(self, epoch, logs=None):
        if self.twin is None:
            self.twin = cnn()
        self.twin.set_weights(self.model.get_weights())
        kreg.adapt_batchnorm(self.twin, self.data.x_train, batch_size=BATCH_SIZE, verbose=0)
        result = self.twin.evaluate(self.data.x_val, self.data.y_val, verbose=0, return_dict=True)
        self.accuracy.append(result["accuracy"])


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds per epoch, and the CPU seconds of this process
    (`time.process_time`, all threads: on a shared machine less disturbed by
    the other jobs than the wall clock)."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self.cpu_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        self.cpu_seconds.append(time.process_time() - self.cpu_start)


class TimedPreciseBatchNorm(PreciseBatchNorm):
    """Also records the seconds each re-estimation takes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seconds = []

    def _reestimate(self):
        start = time.perf_counter()
        super()._reestimate()
        self.seconds.append(time.perf_counter() - start)


def fit(data, seed, epochs, options, extra=()):
    keras.utils.set_random_seed(seed)
    model = cnn()
    callbacks = list(extra)
    if options is not None:
        # The timer is last, so an epoch's time includes the callback's work.
        callbacks.insert(0, TimedPreciseBatchNorm(data.x_train, seed=seed, **options))
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        batch_size=BATCH_SIZE,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )
    return history.history["val_accuracy"], callbacks


def accuracy_table(data, seed, epochs):
    print(f"\nValidation accuracy per epoch (seed {seed}), against fully re-estimated statistics")
    rows = []
    for label, options in VARIANTS:
        probe = FullyReestimated(data)
        accuracy, _ = fit(data, seed, epochs, options, extra=[probe])
        gap = np.abs(np.array(accuracy) - np.array(probe.accuracy)) * 100
        rows.append((label, accuracy, probe.accuracy, gap))
        print(
            f"  {label}: max gap {gap.max():.1f} points (epoch {gap.argmax() + 1}), "
            f"last {accuracy[-1]:.3f} vs {probe.accuracy[-1]:.3f}"
        )
        print("    per epoch: " + " ".join(f"{a:.3f}" for a in accuracy))
    print("    fully re-estimated: " + " ".join(f"{a:.3f}" for a in rows[0][2]))
    return rows


def cost_table(data, epochs, rounds):
    variants = [VARIANTS[0], VARIANTS[1], VARIANTS[3], VARIANTS[4]]
    seconds = {label: [] for label, _ in variants}
    passes = {label: [] for label, _ in variants}
    for round_ in range(rounds):
        for label, options in variants:
            timer = EpochTimer()
            _, callbacks = fit(data, round_, epochs, options, extra=[timer])
            seconds[label].extend(timer.seconds[1:])  # the first epoch traces
            if options is not None:
                passes[label].extend(callbacks[0].seconds[1:])
    base = statistics.median(seconds[variants[0][0]])
    print(f"\nSeconds per epoch (train + validate), median of {rounds} x {epochs - 1} epochs;")
    print("the pass alone: median seconds of one re-estimation, as a share of a plain epoch")
    for label, values in seconds.items():
        median = statistics.median(values)
        line = f"  {label}: {median * 1000:.1f} ms/epoch, {median / base:.3f}x"
        if passes[label]:
            one_pass = statistics.median(passes[label])
            line += f"; pass {one_pass * 1000:.1f} ms = {1 + one_pass / base:.3f}x"
        print(line)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    print(f"backend {keras.backend.backend()}, keras {keras.__version__}")
    data = DigitData(train_size=300, val_size=500)
    if not args.skip_accuracy:
        for seed in range(args.seeds):
            accuracy_table(data, seed, args.epochs)
    if not args.skip_cost:
        cost_table(data, args.epochs, args.rounds)


if __name__ == "__main__":
    main()

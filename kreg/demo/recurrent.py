"""Demo: recurrent regularizers on digits read row by row.

No dropout, Keras's `recurrent_dropout`, kreg's `WeightDropLSTM` alone (it
regularizes the same connections while keeping the fused LSTM kernel), and the
recipe that won `bench/char_lm.py` (docs/BENCHMARKS.md): consistent input
dropout, weight drop (one mask per batch: four groups regularized no better
there, at twice the CPU step time), and AR/TAR.
"""

import dataclasses
import statistics
import time

import keras
import numpy as np

from kreg.datasets import load_digit_sequences
from kreg.layers import ActivationRegularization
from kreg.layers import ConsistentDropout
from kreg.layers import WeightDropLSTM

# The recipe's settings besides the shared rate: those of bench/char_lm.py's
# full recipe (docs/BENCHMARKS.md), AR/TAR at AWD-LSTM's weights.
RECIPE_MASK_GROUPS = 1
RECIPE_INPUT_DROPOUT = 0.1
RECIPE_AR, RECIPE_TAR = 2.0, 1.0


@dataclasses.dataclass
class RunResult:
    variant: str
    seed: int
    best_val_loss: float
    best_epoch: int
    final_val_loss: float
    final_val_accuracy: float
    seconds: float


def kreg_recipe(rate, units, mode="unit", timesteps=8):
    """The layers of kreg's recurrent recipe, up to the LSTM's last output."""
    return [
        ConsistentDropout(RECIPE_INPUT_DROPOUT),
        WeightDropLSTM(
            units,
            weight_dropout=rate,
            weight_dropout_mode=mode,
            mask_groups=RECIPE_MASK_GROUPS,
            return_sequences=True,
        ),
        ActivationRegularization(ar=RECIPE_AR, tar=RECIPE_TAR),
        # The last timestep: what LSTM(return_sequences=False) returns.
        keras.layers.Cropping1D((timesteps - 1, 0)),
        keras.layers.Flatten(),
    ]


def recipe_name(rate):
    return f"kreg recipe (weight drop {rate}, input dropout {RECIPE_INPUT_DROPOUT}, AR/TAR)"


def recurrent_variants(rate, units, mode="unit", timesteps=8):
    """The recurrent stacks compared, by name: the same LSTM, regularized four ways.

    Each value returns a fresh list of layers between the input and the classifier.
    """
    return {
        "no dropout": lambda: [keras.layers.LSTM(units)],
        f"Keras LSTM(recurrent_dropout={rate})": lambda: [
            keras.layers.LSTM(units, recurrent_dropout=rate)
        ],
        f"kreg WeightDropLSTM(weight_dropout={rate})": lambda: [
            WeightDropLSTM(units, weight_dropout=rate, weight_dropout_mode=mode)
        ],
        recipe_name(rate): lambda: kreg_recipe(rate, units, mode, timesteps),
    }


def _train_once(make_layers, data, seed, epochs, batch_size):
    (x_train, y_train), (x_val, y_val) = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(x_train.shape[1:]),
            *make_layers(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    val_loss = history["val_loss"]
    best = int(np.argmin(val_loss))
    return val_loss[best], best + 1, val_loss[-1], history["val_accuracy"][-1], seconds


def recurrent_regularization_study(
    rate=0.25,
    units=128,
    epochs=60,
    seeds=(0, 1, 2),
    train_size=400,
    batch_size=32,
    mode="unit",
    variants=None,
    log=print,
):
    """Trains each variant once per seed; returns one `RunResult` per run.

    `variants` picks some of `recurrent_variants` by name (all by default).
    """
    data = load_digit_sequences(train_size=train_size)
    timesteps = data[0][0].shape[1]
    variants = {
        name: make
        for name, make in recurrent_variants(rate, units, mode, timesteps).items()
        if variants is None or name in variants
    }
    results = []
    total = len(variants) * len(seeds)
    for seed in seeds:
        for name, make_layer in variants.items():
            best, best_epoch, final, accuracy, seconds = _train_once(
                make_layer, data, seed, epochs, batch_size
            )
            results.append(RunResult(name, seed, best, best_epoch, final, accuracy, seconds))
            log(
                f"  [{len(results)}/{total}] {name}, seed {seed}: best val loss {best:.4f} "
                f"(epoch {best_epoch}), final {final:.4f}, {seconds:.0f}s"
            )
    return results


def summarize(results):
    """A Markdown table: per variant, mean and spread of the validation losses."""
    lines = [
        "| variant | best val loss | final val loss | final val acc | s/run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant in dict.fromkeys(r.variant for r in results):
        runs = [r for r in results if r.variant == variant]

        def spread(values):
            if len(values) == 1:
                return f"{values[0]:.4f}"
            return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

        lines.append(
            f"| {variant} | {spread([r.best_val_loss for r in runs])} "
            f"| {spread([r.final_val_loss for r in runs])} "
            f"| {statistics.mean(r.final_val_accuracy for r in runs):.3f} "
            f"| {statistics.mean(r.seconds for r in runs):.0f} |"
        )
    return "\n".join(lines)

"""Weight averaging with and without batch norm statistics of its own, on digits.

The CNN of `bench/precise_batch_norm.py` (two Conv-BN-ReLU blocks with Keras's
`BatchNormalization` at momentum 0.99, a dense head), Adam 1e-2, trained on 300
digits (10 steps per epoch) for `--epochs` epochs and validated every epoch on
500 others; test accuracy and NLL on the remaining 997, per seed:

- last epoch: the raw weights with their moving statistics (Keras's default);
- last epoch, re-estimated: the same weights, statistics re-estimated
  (`adapt_batchnorm` on the training inputs), to tell weights from statistics;
- Keras EMA: `use_ema=True` (ema_momentum 0.99, Keras's default) and
  `SwapEMAWeights`: the average with the raw weights' moving statistics;
- Keras EMA, re-estimated: the same averaged weights, statistics re-estimated;
- kreg EMA without re-estimation: `WeightAveraging("ema")`'s averaged weights
  with the raw weights' moving statistics (what it would give without its pass);
- kreg EMA: `WeightAveraging("ema")` (momentum 0.999, timm's warmup), re-estimated;
- kreg SWA: `WeightAveraging("swa")` from 75% of the epochs, re-estimated.

Cost: seconds per epoch (train + validate) of a plain fit, of Keras's
`use_ema=True` with `SwapEMAWeights`, and of fits with `WeightAveraging`
re-estimating every epoch, runs interleaved in one process, median over epochs
2..N of every round.

    python bench/weight_averaging.py                       # 3 seeds, 15 epochs
    python bench/weight_averaging.py --seeds 0 1 2 --epochs 15 --rounds 3
    python bench/weight_averaging.py --skip-accuracy --rounds 3   # the cost alone
"""

import argparse
import statistics

from _common import DigitData  # noqa: E402  (first: it quiets TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from precise_batch_norm import EpochTimer  # noqa: E402  (bench/ is on the path of a script run from it)
from precise_batch_norm import cnn as precise_batch_norm_cnn  # noqa: E402

import kreg  # noqa: E402
from kreg.callbacks import WeightAveraging  # noqa: E402

BATCH_SIZE = 32


def cnn(use_ema=False):
    """`bench/precise_batch_norm.py`'s CNN, with the optimizer's EMA on request."""
    model = precise_batch_norm_cnn()
    if use_ema:
        model.compile(
            keras.optimizers.Adam(1e-2, use_ema=True),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    return model


def statistics_of(model):
    return [
        v.numpy().copy()
        for layer in kreg.model_graph.batch_norm_layers(model)
        for v in layer.non_trainable_weights
    ]


class RawStatistics(keras.callbacks.Callback):
    """The raw weights' moving statistics after the last training step (placed
    before WeightAveraging, whose swap comes at validation)."""

    def on_train_batch_end(self, batch, logs=None):
        self.values = statistics_of(self.model)


def test_scores(model, data):
    result = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    return result["accuracy"], result["loss"]


def reestimated_copy(model, data):
    twin = cnn()
    twin.set_weights(model.get_weights())
    kreg.adapt_batchnorm(twin, data.x_train, batch_size=300, verbose=0)
    return twin


def with_statistics(model, values):
    twin = cnn()
    twin.set_weights(model.get_weights())
    for variable, value in zip(
        [
            v
            for layer in kreg.model_graph.batch_norm_layers(twin)
            for v in layer.non_trainable_weights
        ],
        values,
    ):
        variable.assign(value)
    return twin


def fit(data, seed, epochs, callbacks, use_ema=False):
    keras.utils.set_random_seed(seed)
    model = cnn(use_ema=use_ema)
    model.fit(
        data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
        batch_size=BATCH_SIZE, epochs=epochs, verbose=0, callbacks=callbacks,
    )  # fmt: skip
    return model


def averaging(method, data, every=None):
    return WeightAveraging(
        method, bn_data=data.x_train, bn_batch_size=300, update_every_n_steps=every
    )


def scores_for_seed(data, seed, epochs):
    rows = {}
    plain = fit(data, seed, epochs, [])
    rows["last epoch"] = test_scores(plain, data)
    rows["last epoch, re-estimated"] = test_scores(reestimated_copy(plain, data), data)
    # Validation swaps the optimizer's EMA in; at the end of fit Keras assigns it
    # to the model (`finalize_variable_values`), moving statistics unchanged.
    keras_ema = fit(data, seed, epochs, [keras.callbacks.SwapEMAWeights()], use_ema=True)
    rows["Keras EMA + SwapEMAWeights"] = test_scores(keras_ema, data)
    rows["Keras EMA, re-estimated"] = test_scores(reestimated_copy(keras_ema, data), data)
    raw = RawStatistics()
    kreg_ema = fit(data, seed, epochs, [raw, averaging("ema", data)])
    rows["kreg EMA without re-estimation"] = test_scores(
        with_statistics(kreg_ema, raw.values), data
    )
    rows["kreg EMA (re-estimated)"] = test_scores(kreg_ema, data)
    kreg_swa = fit(data, seed, epochs, [averaging("swa", data)])
    rows["kreg SWA (re-estimated)"] = test_scores(kreg_swa, data)
    return rows


def cost(data, epochs, rounds):
    variants = [
        ("plain fit", lambda: [], False),
        ("Keras use_ema=True + SwapEMAWeights", lambda: [keras.callbacks.SwapEMAWeights()], True),
        ("kreg EMA", lambda: [averaging("ema", data)], False),
        ("kreg EMA, update_every_n_steps=5", lambda: [averaging("ema", data, every=5)], False),
        ("kreg SWA", lambda: [averaging("swa", data)], False),
    ]
    seconds = {label: [] for label, _, _ in variants}
    cpu_seconds = {label: [] for label, _, _ in variants}
    for round_ in range(rounds):
        for label, callbacks, use_ema in variants:
            timer = EpochTimer()  # first: its epoch holds the other callbacks' hooks
            fit(data, round_, epochs, [timer] + callbacks(), use_ema=use_ema)
            seconds[label].extend(timer.seconds[1:])  # the first epoch traces
            cpu_seconds[label].extend(timer.cpu_seconds[1:])
    base = statistics.median(seconds["plain fit"])
    cpu_base = statistics.median(cpu_seconds["plain fit"])
    print(
        f"\nPer epoch (train + validate), median of {rounds} x {epochs - 1} epochs, runs interleaved: "
        "wall clock, and CPU time of this process"
    )
    for label, values in seconds.items():
        median, cpu = statistics.median(values), statistics.median(cpu_seconds[label])
        print(
            f"  {label}: {median * 1000:.1f} ms/epoch, {median / base:.3f}x; "
            f"CPU {cpu * 1000:.1f} ms/epoch, {cpu / cpu_base:.3f}x"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true", help="only the cost")
    args = parser.parse_args()
    data = DigitData()
    table = {}
    for seed in [] if args.skip_accuracy else args.seeds:
        print(f"seed {seed} ...", flush=True)
        for label, scores in scores_for_seed(data, seed, args.epochs).items():
            table.setdefault(label, []).append(scores)
    if args.skip_accuracy:
        return cost(data, args.epochs, args.rounds)
    print(
        f"\nTest accuracy / NLL on {len(data.y_test)} digits, {args.epochs} epochs, seeds {args.seeds}"
    )
    print("| | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("| --- |" + " --- |" * (len(args.seeds) + 1))
    for label, scores in table.items():
        cells = [f"{a:.3f} / {nll:.3f}" for a, nll in scores]
        mean = np.mean(scores, axis=0)
        print(f"| {label} | " + " | ".join(cells) + f" | {mean[0]:.3f} / {mean[1]:.3f} |")
    cost(data, args.epochs, args.rounds)


if __name__ == "__main__":
    main()

"""Test-time batch norm adaptation under covariate shift, on digits.

A small CNN with `AdaptiveBatchNormalization` is trained on clean 8x8 digits and
tested on corrupted ones (noise, blur, contrast, brightness; severities 1, 3, 5).
For each test set it reports the accuracy without adaptation ("running") and with
each of kreg's modes and methods: the `"batch"`, `"mixed"` and `"online"` test-time
modes, and `adapt_batchnorm` with `"reestimate"` and `"tent"` (both adapt on the
unlabeled test set, then predict in the running mode). Each method starts from the
trained weights. The same methods on the clean test set show what adaptation costs
when there is no shift.

Then the cost: inference time of the `"batch"` and `"mixed"` modes against
`keras.layers.BatchNormalization` with the same weights, and the time of one
`"reestimate"` against one `predict` pass over the same data, interleaved rounds.

    python bench/adaptation_shift.py                 # 3 training seeds
    python bench/adaptation_shift.py --seeds 1 --epochs 10
    python bench/adaptation_shift.py --skip-accuracy        # the cost tables only
"""

import argparse
import statistics
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402
from kreg.datasets import CORRUPTIONS  # noqa: E402
from kreg.datasets import corrupt_images  # noqa: E402
from kreg.datasets import load_digit_images  # noqa: E402
from kreg.demo.shift import accuracy_after  # noqa: E402

METHODS = ("running", "batch", "mixed", "online", "reestimate", "tent")
BATCH_SIZE = 64


def cnn(batch_norm=kreg.AdaptiveBatchNormalization):
    """Three conv blocks (Conv, BN, ReLU) and a linear classifier."""
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for channels, pool in ((16, False), (32, True), (32, False)):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
        if pool:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def train(seed, epochs, data):
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(seed)
    model = cnn()
    model.compile(
        keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    return model


def accuracy_table(seeds, epochs, severities):
    data = load_digit_images(train_size=1200, seed=0)
    _, (x_test, y_test) = data
    test_sets = {("clean", 0): x_test}
    for corruption in CORRUPTIONS:
        for severity in severities:
            test_sets[(corruption, severity)] = corrupt_images(x_test, corruption, severity, seed=1)
    table = {key: {method: [] for method in METHODS} for key in test_sets}
    for seed in seeds:
        started = time.perf_counter()
        model = train(seed, epochs, data)
        weights = model.get_weights()
        for key, x in test_sets.items():
            for method in METHODS:
                table[key][method].append(
                    accuracy_after(model, weights, method, x, y_test, BATCH_SIZE)
                )
        print(
            f"  seed {seed}: trained and evaluated in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return {
        key: {m: 100 * statistics.mean(v) for m, v in row.items()} for key, row in table.items()
    }


def print_accuracy(table, severities):
    print("\naccuracy (%), mean over seeds; adaptation on the unlabeled test set itself")
    print(f"| test set | {' | '.join(METHODS)} |")
    print("|" + " --- |" * (len(METHODS) + 1))
    for (corruption, severity), row in table.items():
        name = "clean" if corruption == "clean" else f"{corruption} {severity}"
        print(f"| {name} | " + " | ".join(f"{row[m]:.1f}" for m in METHODS) + " |")

    clean = table[("clean", 0)]["running"]
    worst = max(severities)
    print(
        f"\nrecovered share of the accuracy lost to shift, severity {worst}, mean over corruptions:"
    )
    shifted = [table[(c, worst)] for c in CORRUPTIONS]
    lost = clean - statistics.mean(row["running"] for row in shifted)
    for method in METHODS[1:]:
        gained = statistics.mean(row[method] - row["running"] for row in shifted)
        clean_change = table[("clean", 0)][method] - clean
        print(
            f"  {method:>10}: recovers {100 * gained / lost:5.1f}% of {lost:.1f} points lost; "
            f"on clean data {clean_change:+.1f} points"
        )


def timed(function, rounds):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def wide_cnn(batch_norm=kreg.AdaptiveBatchNormalization, blocks=5, channels=64):
    """`blocks` x (Conv 3x3, BN, ReLU) on 16x16x3 images: convs weigh more than BN."""
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for _ in range(blocks):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = batch_norm()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def print_cost(rounds, model="digits"):
    """Inference cost of the modes, and of one re-estimation, side by side."""
    if model == "digits":
        _, (x, _) = load_digit_images(train_size=1200, seed=0)
        x = np.concatenate([x] * 8)  # ~4800 images, enough for stable timings
        build = cnn
    else:
        x = np.random.default_rng(0).random((1024, 16, 16, 3), dtype=np.float32)
        build = wide_cnn
    standard = build(keras.layers.BatchNormalization)
    weights = [keras.ops.convert_to_numpy(w) for w in standard.weights]
    adaptive = {}
    for mode in ("running", "batch", "mixed"):  # one model per mode: no switch in the timing
        adaptive[mode] = build()
        for layer, source in zip(adaptive[mode].layers, standard.layers):
            if source.weights:
                layer.set_weights(source.get_weights())
        kreg.set_test_time_mode(adaptive[mode], mode)
    adapted = build(keras.layers.BatchNormalization)  # re-estimated; `standard` stays as is
    adapted.set_weights(weights)

    def predict_with(model):
        return lambda: model.predict(x, batch_size=BATCH_SIZE, verbose=0)

    variants = {
        "keras BatchNormalization": predict_with(standard),
        "kreg running": predict_with(adaptive["running"]),
        "kreg batch": predict_with(adaptive["batch"]),
        "kreg mixed": predict_with(adaptive["mixed"]),
        "predict (one pass, keras BN)": predict_with(adapted),
        "adapt_batchnorm reestimate": lambda: kreg.adapt_batchnorm(
            adapted, x, batch_size=BATCH_SIZE, verbose=0
        ),
    }
    for run in variants.values():  # compile every function once
        run()
    times = {name: [] for name in variants}
    order = list(variants)
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            times[name] += timed(variants[name], 1)

    print(f"\ncost, {model} CNN: {len(x)} images, batch {BATCH_SIZE}, {rounds} interleaved rounds")
    print("| variant | min (s) | median (s) | ratio of mins | ratio of medians |")
    print("| --- | --- | --- | --- | --- |")
    for name, baseline in (
        ("keras BatchNormalization", "keras BatchNormalization"),
        ("kreg running", "keras BatchNormalization"),
        ("kreg batch", "keras BatchNormalization"),
        ("kreg mixed", "keras BatchNormalization"),
        ("adapt_batchnorm reestimate", "predict (one pass, keras BN)"),
    ):
        t, b = times[name], times[baseline]
        print(
            f"| {name} (vs {baseline}) | {min(t):.3f} | {statistics.median(t):.3f} | "
            f"{min(t) / min(b):.2f}x | {statistics.median(t) / statistics.median(b):.2f}x |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    severities = (1, 3, 5)
    print(f"backend {keras.backend.backend()}; training {args.seeds} seed(s), {args.epochs} epochs")
    if not args.skip_accuracy:
        table = accuracy_table(range(args.seeds), args.epochs, severities)
        print_accuracy(table, severities)
    if not args.skip_cost:
        for model in ("digits", "wide"):
            print_cost(args.rounds, model)


if __name__ == "__main__":
    main()

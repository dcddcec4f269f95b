"""Test-time adaptation over streams of batches: kreg.OnlineAdapter's methods side by side.

The CNN and corruptions of bench/adaptation_shift.py (8x8 digits, severity 5),
fed to `kreg.OnlineAdapter` one batch of 64 (`--batch-size`) at a time. Three streams:

- (a) each corruption alone (the adapter reset before each);
- (b) continual: the four corruptions one after another, never reset; each
  corruption's accuracy is compared with its figure in (a);
- (c) class-sorted and mixed: every test image gets a random corruption, the
  stream is sorted by label (each batch holds one or two classes).

Every method runs with its defaults, and `eata` once more without its
few-classes test (`label_shift_ratio=None`: the method before that test). The
recovered share is `(accuracy - no adaptation) / (clean accuracy - no adaptation)`.
The cost of each method is its time per batch on the continual stream once
compiled (the best of 3 passes), relative to `none`.

    python bench/adaptation_streams.py               # 2 training seeds
    python bench/adaptation_streams.py --seeds 1 --epochs 15
    python bench/adaptation_streams.py --batch-size 16
"""

import argparse
import statistics
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402
from kreg.adapt.online_adapter import ONLINE_METHODS  # noqa: E402
from kreg.datasets import CORRUPTIONS  # noqa: E402
from kreg.datasets import corrupt_images  # noqa: E402
from kreg.datasets import load_digit_images  # noqa: E402

BATCH_SIZE = 64  # the default
SEVERITY = 5
# (row name, method, extra arguments)
VARIANTS = [(method, method, {}) for method in ONLINE_METHODS] + [
    ("eata, no few-classes test", "eata", {"label_shift_ratio": None})
]


def train(seed, epochs, x, y):
    from adaptation_shift import cnn  # the shift bench's CNN (bench/ is on sys.path when run)

    keras.utils.set_random_seed(seed)
    model = cnn()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
    return model


def streams(x_test, y_test, seed, batch_size):
    rng = np.random.default_rng(seed)
    # A whole number of batches, so that in the continual stream no batch mixes
    # two corruptions.
    order = rng.permutation(len(x_test))[: len(x_test) // batch_size * batch_size]
    x_test, y_test = x_test[order], y_test[order]
    corrupted = {c: corrupt_images(x_test, c, SEVERITY, seed=1) for c in CORRUPTIONS}
    # (c): a random corruption per image, then sorted by label.
    which = rng.integers(len(CORRUPTIONS), size=len(x_test))
    mixed = np.stack([corrupted[c][i] for i, c in enumerate(np.array(CORRUPTIONS)[which])])
    by_label = np.argsort(y_test, kind="stable")
    return x_test, y_test, corrupted, (mixed[by_label], x_test[by_label], y_test[by_label])


def accuracy(predictions, y):
    return float(np.mean(predictions.argmax(-1) == y))


def run_seed(seed, epochs, data, options, batch_size):
    (x_train, y_train), (x_test, y_test) = data
    model = train(seed, epochs, x_train, y_train)
    x_test, y_test, corrupted, (sorted_x, sorted_clean, sorted_y) = streams(
        x_test, y_test, seed, batch_size
    )
    clean = accuracy(model.predict(x_test, verbose=0), y_test)
    weights = model.get_weights()
    result = {"clean": clean, "a": {}, "b": {}, "c": {}, "c clean": {}}
    continual_x = np.concatenate([corrupted[c] for c in CORRUPTIONS])
    n = len(x_test)
    for row, method, extra in VARIANTS:
        model.set_weights(weights)
        extra = {**extra, **options} if method in ("tent", "eata") else extra
        adapter = kreg.OnlineAdapter(model, method=method, reset="stream", **extra)
        result["a"][row] = {
            c: accuracy(adapter.predict(corrupted[c], batch_size=batch_size), y_test)
            for c in CORRUPTIONS
        }
        continual = adapter.predict(continual_x, batch_size=batch_size)
        result["b"][row] = {
            c: accuracy(continual[i * n : (i + 1) * n], y_test) for i, c in enumerate(CORRUPTIONS)
        }
        result["c"][row] = accuracy(adapter.predict(sorted_x, batch_size=batch_size), sorted_y)
        result["c clean"][row] = accuracy(
            adapter.predict(sorted_clean, batch_size=batch_size), sorted_y
        )
        result.setdefault("resets", {})[row] = adapter.collapse_resets
        result.setdefault("few classes", {})[row] = adapter.few_classes_batches
        adapter.reset()
        adapter.predict(continual_x[:batch_size], batch_size=batch_size)  # compiled
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            adapter.predict(continual_x, batch_size=batch_size)
            seconds.append(time.perf_counter() - started)
        result.setdefault("seconds", {})[row] = min(seconds)
    return result


def mean_over(results, *keys):
    values = []
    for result in results:
        value = result
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.mean(values)


def report(results, batch_size):
    clean = mean_over(results, "clean")
    print(
        f"\nclean accuracy (no adaptation): {100 * clean:.1f}%; {len(results)} seed(s), batch {batch_size}"
    )
    print("\n(a) each corruption alone, severity 5: accuracy (%), and the mean recovered share")
    print("| method | " + " | ".join(CORRUPTIONS) + " | recovered share |")
    print("|" + " --- |" * (len(CORRUPTIONS) + 2))
    share = {}
    for method, _, _ in VARIANTS:
        row = [mean_over(results, "a", method, c) for c in CORRUPTIONS]
        lost = [clean - mean_over(results, "a", "none", c) for c in CORRUPTIONS]
        gained = [r - mean_over(results, "a", "none", c) for r, c in zip(row, CORRUPTIONS)]
        share[method] = statistics.mean(g / loss for g, loss in zip(gained, lost))
        print(
            f"| {method} | "
            + " | ".join(f"{100 * r:.1f}" for r in row)
            + f" | {share[method]:.3f} |"
        )

    print(
        "\n(b) continual (no reset between corruptions): accuracy (%), and the largest drop below (a)"
    )
    print("| method | " + " | ".join(CORRUPTIONS) + " | worst drop vs (a), points |")
    print("|" + " --- |" * (len(CORRUPTIONS) + 2))
    for method, _, _ in VARIANTS:
        row = [mean_over(results, "b", method, c) for c in CORRUPTIONS]
        drop = max(mean_over(results, "a", method, c) - r for r, c in zip(row, CORRUPTIONS))
        print(
            f"| {method} | " + " | ".join(f"{100 * r:.1f}" for r in row) + f" | {100 * drop:+.1f} |"
        )

    print(
        "\n(c) class-sorted batches: mixed corruptions, and clean images: accuracy (%) and the change from no adaptation"
    )
    print(
        "| method | mixed corruptions | vs none, points | clean | vs none, points | collapse resets (all streams) "
        "| batches kept on stored statistics (all streams) | cost vs none |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    none, none_clean = mean_over(results, "c", "none"), mean_over(results, "c clean", "none")
    for method, _, _ in VARIANTS:
        value, clean_value = mean_over(results, "c", method), mean_over(results, "c clean", method)
        resets = sum(r["resets"][method] for r in results)
        kept = sum(r["few classes"][method] for r in results)
        cost = mean_over(results, "seconds", method) / mean_over(results, "seconds", "none")
        print(
            f"| {method} | {100 * value:.1f} | {100 * (value - none):+.1f} | {100 * clean_value:.1f} | "
            f"{100 * (clean_value - none_clean):+.1f} | {resets} | {kept} | {cost:.1f}x |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="tent and eata (default: theirs)"
    )
    args = parser.parse_args()
    options = {} if args.learning_rate is None else {"learning_rate": args.learning_rate}
    print(
        f"backend {keras.backend.backend()}; {args.seeds} seed(s), {args.epochs} epochs; tent/eata {options or 'defaults'}"
    )
    data = load_digit_images(train_size=1200, seed=0)
    results = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        results.append(run_seed(seed, args.epochs, data, options, args.batch_size))
        print(f"  seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    report(results, args.batch_size)


if __name__ == "__main__":
    main()

"""The cost per batch of `OnlineAdapter` against one `predict_on_batch` of the same model.

The model is `adaptation_grid.py`'s `cnn` (two conv + batch norm blocks) on its
`digits16` data, trained for `--epochs` (cached in `--cache`), so that the
predicted classes, and with them the robust method's class-balanced memory
bank, are those of a working classifier. The stream is the test digits in
i.i.d. order, repeated to `--batches` batches of each batch size.

Per batch size, one process: round 0 runs the whole stream through the model's
`predict_on_batch` and through the adapter once, untimed (it traces: the model's
predict function, the statistics pass at each bank size); then `--rounds`
rounds, each timing the whole stream through both, in alternating order, the
adapter continuing its stream (its state is never reset, as in use). Printed:
the median milliseconds per batch of each, and the median of the per-round
ratios adapter / predict. Issue target for the default method: at most 2x.

    KERAS_BACKEND=tensorflow python bench/adaptation_cost.py
    KERAS_BACKEND=tensorflow python bench/adaptation_cost.py --methods robust online reestimate
    KERAS_BACKEND=jax python bench/adaptation_cost.py --rounds 3
"""

import argparse
import statistics
import time

import _common  # noqa: F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from adaptation_grid import load  # noqa: E402
from adaptation_grid import trained  # noqa: E402

import kreg  # noqa: E402


def seconds_per_batch(predict, batches):
    started = time.perf_counter()
    for x in batches:
        predict(x)
    return (time.perf_counter() - started) / len(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["robust"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--batches", type=int, default=64, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after round 0)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", default="/tmp/kreg-bench-cache")
    args = parser.parse_args()
    train, (x_test, _) = load("digits16")
    source = trained("cnn", "digits16", 0, train, args.epochs, args.cache).get_weights()
    print(
        f"backend {keras.backend.backend()}; cnn on digits16; {args.batches} batches per "
        f"round, {args.rounds} timed rounds after one untimed (tracing) round"
    )
    print("| method | batch | predict_on_batch, ms | adapter, ms | ratio (median) |")
    print("| --- | --- | --- | --- | --- |")
    for method in args.methods:
        for batch_size in args.batch_sizes:
            x = np.resize(x_test, (args.batches * batch_size, *x_test.shape[1:]))
            batches = np.split(x, args.batches)
            model = trained("cnn", "digits16", 0, train, args.epochs, args.cache)
            model.set_weights(source)
            adapter = kreg.OnlineAdapter(model, method=method)
            # `predict_on_batch` of the model as the adapter leaves it: the same
            # weights and graph, only the statistics differ, which costs nothing.
            runs = {"predict": model.predict_on_batch, "adapter": adapter.predict_on_batch}
            for run in runs.values():
                seconds_per_batch(run, batches)
            times = {name: [] for name in runs}
            for round_ in range(args.rounds):
                for name in sorted(runs, reverse=round_ % 2 == 1):
                    times[name].append(seconds_per_batch(runs[name], batches))
            ratio = statistics.median(a / p for a, p in zip(times["adapter"], times["predict"]))
            print(
                f"| {method} | {batch_size} | {1e3 * statistics.median(times['predict']):.2f} "
                f"| {1e3 * statistics.median(times['adapter']):.2f} | {ratio:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The cost per batch of `OnlineAdapter` against one `predict_on_batch` of the same model.

The model is `adaptation_grid.py`'s `cnn` (two conv + batch norm blocks) on its
`digits16` data, trained for `--epochs` (cached in `--cache`), so that the
predicted classes, and with them the robust method's class-balanced memory
bank, are those of a working classifier. The stream is the test digits in
i.i.d. order, repeated to `--batches` batches of each batch size.

Per batch size, one process: round 0 runs the whole stream through the model's
`predict_on_batch` and through the adapter, untimed (it traces: the model's
predict function, the statistics pass at each bank size); then `--rounds`
rounds, each timing the whole stream through both, batch by batch (each batch
through one then the other, the order alternating), the adapter continuing its
stream (its state is never reset, as in use). An adapter's cost comes in
steps (the robust method's bank update every `memory_size` samples), so a
round's ratio is of the sums over its batches. Printed: the median
milliseconds per batch of each, and the median of the per-round ratios adapter
/ predict. Issue target for the default method: at most 2x.

    KERAS_BACKEND=tensorflow python bench/adaptation_cost.py
    KERAS_BACKEND=tensorflow python bench/adaptation_cost.py --methods robust online reestimate
    KERAS_BACKEND=tensorflow python bench/adaptation_cost.py --shift-distance none  # RoTTA's update alone
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


def stream_seconds(runs, batches):
    """`{name: seconds per batch}` over `batches`, each batch through every run
    in turn (the order alternating from batch to batch), so that a load that
    comes and goes on the machine falls on all of them alike."""
    total = dict.fromkeys(runs, 0.0)
    for index, x in enumerate(batches):
        for name in sorted(runs, reverse=index % 2 == 1):
            started = time.perf_counter()
            runs[name](x)
            total[name] += time.perf_counter() - started
    return {name: seconds / len(batches) for name, seconds in total.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["robust"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--batches", type=int, default=64, help="batches per round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after round 0)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--cache", default="/tmp/kreg-bench-cache")
    parser.add_argument(
        "--shift-distance",
        default="auto",
        help="the robust method's shift test: auto (the default), none (off) or a distance",
    )
    parser.add_argument(
        "--shift-test",
        default="window",
        choices=["window", "batch"],
        help="the robust method's shift_test (with a shift distance): once per memory_size "
        "samples, or before every batch; named to the adapter whatever its default",
    )
    args = parser.parse_args()
    shift_distance = {"auto": "auto", "none": None}.get(args.shift_distance.lower())
    if shift_distance is None and args.shift_distance.lower() != "none":
        shift_distance = float(args.shift_distance)
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
            extra = {}
            if method == "robust":
                extra = {"shift_distance": shift_distance}
                if shift_distance is not None:
                    # Named even at the adapter's default, which may change:
                    # a figure says which test it timed.
                    extra["shift_test"] = args.shift_test
            adapter = kreg.OnlineAdapter(model, method=method, **extra)
            # `predict_on_batch` of the model as the adapter leaves it: the same
            # weights and graph, only the statistics differ, which costs nothing.
            runs = {"predict": model.predict_on_batch, "adapter": adapter.predict_on_batch}
            stream_seconds(runs, batches)  # round 0: traces, untimed
            times = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name, seconds in stream_seconds(runs, batches).items():
                    times[name].append(seconds)
            ratio = statistics.median(a / p for a, p in zip(times["adapter"], times["predict"]))
            print(
                f"| {method} | {batch_size} | {1e3 * statistics.median(times['predict']):.2f} "
                f"| {1e3 * statistics.median(times['adapter']):.2f} | {ratio:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Training-step time: WeightDropLSTM/GRU vs plain Keras vs Keras recurrent_dropout.

All variants run in one process, interleaved round by round, so that machine noise
hits them alike; the script prints the median step time and ratios to the plain
layer. Backend from KERAS_BACKEND (TensorFlow on CPU; torch or jax on a GPU).

    python bench/weight_drop_speed.py                 # LSTM(256), 100 steps, batch 128
    python bench/weight_drop_speed.py --cell gru --rounds 7
    python bench/weight_drop_speed.py --groups 1 2 4   # also mask_groups=2 and 4
    KERAS_BACKEND=jax   python bench/weight_drop_speed.py   # any backend, CPU or GPU
    KERAS_BACKEND=torch python bench/weight_drop_speed.py
"""

import argparse
import statistics
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402

LAYERS = {
    "lstm": (keras.layers.LSTM, kreg.WeightDropLSTM),
    "gru": (keras.layers.GRU, kreg.WeightDropGRU),
}


def variants(cell, units, rate, groups=(1,)):
    """Plain first, Keras's recurrent_dropout second, then kreg, one per mask group count."""
    keras_cls, kreg_cls = LAYERS[cell]
    name = keras_cls.__name__
    layers = {
        f"{name}()": lambda: keras_cls(units),
        f"{name}(recurrent_dropout={rate})": lambda: keras_cls(units, recurrent_dropout=rate),
    }
    for k in groups:
        label = f"kreg.{kreg_cls.__name__}(weight_dropout={rate}" + (
            f", mask_groups={k})" if k > 1 else ")"
        )
        layers[label] = lambda k=k: kreg_cls(units, weight_dropout=rate, mask_groups=k)
    return layers


def compiled_model(make_layer, steps, features):
    inputs = keras.Input((steps, features))
    outputs = keras.layers.Dense(1)(make_layer()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model


def time_steps(model, x, y, n):
    start = time.perf_counter()
    for _ in range(n):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for asynchronous backends to finish
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=sorted(LAYERS), default="lstm")
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--groups", type=int, nargs="+", default=[1], help="mask_groups of the kreg layers"
    )
    parser.add_argument("--steps-per-round", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.steps, args.features)).astype("float32")
    y = rng.standard_normal((args.batch, 1)).astype("float32")
    models = {
        name: compiled_model(make, args.steps, args.features)
        for name, make in variants(args.cell, args.units, args.rate, args.groups).items()
    }
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__} {args.cell.upper()}"
        f"({args.units}), {args.steps} steps, batch {args.batch}, {args.features} features",
        flush=True,
    )
    for name, model in models.items():
        time_steps(model, x, y, 2)  # trace / compile / warm up
        print(f"  warmed up {name}", flush=True)

    times = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, model in models.items():
            times[name].append(time_steps(model, x, y, args.steps_per_round))
        print(f"  round {round_index + 1}/{args.rounds} done", flush=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    baseline, recurrent_dropout, *weight_drops = medians
    print(f"\n{'variant':64s} {'ms/step':>9s} {'vs plain':>9s}")
    for name, median in medians.items():
        print(f"{name:64s} {median * 1e3:9.1f} {median / medians[baseline]:8.2f}x")
    for weight_drop in weight_drops:
        speedup = medians[recurrent_dropout] / medians[weight_drop]
        print(f"Keras recurrent_dropout takes {speedup:.2f}x the time of {weight_drop} per step")


if __name__ == "__main__":
    main()

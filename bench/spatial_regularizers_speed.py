"""Training-step time of a small residual CNN regularized by Dropout,
SpatialDropout2D, DropBlock2D or StochasticDepth, and the time of
`kreg.add_stochastic_depth` on five keras.applications models.

The step variants run in one process, interleaved round by round in a shuffled
order, so machine noise hits them alike; the script prints the median CPU and
wall time of a step and the CPU-time ratios to the Dropout and SpatialDropout2D
models. Backend from KERAS_BACKEND.

    python bench/spatial_regularizers_speed.py                 # 32x32x3, batch 64, 20 steps x 5 rounds
    python bench/spatial_regularizers_speed.py --rounds 3 --steps 10 --skip-models
"""

import argparse
import random
import statistics
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402

REGULARIZERS = {
    "Dropout": lambda: keras.layers.Dropout(0.1),
    "SpatialDropout2D": lambda: keras.layers.SpatialDropout2D(0.1),
    "DropBlock2D": lambda: kreg.layers.DropBlock2D(0.1, 3),
}
MODELS = ("ResNet50", "ResNet50V2", "EfficientNetB0", "ConvNeXtTiny", "MobileNetV2")


def residual_cnn(
    regularizer,
    stochastic_depth=False,
    blocks=3,
    filters=32,
    input_shape=(32, 32, 3),
    stem=(),
    pool=False,
):
    """`stem` layers (augmentation) run first; `pool` halves the map after each block."""
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in stem:
        x = layer(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    rates = kreg.stochastic_depth_rates(blocks, 0.2)
    for block in range(blocks):
        branch = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        branch = keras.layers.Conv2D(filters, 3, padding="same")(branch)
        if stochastic_depth:
            x = kreg.layers.StochasticDepth(rates[block])([x, branch])
        else:
            x = keras.layers.Add()([x, branch])
        x = keras.layers.ReLU()(x)
        if regularizer is not None:
            x = regularizer()(x)
        if pool:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def step_times(args):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch)
    # "none": the same model with no regularizer, the floor every variant adds to.
    models = {"none": residual_cnn(None)}
    models.update({name: residual_cnn(make) for name, make in REGULARIZERS.items()})
    models["StochasticDepth"] = residual_cnn(None, stochastic_depth=True)
    for model in models.values():
        model.train_on_batch(x, y)  # trace
    # CPU time (all of the process's threads) is the cost; wall time on a shared
    # machine mostly measures the other jobs. The order is shuffled every round:
    # in a fixed order the first models ran up to 1.5x slower than the same
    # models later in the round.
    cpu = {name: [] for name in models}
    wall = {name: [] for name in models}
    order = list(models)
    shuffler = random.Random(0)
    for round_index in range(args.rounds):
        shuffler.shuffle(order)
        for name in order:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                models[name].train_on_batch(x, y)
            cpu[name].append((time.process_time() - cpu_start) / args.steps)
            wall[name].append((time.perf_counter() - wall_start) / args.steps)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    dropout = statistics.median(cpu["Dropout"])
    spatial = statistics.median(cpu["SpatialDropout2D"])
    print(
        f"\nmedian training step, batch {args.batch}, backend {keras.backend.backend()} "
        "(ratios of CPU time)"
    )
    for name in models:
        median = statistics.median(cpu[name])
        print(
            f"  {name:18s} CPU {median * 1e3:7.2f} ms  wall {statistics.median(wall[name]) * 1e3:7.2f}"
            f" ms   {median / dropout:5.2f}x Dropout   {median / spatial:5.2f}x SpatialDropout2D"
        )


def add_stochastic_depth_times():
    print("\nadd_stochastic_depth on keras.applications (weights=None, 32x32, 10 classes)")
    for name in MODELS:
        kwargs = {"include_preprocessing": False} if name == "ConvNeXtTiny" else {}
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(32, 32, 3), classes=10, **kwargs
        )
        start = time.perf_counter()
        copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True, verify=False)
        seconds = time.perf_counter() - start
        batch = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
        identical = np.array_equal(
            keras.ops.convert_to_numpy(model(batch)), keras.ops.convert_to_numpy(copy(batch))
        )
        print(
            f"  {name:15s} {seconds:6.2f} s  changed {len(report.changed):2d}  already dropped "
            f"{len(report.already_dropped):2d}  left {len(report.left):2d}  inference identical: {identical}",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    step_times(args)
    if not args.skip_models:
        add_stochastic_depth_times()


if __name__ == "__main__":
    main()

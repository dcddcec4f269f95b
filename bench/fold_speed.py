"""Inference time: original model vs `kreg.fold_batch_norms` vs the same convs without BN.

The model without batch norm at all (same convs, with biases) is the limit that
folding can reach. Everything runs in one process, interleaved round by round;
the order of the variants is shuffled every round, so that none always runs
first or last. The script prints medians (and minima, the least noisy estimate
of the intrinsic cost on a shared machine) and ratios, with and without
`jit_compile`.

    python bench/fold_speed.py                        # plain CNN and ResNet-style CNN
    python bench/fold_speed.py --models resnet --rounds 7
"""

import argparse
import statistics
import warnings

from _common import interleaved_predict_times  # noqa: E402  (first: it quiets TensorFlow)
from _common import randomize_batch_norms  # noqa: E402  (first: it quiets TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402


def plain_cnn(shape, batch_norm=True, blocks=5, channels=64):
    """`blocks` x (Conv 3x3, BN, ReLU), then a classifier."""
    inputs = keras.Input(shape)
    x = inputs
    for _ in range(blocks):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def resnet_cnn(shape, batch_norm=True, stages=(64, 128), blocks_per_stage=2):
    """A small ResNet: stem, then residual blocks (conv-BN-ReLU-conv-BN + skip)."""

    def conv_bn(x, channels, strides=1, kernel_size=3):
        x = keras.layers.Conv2D(
            channels, kernel_size, strides=strides, padding="same", use_bias=not batch_norm
        )(x)
        return keras.layers.BatchNormalization()(x) if batch_norm else x

    inputs = keras.Input(shape)
    x = keras.layers.ReLU()(conv_bn(inputs, stages[0]))
    for stage, channels in enumerate(stages):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if strides != 1 or shortcut.shape[-1] != channels:
                shortcut = conv_bn(x, channels, strides, kernel_size=1)
            y = keras.layers.ReLU()(conv_bn(x, channels, strides))
            y = conv_bn(y, channels)
            x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


BUILDERS = {"plain": plain_cnn, "resnet": resnet_cnn}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=sorted(BUILDERS), default=["plain", "resnet"]
    )
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    shape = (args.image_size, args.image_size, 3)
    x = (
        np.random.default_rng(0)
        .standard_normal((args.batch * args.batches, *shape))
        .astype("float32")
    )
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__}, {args.batches} batches of "
        f"{args.batch} images {shape}, {args.rounds} rounds",
        flush=True,
    )
    rows = []
    rng = np.random.default_rng(1)
    for name in args.models:
        original = BUILDERS[name](shape)
        randomize_batch_norms(original)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded, report = kreg.fold_batch_norms(original, return_report=True)
        no_bn = BUILDERS[name](shape, batch_norm=False)
        # Direct calls, not predict: an extra predict shape would make the timed
        # predict functions retrace for variable batch sizes.
        error = np.max(np.abs(keras.ops.convert_to_numpy(original(x[:8]) - folded(x[:8]))))
        print(
            f"{name}: {report.__str__().splitlines()[0]}; max |original - folded| = {error:.2e}",
            flush=True,
        )
        for jit_compile in (False, True):
            variants = {"original": original, "folded": folded, "no BN (limit)": no_bn}
            for model in variants.values():
                model.compile(jit_compile=jit_compile)
            times = interleaved_predict_times(variants, x, args.batch, args.rounds, rng)
            rows.append((name, jit_compile, times))
            print(f"  jit_compile={jit_compile} done", flush=True)

    for statistic in (statistics.median, min):
        print(f"\n{statistic.__name__} over rounds")
        print(
            f"{'model':8s} {'jit':5s} {'original ms':>12s} {'folded ms':>10s} {'no-BN ms':>9s} "
            f"{'folded/no-BN':>13s} {'folded/original':>16s}"
        )
        for name, jit_compile, times in rows:
            m = {label: statistic(values) for label, values in times.items()}
            print(
                f"{name:8s} {str(jit_compile):5s} {m['original'] * 1e3:12.1f} "
                f"{m['folded'] * 1e3:10.1f} {m['no BN (limit)'] * 1e3:9.1f} "
                f"{m['folded'] / m['no BN (limit)']:12.3f}x {m['folded'] / m['original']:15.3f}x"
            )


if __name__ == "__main__":
    main()

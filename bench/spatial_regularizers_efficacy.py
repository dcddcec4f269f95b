"""Test accuracy of a small residual CNN on scikit-learn's digits, upsampled to
32x32 with augmentation, regularized by nothing, Dropout, SpatialDropout2D,
DropBlock2D or stochastic depth; 3 seeds each.

The rates are fixed before any run, not tuned here (0.1 for the three dropouts,
DropBlock's block 3; stochastic depth up to 0.2 with the linear rule), so no
number below was chosen on the test digits it is quoted on. The training set is
small (300 digits) so that regularization has something to do.

    python bench/spatial_regularizers_efficacy.py                 # 3 seeds, 20 epochs, Adam(3e-3)
    python bench/spatial_regularizers_efficacy.py --seeds 1 --epochs 3
"""

import argparse
import statistics
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from spatial_regularizers_speed import REGULARIZERS  # noqa: E402
from spatial_regularizers_speed import residual_cnn  # noqa: E402

from kreg.datasets import load_digit_images  # noqa: E402

VARIANTS = ("none", *REGULARIZERS, "StochasticDepth")


def _data(train_size):
    (x_train, y_train), (x_test, y_test) = load_digit_images(train_size=train_size, seed=0)
    # 8x8 -> 32x32, nearest neighbour: the digits' pixels become 4x4 patches.
    upsample = lambda x: np.repeat(np.repeat(x, 4, axis=1), 4, axis=2).astype("float32")  # noqa: E731
    return upsample(x_train), y_train, upsample(x_test), y_test


def _model(variant, seed):
    keras.utils.set_random_seed(seed)
    stem = [
        keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed),
    ]
    regularizer = REGULARIZERS.get(variant)
    model = residual_cnn(
        regularizer, stochastic_depth=variant == "StochasticDepth", blocks=3, filters=16,
        input_shape=(32, 32, 1), stem=stem, pool=True,
    )  # fmt: skip
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=300)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = _data(args.train_size)
    results = {variant: [] for variant in VARIANTS}
    start = time.perf_counter()
    for seed in range(1, args.seeds + 1):
        for variant in VARIANTS:
            model = _model(variant, seed)
            model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, verbose=0)
            accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
            results[variant].append(accuracy)
            print(
                f"seed {seed} {variant:16s} test accuracy {accuracy:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(
        f"\n{args.train_size} training digits, {len(y_test)} test digits, {args.epochs} epochs, backend {keras.backend.backend()}"
    )
    print("| regularizer | mean | min | max |\n| --- | --- | --- | --- |")
    for variant, values in results.items():
        print(
            f"| {variant} | {statistics.mean(values):.3f} | {min(values):.3f} | {max(values):.3f} |"
        )


if __name__ == "__main__":
    main()

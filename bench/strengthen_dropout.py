"""Does OverfittingDetector(action="strengthen") improve the best validation loss over "warn"?

On runs that overfit (300 training digits, read as 8x8 sequences), the same model,
seed and data are trained twice for the same epochs: once with the detector only
warning, once raising every kreg dropout rate (ConsistentDropout,
WeightDropLSTM) by 0.1 each time it detects overfitting. Prints, per run, the
best validation loss and its epoch under each action, the rates at the end, and
the ratio of the best validation losses.

    python bench/strengthen_dropout.py --epochs 60 --seeds 2
"""

import argparse
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kreg.callbacks import OverfittingDetector  # noqa: E402
from kreg.datasets import load_digit_sequences  # noqa: E402
from kreg.layers import ConsistentDropout  # noqa: E402
from kreg.layers import WeightDropLSTM  # noqa: E402


def row_mlp():
    """A dense layer over each row, locked dropout across rows, then a classifier."""
    return keras.Sequential([
        keras.Input((8, 8)),
        keras.layers.Dense(256, activation="relu"),
        ConsistentDropout(0.1),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def weight_dropped_lstm():
    return keras.Sequential([
        keras.Input((8, 8)),
        ConsistentDropout(0.1),
        WeightDropLSTM(128, weight_dropout=0.1),
        keras.layers.Dense(10, activation="softmax"),
    ])


MODELS = {"row MLP + ConsistentDropout": row_mlp, "WeightDropLSTM + ConsistentDropout": weight_dropped_lstm}


def rates(model):
    return {layer.name: round(getattr(layer, "rate", getattr(layer, "weight_dropout", 0.0)), 2)
            for layer in model.layers if isinstance(layer, (ConsistentDropout, WeightDropLSTM))}


def train(builder, action, epochs, seed):
    (x_train, y_train), (x_val, y_val) = load_digit_sequences(train_size=300, seed=seed)
    keras.utils.set_random_seed(seed)
    model = builder()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    detector = OverfittingDetector(action=action, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=32,
            verbose=0, callbacks=[detector],
        ).history
    val = history["val_loss"]
    return min(val), int(np.argmin(val)), rates(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(f"backend={keras.backend.backend()}, {args.epochs} epochs, seeds 0-{args.seeds - 1}\n", flush=True)
    print("| model | seed | best val loss, warn (epoch) | best val loss, strengthen (epoch) | rates at the end | strengthen / warn |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = []
    for name, builder in MODELS.items():
        for seed in range(args.seeds):
            warn, warn_epoch, _ = train(builder, "warn", args.epochs, seed)
            strong, strong_epoch, final_rates = train(builder, "strengthen", args.epochs, seed)
            ratios.append(strong / warn)
            print(
                f"| {name} | {seed} | {warn:.4f} ({warn_epoch + 1}) | {strong:.4f} ({strong_epoch + 1}) | "
                f"{final_rates} | {strong / warn:.3f} |",
                flush=True,
            )
    print(f"\ngeometric mean of strengthen / warn: {float(np.exp(np.mean(np.log(ratios)))):.3f}")


if __name__ == "__main__":
    main()

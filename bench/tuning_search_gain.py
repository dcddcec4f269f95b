"""Does a small search over kreg's space beat the untuned default model?

Trains CNNHyperModel's default model (the middle of every range, batch norm) on
scikit-learn's digits (the shipped `load_digit_sequences` split), then runs a
keras-tuner RandomSearch of a few trials over the same hypermodel with the same
epochs, and prints both best validation accuracies and their difference. Every
model is seeded the same way (hypermodel seed), so the difference is the
regularization chosen, not the initialization.

    KERAS_BACKEND=tensorflow python bench/tuning_search_gain.py --trials 4 --epochs 8
"""

import argparse
import tempfile
import time

import _common  # noqa: E402, F401  (first: it quiets TensorFlow before Keras starts)

import keras  # noqa: E402
import keras_tuner  # noqa: E402

from kreg.datasets import load_digit_sequences  # noqa: E402
from kreg.tuning import CNNHyperModel  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=5, help="the oracle's seed (>= 1)")
    parser.add_argument("--train-size", type=int, default=400)
    args = parser.parse_args()
    print(
        f"backend={keras.backend.backend()} keras={keras.__version__} keras-tuner={keras_tuner.__version__}; "
        f"CNNHyperModel filters=(16, 32) dense=64; digits, {args.train_size} training; "
        f"RandomSearch {args.trials} trials x {args.epochs} epochs, oracle seed {args.seed}",
        flush=True,
    )
    (x, y), (x_val, y_val) = load_digit_sequences(train_size=args.train_size, seed=0)

    def hypermodel():
        return CNNHyperModel((8, 8), 10, filters=(16, 32), dense_units=64, seed=1)

    start = time.perf_counter()
    default = hypermodel()
    model = default.build(keras_tuner.HyperParameters())
    history = default.fit(
        None, model, x, y, validation_data=(x_val, y_val), epochs=args.epochs, verbose=0
    )
    default_score = max(history.history["val_accuracy"])
    print(f"untuned default: {default_score:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        tuner = keras_tuner.RandomSearch(
            hypermodel(),
            objective="val_accuracy",
            max_trials=args.trials,
            seed=args.seed,
            directory=directory,
            project_name="gain",
        )
        tuner.search(x, y, validation_data=(x_val, y_val), epochs=args.epochs, verbose=0)
        best = tuner.oracle.get_best_trials(1)[0]
        seconds = time.perf_counter() - start
    words = tuner.hypermodel.space.describe(best.hyperparameters)
    print(f"search best    : {best.score:.4f} ({words}; {seconds:.0f} s)")
    print(f"gain (search - default): {100 * (best.score - default_score):+.2f} points")


if __name__ == "__main__":
    main()

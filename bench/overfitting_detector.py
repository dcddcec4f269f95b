"""Does OverfittingDetector find the onset on real training runs, without false alarms?

Trains models that overfit and models that do not on scikit-learn's digits,
with the detector at its default settings, and prints, per run: the epoch of
minimal validation loss, the onset the detector reports, the epoch it detected
it, and whether the report is within 2 epochs of the minimum (or, for a run
whose validation loss never turns up, that it raised no alarm).

    python bench/overfitting_detector.py --epochs 60
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kreg.callbacks import OverfittingDetector  # noqa: E402
from kreg.datasets import load_digit_sequences  # noqa: E402


def mlp(dropout):
    layers = [keras.Input((64,)), keras.layers.Flatten()]
    for _ in range(2):
        layers.append(keras.layers.Dense(512, activation="relu"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers + [keras.layers.Dense(10, activation="softmax")])


def cnn(dropout):
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(128, activation="relu"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers + [keras.layers.Dense(10, activation="softmax")])


def logistic(_):
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])


# name: (model builder, dropout, training digits, learning rate)
RUNS = {
    "MLP 512x2, no dropout, 300 digits": (mlp, 0.0, 300, 1e-3),
    "MLP 512x2, dropout 0.5, 300 digits": (mlp, 0.5, 300, 1e-3),
    "CNN, no dropout, 300 digits": (cnn, 0.0, 300, 1e-3),
    "CNN, dropout 0.5, 300 digits": (cnn, 0.5, 300, 1e-3),
    "logistic regression, 1400 digits (control)": (logistic, 0.0, 1400, 3e-3),
}


def run(name, epochs, seed):
    builder, dropout, train_size, learning_rate = RUNS[name]
    (x_train, y_train), (x_val, y_val) = load_digit_sequences(train_size=train_size, seed=seed)
    shape = (8, 8, 1) if builder is cnn else (64,)
    x_train, x_val = x_train.reshape(-1, *shape), x_val.reshape(-1, *shape)
    keras.utils.set_random_seed(seed)
    model = builder(dropout)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy")
    detector = OverfittingDetector(action=lambda *_: None)
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=32,
        verbose=0, callbacks=[detector],
    ).history
    val = history["val_loss"]
    states = history["overfitting_state"]
    detected = states.index(1.0) if 1.0 in states else None
    return int(np.argmin(val)), detector.onset_epoch, detected, history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--save-histories", help="write every run's curves to this JSON file")
    args = parser.parse_args()
    histories = {}
    print(f"backend={keras.backend.backend()}, {args.epochs} epochs, seeds 0-{args.seeds - 1}", flush=True)
    print("\n| run | seed | min val loss epoch | onset reported | detected at | verdict |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in RUNS:
        for seed in range(args.seeds):
            minimum, onset, detected, history = run(name, args.epochs, seed)
            histories[f"{name} / seed {seed}"] = {key: history[key] for key in ("loss", "val_loss")}
            overfits = minimum < args.epochs - 3  # validation turned up before the end
            if onset is None:
                verdict = "missed" if overfits else "no alarm (correct)"
            elif not overfits:
                verdict = "false alarm"
            else:
                verdict = "within 2 epochs" if abs(onset - minimum) <= 2 else f"off by {onset - minimum}"
            show = lambda epoch: "-" if epoch is None else str(epoch + 1)  # noqa: E731
            print(
                f"| {name} | {seed} | {minimum + 1} | {show(onset)} | {show(detected)} | {verdict} |",
                flush=True,
            )
    if args.save_histories:
        with open(args.save_histories, "w") as file:
            json.dump(histories, file)


if __name__ == "__main__":
    main()

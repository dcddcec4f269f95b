"""Early, late and constant dropout on a model that underfits and on one that overfits.

Digits (300 to train, 500 to validate, 997 to test), Adam 1e-3, batch 32. Each
model's dropouts are Keras `Dropout` layers converted by `kreg.convert_dropouts`
and scheduled by `kreg.callbacks.DropoutSchedule`; the switch of "early" and
"late" is at a quarter of the epochs (Liu et al., 2023 switch early; the
fraction here is fixed beforehand, not tuned):

- underfitting: a small MLP (16 units, dropout 0.1 after the hidden layer)
  trained for `--short` epochs;
- overfitting: a wide MLP (512-512, dropout 0.5 after each) trained for
  `--long` epochs.

Reports test accuracy and NLL of the last epoch, per seed and the mean.

    python bench/dropout_schedule.py                 # 3 seeds, 8 and 40 epochs
    python bench/dropout_schedule.py --seeds 0 1 2 --short 8 --long 40
"""

import argparse

from _common import DigitData  # noqa: E402  (first: it quiets TensorFlow)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kreg  # noqa: E402
from kreg.callbacks import DropoutSchedule  # noqa: E402

SCHEDULES = ("constant", "early", "late")


def mlp(widths, rate):
    layers = [keras.Input((8, 8, 1)), keras.layers.Flatten()]
    for width in widths:
        layers += [keras.layers.Dense(width, activation="relu"), keras.layers.Dropout(rate)]
    model = kreg.convert_dropouts(
        keras.Sequential(layers + [keras.layers.Dense(10, activation="softmax")])
    )
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def run(data, seed, widths, rate, epochs, schedule):
    keras.utils.set_random_seed(seed)
    model = mlp(widths, rate)
    callbacks = (
        [] if schedule == "constant" else [DropoutSchedule(schedule, epochs=max(1, epochs // 4))]
    )
    model.fit(
        data.x_train, data.y_train, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks
    )
    result = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
    return result["accuracy"], result["loss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--long", type=int, default=40)
    args = parser.parse_args()
    data = DigitData()
    settings = [("underfitting: MLP 16, dropout 0.1", (16,), 0.1, args.short),
                ("overfitting: MLP 512-512, dropout 0.5", (512, 512), 0.5, args.long)]  # fmt: skip
    for title, widths, rate, epochs in settings:
        print(f"\n{title}, {epochs} epochs: test accuracy / NLL")
        print("| schedule | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
        print("| --- |" + " --- |" * (len(args.seeds) + 1))
        for schedule in SCHEDULES:
            scores = [run(data, seed, widths, rate, epochs, schedule) for seed in args.seeds]
            mean = np.mean(scores, axis=0)
            cells = " | ".join(f"{a:.3f} / {nll:.3f}" for a, nll in scores)
            print(f"| {schedule} | {cells} | {mean[0]:.3f} / {mean[1]:.3f} |", flush=True)


if __name__ == "__main__":
    main()

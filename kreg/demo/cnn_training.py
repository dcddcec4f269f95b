"""Demo: a small CNN on few digits, trained with and without kreg's callbacks.

Without them it trains every epoch and keeps the last weights, long after it has
begun to overfit. With them, `OverfittingDetector` reports where overfitting began
and `EarlyStoppingWithCheckpoint` stops, keeps the best epoch in an atomically
written checkpoint, and restores it. With `WeightAveraging` before them, every
validation, the judgement of the best epoch and the checkpoint are those of the
EMA of the weights, with batch norm statistics re-estimated for it.
"""

import dataclasses
import warnings

import keras
import numpy as np

from kreg.datasets import load_digit_images
from kreg.layers import AdaptiveBatchNormalization


@dataclasses.dataclass
class DigitData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digit_data(train_size=300, val_size=500):
    """Few training digits (so the CNN overfits), a validation and a test set."""
    (x_train, y_train), (x_rest, y_rest) = load_digit_images(train_size=train_size)
    return DigitData(
        x_train, y_train, x_rest[:val_size], y_rest[:val_size], x_rest[val_size:], y_rest[val_size:]
    )


def small_cnn(channels=(32, 64), dense=128):
    """Conv-BN-ReLU blocks with kreg's AdaptiveBatchNormalization, then a classifier.

    Batch norm momentum 0.9: with ten steps per epoch, the default 0.99 leaves the
    running statistics lagging for dozens of epochs, and the validation loss keeps
    falling for that reason alone, hiding the overfitting the demo shows.
    """
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in channels:
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = AdaptiveBatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(dense, activation="relu")(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _compiled_cnn(seed, quick):
    keras.utils.set_random_seed(seed)
    model = small_cnn(channels=(8, 16), dense=32) if quick else small_cnn()
    # A high learning rate: the CNN fits its 300 digits within a dozen epochs.
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def _test_accuracy(model, data):
    return float(model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)["accuracy"])


def train_with_and_without_callbacks(data, out, epochs, quick=False, log=print):
    """Returns `(model trained with kreg's callbacks, Markdown table, summary rows)`."""
    from kreg.callbacks import EarlyStoppingWithCheckpoint
    from kreg.callbacks import OverfittingDetector
    from kreg.callbacks import WeightAveraging
    from kreg.callbacks import plot_training_curves

    fit_options = dict(
        x=data.x_train,
        y=data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    log(f"  training without callbacks: {epochs} epochs, last weights kept")
    plain = _compiled_cnn(0, quick)
    plain_history = plain.fit(**fit_options).history

    log("  training with OverfittingDetector + EarlyStoppingWithCheckpoint")
    model = _compiled_cnn(0, quick)
    # Every argument at its default: the onset on the curves is what a user
    # gets without tuning the detector. Its default action warns; the demo
    # collects the warning and logs it instead.
    detector = OverfittingDetector()
    stopper = EarlyStoppingWithCheckpoint(
        str(out / "best_cnn.keras"), patience=max(2, epochs // 4), resume=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        history = model.fit(callbacks=[detector, stopper], **fit_options)
    for warning in caught:
        if "Overfitting detected" in str(warning.message):
            log(f"    {warning.message}")
    plot = plot_training_curves(
        history,
        out / "training_curves.png",
        onset_epoch=detector.onset_epoch,
        best_epoch=stopper.best_epoch,
        title=f"CNN on {len(data.x_train)} digits: overfitting onset and kept epoch",
        yscale="log",
    )
    log(f"    wrote {plot}")

    log("  training with WeightAveraging (EMA, statistics re-estimated) before the same callbacks")
    averaged = _compiled_cnn(0, quick)
    averaged_detector = OverfittingDetector()
    averaged_stopper = EarlyStoppingWithCheckpoint(
        str(out / "best_cnn_averaged.keras"), patience=max(2, epochs // 4), resume=False
    )
    averaging = WeightAveraging("ema", bn_data=data.x_train, bn_batch_size=len(data.x_train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the detector's warning was shown above
        averaged_history = averaged.fit(
            callbacks=[averaging, averaged_detector, averaged_stopper], **fit_options
        )

    def onset_of(found):
        return "not detected" if found.onset_epoch is None else f"epoch {found.onset_epoch + 1}"

    onset, averaged_onset = onset_of(detector), onset_of(averaged_detector)
    plain_accuracy, kreg_accuracy = _test_accuracy(plain, data), _test_accuracy(model, data)
    averaged_accuracy = _test_accuracy(averaged, data)
    table = (
        "| | without kreg | with kreg's callbacks | with kreg's callbacks and weight averaging |\n"
        "| --- | --- | --- | --- |\n"
        f"| epochs trained | {len(plain_history['loss'])} | {len(history.history['loss'])} "
        f"| {len(averaged_history.history['loss'])} |\n"
        f"| weights kept | last epoch | epoch {stopper.best_epoch + 1} (best val loss, restored) "
        f"| EMA at epoch {averaged_stopper.best_epoch + 1}, statistics re-estimated (best val "
        "loss, restored) |\n"
        f"| overfitting onset (default OverfittingDetector) | not watched | {onset} | "
        f"{averaged_onset} |\n"
        f"| val loss of the kept weights | {plain_history['val_loss'][-1]:.4f} | "
        f"{stopper.best:.4f} "
        f"| {averaged_stopper.best:.4f} |\n"
        f"| test accuracy | {plain_accuracy:.3f} | {kreg_accuracy:.3f} "
        f"| {averaged_accuracy:.3f} |\n"
        f"| stop reason | - | {stopper.stop_reason.value} | {averaged_stopper.stop_reason.value} |"
    )
    rows = [
        ("callbacks: test accuracy, last vs restored best epoch",
         f"{plain_accuracy:.3f} -> {kreg_accuracy:.3f}"),
        ("callbacks: overfitting onset / kept epoch", f"{onset} / {stopper.best_epoch + 1}"),
        ("callbacks + weight averaging (EMA): test accuracy / kept epoch",
         f"{averaged_accuracy:.3f} / {averaged_stopper.best_epoch + 1}"),
    ]  # fmt: skip
    return model, table, rows

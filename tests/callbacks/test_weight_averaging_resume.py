"""WeightAveraging with EarlyStoppingWithCheckpoint: a killed run resumes its average exactly."""

import keras
import numpy as np
import pytest
from keras import ops
from scripted import Crash
from scripted import CrashAt

from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks import WeightAveraging

EPOCHS = 5


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(1.0, 2.0, (32, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 32)


def _model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
    return model


def _averaging(method, x):
    if method == "ema":
        return WeightAveraging("ema", bn_data=x, momentum=0.8)
    if method == "ema-every-3":  # updates across the epochs' ends (4 steps each)
        return WeightAveraging("ema", bn_data=x, momentum=0.8, update_every_n_steps=3)
    return WeightAveraging(
        "swa", bn_data=x, start_epoch=1, swa_learning_rate=0.02, annealing_epochs=2
    )


def _fit(path, method, crash=None):
    """`crash`: `(epoch, "after")` kills the run once the epoch's backup is
    written, `(epoch, "before")` before it."""
    x, y = _data()
    model = _model()
    averaging = _averaging(method, x)
    stopper = EarlyStoppingWithCheckpoint(path, patience=EPOCHS)
    callbacks = [averaging, stopper]
    if crash is not None:
        epoch, when = crash
        callbacks.insert(1 if when == "before" else 2, CrashAt(epoch))
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        validation_data=(x[:16], y[:16]),
        callbacks=callbacks,
    )
    return model, averaging, stopper


def _assert_close(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("when", ["after", "before"])
@pytest.mark.parametrize("method", ["ema", "ema-every-3", "swa"])
def test_a_killed_run_resumes_the_average_exactly(tmp_path, method, when):
    reference, reference_averaging, reference_stopper = _fit(str(tmp_path / "a.keras"), method)
    path = str(tmp_path / "b.keras")
    with pytest.raises(Crash):
        _fit(path, method, crash=(2, when))
    model, averaging, stopper = _fit(path, method)
    assert stopper.resumed
    ours, theirs = averaging.get_state(), reference_averaging.get_state()
    assert ours["count"] == theirs["count"] > 0
    for key in ("values", "raw", "raw_statistics"):
        _assert_close(ours[key], theirs[key])
    _assert_close(model.get_weights(), reference.get_weights())
    assert stopper.best == pytest.approx(reference_stopper.best, abs=1e-6)
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.1)


def test_a_backup_with_an_average_is_not_resumed_without_the_averaging(tmp_path):
    path = str(tmp_path / "c.keras")
    with pytest.raises(Crash):
        _fit(path, "ema", crash=(1, "after"))
    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match="WeightAveraging"):
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=EPOCHS,
            verbose=0,
            validation_data=(x[:16], y[:16]),
            callbacks=[EarlyStoppingWithCheckpoint(path)],
        )


def test_a_backup_of_one_method_is_not_resumed_by_the_other(tmp_path):
    # An EMA's average continued as SWA's equal mean (or the reverse) would
    # weigh its updates wrongly without a word.
    path = str(tmp_path / "d.keras")
    with pytest.raises(Crash):
        _fit(path, "ema", crash=(2, "after"))
    with pytest.raises(ValueError, match="method='ema'.*method='swa'"):
        _fit(path, "swa")


def test_a_run_with_bfloat16_weights_resumes_exactly(tmp_path):
    # NumPy has no bfloat16 of its own: an `.npz` keeps such arrays as raw
    # bytes (dtype V2), which no variable takes back.
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")

    def fit(path, crash=False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, dtype="bfloat16"), keras.layers.Dense(1)]
        )
        model.compile("sgd", "mse")
        averaging = WeightAveraging("ema", momentum=0.8)
        callbacks = [averaging, EarlyStoppingWithCheckpoint(path, patience=EPOCHS)]
        callbacks += [CrashAt(2)] if crash else []
        model.fit(x, x[:, :1], batch_size=8, epochs=EPOCHS, shuffle=False, verbose=0,
                  validation_data=(x, x[:, :1]), callbacks=callbacks)  # fmt: skip
        return model, averaging

    reference, reference_averaging = fit(str(tmp_path / "a.keras"))
    with pytest.raises(Crash):
        fit(str(tmp_path / "b.keras"), crash=True)
    model, averaging = fit(str(tmp_path / "b.keras"))
    _assert_close(model.get_weights(), reference.get_weights())
    _assert_close(averaging.get_state()["values"], reference_averaging.get_state()["values"])

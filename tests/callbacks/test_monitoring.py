"""The monitored value and its direction, shared by every kreg callback."""

import keras
import numpy as np
import pytest

from kreg.callbacks.monitoring import all_finite
from kreg.callbacks.monitoring import monitor_direction
from kreg.callbacks.monitoring import monitored_scalar
from kreg.callbacks.monitoring import without_validation


def _compiled(metrics):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse", metrics=metrics)
    data = np.ones((4, 2), "float32"), np.ones((4, 2), "float32")
    model.fit(*data, validation_data=data, epochs=1, verbose=0)  # builds the metrics
    return model


def test_a_vector_valued_metric_counts_by_its_mean():
    assert monitored_scalar(np.array([0.2, 0.4], "float32")) == pytest.approx(0.3)
    assert monitored_scalar(0.25) == 0.25 and isinstance(monitored_scalar(np.float32(1)), float)
    assert all_finite([1.0, 2.0]) and not all_finite([1.0, np.nan]) and not all_finite(np.inf)


def test_epochs_without_validation_are_told_apart_only_for_validation_monitors():
    assert without_validation({"loss": 1.0}, ("val_loss",))
    assert not without_validation({"loss": 1.0, "val_loss": 1.0}, ("val_loss",))
    assert not without_validation({"loss": 1.0}, ("loss",))


def test_auto_reads_the_direction_the_compiled_metric_declares():
    # CosineSimilarity is maximized and its name says nothing; MAE is minimized.
    model = _compiled([keras.metrics.CosineSimilarity(name="cosine_similarity"), "mae"])
    assert monitor_direction(model, "val_cosine_similarity") == "max"
    assert monitor_direction(model, "cosine_similarity") == "max"
    assert monitor_direction(model, "val_mae") == "min"
    assert monitor_direction(model, "val_loss") == "min"
    # An explicit mode is taken as given, whatever the metric declares.
    assert monitor_direction(model, "val_cosine_similarity", "min") == "min"


def test_a_metric_that_declares_no_direction_asks_for_mode_rather_than_guessing():
    model = _compiled(["mae"])
    # "val_accuracy" would be "max" by its name; the model does not compile it.
    with pytest.raises(ValueError, match=r"`mode`.*mode='min' or mode='max'"):
        monitor_direction(model, "val_accuracy")
    with pytest.raises(ValueError, match="mode"):
        monitor_direction(None, "val_accuracy")
    assert monitor_direction(None, "val_loss") == "min"  # a loss needs no compiled metric
    with pytest.raises(ValueError, match="Received: mode='up'"):
        monitor_direction(model, "val_loss", "up")


def test_a_per_output_loss_is_minimized_without_mode(tmp_path):
    # Keras's own MonitorCallback cannot tell `val_b_loss` (a multi-output
    # model's per-output loss) and asks for `mode`; a loss never needs one.
    from kreg.callbacks import EarlyStoppingWithCheckpoint

    inputs = keras.Input((2,))
    model = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(1, name="a")(inputs),
            "b": keras.layers.Dense(1, name="b")(inputs),
        },
    )
    model.compile("sgd", {"a": "mse", "b": "mse"})
    x = np.ones((8, 2), "float32")
    y = {"a": np.zeros((8, 1), "float32"), "b": np.ones((8, 1), "float32")}
    stopper = EarlyStoppingWithCheckpoint(
        str(tmp_path / "m-{epoch}.keras"), monitor="val_b_loss", keep_best=2, patience=5
    )
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[stopper])
    assert monitor_direction(model, "val_b_loss") == "min"
    assert monitor_direction(model, "a_loss") == "min"
    assert stopper.kept[0]["value"] == min(e["value"] for e in stopper.kept)
    with pytest.raises(ValueError, match="mode"):
        monitor_direction(model, "val_c_loss")  # no such output: no guess from the name

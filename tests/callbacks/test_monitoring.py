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

"""convert_batch_norms: Keras's batch norms to AdaptiveBatchNormalization and back."""

import keras
import numpy as np
import pytest

import kreg
from batch_norm_testing import randomize_batch_norm
from kreg import AdaptiveBatchNormalization
from kreg import convert_batch_norms


def _randomized(model):
    for layer in kreg.model_graph.sublayers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            randomize_batch_norm(layer, seed=len(layer.name))
    return model


def _nested_model():
    inner_in = keras.Input((6,))
    inner = keras.Model(
        inner_in,
        keras.layers.BatchNormalization(name="inner_bn")(keras.layers.Dense(6)(inner_in)),
        name="inner",
    )
    shared = keras.layers.BatchNormalization(name="shared_bn")
    inputs = keras.Input((5,))
    a = shared(keras.layers.Dense(6)(inputs))
    b = shared(keras.layers.Dense(6)(inputs))
    x = keras.layers.Add()([inner(a), b])
    x = kreg.DenseBatchNorm(3, name="fused")(x)
    return _randomized(keras.Model(inputs, keras.layers.Dense(2)(x)))


def _batch_norm_types(model):
    return sorted(
        type(layer).__name__
        for layer in kreg.model_graph.sublayers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and "batch_norm" not in layer.path
    )


def test_nested_and_shared_batch_norms_are_converted_with_their_weights():
    model = _nested_model()
    weights = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).normal(2.0, 3.0, (16, 5)).astype("float32")
    adaptive, report = convert_batch_norms(model, return_report=True)
    assert sorted(report.converted) == ["inner_bn", "shared_bn"]
    assert [name for name, _ in report.left] == ["fused"]
    assert _batch_norm_types(adaptive) == ["AdaptiveBatchNormalization"] * 2
    assert _batch_norm_types(model) == ["BatchNormalization"] * 2  # the original is untouched
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(adaptive.predict(x, verbose=0), model.predict(x, verbose=0))
    # The shared layer is still one layer, called twice.
    assert adaptive.get_layer("shared_bn") is not model.get_layer("shared_bn")
    kreg.set_test_time_mode(adaptive, "batch")
    assert not np.allclose(adaptive.predict(x, verbose=0), model.predict(x, verbose=0))

    back, report = convert_batch_norms(adaptive, to="keras", return_report=True)
    assert _batch_norm_types(back) == ["BatchNormalization"] * 2
    assert sorted(name for name, _ in report.left) == [
        "fused",
        "inner_bn",
        "shared_bn",
    ]  # were in batch mode
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_sequential_model_and_its_weight_file_after_conversion(tmp_path):
    model = _randomized(
        keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(3),
                keras.layers.BatchNormalization(momentum=0.8),
            ]
        )
    )
    adaptive = convert_batch_norms(model)
    assert isinstance(adaptive, keras.Sequential)
    assert adaptive.layers[1].momentum == 0.8 and adaptive.layers[1].test_time_mode == "running"
    adaptive.save(tmp_path / "adaptive.keras")
    loaded = keras.saving.load_model(tmp_path / "adaptive.keras")
    x = np.ones((3, 4), "float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_keras_application_converts_and_predicts_the_same():
    model = _randomized(
        keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=4)
    )
    count = len(kreg.model_graph.batch_norm_layers(model))
    adaptive, report = convert_batch_norms(model, return_report=True)
    assert len(report.converted) == count > 10 and not report.left
    x = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        adaptive.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    kreg.adapt_batchnorm(adaptive, x, verbose=0)  # the documented flow


def test_other_batch_norm_subclasses_are_left_and_reported():
    class MyBatchNorm(keras.layers.BatchNormalization):
        pass

    model = keras.Sequential(
        [keras.Input((3,)), MyBatchNorm(name="mine"), AdaptiveBatchNormalization(name="ours")]
    )
    converted, report = convert_batch_norms(model, return_report=True)
    assert report.converted == [] and [name for name, _ in report.left] == ["mine"]
    assert "MyBatchNorm" in str(report)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`to`.*'adaptive', 'keras'"):
        convert_batch_norms(keras.Sequential([keras.Input((3,))]), to="torch")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    for not_convertible in (Subclassed(), "model.keras", keras.layers.BatchNormalization()):
        with pytest.raises(TypeError, match="argument `model`"):
            convert_batch_norms(not_convertible)


@keras.saving.register_keras_serializable(package="kreg_test_convert")
class _BlockWithItsOwnBatchNorm(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.BatchNormalization()

    def call(self, inputs, training=None):
        return self.norm(inputs, training=training)


def test_a_batch_norm_inside_a_custom_layer_is_reported_as_left():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="outer_bn")(inputs)
    model = keras.Model(inputs, _BlockWithItsOwnBatchNorm(name="block")(x))
    converted, report = convert_batch_norms(model, return_report=True)
    assert report.converted == ["outer_bn"]
    ((name, reason),) = report.left
    assert name.startswith("block/") and "not a Sequential or functional model" in reason
    assert type(converted.get_layer("block").norm) is keras.layers.BatchNormalization

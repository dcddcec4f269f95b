"""convert_dropouts: Keras's Dropout and SpatialDropout*D to AdjustableDropout."""

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg import AdjustableDropout
from kreg import convert_dropouts


def _model():
    inner_in = keras.Input((8, 8, 4))
    inner_out = keras.layers.SpatialDropout2D(0.2, name="inner_spatial")(
        keras.layers.Conv2D(4, 3, padding="same")(inner_in)
    )
    inner = keras.Model(inner_in, inner_out, name="inner")
    shared = keras.layers.Dropout(0.3, name="shared", seed=4)
    inputs = keras.Input((8, 8, 3))
    x = inner(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    x = keras.layers.Reshape((64, 4))(x)
    x = keras.layers.SpatialDropout1D(0.25, name="spatial1d")(x)
    x = keras.layers.Flatten()(x)
    a = shared(keras.layers.Dense(6)(x))
    b = shared(keras.layers.Dense(6)(x))
    x = keras.layers.Dropout(0.0, name="never")(keras.layers.Add()([a, b]))
    x = keras.layers.Dropout(0.5, noise_shape=(None, 1), name="shaped")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _layers(model):
    return {layer.name: layer for layer in kreg.model_graph.sublayers(model)}


def test_every_dropout_becomes_adjustable_with_identical_outputs():
    model = _model()
    converted, report = convert_dropouts(model, return_report=True)
    assert sorted(report.converted) == ["inner_spatial", "shaped", "shared", "spatial1d"]
    assert report.left == [("never", "rate 0: it never drops, so a schedule has no rate to scale")]
    layers = _layers(converted)
    for name, noise_shape, rate in [
        ("inner_spatial", (None, 1, 1, None), 0.2),
        ("spatial1d", (None, 1, None), 0.25),
        ("shared", None, 0.3),
        ("shaped", (None, 1), 0.5),
    ]:
        assert type(layers[name]) is AdjustableDropout, name
        assert layers[name].noise_shape == noise_shape and layers[name].rate == pytest.approx(
            rate
        ), name
    assert type(_layers(model)["shared"]) is keras.layers.Dropout, "the original is not changed"
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(converted(x, training=False)),
        ops.convert_to_numpy(model(x, training=False)),
    )


def test_training_outputs_match_keras_in_distribution():
    """The copy drops the same fraction, on the same mask shape, with the same scaling."""
    inputs = keras.Input((4, 4, 64))
    model = keras.Model(
        inputs, keras.layers.SpatialDropout2D(0.4, data_format="channels_first", seed=2)(inputs)
    )
    converted = convert_dropouts(model)
    x = np.ones((128, 4, 4, 64), "float32")
    for candidate in (model, converted):
        y = ops.convert_to_numpy(candidate(x, training=True))
        assert np.all(y == y[:, :, :1, :1]), "channels_first: one mask value per (sample, channel)"
        assert (y[:, :, 0, 0] != 0).mean() == pytest.approx(0.6, abs=0.03)
        assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.6)}


def test_the_converted_rate_is_scheduled_without_a_retrace():
    inputs = keras.Input((512,))
    dropped = keras.layers.Dropout(0.5, seed=1)(inputs)
    kept = keras.ops.mean(keras.ops.cast(dropped != 0, "float32"), axis=-1, keepdims=True)
    model = convert_dropouts(keras.Model(inputs, kept + 0.0 * keras.layers.Dense(1)(inputs)))
    model.compile(keras.optimizers.SGD(0.0), "mae")
    x, y = np.ones((32, 512), "float32"), np.zeros((32, 1), "float32")
    assert model.train_on_batch(x, y) == pytest.approx(0.5, abs=0.03)
    compiled = model.train_function
    model.layers[1].rate = 0.2
    assert model.train_on_batch(x, y) == pytest.approx(0.8, abs=0.03)
    assert model.train_function is compiled


def test_weights_are_copied_and_a_saved_copy_reloads(tmp_path):
    model = _model()
    converted = convert_dropouts(model)
    for mine, theirs in zip(converted.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    converted.save(tmp_path / "converted.keras")
    revived = keras.saving.load_model(tmp_path / "converted.keras")
    assert type(_layers(revived)["shaped"]) is AdjustableDropout


def test_a_model_without_dropout_is_a_report_not_an_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="no Dropout or SpatialDropout layer"):
        converted, report = convert_dropouts(model, return_report=True)
    assert report.converted == [] and report.left == []
    assert len(converted.layers) == 1


def test_a_dropout_inside_a_custom_layer_is_reported():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dropout = keras.layers.Dropout(0.3)

        def call(self, inputs):
            return self.dropout(inputs)

    model = keras.Sequential([keras.Input((3,)), Block(name="block")])
    with pytest.warns(UserWarning):
        _, report = convert_dropouts(model, return_report=True)
    assert len(report.left) == 1 and "not a Sequential or functional" in report.left[0][1]


def test_a_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="Sequential or functional"):
        convert_dropouts(Net())


def test_alpha_and_gaussian_dropout_are_reported_as_left():
    # Neither is a `Dropout` subclass; a report that lists nothing would say the
    # model has no dropout to schedule.
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.AlphaDropout(0.2, name="alpha"),
            keras.layers.GaussianDropout(0.3, name="gauss"),
        ]
    )
    with pytest.warns(UserWarning):
        _, report = convert_dropouts(model, return_report=True)
    assert [name for name, _ in report.left] == ["alpha", "gauss"]
    assert all("only Dropout and SpatialDropout" in reason for _, reason in report.left)

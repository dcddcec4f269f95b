"""kreg.adapt.input_moments: a batch norm's input moments from the layers before it."""

import keras
import numpy as np

from kreg.adapt.input_moments import input_moments_model
from kreg.adapt.input_moments import moments_of
from kreg.adapt.input_moments import same_moments


def _model(axis=-1):
    inputs = keras.Input((5, 5, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=axis, name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


def test_the_moments_are_those_of_the_batch_norms_input_per_channel():
    model = _model()
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 3)).astype("float32")
    features = keras.ops.convert_to_numpy(model.get_layer("conv")(x)).astype("float64")
    mean, variance, count = moments_of(input_moments_model(model, model.get_layer("bn")), x)
    np.testing.assert_allclose(mean, features.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, features.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert count == 6 * 3 * 3


def test_a_channel_axis_other_than_the_last_is_kept():
    model = _model(axis=1)  # the rows as channels
    x = np.random.default_rng(1).normal(size=(4, 5, 5, 3)).astype("float32")
    features = keras.ops.convert_to_numpy(model.get_layer("conv")(x)).astype("float64")
    mean, variance, count = moments_of(input_moments_model(model, model.get_layer("bn")), x)
    np.testing.assert_allclose(mean, features.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert mean.shape == (3,) and count == 4 * 3 * 4


def test_a_model_without_a_graph_gives_none():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    assert input_moments_model(model, model.bn) is None


def test_same_moments_allows_rounding_only():
    mean, variance = np.array([0.0, 10.0]), np.array([1.0, 4.0])
    assert same_moments((mean, variance, 8.0), (mean + 1e-5, variance * (1 + 1e-5), 8.0))
    assert not same_moments((mean, variance, 8.0), (mean + 0.1, variance, 8.0))
    assert not same_moments((mean, variance, 8.0), (mean, variance * 1.1, 8.0))
    assert not same_moments((mean, variance, 8.0), (mean, variance, 16.0))


def test_a_sequential_model_is_cut_too():
    # Keras answers a Sequential model's `input` only once it has been called
    # symbolically; its `inputs` are known from its `Input`.
    model = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    x = np.random.default_rng(2).normal(size=(4, 5, 5, 3)).astype("float32")
    moments_model = input_moments_model(model, model.get_layer("bn"))
    assert moments_model is not None
    features = keras.ops.convert_to_numpy(model.get_layer("conv")(x)).astype("float64")
    mean, _, count = moments_of(moments_model, x)
    np.testing.assert_allclose(mean, features.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    assert count == 4 * 3 * 3

import functools

import keras
import numpy as np
import pytest

import kreg
from batch_norm_testing import randomize_batch_norm
from conftest import float16_convolutions_run
from conftest import needs_channels_first_convolutions
from conftest import to_numpy as _numpy
from layer_test_case import run_layer_test

# (fused class, Keras layer, its arguments, input shape, output shape)
CASES = {
    "conv1d": (
        kreg.Conv1DBatchNorm,
        keras.layers.Conv1D,
        {"filters": 6, "kernel_size": 3},
        (4, 9, 3),
        (4, 7, 6),
    ),
    "conv1d_causal": (
        kreg.Conv1DBatchNorm,
        keras.layers.Conv1D,
        {"filters": 6, "kernel_size": 3, "padding": "causal", "dilation_rate": 2},
        (4, 9, 3),
        (4, 9, 6),
    ),
    "conv2d": (
        kreg.Conv2DBatchNorm,
        keras.layers.Conv2D,
        {"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"},
        (4, 8, 8, 3),
        (4, 4, 4, 6),
    ),
    "conv3d": (
        kreg.Conv3DBatchNorm,
        keras.layers.Conv3D,
        {"filters": 4, "kernel_size": 2},
        (2, 4, 4, 4, 3),
        (2, 3, 3, 3, 4),
    ),
    "depthwise": (
        kreg.DepthwiseConv2DBatchNorm,
        keras.layers.DepthwiseConv2D,
        {"kernel_size": 3, "depth_multiplier": 2},
        (4, 7, 7, 3),
        (4, 5, 5, 6),
    ),
    "dense": (kreg.DenseBatchNorm, keras.layers.Dense, {"units": 6}, (4, 5), (4, 6)),
    "dense_3d_input": (kreg.DenseBatchNorm, keras.layers.Dense, {"units": 6}, (4, 3, 5), (4, 3, 6)),
}
CHANNELS_FIRST = {
    "conv1d": ((4, 3, 9), (4, 6, 7)),
    "conv2d": ((4, 3, 8, 8), (4, 6, 4, 4)),
    "depthwise": ((4, 3, 7, 7), (4, 6, 5, 5)),
}


def _cases(channels_first=False):
    """Every case, and with channels_first where the backend's CPU kernels run it."""
    params = [pytest.param(*CASES[name], id=name) for name in CASES]
    if channels_first:
        for name, (input_shape, output_shape) in CHANNELS_FIRST.items():
            cls, base, kwargs, _, _ = CASES[name]
            params.append(
                pytest.param(
                    cls,
                    base,
                    {**kwargs, "data_format": "channels_first"},
                    input_shape,
                    output_shape,
                    id=f"{name}_channels_first",
                    marks=needs_channels_first_convolutions,
                )
            )
    return params


def _reference(base, kwargs, fused, x):
    """Keras's conv/dense (no bias) and BatchNormalization with the fused layer's weights."""
    bn_config = fused.batch_norm.get_config()
    bn_config.pop("name")
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            base(**kwargs, use_bias=False),
            keras.layers.BatchNormalization.from_config(bn_config),
        ]
    )
    model.set_weights(fused.get_weights())
    return model


@pytest.mark.parametrize(
    "cls, base, kwargs, input_shape, output_shape", _cases(channels_first=True)
)
def test_layer_contract(cls, base, kwargs, input_shape, output_shape, tmp_path):
    run_layer_test(
        functools.partial(cls, **kwargs, activation="relu"),
        input_shape=input_shape,
        expected_output_shape=output_shape,
        tmp_path=tmp_path,
        run_mixed_precision_check=float16_convolutions_run(kwargs.get("data_format")),
    )


@pytest.mark.parametrize(
    "cls, base, kwargs, input_shape, output_shape", _cases(channels_first=True)
)
@pytest.mark.parametrize("center, scale", [(True, True), (False, False)])
def test_inference_is_conv_then_batch_norm(
    cls, base, kwargs, input_shape, output_shape, center, scale
):
    x = np.random.default_rng(1).standard_normal(input_shape).astype("float32")
    fused = cls(**kwargs, center=center, scale=scale, activation="tanh")
    fused(x)
    randomize_batch_norm(fused.batch_norm)
    expected = np.tanh(_numpy(_reference(base, kwargs, fused, x)(x, training=False)))
    np.testing.assert_allclose(_numpy(fused(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(fused.to_plain_layer()(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, base, kwargs, input_shape, output_shape", _cases())
def test_training_uses_batch_statistics_and_updates_them_like_keras(
    cls, base, kwargs, input_shape, output_shape
):
    x = np.random.default_rng(2).standard_normal(input_shape).astype("float32")
    fused = cls(**kwargs, momentum=0.9)
    fused(x)
    reference = _reference(base, kwargs, fused, x)
    np.testing.assert_allclose(
        _numpy(fused(x, training=True)), _numpy(reference(x, training=True)), rtol=1e-5, atol=1e-5
    )
    bn, ref_bn = fused.batch_norm, reference.layers[-1]
    np.testing.assert_allclose(
        _numpy(bn.moving_mean), _numpy(ref_bn.moving_mean), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        _numpy(bn.moving_variance), _numpy(ref_bn.moving_variance), rtol=1e-5
    )
    assert not np.allclose(_numpy(bn.moving_mean), 0.0), "moving mean was not updated"


def _fit_both_and_compare_weights(fused, plain, x, y):
    plain.set_weights(fused.get_weights())
    for model in (fused, plain):
        model.compile(keras.optimizers.SGD(0.05), "mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for ours, theirs in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_fit_matches_conv_plus_batch_norm_step_for_step():
    x = np.random.default_rng(3).standard_normal((16, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(4).standard_normal((16, 6, 6, 4)).astype("float32")
    fused = keras.Sequential(
        [keras.Input((8, 8, 3)), kreg.Conv2DBatchNorm(4, 3, activation="relu")]
    )
    plain = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
        ]
    )
    _fit_both_and_compare_weights(fused, plain, x, y)
    np.testing.assert_allclose(
        fused.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )


def test_frozen_layer_runs_in_inference_mode_like_keras_batch_norm():
    x = np.random.default_rng(5).standard_normal((4, 5)).astype("float32")
    layer = kreg.DenseBatchNorm(3)
    layer(x)
    randomize_batch_norm(layer.batch_norm)
    layer.trainable = False
    mean_before = _numpy(layer.batch_norm.moving_mean).copy()
    np.testing.assert_allclose(
        _numpy(layer(x, training=True)), _numpy(layer(x, training=False)), rtol=1e-6
    )
    np.testing.assert_array_equal(_numpy(layer.batch_norm.moving_mean), mean_before)


def test_config_has_the_layer_and_batch_norm_arguments_but_no_bias():
    config = kreg.Conv2DBatchNorm(
        8, 3, strides=2, momentum=0.9, epsilon=1e-5, activation="relu"
    ).get_config()
    assert config["filters"] == 8 and config["strides"] == (2, 2)
    assert config["momentum"] == 0.9 and config["epsilon"] == 1e-5
    assert config["activation"] == "relu"
    assert not {"use_bias", "bias_initializer", "bias_regularizer", "bias_constraint"} & set(config)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: kreg.Conv2DBatchNorm(8, 3, use_bias=True),
            ValueError,
            r"no `use_bias`.*beta.*use_bias=True",
        ),
        (
            lambda: kreg.DenseBatchNorm(4, bias_initializer="ones"),
            ValueError,
            r"`bias_initializer`",
        ),
        (lambda: kreg.Conv2DBatchNorm(0, 3), ValueError, r"filters"),
        (lambda: kreg.DenseBatchNorm(4, activation="nope"), ValueError, r"nope"),
        (lambda: kreg.Conv1DBatchNorm(4, 3, paddin="same"), (TypeError, ValueError), r"paddin"),
        (lambda: kreg.Conv2DBatchNorm(4, 3, axis=1), ValueError, r"no `axis`.*data_format.*axis=1"),
        (
            lambda: kreg.DenseBatchNorm(4, renorm=True, renorm_clipping={"r": 1}),
            ValueError,
            r"renorm_clipping",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_every_batch_norm_argument_of_keras_is_taken_renorm_included():
    from kreg.layers.batch_norm_arguments import BATCH_NORM_ARGUMENTS

    assert {"renorm", "renorm_clipping", "renorm_momentum", "synchronized"} <= set(
        BATCH_NORM_ARGUMENTS
    )
    clipping = {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}
    layer = kreg.Conv2DBatchNorm(4, 3, renorm=True, renorm_clipping=clipping, renorm_momentum=0.9)
    config = layer.get_config()
    assert set(BATCH_NORM_ARGUMENTS) - {"axis"} <= set(config)
    assert (
        config["renorm"]
        and config["renorm_clipping"] == clipping
        and config["renorm_momentum"] == 0.9
    )
    assert layer.batch_norm.renorm and layer.batch_norm.renorm_clipping == clipping
    assert type(layer).from_config(config).get_config() == config


def test_renorm_trains_as_conv_plus_renorm_batch_norm_and_folds_at_inference():
    x = np.random.default_rng(6).normal(1.0, 2.0, (16, 8, 8, 3)).astype("float32")
    y = np.random.default_rng(7).standard_normal((16, 6, 6, 4)).astype("float32")
    renorm = dict(
        renorm=True, renorm_clipping={"rmax": 1.5, "rmin": 0.7, "dmax": 0.5}, momentum=0.8
    )
    fused = keras.Sequential([keras.Input((8, 8, 3)), kreg.Conv2DBatchNorm(4, 3, **renorm)])
    plain = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(**renorm),
        ]
    )
    _fit_both_and_compare_weights(fused, plain, x, y)
    np.testing.assert_allclose(
        fused.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-4, atol=1e-4
    )

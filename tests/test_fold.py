import json
import subprocess
import sys
import warnings
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from batch_norm_testing import randomize_batch_norm
from conftest import needs_channels_first_convolutions
from conftest import to_numpy as _numpy
from kreg import fold_batch_norms

# (Keras layer, its arguments, input shape without batch)
PAIRS = {
    "dense": (keras.layers.Dense, {"units": 6}, (5,)),
    "dense_3d": (keras.layers.Dense, {"units": 6}, (4, 5)),
    "conv1d": (keras.layers.Conv1D, {"filters": 6, "kernel_size": 3}, (9, 3)),
    "conv1d_causal": (
        keras.layers.Conv1D,
        {"filters": 6, "kernel_size": 3, "padding": "causal"},
        (9, 3),
    ),
    "conv2d": (
        keras.layers.Conv2D,
        {"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"},
        (8, 8, 3),
    ),
    "conv2d_grouped": (
        keras.layers.Conv2D,
        {"filters": 6, "kernel_size": 3, "groups": 3},
        (8, 8, 3),
    ),
    "conv3d": (keras.layers.Conv3D, {"filters": 4, "kernel_size": 2}, (4, 4, 4, 3)),
    "conv1d_transpose": (keras.layers.Conv1DTranspose, {"filters": 6, "kernel_size": 3}, (7, 3)),
    "conv2d_transpose": (
        keras.layers.Conv2DTranspose,
        {"filters": 6, "kernel_size": 3, "strides": 2},
        (5, 5, 3),
    ),
    "conv3d_transpose": (
        keras.layers.Conv3DTranspose,
        {"filters": 4, "kernel_size": 2},
        (3, 3, 3, 3),
    ),
    "depthwise1d": (
        keras.layers.DepthwiseConv1D,
        {"kernel_size": 3, "depth_multiplier": 2},
        (9, 3),
    ),
    "depthwise2d": (
        keras.layers.DepthwiseConv2D,
        {"kernel_size": 3, "depth_multiplier": 2},
        (7, 7, 3),
    ),
    "separable1d": (
        keras.layers.SeparableConv1D,
        {"filters": 6, "kernel_size": 3, "depth_multiplier": 2},
        (9, 3),
    ),
    "separable2d": (keras.layers.SeparableConv2D, {"filters": 6, "kernel_size": 3}, (7, 7, 3)),
}
CHANNELS_FIRST = ["conv1d", "conv2d", "conv2d_transpose", "depthwise2d", "separable2d"]


def _randomize_batch_norms(model, seed=0):
    batch_norms = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for index, layer in enumerate(batch_norms):
        randomize_batch_norm(layer, seed + index)  # each its own statistics


def _inputs(shape, batch=3, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype("float32")


def _all_layers(model):
    """Every layer of `model`, nested models' layers included, inputs excluded."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _layer_types(model):
    return [type(layer).__name__ for layer in _all_layers(model)]


def _pair_params():
    params = [pytest.param(*PAIRS[name], "channels_last", id=name) for name in PAIRS]
    for name in CHANNELS_FIRST:
        cls, kwargs, shape = PAIRS[name]
        shape = (shape[-1], *shape[:-1])
        params.append(
            pytest.param(
                cls,
                {**kwargs, "data_format": "channels_first"},
                shape,
                "channels_first",
                id=f"{name}_channels_first",
                marks=needs_channels_first_convolutions,
            )
        )
    return params


@pytest.mark.parametrize("cls, kwargs, shape, layout", _pair_params())
@pytest.mark.parametrize("use_bias", [True, False])
def test_every_pair_folds_to_the_same_outputs(cls, kwargs, shape, layout, use_bias):
    axis = 1 if layout == "channels_first" else -1
    model = keras.Sequential(
        [
            keras.Input(shape),
            cls(**kwargs, use_bias=use_bias),
            keras.layers.BatchNormalization(axis=axis),
            keras.layers.ReLU(),
        ]
    )
    _randomize_batch_norms(model)
    x = _inputs(shape)
    folded, report = fold_batch_norms(model, return_report=True)
    assert _layer_types(folded) == [cls.__name__, "ReLU"]
    assert len(report.folded) == 1 and not report.skipped
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["conv2d", "dense", "depthwise2d", "separable2d"])
def test_mixed_precision_folds_within_half_precision_error(name):
    """Under mixed_float16 both models compute in float16; the bound is float16's."""
    cls, kwargs, shape = PAIRS[name]
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([keras.Input(shape), cls(**kwargs), keras.layers.BatchNormalization()])
    _randomize_batch_norms(model)
    x = _inputs(shape)
    folded = fold_batch_norms(model)
    assert folded.layers[0].dtype_policy.name == "mixed_float16"
    expected = _numpy(ops.cast(model(x), "float32"))
    actual = _numpy(ops.cast(folded(x), "float32"))
    # float16 keeps ~3 significant digits; outputs here are O(1) to O(10).
    np.testing.assert_allclose(actual, expected, rtol=1e-2, atol=2e-2)


def _graph_model():
    """A functional model with foldable and unfoldable batch norms, shared layers and nesting."""
    inputs = keras.Input((8, 8, 3))
    stem = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="stem_conv"),
            keras.layers.BatchNormalization(name="stem_bn"),
            keras.layers.ReLU(),
        ],
        name="stem",
    )
    x = stem(inputs)
    shared_conv = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")
    shared_bn = keras.layers.BatchNormalization(name="shared_bn")
    a = shared_bn(shared_conv(x))
    b = shared_bn(shared_conv(keras.layers.ReLU(name="relu_b")(x)))  # same conv, same BN: sound
    two_consumers = keras.layers.Conv2D(4, 1, name="two_consumers")(a)
    kept_bn = keras.layers.BatchNormalization(name="kept_two_consumers")(two_consumers)
    relu_conv = keras.layers.Conv2D(4, 1, activation="relu", name="relu_conv")(b)
    kept_relu = keras.layers.BatchNormalization(name="kept_after_relu_conv")(relu_conv)
    wrong_axis = keras.layers.BatchNormalization(axis=1, name="kept_wrong_axis")(
        keras.layers.Conv2D(4, 1, name="conv_for_axis")(b)
    )
    fused = kreg.Conv2DBatchNorm(4, 1, activation="relu", name="fused")(b)
    outputs = keras.layers.Concatenate()([kept_bn, two_consumers, kept_relu, wrong_axis, fused])
    return keras.Model(inputs, outputs)


def test_functional_nested_and_shared_layers():
    model = _graph_model()
    _randomize_batch_norms(model)
    x = _inputs((8, 8, 3))
    with pytest.warns(UserWarning, match="left `kept_"):
        folded, report = fold_batch_norms(model, return_report=True)

    assert sorted(report.folded) == [("shared_conv", "shared_bn"), ("stem_conv", "stem_bn")]
    assert report.converted == ["fused"]
    reasons = dict(report.skipped)
    assert "also feeds" in reasons["kept_two_consumers"]
    assert "activation 'relu'" in reasons["kept_after_relu_conv"]
    assert "axis 1, not the channel axis 3" in reasons["kept_wrong_axis"]

    names = [layer.name for layer in _all_layers(folded)]
    assert "shared_bn" not in names and "stem_bn" not in names
    assert names.count("shared_conv") == 1, "a shared layer must stay shared"
    assert not any(isinstance(layer, kreg.Conv2DBatchNorm) for layer in _all_layers(folded))
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_batch_norm_shared_by_two_convs_folds_into_both():
    inputs = keras.Input((6, 6, 3))
    bn = keras.layers.BatchNormalization(name="bn")
    left = bn(keras.layers.Conv2D(4, 3, name="left")(inputs))
    right = bn(keras.layers.Conv2D(4, 3, name="right")(inputs))
    model = keras.Model(inputs, keras.layers.Add()([left, right]))
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert sorted(report.folded) == [("left", "bn"), ("right", "bn")]
    assert "BatchNormalization" not in _layer_types(folded)
    x = _inputs((6, 6, 3))
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_unfoldable_places_are_kept_with_a_reason():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.BatchNormalization(name="at_input"),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.BatchNormalization(name="after_relu"),
        ]
    )
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning):
        folded, report = fold_batch_norms(model, return_report=True)
    reasons = dict(report.skipped)
    assert "model input" in reasons["at_input"] and "padding='same'" in reasons["at_input"]
    assert "follows `re_lu` (ReLU)" in reasons["after_relu"]
    assert not report.folded
    x = _inputs((6, 6, 3))
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x)), rtol=1e-6)
    assert "kept" in str(report) and "after_relu" in str(report)


def test_original_model_is_untouched():
    model = keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    _randomize_batch_norms(model)
    before = [w.copy() for w in model.get_weights()]
    layers_before = list(model.layers)
    folded = fold_batch_norms(model)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert model.layers == layers_before
    assert not set(map(id, folded.layers)) & set(map(id, model.layers)), "the copy shares layers"


@pytest.mark.integration
def test_folded_model_saves_and_loads_with_plain_keras(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            kreg.Conv2DBatchNorm(4, 3, activation="relu"),
            kreg.DepthwiseConv2DBatchNorm(3),
            keras.layers.Flatten(),
            kreg.DenseBatchNorm(2),
        ]
    )
    _randomize_batch_norms(model)
    path = tmp_path / "folded.keras"
    fold_batch_norms(model).save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert "kreg" not in json.dumps(config), "the folded model still names kreg classes"

    x = _inputs((8, 8, 3))
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras;"
        f"m = keras.saving.load_model({str(path)!r});"
        f"np.save({str(tmp_path / 'y.npy')!r}, keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}))));"
        "assert 'kreg' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), _numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_bad_models_are_refused_with_the_reason():
    with pytest.raises(TypeError, match=r"`model`.*keras.Model.*str"):
        fold_batch_norms("model.keras")

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(self.conv(x))

    subclassed = Subclassed()
    subclassed(_inputs((6, 6, 3)))
    with pytest.raises(TypeError, match=r"`Subclassed` is a subclassed model.*Conv2DBatchNorm"):
        fold_batch_norms(subclassed)

    unbuilt = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match=r"not built"):
        fold_batch_norms(unbuilt)


def test_dict_outputs_and_a_conv_that_is_also_a_model_output():
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    bn = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, {"raw": conv, "normalized": bn})
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning):
        folded, report = fold_batch_norms(model, return_report=True)
    assert not report.folded and "also feeds" in dict(report.skipped)["bn"]
    x = _inputs((6, 6, 3))
    for key in ("raw", "normalized"):
        np.testing.assert_allclose(_numpy(folded(x)[key]), _numpy(model(x)[key]), rtol=1e-6)


# Never silently wrong: each case below was folded into wrong outputs before.


def _difference(a, b):
    return float(np.max(np.abs(_numpy(a) - _numpy(b))))


@pytest.mark.parametrize(
    "make",
    [lambda: keras.layers.Dense(6), lambda: keras.layers.Conv2D(6, 3)],
    ids=["dense", "conv2d"],
)
def test_lora_layers_fold_their_factor_too(make):
    model = keras.Sequential([keras.Input((8, 8, 3)), make(), keras.layers.BatchNormalization()])
    model.layers[0].enable_lora(2)
    factor = model.layers[0].lora_kernel_b  # zeros until trained: give it values
    factor.assign(np.random.default_rng(2).standard_normal(factor.shape))
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert len(report.folded) == 1 and folded.layers[0].lora_enabled
    x = _inputs((8, 8, 3))
    assert _difference(folded(x), model(x)) < 1e-4  # was 1.31: the factor was not scaled


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_quantized_layers_are_kept_with_fold_before_quantizing(mode):
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3),
        ]
    )
    _randomize_batch_norms(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns about layers it cannot quantize
        model.quantize(mode)
    with pytest.warns(UserWarning, match="fold before quantizing"):
        folded, report = fold_batch_norms(model, return_report=True)
    assert not report.folded and not report.forward_folded
    assert f"quantized ({mode})" in dict(report.skipped)["bn"]
    x = _inputs((5,))
    assert _difference(folded(x), model(x)) == 0.0  # was 1.08 for int8


def test_batch_norm_called_by_keyword_is_applied_once():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.BatchNormalization(name="bn")(
        inputs=keras.layers.Conv2D(4, 3, name="conv")(inputs)
    )
    model = keras.Model(inputs, outputs)
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert report.folded == [("conv", "bn")] and "BatchNormalization" not in _layer_types(folded)
    x = _inputs((8, 8, 3))
    assert _difference(folded(x), model(x)) < 1e-4  # was 2.82: applied twice


def test_training_true_and_explicit_masks_are_kept_propagated_masks_fold():
    tokens = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    masked = keras.layers.BatchNormalization(name="propagated")(
        keras.layers.Dense(4, name="dense")(embedded)
    )
    batch_stats = keras.layers.BatchNormalization(name="training")(
        keras.layers.Dense(4, name="d2")(embedded), training=True
    )
    own_mask = keras.layers.BatchNormalization(name="own_mask")(
        keras.layers.Dense(4, name="d3")(embedded), mask=keras.ops.ones((1, 5)) > 0
    )
    model = keras.Model(tokens, [masked, batch_stats, own_mask])
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning):
        folded, report = fold_batch_norms(model, return_report=True)
    assert report.folded == [("dense", "propagated")]
    reasons = dict(report.skipped)
    assert "training=True" in reasons["training"] and "mask of its own" in reasons["own_mask"]
    x = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 7]], dtype="int32")
    # As `predict` calls them: an eager call without `training` lets the inner
    # `training=True` leak into the layers Keras calls after it.
    for a, b in zip(folded(x, training=False), model(x, training=False)):
        assert _difference(a, b) < 1e-4


def test_subclasses_are_never_guessed():
    class ScaledConv(keras.layers.Conv2D):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    class OffsetNorm(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training) + 1.0

    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            ScaledConv(4, 3, name="scaled"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(4, 1, name="conv"),
            OffsetNorm(name="offset"),
        ]
    )
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning):
        folded, report = fold_batch_norms(model, return_report=True)
    reasons = dict(report.skipped)
    assert (
        "subclasses Conv2D" in reasons["bn"]
        and "subclasses BatchNormalization" in reasons["offset"]
    )
    x = _inputs((6, 6, 3))
    assert _difference(folded(x), model(x)) < 1e-4


def test_verify_reports_the_difference():
    model = keras.Sequential(
        [keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    _randomize_batch_norms(model)
    _, report = fold_batch_norms(model, return_report=True)
    assert 0.0 <= report.max_difference < report.tolerance
    largest = float(np.max(np.abs(_numpy(model(kreg.model_graph.random_inputs(model))))))
    assert report.tolerance == pytest.approx(np.sqrt(2.0**-23) * largest)  # float32's, relative
    assert "max |original - folded|" in str(report)
    _, unchecked = fold_batch_norms(model, return_report=True, verify=False)
    assert unchecked.max_difference is None
    with pytest.raises(TypeError, match="verify"):
        fold_batch_norms(model, verify="yes")


def test_verify_catches_a_broken_fold(monkeypatch):
    from kreg import fold as fold_module

    def wrong_bias(kernel, bias, scale, shift, output_axes=(-1,)):
        folded_kernel, folded_bias = fold_scale_and_shift(kernel, bias, scale, shift, output_axes)
        return folded_kernel, ops.add(folded_bias, 0.5)

    fold_scale_and_shift = fold_module.fold_scale_and_shift
    monkeypatch.setattr(fold_module, "fold_scale_and_shift", wrong_bias)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv2D(4, 3, name="good"),
            keras.layers.BatchNormalization(name="good_bn"),
        ]
    )
    _randomize_batch_norms(model)
    with pytest.raises(
        kreg.fold.FoldVerificationError, match=r"differ .* by up to .*conv \+ bn"
    ) as error:
        fold_batch_norms(model)
    assert error.value.max_difference > error.value.tolerance
    assert ("conv", "bn") in error.value.pairs


# Forward folds: a batch norm before the layer.


def _numpy_batch_norm(bn, x, axis=-1):
    weights = {w.name: _numpy(w).astype("float64") for w in bn.weights}
    shape = [1] * x.ndim
    shape[axis] = -1
    normalized = (x - weights["moving_mean"].reshape(shape)) / np.sqrt(
        weights["moving_variance"].reshape(shape) + bn.epsilon
    )
    return (normalized * weights["gamma"].reshape(shape) + weights["beta"].reshape(shape)).astype(
        "float32"
    )


FORWARD = {
    "dense": (keras.layers.Dense, {"units": 5}, (4, 6)),
    "conv1d_dilated": (
        keras.layers.Conv1D,
        {"filters": 5, "kernel_size": 3, "dilation_rate": 2},
        (11, 3),
    ),
    "conv2d_strided": (
        keras.layers.Conv2D,
        {"filters": 5, "kernel_size": 3, "strides": 2},
        (9, 9, 3),
    ),
    "conv3d": (keras.layers.Conv3D, {"filters": 2, "kernel_size": 2}, (4, 4, 4, 3)),
    "depthwise2d": (
        keras.layers.DepthwiseConv2D,
        {"kernel_size": 3, "depth_multiplier": 2},
        (7, 7, 3),
    ),
    "depthwise1d": (keras.layers.DepthwiseConv1D, {"kernel_size": 3}, (7, 3)),
}


@pytest.mark.parametrize("name", sorted(FORWARD))
@pytest.mark.parametrize("use_bias", [True, False])
def test_forward_fold_matches_numpy_batch_norm_then_layer(name, use_bias):
    cls, kwargs, shape = FORWARD[name]
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.BatchNormalization(name="bn"),
            cls(**kwargs, use_bias=use_bias, name="layer"),
        ]
    )
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert report.forward_folded == [("bn", "layer")] and not report.folded and not report.skipped
    assert _layer_types(folded) == [cls.__name__]
    x = _inputs(shape)
    expected = _numpy(model.layers[1](_numpy_batch_norm(model.layers[0], x)))
    np.testing.assert_allclose(_numpy(folded(x)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_forward_fold_is_refused_where_zero_padding_makes_it_inexact(padding):
    model = keras.Sequential(
        [
            keras.Input((9, 3)),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv1D(4, 3, padding=padding),
        ]
    )
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning, match="zero"):
        folded, report = fold_batch_norms(model, return_report=True)
    assert not report.forward_folded and f"padding={padding!r}" in dict(report.skipped)["bn"]
    assert _difference(folded(_inputs((9, 3))), model(_inputs((9, 3)))) == 0.0


def test_both_directions_into_one_layer_and_preactivation_blocks():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="stem_bn")(inputs)  # MobileNet-style stem: forward
    x = keras.layers.Conv2D(4, 3, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_out_bn")(x)  # backward into the same conv
    shortcut = x
    y = keras.layers.ReLU()(
        keras.layers.BatchNormalization(name="pre_bn")(x)
    )  # pre-activation: BN-ReLU-conv
    y = keras.layers.Conv2D(4, 3, padding="same", name="block_conv")(y)
    model = keras.Model(inputs, keras.layers.Add()([shortcut, y]))
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning, match="pre_bn"):
        folded, report = fold_batch_norms(model, return_report=True)
    assert report.forward_folded == [("stem_bn", "stem")] and report.folded == [
        ("stem", "stem_out_bn")
    ]
    assert [bn for bn, _ in report.skipped] == ["pre_bn"]
    assert "1 into the layer before, 1 into the layer after" in str(report)
    x = _inputs((8, 8, 3))
    assert _difference(folded(x), model(x)) < 1e-4


# Real models, small inputs; every family is in bench/fold_speed.py --real.


@pytest.mark.parametrize("name", ["MobileNetV3Small", "ConvNeXtTiny"])
def test_applications_with_operation_nodes_fold(name):
    """Tensor arithmetic inside the graph (`x + 3.0`, layer scale) broke the reader."""
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=4)
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert report.max_difference < report.tolerance
    batch_norms = len(kreg.model_graph.batch_norm_layers(model))
    assert len(report.folded) + len(report.forward_folded) + len(report.skipped) >= batch_norms
    assert len(kreg.model_graph.batch_norm_layers(folded)) == len(report.skipped)


@keras.saving.register_keras_serializable(package="kreg_test")
class _AlwaysNoisy(keras.layers.Layer):
    """Random at inference too, whatever `training` says."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator()  # a fresh seed per instance, so per copy

    def call(self, inputs):
        return inputs + keras.random.normal(ops.shape(inputs), seed=self.seed)


def test_random_inference_is_not_mistaken_for_a_wrong_fold():
    inputs = keras.Input((6,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(_AlwaysNoisy()(hidden)))
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning, match="could not verify"):
        folded, report = fold_batch_norms(model, return_report=True)
    assert len(report.folded) == 1 and report.max_difference is None


def test_verify_is_relative_to_small_outputs(monkeypatch):
    """Softmax over 1000 classes gives outputs ~1e-3: an absolute float32 bound
    (3.5e-4) passes a fold whose scale is 5% off (measured: 2.7e-4 apart)."""
    from kreg import fold as fold_module

    original = fold_module.fold_scale_and_shift

    def slightly_wrong(kernel, bias, scale, shift, output_axes=(-1,)):
        return original(kernel, bias, ops.multiply(scale, 1.05), shift, output_axes)

    monkeypatch.setattr(fold_module, "fold_scale_and_shift", slightly_wrong)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(1000, activation="softmax"),
        ]
    )
    _randomize_batch_norms(model)
    with pytest.raises(kreg.fold.FoldVerificationError, match=r"conv \+ bn"):
        fold_batch_norms(model)


def test_sequential_holding_a_nested_model_keeps_the_weights_of_layers_before_it():
    # The nested model is folded while the outer Sequential's list of copies is
    # still being made: the copies before it are not built yet and must still
    # receive their weights once the outer Sequential builds them.
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization()]
    )
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), inner, keras.layers.Dense(3)]
    )
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True, verify=False)
    assert len(report.folded) == 1
    x = _inputs((4,))
    assert _difference(folded(x), model(x)) < 1e-5  # was 3.45: the first Dense kept random weights


def test_lambda_layers_are_copied_with_their_function():
    # A Lambda's config holds a Python lambda as bytecode, which Keras refuses to
    # load in safe mode (and which would lose the lambda's module globals).
    inputs = keras.Input((4,))
    hidden = keras.layers.Lambda(lambda t: ops.square(t) + 1.0)(inputs)
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(5)(hidden))
    model = keras.Model(inputs, hidden)
    _randomize_batch_norms(model)
    folded, report = fold_batch_norms(model, return_report=True)
    assert len(report.folded) == 1
    x = _inputs((4,))
    assert _difference(folded(x), model(x)) < 1e-5


def test_verify_is_relative_to_each_output(monkeypatch):
    """A large regression head next to a softmax head: a tolerance taken from
    the largest output of all (~100s) passed a 5%-off fold of the small head."""
    from kreg import fold as fold_module

    original = fold_module.fold_scale_and_shift

    def slightly_wrong(kernel, bias, scale, shift, output_axes=(-1,)):
        return original(kernel, bias, ops.multiply(scale, 1.05), shift, output_axes)

    monkeypatch.setattr(fold_module, "fold_scale_and_shift", slightly_wrong)
    inputs = keras.Input((6, 6, 3))
    hidden = keras.layers.BatchNormalization(name="bn")(
        keras.layers.Conv2D(8, 3, name="conv")(inputs)
    )
    probabilities = keras.layers.Dense(1000, activation="softmax")(keras.layers.Flatten()(hidden))
    amount = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(50.0))(
        keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    )
    model = keras.Model(inputs, {"class": probabilities, "amount": amount})
    _randomize_batch_norms(model)
    with pytest.raises(kreg.fold.FoldVerificationError, match=r"conv \+ bn"):
        fold_batch_norms(model)

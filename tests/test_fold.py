import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from batch_norm_testing import randomize_batch_norm
from kreg import fold_batch_norms

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"

# (Keras layer, its arguments, input shape without batch)
PAIRS = {
    "dense": (keras.layers.Dense, {"units": 6}, (5,)),
    "dense_3d": (keras.layers.Dense, {"units": 6}, (4, 5)),
    "conv1d": (keras.layers.Conv1D, {"filters": 6, "kernel_size": 3}, (9, 3)),
    "conv1d_causal": (keras.layers.Conv1D, {"filters": 6, "kernel_size": 3, "padding": "causal"}, (9, 3)),
    "conv2d": (keras.layers.Conv2D, {"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"}, (8, 8, 3)),
    "conv2d_grouped": (keras.layers.Conv2D, {"filters": 6, "kernel_size": 3, "groups": 3}, (8, 8, 3)),
    "conv3d": (keras.layers.Conv3D, {"filters": 4, "kernel_size": 2}, (4, 4, 4, 3)),
    "conv1d_transpose": (keras.layers.Conv1DTranspose, {"filters": 6, "kernel_size": 3}, (7, 3)),
    "conv2d_transpose": (keras.layers.Conv2DTranspose, {"filters": 6, "kernel_size": 3, "strides": 2}, (5, 5, 3)),
    "conv3d_transpose": (keras.layers.Conv3DTranspose, {"filters": 4, "kernel_size": 2}, (3, 3, 3, 3)),
    "depthwise1d": (keras.layers.DepthwiseConv1D, {"kernel_size": 3, "depth_multiplier": 2}, (9, 3)),
    "depthwise2d": (keras.layers.DepthwiseConv2D, {"kernel_size": 3, "depth_multiplier": 2}, (7, 7, 3)),
    "separable1d": (keras.layers.SeparableConv1D, {"filters": 6, "kernel_size": 3, "depth_multiplier": 2}, (9, 3)),
    "separable2d": (keras.layers.SeparableConv2D, {"filters": 6, "kernel_size": 3}, (7, 7, 3)),
}
CHANNELS_FIRST = ["conv1d", "conv2d", "conv2d_transpose", "depthwise2d", "separable2d"]


def _numpy(x):
    return ops.convert_to_numpy(x)


def _randomize_batch_norms(model, seed=0):
    batch_norms = [l for l in _all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
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
                cls, {**kwargs, "data_format": "channels_first"}, shape, "channels_first",
                id=f"{name}_channels_first",
                marks=pytest.mark.skipif(ON_TENSORFLOW, reason="TensorFlow's CPU convolutions are channels_last only"),
            )
        )
    return params


@pytest.mark.parametrize("cls, kwargs, shape, layout", _pair_params())
@pytest.mark.parametrize("use_bias", [True, False])
def test_every_pair_folds_to_the_same_outputs(cls, kwargs, shape, layout, use_bias):
    axis = 1 if layout == "channels_first" else -1
    model = keras.Sequential(
        [keras.Input(shape), cls(**kwargs, use_bias=use_bias), keras.layers.BatchNormalization(axis=axis), keras.layers.ReLU()]
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
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same", name="stem_conv"),
         keras.layers.BatchNormalization(name="stem_bn"), keras.layers.ReLU()],
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
        [keras.Input((6, 6, 3)), keras.layers.BatchNormalization(name="at_input"),
         keras.layers.Conv2D(4, 3), keras.layers.ReLU(), keras.layers.BatchNormalization(name="after_relu")]
    )
    _randomize_batch_norms(model)
    with pytest.warns(UserWarning):
        folded, report = fold_batch_norms(model, return_report=True)
    reasons = dict(report.skipped)
    assert "model input" in reasons["at_input"]
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


def test_folded_model_saves_and_loads_with_plain_keras(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), kreg.Conv2DBatchNorm(4, 3, activation="relu"),
         kreg.DepthwiseConv2DBatchNorm(3), keras.layers.Flatten(), kreg.DenseBatchNorm(2)]
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

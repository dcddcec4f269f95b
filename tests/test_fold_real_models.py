"""`fold_batch_norms` and `diagnose` on keras-hub models (built from arguments, no
download), and a folded model through `model.export()` and the TFLite converter."""

import warnings

import keras
import numpy as np
import pytest

import kreg
from batch_norm_testing import randomize_batch_norm
from conftest import to_numpy as _numpy
from kreg import model_graph

keras_hub = pytest.importorskip("keras_hub")
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"


def _randomized(model):
    for index, layer in enumerate(model_graph.batch_norm_layers(model)):
        randomize_batch_norm(layer, index)
    return model


def _resnet_backbone(pre_activation=False):
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=pre_activation,
        image_shape=(32, 32, 3),
    )


def _fold_quietly(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kreg.fold_batch_norms(model, return_report=True)


@pytest.mark.parametrize("task", [False, True], ids=["backbone", "image_classifier"])
def test_keras_hub_resnet_folds_and_lints(task):
    """Their config holds constructor arguments, not layers: the graph is read live."""
    backbone = _resnet_backbone()
    model = (
        keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=3)
        if task
        else backbone
    )
    _randomized(model)
    assert "foldable-batch-norm" in {finding.rule for finding in kreg.diagnose(model)}
    folded, report = _fold_quietly(model)
    assert len(report.folded) == 6 and not report.skipped
    assert report.max_difference < report.tolerance
    assert not model_graph.batch_norm_layers(folded)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(model(x)), rtol=1e-4, atol=1e-4)


def test_keras_hub_pre_activation_blocks_keep_their_batch_norms_with_the_reason():
    model = _randomized(_resnet_backbone(pre_activation=True))
    folded, report = _fold_quietly(model)
    reasons = dict(report.skipped)
    assert (
        "stack0_block0_pre_activation_bn" in reasons
        and "not a conv or dense layer" in reasons["post_bn"]
    )
    assert report.folded and report.max_difference < report.tolerance


def test_folded_keras_hub_model_round_trips_through_keras_file(tmp_path):
    model = _randomized(
        keras_hub.models.ResNetImageClassifier(backbone=_resnet_backbone(), num_classes=3)
    )
    folded, _ = _fold_quietly(model)
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(model(x)), rtol=1e-4, atol=1e-4)


def _small_cnn():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.BatchNormalization()(inputs)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return _randomized(keras.Model(inputs, keras.layers.Dense(4)(x)))


@pytest.mark.skipif(not ON_TENSORFLOW, reason="SavedModel export and TFLite are TensorFlow's")
def test_folded_model_exports_and_converts_to_tflite(tmp_path):
    import tensorflow as tf

    model = _small_cnn()
    folded, report = _fold_quietly(model)
    assert len(report.folded) == 2 and len(report.forward_folded) == 1
    x = np.random.default_rng(2).standard_normal((1, 16, 16, 3)).astype("float32")
    expected = _numpy(model(x))

    folded.export(str(tmp_path / "saved_model"))  # SavedModel, serving endpoint
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))  # held: its variables live on it
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-4, atol=1e-4)

    converter = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter is None:
        pytest.skip("this TensorFlow build has no TFLite converter")
    flatbuffer = converter.from_saved_model(str(tmp_path / "saved_model")).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    tflite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite, expected, rtol=1e-4, atol=1e-4)
    # The converter folds a batch norm after a conv by itself, not the one on the
    # input (a MUL and an ADD before the first conv, measured on the original).
    operators = {op["op_name"] for op in interpreter._get_ops_details()}  # no public op listing
    assert not operators & {"MUL", "ADD"}, operators

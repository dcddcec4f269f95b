"""`add_stochastic_depth` on hand-built residual models and keras.applications / keras-hub ones."""

import keras
import numpy as np
import pytest

import kreg
from kreg import model_graph
from kreg.layers import StochasticDepth


def _residual_model(blocks=3, operation_add=False):
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    for _ in range(blocks):
        branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        branch = keras.layers.Conv2D(4, 3, padding="same")(branch)
        x = x + branch if operation_add else keras.layers.Add()([x, branch])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _stochastic_depth_layers(model):
    return [layer for layer in model_graph.sublayers(model) if isinstance(layer, StochasticDepth)]


def _assert_same_inference(original, copy):
    batch = model_graph.random_inputs(original, batch_size=2, seed=3)
    for expected, actual in zip(
        keras.tree.flatten(original(batch)), keras.tree.flatten(copy(batch))
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected)
        )


@pytest.mark.parametrize("operation_add", [False, True])
def test_every_residual_add_gets_the_linear_schedule_and_inference_is_identical(operation_add):
    model = _residual_model(operation_add=operation_add)
    weights = [w.copy() for w in model.get_weights()]
    copy, report = kreg.add_stochastic_depth(model, 0.3, return_report=True, seed=1)
    rates = [layer.rate for layer in _stochastic_depth_layers(copy)]
    np.testing.assert_allclose(rates, [0.1, 0.2, 0.3])
    assert [rate for _, _, rate in report.changed] == pytest.approx([0.1, 0.2, 0.3])
    assert report.left == [] and report.max_difference == 0.0
    _assert_same_inference(model, copy)
    # The original is untouched; the copy has its own weights.
    assert not _stochastic_depth_layers(model)
    for old, new in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    copy.compile("sgd", "mse")
    copy.fit(np.ones((4, 8, 8, 4), "float32"), np.ones((4, 2), "float32"), verbose=0)
    for old, new in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_rates_rise_with_depth_from_the_inputs_in_a_model_with_two_outputs():
    """An auxiliary head's block, second from the input, is scheduled by its depth
    (it got the rate of the fourth block: Keras orders a model's calls by their
    distance to an output, and the head's output is near)."""
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)

    def block(x, name):
        branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        return keras.layers.Add(name=name)([x, keras.layers.Conv2D(4, 3, padding="same")(branch)])

    first = block(x, "block1")
    auxiliary = block(first, "auxiliary_block")
    x = block(block(block(first, "block2"), "block3"), "block4")
    heads = [
        keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(t)) for t in (x, auxiliary)
    ]
    model = keras.Model(inputs, heads)
    _, report = kreg.add_stochastic_depth(model, 0.5, return_report=True)
    rates = {name: rate for name, _, rate in report.changed}
    assert rates["block1"] < rates["auxiliary_block"] < rates["block3"], str(report)
    assert [name for name, _, _ in report.changed][-2:] == ["block3", "block4"], str(report)


def test_the_copy_drops_whole_branches_in_training():
    copy = kreg.add_stochastic_depth(_residual_model(blocks=1), 0.5, seed=2)
    (layer,) = _stochastic_depth_layers(copy)
    probe = keras.Model(copy.inputs, [*layer.input, layer.output])
    x = np.random.default_rng(0).standard_normal((512, 8, 8, 4)).astype("float32")
    shortcut, branch, output = (keras.ops.convert_to_numpy(t) for t in probe(x, training=True))
    dropped = np.all(output == shortcut, axis=(1, 2, 3))
    np.testing.assert_allclose(
        output[~dropped], shortcut[~dropped] + 2.0 * branch[~dropped], rtol=1e-5, atol=1e-5
    )
    assert abs(dropped.mean() - 0.5) < 5 * np.sqrt(0.25 / 512), dropped.mean()


def test_adds_that_are_not_residual_are_left_with_the_reason():
    a, b = keras.Input((4,)), keras.Input((4,))
    wide = keras.Input((1,))
    summed = keras.layers.Add()([a, b])  # two inputs of equal depth
    broadcast = keras.layers.Add()([keras.layers.Dense(4)(summed), wide])  # shapes differ
    three = keras.layers.Add()([summed, broadcast, a])
    model = keras.Model([a, b, wide], three)
    with pytest.warns(UserWarning, match="no residual add"):
        copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True)
    reasons = dict(report.left)
    assert "equally deep" in reasons[summed._keras_history[0].name]
    assert "differ in shape" in reasons[broadcast._keras_history[0].name]
    assert "3 tensors" in reasons[three._keras_history[0].name]
    assert report.changed == [] and not _stochastic_depth_layers(copy)


def test_bad_models_and_rates():
    with pytest.raises(TypeError, match=r"`model`.*Sequential"):
        kreg.add_stochastic_depth(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 0.1)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match=r"`model`.*subclassed"):
        kreg.add_stochastic_depth(Subclassed(), 0.1)
    with pytest.raises(ValueError, match=r"`max_rate`.*\[0, 1\).*max_rate=1.5"):
        kreg.add_stochastic_depth(_residual_model(), 1.5)
    # verify="no" is truthy: it would verify, the opposite of what was asked.
    for argument in ("verify", "return_report"):
        with pytest.raises(ValueError, match=rf"`{argument}`.*True or False.*'no'"):
            kreg.add_stochastic_depth(_residual_model(), 0.1, **{argument: "no"})


def _application(name, **kwargs):
    return getattr(keras.applications, name)(
        weights=None, input_shape=(32, 32, 3), classes=10, **kwargs
    )


def _check_application(model, expected_changed, expected_dropped=0):
    copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True, seed=0)
    assert len(report.changed) == expected_changed, str(report)
    assert len(report.already_dropped) == expected_dropped, str(report)
    layers = _stochastic_depth_layers(copy)
    assert len(layers) == expected_changed + expected_dropped
    assert max(layer.rate for layer in layers) == pytest.approx(0.2)
    _assert_same_inference(model, copy)
    return copy, report


def test_resnet50_every_block_is_changed():
    # 16 bottleneck blocks: 4 with a projection shortcut, 12 with an identity one.
    _check_application(_application("ResNet50"), 16)


def test_efficientnet_drop_connect_is_rescheduled_never_stacked():
    model = _application("EfficientNetB0")
    copy, report = _check_application(model, 0, expected_dropped=9)
    dropouts = [
        layer
        for layer in copy.layers
        if isinstance(layer, keras.layers.Dropout) and layer.noise_shape
    ]
    assert dropouts == [], "the drop_connect dropouts must be replaced, not stacked"
    assert all(old > 0 for _, _, old, _ in report.already_dropped)


@pytest.mark.integration
@pytest.mark.parametrize("name, changed", [("ResNet50V2", 16), ("MobileNetV2", 10)])
def test_more_applications(name, changed):
    _check_application(_application(name), changed)


@pytest.mark.integration
def test_convnext_tiny_operation_adds_are_changed():
    # ConvNeXtTiny adds its blocks with `inputs + layer(x)`: operation nodes, not Add layers.
    _check_application(_application("ConvNeXtTiny", include_preprocessing=False), 18)


def test_convnext_stochastic_depth_layer_is_rescheduled_never_stacked():
    """ConvNeXt's own per-sample drop (what `drop_path_rate` > 0 puts before each
    add) is replaced by kreg's at the scheduled rate."""
    from keras.src.applications.convnext import StochasticDepth as ConvNeXtStochasticDepth

    inputs = keras.Input((8, 8, 4))
    x = inputs
    for rate in (0.05, 0.05):
        branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        branch = keras.layers.Conv2D(4, 1)(branch)
        x = x + ConvNeXtStochasticDepth(rate)(branch)
    model = keras.Model(inputs, x)
    copy, report = _check_application(model, 0, expected_dropped=2)
    assert [(old, new) for _, _, old, new in report.already_dropped] == [(0.05, 0.1), (0.05, 0.2)]
    assert not [layer for layer in copy.layers if isinstance(layer, ConvNeXtStochasticDepth)]


@pytest.mark.integration
def test_convnext_tiny_with_drop_path_rate_is_rescheduled_never_stacked():
    """The real ConvNeXt-T with `drop_path_rate` (only keras.applications'
    `ConvNeXt` takes it): its first block's rate is 0, so Keras puts a linear
    `Activation` there instead of its `StochasticDepth`."""
    from keras.src.applications.convnext import MODEL_CONFIGS
    from keras.src.applications.convnext import ConvNeXt

    tiny = MODEL_CONFIGS["tiny"]
    model = ConvNeXt(
        depths=tiny["depths"],
        projection_dims=tiny["projection_dims"],
        drop_path_rate=0.1,
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        include_preprocessing=False,
    )
    copy, report = _check_application(model, 1, expected_dropped=17)
    assert all(drop.endswith("_stochastic_depth") for _, drop, _, _ in report.already_dropped)
    assert not [
        layer
        for layer in copy.layers
        if type(layer).__name__ == "StochasticDepth" and not isinstance(layer, StochasticDepth)
    ]


def _keras_hub_resnet(keras_hub):
    """A small keras-hub ResNet backbone: 4 basic blocks."""
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(32, 32, 3),
    )


@pytest.mark.integration
def test_keras_hub_resnet():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = _keras_hub_resnet(keras_hub)
    _check_application(backbone, 4)


def test_a_per_sample_drop_that_also_feeds_another_layer_is_neither_removed_nor_stacked():
    inputs = keras.Input((8,))
    branch = keras.layers.Dense(8)(keras.layers.Dense(8)(inputs))
    dropped = keras.layers.Dropout(0.3, noise_shape=(None, 1), name="path_drop")(branch)
    side = keras.layers.Dense(2, name="side")(dropped)
    model = keras.Model(inputs, [keras.layers.Add()([inputs, dropped]), side])
    with pytest.warns(UserWarning, match="no residual add"):
        copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True)
    assert not report.changed and not report.already_dropped
    assert (
        len(report.left) == 1 and "path_drop" in report.left[0][1] and "side" in report.left[0][1]
    )
    assert "path_drop" in [layer.name for layer in copy.layers]  # the side path keeps its drop
    assert not _stochastic_depth_layers(copy)


def test_residual_adds_inside_nested_models_are_changed_as_fold_enters_them():
    """A functional model called inside another (a keras-hub task's backbone)
    is entered: its adds share the one schedule, the copy computes the same."""
    inner = _residual_model(blocks=2)
    inner = keras.Model(inner.inputs, inner.layers[-3].output, name="backbone")
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Add(name="outer_add")([x, keras.layers.Conv2D(4, 3, padding="same")(branch)])
    x = inner(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    copy, report = kreg.add_stochastic_depth(model, 0.3, return_report=True, seed=1)
    assert [(name, rate) for name, _, rate in report.changed] == [
        ("outer_add", pytest.approx(0.1)),
        (f"backbone/{inner.layers[4].name}", pytest.approx(0.2)),
        (f"backbone/{inner.layers[7].name}", pytest.approx(0.3)),
    ], str(report)
    assert report.left == [] and report.max_difference == 0.0
    assert len(_stochastic_depth_layers(copy)) == 3
    assert not _stochastic_depth_layers(model)
    _assert_same_inference(model, copy)


def test_layers_and_nested_models_shared_across_levels_stay_shared_in_the_copy():
    """A nested model called both in the outer model and inside another nested
    model, and a layer used both outside and inside a nested model (changed or
    not), are copied once: the copy has the original's tied weights, not two
    trainable copies."""
    inner = _residual_model(blocks=1)
    inner = keras.Model(inner.inputs, inner.layers[-3].output, name="inner")
    shared_conv = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    branch = shared_conv(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x))
    middle = keras.Model(inputs, inner(keras.layers.Add()([x, branch])), name="middle")
    outer_inputs = keras.Input((8, 8, 4))
    model = keras.Model(outer_inputs, middle(inner(shared_conv(outer_inputs))))
    copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True)
    assert len(report.changed) == 2 and report.max_difference == 0.0, str(report)
    assert len({id(w) for w in copy.weights}) == len({id(w) for w in model.weights})
    assert len({id(layer) for layer in _stochastic_depth_layers(copy)}) == 2
    _assert_same_inference(model, copy)
    # A nested model with no add to change, sharing a layer with the outer model.
    shared_dense = keras.layers.Dense(4, name="shared_dense")
    head_inputs = keras.Input((4,))
    head = keras.Model(head_inputs, keras.layers.Dense(4)(shared_dense(head_inputs)), name="head")
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4)(inputs)
    x = keras.layers.Add()([x, keras.layers.Dense(4)(keras.layers.Dense(4)(x))])
    model = keras.Model(inputs, head(shared_dense(x)))
    copy = kreg.add_stochastic_depth(model, 0.2)
    assert len({id(w) for w in copy.weights}) == len({id(w) for w in model.weights})
    _assert_same_inference(model, copy)


def _backbone_in_sequential():
    """The transfer-learning pattern: a functional residual backbone as the first
    layer of a Sequential classifier."""
    backbone = _residual_model(blocks=2)
    backbone = keras.Model(backbone.inputs, backbone.layers[-3].output, name="backbone")
    return keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            backbone,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ],
        name="classifier",
    )


def test_residual_adds_of_a_functional_model_inside_a_sequential_one_are_changed():
    """A Sequential model holding a functional backbone has residual adds: they
    are changed, whether the Sequential is the model or nested in it (they were
    neither changed nor reported, and the model was refused as "one chain
    without a shortcut")."""
    classifier = _backbone_in_sequential()
    inputs = keras.Input((8, 8, 4))
    wrapped = keras.Model(inputs, classifier(inputs))
    for model, prefix in [(classifier, "backbone/"), (wrapped, "classifier/backbone/")]:
        copy, report = kreg.add_stochastic_depth(model, 0.2, return_report=True)
        assert [name.startswith(prefix) for name, _, _ in report.changed] == [True, True], str(
            report
        )
        assert report.left == [] and report.max_difference == 0.0
        assert len(_stochastic_depth_layers(copy)) == 2 and not _stochastic_depth_layers(model)
        _assert_same_inference(model, copy)


@pytest.mark.integration
def test_keras_hub_image_classifier_backbone_is_entered():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = _keras_hub_resnet(keras_hub)
    classifier = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=10)
    copy, report = kreg.add_stochastic_depth(classifier, 0.2, return_report=True)
    assert len(report.changed) == 4 and report.left == [], str(report)
    assert all(name.startswith(f"{backbone.name}/") for name, _, _ in report.changed)
    _assert_same_inference(classifier, copy)

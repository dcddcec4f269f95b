"""`kreg.diagnose`: each rule fires on a model with its mistake and is silent on the
corrected model; clean reference models produce no warnings; model forms."""

import doctest
import importlib

import keras
import pytest

import kreg
from kreg.diagnose import Finding
from kreg.diagnose import diagnose
from kreg.rules import RULES

L = keras.layers
# `kreg.diagnose` is the function once kreg is imported; this is its module.
diagnose_module = importlib.import_module("kreg.diagnose")


def build(layers, input_shape, form="sequential"):
    """`layers` (a list of fresh layers) as a Sequential, functional or nested model.

    "nested": the first half of the layers is a Sequential model `block` inside
    a functional model, so a mistake can straddle the boundary.
    """
    if form == "sequential":
        return keras.Sequential([keras.Input(input_shape), *layers], name="model")
    inputs = keras.Input(input_shape)
    if form == "nested":
        half = max(1, len(layers) // 2)
        block = keras.Sequential([keras.Input(input_shape), *layers[:half]], name="block")
        layers = [block, *layers[half:]]
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="model")


def conv(filters=4, **kwargs):
    return L.Conv2D(filters, 3, padding="same", **kwargs)


def conv_block(**kwargs):
    """The canonical Conv -> BN -> ReLU block."""
    return [conv(use_bias=False, **kwargs), L.BatchNormalization(), L.ReLU()]


def lstm(**kwargs):
    return L.LSTM(4, return_sequences=True, **kwargs)


IMAGE = (8, 8, 3)
SEQUENCE = (5, 3)
FEATURES = (6,)

# rule id -> (input shape, layers with the mistake, corrected layers); each a
# function so that every build gets fresh layers.
CASES = {
    "early-conv-dropout": (
        IMAGE,
        lambda: [*conv_block(), L.Dropout(0.3), *conv_block(), L.Flatten(), L.Dense(2)],
        lambda: [*conv_block(), L.Dropout(0.1), *conv_block(), L.Flatten(), L.Dense(2)],
    ),
    "activation-before-batch-norm": (
        IMAGE,
        lambda: [conv(use_bias=False, activation="relu"), L.BatchNormalization(), L.Flatten()],
        lambda: [conv(use_bias=False), L.BatchNormalization(), L.ReLU(), L.Flatten()],
    ),
    "bias-before-batch-norm": (
        IMAGE,
        lambda: [conv(), L.BatchNormalization(), L.ReLU(), L.Flatten()],
        lambda: [conv(use_bias=False), L.BatchNormalization(), L.ReLU(), L.Flatten()],
    ),
    "dropout-on-output": (
        FEATURES,
        lambda: [L.Dense(8, activation="relu"), L.Dense(3, activation="softmax"), L.Dropout(0.3)],
        lambda: [L.Dense(8, activation="relu"), L.Dropout(0.3), L.Dense(3, activation="softmax")],
    ),
    "per-timestep-dropout-in-rnn": (
        SEQUENCE,
        lambda: [lstm(), L.Dropout(0.3), L.LSTM(4)],
        lambda: [lstm(), kreg.layers.ConsistentDropout(0.3), L.LSTM(4)],
    ),
    "dropout-rate-range": (
        FEATURES,
        lambda: [L.Dense(8, activation="relu"), L.Dropout(0.7), L.Dense(2)],
        lambda: [L.Dense(8, activation="relu"), L.Dropout(0.5), L.Dense(2)],
    ),
    "batch-norm-on-recurrent-state": (
        SEQUENCE,
        lambda: [lstm(), L.BatchNormalization(), L.LSTM(4)],
        lambda: [lstm(), L.LayerNormalization(), L.LSTM(4)],
    ),
    "missing-normalization": (
        IMAGE,
        lambda: [conv(activation="relu") for _ in range(4)] + [L.Flatten()],
        lambda: [layer for _ in range(4) for layer in conv_block()] + [L.Flatten()],
    ),
    "recurrent-dropout-unfused": (
        SEQUENCE,
        lambda: [L.LSTM(4, recurrent_dropout=0.2)],
        lambda: [kreg.layers.WeightDropLSTM(4, weight_dropout=0.2)],
    ),
    "foldable-batch-norm": (
        IMAGE,
        # (Two blocks, so that the nested form keeps a pair inside `block`.)
        lambda: [*conv_block(), *conv_block()],
        lambda: [kreg.layers.Conv2DBatchNorm(4, 3, padding="same", activation="relu")],
    ),
    "element-dropout-on-feature-map": (
        IMAGE,
        lambda: [*conv_block(), *conv_block(), L.Dropout(0.2), L.Flatten(), L.Dense(2)],
        lambda: [
            *conv_block(),
            *conv_block(),
            kreg.layers.DropBlock2D(0.2, 3),
            L.Flatten(),
            L.Dense(2),
        ],
    ),
    "dropout-before-batch-norm": (
        FEATURES,
        lambda: [L.Dense(8, use_bias=False), L.Dropout(0.3), L.BatchNormalization(), L.Dense(2)],
        lambda: [
            L.Dense(8, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.Dropout(0.3),
            L.Dense(2),
        ],
    ),
}

# More mistakes each rule must catch (Sequential only).
VARIANTS = [
    ("early-conv-dropout", IMAGE, lambda: [conv(), L.SpatialDropout2D(0.25), L.Flatten()]),
    ("activation-before-batch-norm", IMAGE, lambda: [conv(), L.ReLU(), L.BatchNormalization()]),
    (
        "activation-before-batch-norm",
        FEATURES,
        lambda: [L.Dense(4), L.Activation("tanh"), L.Dropout(0.1), L.BatchNormalization()],
    ),
    ("bias-before-batch-norm", FEATURES, lambda: [L.Dense(4), L.BatchNormalization()]),
    (
        "bias-before-batch-norm",
        IMAGE,
        lambda: [conv(data_format="channels_first"), L.BatchNormalization(axis=1)],
    ),
    # kreg's AdaptiveBatchNormalization is a batch norm to every rule.
    (
        "bias-before-batch-norm",
        FEATURES,
        lambda: [L.Dense(4), kreg.layers.AdaptiveBatchNormalization()],
    ),
    (
        "batch-norm-on-recurrent-state",
        SEQUENCE,
        lambda: [lstm(), kreg.layers.AdaptiveBatchNormalization()],
    ),
    ("dropout-on-output", FEATURES, lambda: [L.Dense(3), L.Dropout(0.3), L.Softmax()]),
    (
        "per-timestep-dropout-in-rnn",
        SEQUENCE,
        lambda: [L.Bidirectional(lstm()), L.GaussianDropout(0.2), L.GRU(4)],
    ),
    (
        "dropout-rate-range",
        IMAGE,
        lambda: [*conv_block(), *conv_block(), L.Dropout(0.5), L.Flatten(), L.Dense(2)],
    ),
    ("dropout-rate-range", SEQUENCE, lambda: [L.LSTM(4, dropout=0.6)]),
    (
        "recurrent-dropout-unfused",
        SEQUENCE,
        lambda: [L.Bidirectional(L.GRU(4, recurrent_dropout=0.1))],
    ),
    (
        "recurrent-dropout-unfused",
        SEQUENCE,
        lambda: [kreg.layers.WeightDropGRU(4, recurrent_dropout=0.1)],
    ),
    # kreg's AdjustableDropout (what kreg.convert_dropouts makes of Dropout) is a
    # dropout to every rule, and DropBlock's rescaled mask shifts a batch norm's
    # variance as dropout's does.
    (
        "element-dropout-on-feature-map",
        IMAGE,
        lambda: [
            *conv_block(),
            *conv_block(),
            kreg.layers.AdjustableDropout(0.2),
            L.Flatten(),
            L.Dense(2),
        ],
    ),
    (
        "dropout-before-batch-norm",
        FEATURES,
        lambda: [
            L.Dense(8, use_bias=False),
            kreg.layers.AdjustableDropout(0.3),
            L.BatchNormalization(),
            L.Dense(2),
        ],
    ),
    (
        "dropout-before-batch-norm",
        IMAGE,
        lambda: [
            *conv_block(),
            kreg.layers.DropBlock2D(0.1, 3),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(2),
        ],
    ),
    # DropBlock between an activation and its batch norm hides the activation no
    # more than Dropout does.
    (
        "activation-before-batch-norm",
        IMAGE,
        lambda: [conv(), L.ReLU(), kreg.layers.DropBlock2D(0.1, 3), L.BatchNormalization()],
    ),
]

# Correct models a rule must not flag, though they look close to its mistake.
NEAR_MISSES = [
    # Late conv dropout in its usual range; classifier dropout after Flatten.
    (
        "dropout-rate-range",
        IMAGE,
        lambda: [
            *conv_block(),
            *conv_block(),
            L.SpatialDropout2D(0.2),
            L.Flatten(),
            L.Dropout(0.5),
            L.Dense(2),
        ],
    ),
    ("early-conv-dropout", IMAGE, lambda: [conv(), L.Flatten(), L.Dropout(0.5), L.Dense(2)]),
    # A bias with an activation after it is not cancelled by the batch norm.
    (
        "bias-before-batch-norm",
        FEATURES,
        lambda: [L.Dense(4), L.Dense(4, activation="relu"), L.BatchNormalization(axis=-1)],
    ),
    # Batch norm over another axis than the channels does not cancel the bias.
    (
        "bias-before-batch-norm",
        IMAGE,
        lambda: [conv(data_format="channels_first"), L.BatchNormalization(axis=-1)],
    ),
    # Dropout that shares its mask over time is what the rule recommends.
    ("per-timestep-dropout-in-rnn", SEQUENCE, lambda: [lstm(), L.SpatialDropout1D(0.3), L.LSTM(4)]),
    ("per-timestep-dropout-in-rnn", SEQUENCE, lambda: [L.Dropout(0.3), L.LSTM(4)]),
    # The fused kernel is already lost to a non-default activation.
    (
        "recurrent-dropout-unfused",
        SEQUENCE,
        lambda: [L.LSTM(4, activation="relu", recurrent_dropout=0.2)],
    ),
    ("batch-norm-on-recurrent-state", SEQUENCE, lambda: [L.LSTM(4), L.BatchNormalization()]),
    ("missing-normalization", IMAGE, lambda: [conv() for _ in range(3)]),
    # Spatial AdjustableDropout (kreg.convert_dropouts' SpatialDropout2D) drops
    # whole channels: what element-dropout-on-feature-map recommends.
    (
        "element-dropout-on-feature-map",
        IMAGE,
        lambda: [
            *conv_block(),
            *conv_block(),
            kreg.layers.AdjustableDropout(0.2, noise_shape=(None, 1, 1, None)),
            L.Flatten(),
            L.Dense(2),
        ],
    ),
    (
        "activation-before-batch-norm",
        IMAGE,
        lambda: [kreg.layers.Conv2DBatchNorm(4, 3, activation="relu"), L.Flatten()],
    ),
]


def rules_found(model, **kwargs):
    return {finding.rule for finding in diagnose(model, **kwargs)}


@pytest.mark.parametrize("form", ["sequential", "functional", "nested"])
@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_on_mistake_and_not_on_fix(rule, form):
    input_shape, flawed, fixed = CASES[rule]
    assert rule in rules_found(build(flawed(), input_shape, form)), f"{rule} missed ({form})"
    assert rule not in rules_found(build(fixed(), input_shape, form)), f"{rule} on the fix ({form})"


@pytest.mark.parametrize("rule,input_shape,layers", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_rule_fires_on_variant(rule, input_shape, layers):
    assert rule in rules_found(build(layers(), input_shape))


@pytest.mark.parametrize("rule,input_shape,layers", NEAR_MISSES, ids=[v[0] for v in NEAR_MISSES])
def test_rule_silent_on_near_miss(rule, input_shape, layers):
    assert rule not in rules_found(build(layers(), input_shape))


def test_every_rule_has_a_case():
    tested = set(CASES) | {
        "batch-norm-small-batch",
        "training-true-call",
        "monte-carlo-dropout",
        "constant-stochastic-depth",
    }
    assert {rule.ID for rule in RULES} == tested


def test_bias_is_kept_where_the_layer_also_feeds_something_else():
    inputs = keras.Input(FEATURES)
    x = L.Dense(4)(inputs)
    model = keras.Model(inputs, L.Add()([L.BatchNormalization()(x), x]))
    assert "bias-before-batch-norm" not in rules_found(model)


def test_batch_norm_small_batch_fires_only_for_small_batches():
    def model():
        return build([*conv_block(), L.Flatten(), L.Dense(2)], IMAGE)

    assert "batch-norm-small-batch" in rules_found(model(), batch_size=4)
    assert "batch-norm-small-batch" not in rules_found(model(), batch_size=16)
    assert "batch-norm-small-batch" not in rules_found(model())  # batch size unknown
    fixed = build([conv(), L.GroupNormalization(2), L.ReLU(), L.Flatten()], IMAGE)
    assert "batch-norm-small-batch" not in rules_found(fixed, batch_size=4)
    fused = build([kreg.layers.Conv2DBatchNorm(4, 3), L.Flatten()], IMAGE)
    assert "batch-norm-small-batch" in rules_found(fused, batch_size=1)


def _functional_with_training(layer, training):
    inputs = keras.Input(FEATURES)
    x = L.Dense(4, use_bias=False)(inputs)
    x = layer(x, training=True) if training else layer(x)
    return keras.Model(inputs, L.Dense(1)(x))


@pytest.mark.parametrize(
    "rule,make_layer",
    [("training-true-call", L.BatchNormalization), ("monte-carlo-dropout", lambda: L.Dropout(0.3))],
)
def test_training_true_calls(rule, make_layer):
    findings = diagnose(_functional_with_training(make_layer(), training=True))
    assert rule in {f.rule for f in findings}
    assert rule not in rules_found(_functional_with_training(make_layer(), training=False))


def test_nested_model_called_with_training_true_is_an_error():
    block = keras.Sequential(
        [keras.Input(FEATURES), L.Dense(4), L.BatchNormalization()], name="block"
    )
    inputs = keras.Input(FEATURES)
    model = keras.Model(inputs, L.Dense(1)(block(inputs, training=True)))
    [finding] = [f for f in diagnose(model) if f.rule == "training-true-call"]
    assert finding.layers == ("block",) and finding.severity == "error"


def test_clean_reference_cnn_has_no_warnings():
    layers = [
        *conv_block(), L.MaxPooling2D(),
        *conv_block(), L.MaxPooling2D(),
        kreg.layers.Conv2DBatchNorm(8, 3, padding="same", activation="relu"),
        *conv_block(filters=8), L.SpatialDropout2D(0.2),
        L.GlobalAveragePooling2D(),
        L.Dense(16, use_bias=False), L.BatchNormalization(), L.ReLU(), L.Dropout(0.5),
        L.Dense(10, activation="softmax"),
    ]  # fmt: skip
    findings = diagnose(build(layers, (16, 16, 3)), batch_size=64)
    assert [f for f in findings if f.severity != "info"] == []
    assert [f.rule for f in findings] == ["foldable-batch-norm"]


def test_clean_reference_rnn_has_no_findings():
    layers = [
        L.Embedding(50, 8),
        kreg.layers.ConsistentDropout(0.2),
        kreg.layers.WeightDropLSTM(8, weight_dropout=0.5, return_sequences=True),
        L.LayerNormalization(),
        kreg.layers.ConsistentDropout(0.3),
        kreg.layers.WeightDropGRU(8, weight_dropout=0.3),
        L.Dense(8, activation="relu"),
        L.Dropout(0.3),
        L.Dense(1),
    ]
    assert diagnose(build(layers, (12,)), batch_size=4) == []


def test_paths_name_layers_inside_nested_models():
    inner = keras.Sequential(
        [keras.Input(IMAGE), conv(name="conv", activation="relu")], name="inner"
    )
    outer_in = keras.Input(IMAGE)
    outer = keras.Model(outer_in, inner(outer_in), name="outer")
    inputs = keras.Input(IMAGE)
    x = L.BatchNormalization(name="bn")(outer(inputs))
    model = keras.Model(inputs, L.Flatten()(x))
    [finding] = [f for f in diagnose(model) if f.rule == "activation-before-batch-norm"]
    assert finding.layers == ("outer/inner/conv", "bn")


def test_nested_model_called_twice_is_reported_once():
    block = keras.Sequential(
        [keras.Input(FEATURES), L.Dense(6), L.BatchNormalization()], name="block"
    )
    inputs = keras.Input(FEATURES)
    model = keras.Model(inputs, block(block(inputs)))
    findings = [f for f in diagnose(model) if f.rule == "bias-before-batch-norm"]
    assert [f.layers for f in findings] == [("block/dense", "block/batch_normalization")]


def test_findings_are_sorted_by_severity_and_describe_the_fix():
    layers = [
        conv(activation="relu"),
        L.BatchNormalization(),
        L.Flatten(),
        L.Dense(2),
        L.Dropout(0.5),
    ]
    findings = diagnose(build(layers, IMAGE))
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=diagnose_module.SEVERITIES.index)
    assert findings[0].rule == "dropout-on-output"
    for finding in findings:
        assert isinstance(finding, Finding) and finding.fix and finding.message
        assert finding.to_dict()["layers"] == list(finding.layers)
        assert finding.rule in str(finding)
    [bias] = [f for f in findings if f.rule == "activation-before-batch-norm"]
    assert "kreg.layers.Conv2DBatchNorm" in bias.fix


def test_unbuilt_sequential_model_is_checked():
    model = keras.Sequential([L.Dense(4), L.BatchNormalization(), L.Dense(2), L.Dropout(0.2)])
    assert {"bias-before-batch-norm", "dropout-on-output"} <= rules_found(model)


def test_bad_arguments():
    with pytest.raises(TypeError, match="`model`"):
        diagnose("model.keras")

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="subclassed"):
        diagnose(Subclassed())
    model = build([L.Dense(2)], FEATURES)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"batch_size"):
            diagnose(model, batch_size=bad)


def test_docstring_example():
    globs = {"keras": keras, "diagnose": diagnose}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(diagnose_module, globs=globs):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def test_exported_from_kreg():
    assert kreg.diagnose is diagnose and kreg.Finding is Finding


def test_operation_nodes_are_read_and_keras_ops_activations_recognized():
    inputs = keras.Input(IMAGE)
    h = keras.ops.relu(conv(use_bias=False)(inputs) * 2.0)  # an activation as a keras.ops call
    outputs = L.Flatten()(L.BatchNormalization(name="bn")(h))
    findings = diagnose(keras.Model(inputs, outputs))
    [finding] = [f for f in findings if f.rule == "activation-before-batch-norm"]
    assert finding.layers[1] == "bn" and "'relu'" in finding.message


@pytest.mark.parametrize("name", ["ConvNeXtTiny", "MobileNetV3Small"])
def test_applications_with_operation_nodes(name):
    """Both build their blocks with tensor arithmetic (`x + 3.0`, layer scale)."""
    model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=4)
    findings = diagnose(model)
    assert all(f.severity != "error" for f in findings), findings
    if name == "MobileNetV3Small":
        assert "foldable-batch-norm" in {f.rule for f in findings}


def _residual_stack(rates):
    inputs = keras.Input(IMAGE)
    x = L.Conv2D(4, 3, padding="same")(inputs)
    for rate in rates:
        branch = L.Conv2D(4, 3, padding="same", activation="relu")(x)
        x = kreg.layers.StochasticDepth(rate)([x, L.Conv2D(4, 3, padding="same")(branch)])
    return keras.Model(inputs, x)


def test_constant_stochastic_depth_suggests_the_linear_rule():
    assert "constant-stochastic-depth" in rules_found(_residual_stack([0.2] * 4))
    assert "constant-stochastic-depth" not in rules_found(
        _residual_stack(kreg.stochastic_depth_rates(4, 0.2))
    )
    assert "constant-stochastic-depth" not in rules_found(
        _residual_stack([0.2] * 3)
    )  # too shallow to matter
    model = kreg.add_stochastic_depth(_residual_stack([0.2] * 4), 0.2)  # what the fix says
    assert "constant-stochastic-depth" not in rules_found(model)

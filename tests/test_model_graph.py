"""`kreg.model_graph`: the one reader of a model's graph (fold, diagnose, adapt)."""

import keras
import numpy as np
import pytest

import kreg
from kreg import model_graph
from kreg.model_graph import INPUT
from kreg.model_graph import OUTPUT

L = keras.layers


def _paths(calls):
    return [getattr(call, "path", call) for call in calls]


def _operation_model():
    """Operation nodes (`h + 1.0`, `keras.ops.relu`), a keyword call, `training=`,
    a nested Sequential and dict outputs."""
    inputs = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(4, 3, name="conv")(inputs)
    h = L.BatchNormalization(name="bn")(inputs=h, training=False)
    h = keras.ops.relu(h + 1.0)
    block = keras.Sequential(
        [keras.Input((6, 6, 4)), L.Conv2D(2, 1, name="inner_conv"), L.ReLU(name="inner_relu")],
        name="block",
    )
    return keras.Model(inputs, {"features": block(h), "raw": h})


def test_one_level_graph_sees_operations_and_call_arguments():
    graph = model_graph.read_graph(_operation_model())
    by_path = {call.path: call for call in graph.calls}
    assert [call.path for call in graph.inputs] == ["image"] and graph.inputs[0].is_input
    bn = by_path["bn"]
    assert bn.keywords == {"training": False} and bn.tensor_keywords == ("inputs",)
    assert _paths(bn.inputs) == ["conv"]
    add = next(call for call in graph.calls if call.layer is None and "add" in call.path)
    assert _paths(add.inputs) == ["bn"]
    relu = add.consumers[0]
    assert relu.layer is None and type(relu.operation).__name__ == "Relu"
    assert set(_paths(relu.consumers)) == {"block", OUTPUT}
    assert [producer.path for producer, _ in graph.outputs] == ["block", relu.path]


def test_flat_graph_opens_nested_models_and_keeps_operations():
    graph = model_graph.flat_graph(_operation_model())
    by_path = {call.path: call for call in graph.calls}
    assert _paths(by_path["conv"].inputs) == [INPUT]
    assert _paths(by_path["block/inner_conv"].inputs) == [
        next(p for p in by_path if "relu" in p and "/" not in p)
    ]
    assert _paths(by_path["block/inner_relu"].consumers) == [OUTPUT]
    assert [prefix for prefix, _ in graph.graph_models] == ["", "block/"]
    order = [call.path for call in graph.calls]
    assert order.index("conv") < order.index("bn") < order.index("block/inner_conv")


def test_multi_output_nested_model_is_wired_by_output_index():
    inner_in = keras.Input((4,))
    inner = keras.Model(
        inner_in,
        [L.Dense(2, name="first")(inner_in), L.Dense(3, name="second")(inner_in)],
        name="inner",
    )
    inputs = keras.Input((4,))
    first, second = inner(inputs)
    model = keras.Model(
        inputs, [L.Dense(1, name="after_first")(first), L.Dense(1, name="after_second")(second)]
    )
    graph = model_graph.flat_graph(model)
    by_path = {call.path: call for call in graph.calls}
    assert _paths(by_path["after_first"].inputs) == ["inner/first"]
    assert _paths(by_path["after_second"].inputs) == ["inner/second"]


def test_rebuild_reproduces_the_model():
    model = _operation_model()
    rebuilt = model_graph.rebuild(
        model_graph.read_graph(model), lambda call, args, kwargs: call.operation(*args, **kwargs)
    )
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype("float32")
    expected, actual = model(x), rebuilt(x)
    assert set(actual) == {"features", "raw"}
    for key in expected:
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(actual[key]), keras.ops.convert_to_numpy(expected[key])
        )


def test_batch_norm_layers_finds_nested_shared_and_fused_ones():
    shared = L.BatchNormalization(name="shared")
    block = keras.Sequential(
        [keras.Input((4,)), L.Dense(4), L.BatchNormalization(name="nested")], name="block"
    )
    inputs = keras.Input((4,))
    h = shared(block(inputs))
    h = shared(kreg.layers.DenseBatchNorm(4, name="fused")(h))
    model = keras.Model(inputs, h)
    found = model_graph.batch_norm_layers(model)
    assert sorted(layer.name for layer in found) == ["batch_norm", "nested", "shared"]


def test_subclassed_models_are_refused_with_the_reason():
    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not model_graph.is_graph_model(Subclassed())
    with pytest.raises(TypeError, match="subclassed model"):
        model_graph.read_graph(Subclassed())

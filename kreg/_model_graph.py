"""The layer graph of a Sequential or functional model, read from its public config.

For each call of a layer (its node, keyed `(layer name, node index)`): the calls
whose outputs it consumes, and the calls that consume its output. `fold_batch_norms`
uses it to find conv/dense + batch norm pairs, `diagnose` to check layer order.
Reading `model.get_config()` rather than Keras's private node objects keeps this
working across Keras releases that keep the saving format.
"""

import dataclasses

import keras

from kreg import _keras_compat

MODEL_INPUT = "<model input>"
MODEL_OUTPUT = "<model output>"


@dataclasses.dataclass
class Graph:
    inputs: dict  # (layer name, node index) -> [(producer name, node index), ...]
    consumers: dict  # (layer name, node index) -> [(consumer name, node index), ...]
    # The names that stand for the model's inputs, in order: its InputLayers, or
    # MODEL_INPUT for a Sequential model (whose config has no InputLayer).
    input_names: list = dataclasses.field(default_factory=lambda: [MODEL_INPUT])
    # (layer name, node index) -> the keyword arguments of that call, e.g.
    # {"training": True}; a Sequential model's config records none.
    call_kwargs: dict = dataclasses.field(default_factory=dict)


def is_graph_model(model):
    """Whether `model`'s layer graph can be read (Sequential or functional)."""
    return isinstance(model, keras.Sequential) or _keras_compat.is_functional(model)


def read_graph(model):
    """The `Graph` of a Sequential or functional `model`."""
    return sequential_graph(model) if isinstance(model, keras.Sequential) else functional_graph(model)


def sequential_graph(model):
    names = [layer.name for layer in model.layers]
    inputs, consumers = {}, {}
    for i, name in enumerate(names):
        inputs[(name, 0)] = [(names[i - 1], 0) if i else (MODEL_INPUT, 0)]
        consumers[(name, 0)] = [(names[i + 1], 0)] if i + 1 < len(names) else [(MODEL_OUTPUT, 0)]
    return Graph(inputs, consumers)


def tensor_histories(structure):
    """Every `keras_history` (layer name, node index) in a serialized call."""
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            name, node, _ = structure["config"]["keras_history"]
            return [(name, node)]
        return [h for value in structure.values() for h in tensor_histories(value)]
    if isinstance(structure, (list, tuple)):
        return [h for value in structure for h in tensor_histories(value)]
    return []


def functional_graph(model):
    config = model.get_config()
    inputs = {}
    consumers = {}
    call_kwargs = {}
    for layer_config in config["layers"]:
        name = layer_config["name"]
        for node_index, node in enumerate(layer_config["inbound_nodes"]):
            producers = tensor_histories(node)
            inputs[(name, node_index)] = producers
            if isinstance(node, dict):
                call_kwargs[(name, node_index)] = node.get("kwargs", {})
            consumers.setdefault((name, node_index), [])
            for producer in producers:
                consumers.setdefault(producer, []).append((name, node_index))
    for name, node_index, _ in output_entries(config["output_layers"]):
        consumers.setdefault((name, node_index), []).append((MODEL_OUTPUT, 0))
    input_names = [name for name, _, _ in output_entries(config["input_layers"])]
    return Graph(inputs, consumers, input_names, call_kwargs)


def output_entries(output_layers):
    """The `[name, node, tensor]` triples of a (possibly nested) output spec."""
    if isinstance(output_layers, dict):
        output_layers = list(output_layers.values())
    if (
        isinstance(output_layers, (list, tuple))
        and len(output_layers) == 3
        and isinstance(output_layers[0], str)
        and isinstance(output_layers[1], int)
    ):
        return [output_layers]
    if not isinstance(output_layers, (list, tuple)):
        return []
    return [entry for item in output_layers for entry in output_entries(item)]

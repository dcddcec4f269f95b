"""A model's layer calls as one graph, with nested models opened up.

`ModelView` is what every rule reads. Each call of a layer is a `Node` whose
`inputs` and `outputs` are other nodes, `INPUT` (the model's input) or `OUTPUT`
(the model's output). A nested Sequential or functional model is not a node: its
inner layers are, wired to the layers around it, so that `Conv2D -> ReLU` at the
end of a nested block followed by a `BatchNormalization` outside it is seen as one
chain. Paths name layers from the model passed in: `"block/conv"` is the layer
`conv` of the nested model `block`.
"""

import dataclasses

from kreg import _model_graph

INPUT = "<model input>"
OUTPUT = "<model output>"


@dataclasses.dataclass(eq=False)
class Node:
    """One call of one layer."""

    path: str
    layer: object
    call_kwargs: dict
    inputs: list = dataclasses.field(default_factory=list)  # Node or INPUT
    outputs: list = dataclasses.field(default_factory=list)  # Node or OUTPUT


class ModelView:
    """The graph of `model` for the rules, and what was said about training.

    Attributes:
        model: the model being checked.
        batch_size: the training batch size, or `None` if not given.
        nodes: every layer call, inputs before the calls that consume them.
        graph_models: `(path prefix, model)` for `model` and each nested
            Sequential or functional model in it.
        training_calls: `(path, layer)` for each call made with `training=True`
            that the config records, nested models included.
    """

    def __init__(self, model, batch_size=None):
        self.model = model
        self.batch_size = batch_size
        self.graph_models = []
        self.training_calls = []
        self._leaves = {}  # key -> Node
        self._raw_inputs = {}  # key -> [key]; keys of nested models/inputs pass through
        self._sources = set()  # keys of the outermost model's inputs
        _, outputs = self._add_model(model, prefix="")
        self.nodes = self._connect(outputs)

    def _add_model(self, model, prefix):
        """Adds `model`'s calls under `prefix`; returns the keys standing for its
        inputs (each call of a nested model feeds them) and for its outputs."""
        self.graph_models.append((prefix, model))
        graph = _model_graph.read_graph(model)
        layers = {layer.name: layer for layer in model.layers}
        input_keys = [(prefix + name, 0) for name in graph.input_names]
        for key in input_keys:
            self._raw_inputs.setdefault(key, [])
            if not prefix:
                self._sources.add(key)
        nested = {}  # name -> (input keys, output keys) of a nested model
        for (name, node_index), producers in graph.inputs.items():
            key = (prefix + name, node_index)
            producer_keys = [(prefix + p, i) for p, i in producers]
            layer = layers[name]
            if graph.call_kwargs.get((name, node_index), {}).get("training") is True:
                self.training_calls.append((prefix + name, layer))
            if _model_graph.is_graph_model(layer):
                if name not in nested:
                    nested[name] = self._add_model(layer, prefix + name + "/")
                inner_inputs, inner_outputs = nested[name]
                self._feed(inner_inputs, producer_keys)
                self._raw_inputs[key] = list(inner_outputs)
            else:
                self._leaves[key] = Node(
                    prefix + name, layer, graph.call_kwargs.get((name, node_index), {})
                )
                self._raw_inputs[key] = producer_keys
        outputs = [
            (prefix + name, i)
            for (name, i), consumers in graph.consumers.items()
            if (_model_graph.MODEL_OUTPUT, 0) in consumers
        ]
        return input_keys, outputs

    def _feed(self, input_keys, producer_keys):
        """Wires a nested model's inputs to the keys that feed them, in order
        (every input to every producer if the counts differ)."""
        if len(input_keys) == len(producer_keys):
            for key, producer in zip(input_keys, producer_keys):
                self._raw_inputs[key].append(producer)
        else:
            for key in input_keys:
                self._raw_inputs[key].extend(producer_keys)

    def _resolve(self, key, seen=None):
        """The nodes (or `INPUT`) whose output `key` passes on."""
        if key in self._leaves:
            return [self._leaves[key]]
        if key in self._sources:
            return [INPUT]
        seen = set() if seen is None else seen
        if key in seen:
            return []
        seen.add(key)
        return [n for k in self._raw_inputs.get(key, []) for n in self._resolve(k, seen)]

    def _connect(self, output_keys):
        for key, node in self._leaves.items():
            for producer in self._resolve_all(self._raw_inputs[key]):
                node.inputs.append(producer)
                if producer is not INPUT:
                    producer.outputs.append(node)
        for producer in self._resolve_all(output_keys):
            if producer is not INPUT:
                producer.outputs.append(OUTPUT)
        return _topological(list(self._leaves.values()))

    def _resolve_all(self, keys):
        nodes = []
        for key in keys:
            for node in self._resolve(key):
                if not any(node is n for n in nodes):
                    nodes.append(node)
        return nodes

    # Walking the graph.

    def before(self, node, stop):
        """The nearest nodes upstream of `node` whose layer satisfies `stop`,
        walking through every other layer (`INPUT` where a path reaches it)."""
        return _nearest(node, stop, lambda n: n.inputs, INPUT)

    def after(self, node, stop):
        """The nearest nodes downstream of `node` whose layer satisfies `stop`,
        walking through every other layer (`OUTPUT` where a path reaches it)."""
        return _nearest(node, stop, lambda n: n.outputs, OUTPUT)

    def unique_layers(self, predicate):
        """`(path, layer)` of each layer satisfying `predicate`, once, in graph order."""
        seen, found = set(), []
        for node in self.nodes:
            if id(node.layer) not in seen and predicate(node.layer):
                seen.add(id(node.layer))
                found.append((node.path, node.layer))
        return found


def _nearest(node, stop, neighbours, end):
    found, seen, frontier = [], {id(node)}, list(neighbours(node))
    while frontier:
        current = frontier.pop(0)
        if current is end:
            if end not in found:
                found.append(end)
            continue
        if id(current) in seen:
            continue
        seen.add(id(current))
        if stop(current.layer):
            found.append(current)
        else:
            frontier.extend(neighbours(current))
    return found


def _topological(nodes):
    """`nodes` with every node after its inputs (ties keep the config's order).

    A nested model called on its own output (`block(block(x))`) makes a cycle,
    since its layers stand for all its calls; the cycle is entered at its first
    node in config order.
    """
    remaining = {id(n): sum(1 for i in n.inputs if i is not INPUT) for n in nodes}
    ready = [n for n in nodes if remaining[id(n)] == 0]
    ordered, placed = [], set()
    while len(ordered) < len(nodes):
        if not ready:
            ready = [next(n for n in nodes if id(n) not in placed)]
        node = ready.pop(0)
        if id(node) in placed:
            continue
        placed.add(id(node))
        ordered.append(node)
        for consumer in node.outputs:
            if consumer is OUTPUT:
                continue
            remaining[id(consumer)] -= 1
            if remaining[id(consumer)] == 0 and id(consumer) not in placed:
                ready.append(consumer)
    return ordered

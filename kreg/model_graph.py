"""The one reader of a Keras model's graph in kreg: who calls what, on which tensors.

`fold_batch_norms`, `diagnose` (and its rules) and `adapt_batchnorm` all walk a
model through this module, so a model is read one way in the whole package.

What it offers:

- `read_graph(model)`: one level of a Sequential or functional model as a
  `Graph` of `Call`s. A `Call` is one call of one operation: a layer, a nested
  model, or an operation that is not a layer (tensor arithmetic such as `h + 1.0`
  and `keras.ops` calls such as `keras.ops.relu(h)`, which Keras records as
  operation nodes in functional models, e.g. `keras.applications.ConvNeXtTiny`).
  Each call knows the calls whose outputs it consumes (with the output index),
  the calls that consume its outputs, its keyword arguments (`training=`,
  `mask=`) and whether its main input was passed by keyword (`bn(inputs=x)`).
- `flat_graph(model)`: the same with nested Sequential/functional models opened
  up into their calls, wired to the calls around them, and paths such as
  `"block/conv"`; what `diagnose`'s rules read.
- `rebuild(graph, call)`: a new functional model computed call by call by
  `call(original_call, args, kwargs)`, with the original's inputs and output
  structure; what `fold_batch_norms` writes its copy with.
- `sublayers(model)` / `batch_norm_layers(model)`: every layer reachable from a
  model, nested models, shared layers and the layers inside composite layers
  (kreg's fused `Conv2DBatchNorm`, ...) included, each once.
- `random_inputs(model)`: a random batch that fits the model's input spec.
- `is_graph_model(model)`: whether the graph can be read;
  `check_graph_model(model, reader, advice)` refuses any other model.

The graph is read from the model's live nodes, not from `model.get_config()`:
keras-hub backbones and task models are functional models whose config holds
their constructor arguments, not their layers. Keras keeps those nodes under
private names, reached only through `kreg._keras_compat` (with its test).
"""

import dataclasses

import keras

from kreg import _keras_compat

__all__ = [
    "INPUT",
    "OUTPUT",
    "Call",
    "Graph",
    "FlatGraph",
    "batch_norm_layers",
    "flat_graph",
    "is_graph_model",
    "random_inputs",
    "read_graph",
    "rebuild",
    "sublayers",
]


class _Marker:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return self.text


# Where a walk upstream reaches the model's inputs, or downstream its outputs.
INPUT = _Marker("<model input>")
OUTPUT = _Marker("<model output>")


@dataclasses.dataclass(eq=False)
class Call:
    """One call of one operation (layer, nested model or `keras.ops` function).

    Attributes:
        operation: what was called. A `keras.layers.Layer` (nested models
            included) or a `keras.Operation` that is not a layer.
        index: which call of `operation` this is (its node index).
        path: the operation's name, prefixed by the nested models it sits in
            (`"block/conv"`) in a `flat_graph`.
        sources: `(producer, output index)` for each tensor the call consumes,
            in argument order; `producer` is a `Call` or, in a `flat_graph`,
            `INPUT` for the outermost model's inputs.
        consumers: the calls that consume one of its outputs, and `OUTPUT` if
            one of its outputs is a model output.
        keywords: the call's keyword arguments that are not tensors
            (`{"training": True}`); a Sequential model records none.
        tensor_keywords: names of keyword arguments that carried tensors, e.g.
            `("inputs",)` for `bn(inputs=x)` or `("mask",)`.
        is_input: whether this is an `InputLayer` (the model's input).
        mask: `None` (called without a mask), `"propagated"` (the mask Keras
            attached to its input and passed on by itself, e.g. from
            `Embedding(mask_zero=True)`) or `"explicit"` (any other `mask=`).
    """

    operation: object
    index: int
    path: str
    sources: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)
    keywords: dict = dataclasses.field(default_factory=dict)
    tensor_keywords: tuple = ()
    is_input: bool = False
    mask: str = None
    # The Keras node (functional models) or `None` (Sequential), for `rebuild`.
    _node: object = dataclasses.field(default=None, repr=False)

    @property
    def layer(self):
        """The layer called, or `None` for an operation that is not a layer."""
        return self.operation if isinstance(self.operation, keras.layers.Layer) else None

    @property
    def name(self):
        return self.operation.name

    @property
    def inputs(self):
        """The distinct producers of the consumed tensors, in argument order."""
        found = []
        for producer, _ in self.sources:
            if not any(producer is seen for seen in found):
                found.append(producer)
        return found


@dataclasses.dataclass
class Graph:
    """One level of a model: its calls, inputs first.

    Attributes:
        model: the model read.
        calls: every call, each after the calls it consumes; the model's input
            calls (`is_input`) first.
        inputs: the input calls, in the order of `model.inputs`.
        outputs: `(call, output index)` for each model output, in flat order.
    """

    model: object
    calls: list
    inputs: list
    outputs: list

    def calls_of(self, operation):
        """Every call of `operation` in this graph."""
        return [call for call in self.calls if call.operation is operation]


def is_graph_model(model):
    """Whether `model`'s graph can be read: a Sequential or functional model
    (keras-hub's backbones and tasks are functional)."""
    return isinstance(model, keras.Sequential) or _keras_compat.is_functional(model)


def check_graph_model(model, reader, advice):
    """Raises a `TypeError` unless `model` is a Keras model whose graph can be read.

    `reader` names the function that reads it (`"diagnose"`), `advice` says what
    to do with a subclassed model instead.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            f"`keras.Model`. Received: model={model!r} of type {type(model).__name__}"
        )
    if not is_graph_model(model):
        raise TypeError(
            f"{reader} reads the layer graph of Sequential and functional models; "
            f"`{type(model).__name__}` is a subclassed model whose graph cannot be "
            f"read. {advice}"
        )


def read_graph(model):
    """The `Graph` of a Sequential or functional `model` (one level: a nested model
    is one call)."""
    if isinstance(model, keras.Sequential):
        return _sequential_graph(model)
    if _keras_compat.is_functional(model):
        return _functional_graph(model)
    raise TypeError(
        f"`{model.name}` ({type(model).__name__}) is a subclassed model: its graph is "
        "only known to its `call` method and cannot be read."
    )


def _sequential_graph(model):
    source = Call(_SequentialInput(model), 0, f"{model.name}_input", is_input=True)
    calls, previous = [source], source
    for layer in model.layers:
        call = Call(layer, 0, layer.name, sources=[(previous, 0)])
        previous.consumers.append(call)
        calls.append(call)
        previous = call
    previous.consumers.append(OUTPUT)
    return Graph(model, calls, [source], [(previous, 0)])


class _SequentialInput:
    """Stands for a Sequential model's input, which has no `InputLayer` in `layers`."""

    def __init__(self, model):
        self.name = f"{model.name}_input"


def _functional_graph(model):
    calls, by_node = [], {}
    for node in _keras_compat.functional_nodes(model):
        operation = _keras_compat.node_operation(node)
        index = _keras_compat.node_index(node)
        args, kwargs = _keras_compat.node_arguments(node)
        sources = []
        for tensor in keras.tree.flatten((args, kwargs)):
            producer = by_node.get(_producer_key(tensor)) if _is_tensor(tensor) else None
            if producer is not None:
                sources.append((producer, _keras_compat.tensor_history(tensor)[2]))
        call = Call(
            operation,
            index,
            operation.name,
            sources=sources,
            keywords={k: v for k, v in kwargs.items() if not _holds_tensor(v)},
            tensor_keywords=tuple(k for k, v in kwargs.items() if _holds_tensor(v)),
            is_input=_keras_compat.node_is_input(node),
            mask=_mask_kind(args, kwargs),
            _node=node,
        )
        for producer, _ in sources:
            if not any(consumer is call for consumer in producer.consumers):
                producer.consumers.append(call)
        by_node[(id(operation), index)] = call
        calls.append(call)
    inputs = [by_node[_producer_key(tensor)] for tensor in keras.tree.flatten(model.input)]
    outputs = []
    for tensor in keras.tree.flatten(model.output):
        producer = by_node[_producer_key(tensor)]
        outputs.append((producer, _keras_compat.tensor_history(tensor)[2]))
        if OUTPUT not in producer.consumers:
            producer.consumers.append(OUTPUT)
    return Graph(model, calls, inputs, outputs)


def _mask_kind(args, kwargs):
    mask = kwargs.get("mask")
    if mask is None:
        return None
    if args and _is_tensor(args[0]) and _keras_compat.propagated_mask(args[0]) is mask:
        return "propagated"
    return "explicit"


def _is_tensor(value):
    return isinstance(value, keras.KerasTensor)


def _producer_key(tensor):
    operation, node_index, _ = _keras_compat.tensor_history(tensor)
    return (id(operation), node_index)


def _holds_tensor(value):
    return any(_is_tensor(x) for x in keras.tree.flatten(value))


def call_arguments(call):
    """`(args, kwargs)` of a functional model's call, tensors as in the model."""
    return _keras_compat.node_arguments(call._node)


def rebuild(graph, call):
    """A new functional model that computes `graph` call by call.

    `call(original, args, kwargs)` returns the outputs of the original call
    `original` for `args` / `kwargs`: its original arguments with every tensor
    replaced by its new counterpart. The new model has fresh inputs of the
    original's shapes, dtypes and names and the original's input and output
    structure; it is a plain `keras.Model`, whatever the original's class.
    """
    model = graph.model
    if isinstance(model, keras.Sequential):
        # One chain from one input (its calls record no Keras node to read).
        tensor = model.inputs[0]
        x = inputs = keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=graph.inputs[0].name
        )
        for original in graph.calls[1:]:
            x = call(original, (x,), {})
        return keras.Model(inputs, x, name=model.name)
    new = {}  # (id(operation), node index, output index) -> new tensor

    def replace(value):
        if not _is_tensor(value):
            return value
        return new[(*_producer_key(value), _keras_compat.tensor_history(value)[2])]

    new_inputs = []
    for source, tensor in zip(graph.inputs, keras.tree.flatten(model.input)):
        new_input = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=source.name)
        new[(*_producer_key(tensor), 0)] = new_input
        new_inputs.append(new_input)
    for original in graph.calls:
        if original.is_input:
            continue
        args, kwargs = call_arguments(original)
        args = keras.tree.map_structure(replace, args)
        kwargs = keras.tree.map_structure(replace, kwargs)
        outputs = call(original, args, kwargs)
        for index, tensor in enumerate(keras.tree.flatten(outputs)):
            new[(id(original.operation), original.index, index)] = tensor
    outputs = [replace(tensor) for tensor in keras.tree.flatten(model.output)]
    return keras.Model(
        keras.tree.pack_sequence_as(model.input, new_inputs),
        keras.tree.pack_sequence_as(model.output, outputs),
        name=model.name,
    )


def random_inputs(model, batch_size=2, seed=0):
    """A random batch for `model`, in the structure of `model.input` (a dict for
    keras-hub models): standard normal floats, integers 0 or 1 (valid token ids
    and padding masks), booleans `True`; unknown sizes other than the batch are 32
    (large enough for the strides of the `keras.applications` families)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # A Sequential model has `inputs` but no `input` structure of its own.
    structure = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
    arrays = []
    for tensor in keras.tree.flatten(structure):
        shape = [batch_size] + [32 if size is None else size for size in tensor.shape[1:]]
        dtype = str(tensor.dtype)
        if dtype == "bool":
            arrays.append(np.ones(shape, dtype=bool))
        elif "int" in dtype:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            arrays.append(
                rng.standard_normal(shape).astype("float32" if dtype == "bfloat16" else dtype)
            )
    return keras.tree.pack_sequence_as(structure, arrays)


def sublayers(model):
    """Every layer inside `model`, each once: nested models and their layers,
    shared layers, and the layers inside composite layers (the batch norm inside
    kreg's `Conv2DBatchNorm`, a keras-hub block's layers)."""
    found, seen = [], set()
    for layer in _keras_compat.all_sublayers(model):
        if id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def batch_norm_layers(model):
    """Every `keras.layers.BatchNormalization` in `model` (subclasses such as
    kreg's `AdaptiveBatchNormalization` included), as `sublayers` finds them."""
    return [
        layer for layer in sublayers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]


class FlatGraph:
    """A model's calls as one graph, nested Sequential/functional models opened up.

    A nested model is not a call here: its inner calls are, wired to the calls
    around it, so that `Conv2D -> ReLU` at the end of a nested block followed by a
    `BatchNormalization` outside it is seen as one chain. Paths name operations
    from the model passed in: `"block/conv"` is `conv` of the nested model
    `block`. A nested model called several times is opened once; its inner calls
    stand for all its calls (their inputs are the union of the calls' inputs).

    Attributes:
        model: the model read.
        calls: every call of a layer or operation (no input calls), each after
            its producers where the graph allows.
        graph_models: `(path prefix, model)` for `model` and each nested
            Sequential or functional model in it.
        training_calls: `(path, operation)` of each call made with
            `training=True` (a nested model's call included). Sequential models
            record no call arguments, and `model(x, training=True)` at
            evaluation leaves no trace in the model.
    """

    def __init__(self, model):
        self.model = model
        self.graph_models = []
        self.training_calls = []
        self._graphs = {}  # id(model) -> Graph
        self._flat = {}  # id(original call) -> flat Call
        self._feeds = {}  # id(nested model's input call) -> [(outer call, output index)]
        top = self._open(model, prefix="")
        self._top_inputs = {id(call): position for position, call in enumerate(top.inputs)}
        for graph in self._graphs.values():
            for original in graph.calls:
                flat = self._flat.get(id(original))
                if flat is None:
                    continue
                for producer, index in original.sources:
                    for source in self._resolve(producer, index, set()):
                        flat.sources.append(source)
                        if source[0] is not INPUT and not any(
                            c is flat for c in source[0].consumers
                        ):
                            source[0].consumers.append(flat)
        for producer, index in top.outputs:
            for source, _ in self._resolve(producer, index, set()):
                if source is not INPUT and OUTPUT not in source.consumers:
                    source.consumers.append(OUTPUT)
        self.calls = _topological(list(self._flat.values()))

    def _open(self, model, prefix):
        graph = read_graph(model)
        self._graphs[id(model)] = graph
        self.graph_models.append((prefix, model))
        for original in graph.calls:
            if original.is_input:
                continue
            operation = original.operation
            if original.keywords.get("training") is True:
                self.training_calls.append((prefix + operation.name, operation))
            if is_graph_model(operation):
                inner = self._graphs.get(id(operation)) or self._open(
                    operation, prefix + operation.name + "/"
                )
                self._wire(inner.inputs, original.sources)
                continue
            self._flat[id(original)] = Call(
                operation,
                original.index,
                prefix + operation.name,
                keywords=original.keywords,
                tensor_keywords=original.tensor_keywords,
                mask=original.mask,
                _node=original._node,
            )
        return graph

    def _wire(self, inner_inputs, sources):
        """Feeds a nested model's input calls from the sources of one of its calls,
        in order (each from every source if the counts differ)."""
        for position, inner in enumerate(inner_inputs):
            feeds = self._feeds.setdefault(id(inner), [])
            feeds.extend([sources[position]] if len(sources) == len(inner_inputs) else sources)

    def _resolve(self, producer, index, seen):
        """`(flat call or INPUT, output index)` that output `index` of `producer` is."""
        if id(producer) in self._flat:
            return [(self._flat[id(producer)], index)]
        if (id(producer), index) in seen:
            return []
        seen.add((id(producer), index))
        if producer.is_input:
            if id(producer) in self._top_inputs:
                return [(INPUT, self._top_inputs[id(producer)])]
            feeds = self._feeds.get(id(producer), [])
            return [s for p, i in feeds for s in self._resolve(p, i, seen)]
        inner = self._graphs[id(producer.operation)]  # a nested model's call
        inner_producer, inner_index = inner.outputs[index]
        return self._resolve(inner_producer, inner_index, seen)

    # Walking the graph.

    def before(self, call, stop):
        """The nearest calls upstream of `call` whose operation satisfies `stop`,
        walking through every other call (`INPUT` where a path reaches it)."""
        return _nearest(call, stop, lambda c: c.inputs, INPUT)

    def after(self, call, stop):
        """The nearest calls downstream of `call` whose operation satisfies `stop`,
        walking through every other call (`OUTPUT` where a path reaches it)."""
        return _nearest(call, stop, lambda c: c.consumers, OUTPUT)

    def unique_layers(self, predicate):
        """`(path, layer)` of each layer satisfying `predicate`, once, in graph order."""
        seen, found = set(), []
        for call in self.calls:
            if call.layer is not None and id(call.layer) not in seen and predicate(call.layer):
                seen.add(id(call.layer))
                found.append((call.path, call.layer))
        return found


def flat_graph(model):
    """The `FlatGraph` of a Sequential or functional `model`."""
    return FlatGraph(model)


def _nearest(call, stop, neighbours, end):
    found, seen, frontier = [], {id(call)}, list(neighbours(call))
    while frontier:
        current = frontier.pop(0)
        if current is end:
            if end not in found:
                found.append(end)
            continue
        if id(current) in seen:
            continue
        seen.add(id(current))
        if stop(current.operation):
            found.append(current)
        else:
            frontier.extend(neighbours(current))
    return found


def _topological(calls):
    """`calls` with every call after its inputs (ties keep the reading order).

    A nested model called on its own output (`block(block(x))`) makes a cycle,
    since its calls stand for all its calls; the cycle is entered at its first
    call in reading order.
    """
    remaining = {id(c): sum(1 for i in c.inputs if i is not INPUT) for c in calls}
    ready = [c for c in calls if remaining[id(c)] == 0]
    ordered, placed = [], set()
    while len(ordered) < len(calls):
        if not ready:
            ready = [next(c for c in calls if id(c) not in placed)]
        call = ready.pop(0)
        if id(call) in placed:
            continue
        placed.add(id(call))
        ordered.append(call)
        for consumer in call.consumers:
            if consumer is OUTPUT:
                continue
            remaining[id(consumer)] -= 1
            if remaining[id(consumer)] == 0 and id(consumer) not in placed:
                ready.append(consumer)
    return ordered

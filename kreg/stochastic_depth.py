"""`add_stochastic_depth`: a copy of a residual model whose blocks drop their
branches per sample, at rates rising linearly with depth."""

import collections
import dataclasses
import warnings

import keras
import numpy as np

from kreg import _keras_compat
from kreg import model_graph
from kreg._validation import check_at_least
from kreg._validation import check_bool
from kreg._validation import check_rate
from kreg.layers.stochastic_depth import StochasticDepth

__all__ = ["StochasticDepthReport", "add_stochastic_depth", "stochastic_depth_rates"]


def stochastic_depth_rates(num_blocks, max_rate):
    """The linear rule of Huang et al. (2016): block `l` of `L` drops its branch
    with probability `l / L * max_rate`, so the last block drops at `max_rate`.

    Args:
        num_blocks: Integer >= 1, the number of residual blocks `L`.
        max_rate: Float in `[0, 1)`, the rate of the last block (the paper
            uses 0.5 for a 110-layer ResNet; ConvNeXt-T 0.1, EfficientNet-B0 0.2).

    Returns:
        A list of `num_blocks` floats, from `max_rate / L` up to `max_rate`.

    Example:

    >>> stochastic_depth_rates(4, 0.2)
    [0.05, 0.1, 0.15, 0.2]

    Reference:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382), deep networks
          with stochastic depth (section 3, the linear decay rule).
    """
    num_blocks = check_at_least("num_blocks", num_blocks, integer=True, minimum=1)
    max_rate = check_rate("max_rate", max_rate)
    return [round(max_rate * (block + 1) / num_blocks, 12) for block in range(num_blocks)]


@dataclasses.dataclass
class StochasticDepthReport:
    """What `add_stochastic_depth` did, add by add.

    Attributes:
        changed: `(add, branch, rate)` for each residual add now a
            `StochasticDepth` at `rate`; `branch` names the layer or operation
            whose output is the dropped branch.
        already_dropped: `(add, drop layer, old rate, new rate)` for each add whose
            branch already went through a per-sample drop (EfficientNet's
            `drop_connect_rate` dropout, ConvNeXt's `StochasticDepth`, kreg's own
            `StochasticDepth`): that drop is replaced by kreg's `StochasticDepth`
            at the scheduled rate, never stacked with a second one.
        left: `(add, reason)` for each add left as it is.
        max_difference: the largest absolute difference between the inference
            outputs of the original and the copy on one random batch (`None`
            if not verified; 0 when they are identical, as they should be).

    Example:

    >>> inputs = keras.Input((8, 8, 4))
    >>> branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    >>> branch = keras.layers.Conv2D(4, 3, padding="same", name="conv")(branch)
    >>> outputs = keras.layers.Add(name="add")([inputs, branch])
    >>> model = keras.Model(inputs, outputs)
    >>> _, report = add_stochastic_depth(model, 0.2, return_report=True)
    >>> report.changed, report.already_dropped, report.left
    ([('add', 'conv', 0.2)], [], [])
    >>> report.max_difference
    0.0
    """

    changed: list = dataclasses.field(default_factory=list)
    already_dropped: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)
    max_difference: float = None

    def __str__(self):
        lines = [
            f"stochastic depth on {len(self.changed) + len(self.already_dropped)} residual add(s) "
            f"({len(self.already_dropped)} of them already dropped, rescheduled), "
            f"{len(self.left)} add(s) left"
        ]
        if self.max_difference is not None:
            lines[0] += f"; inference max |original - copy| = {self.max_difference:.2e}"
        lines += [
            f"  changed    {add} (branch {branch}) rate {rate:.4g}"
            for add, branch, rate in self.changed
        ]
        lines += [
            f"  rescheduled {add}: {drop} at {old:.4g} -> StochasticDepth at {new:.4g}"
            for add, drop, old, new in self.already_dropped
        ]
        lines += [f"  left       {add}: {reason}" for add, reason in self.left]
        return "\n".join(lines)


def add_stochastic_depth(model, max_rate, return_report=False, seed=None, verify=True):
    """Returns a copy of `model` whose residual adds drop their branch per sample.

    Every residual `Add` of the functional model (a `keras.layers.Add` or a
    `+` / `keras.ops.add` between a shortcut and a residual branch) becomes a
    `kreg.layers.StochasticDepth([shortcut, branch])`, with the rates of
    `stochastic_depth_rates(number of residual adds, max_rate)` in order of
    depth (the longest path from the model's inputs; ties in graph order).
    The copy has new layers with the original's weights; the original is not
    changed. `StochasticDepth` is the plain sum at inference, so the
    copy's inference outputs are identical.

    Which input of an add is the branch: the deeper one (the longest path from
    the model's inputs); the other is the shortcut, identity or projection. An
    add is left as it is, with the reason in the report, when it has more than
    two inputs, inputs of different shapes (broadcasting), inputs of equal
    depth (no branch to tell), a branch only one operation deeper than the
    shortcut (a position embedding added to token embeddings is not a residual
    block). Functional and Sequential models nested in the model (a keras-hub
    task's backbone; a backbone as the first layer of a Sequential classifier)
    are entered, as `fold_batch_norms` enters them: their adds share the one
    schedule, are reported as `"nested/add"`, and the nested model's copy is a
    plain `keras.Model`, as is the copy of a Sequential model.

    Branches that already drop per sample (EfficientNet's `drop_connect_rate`:
    a `Dropout` with `noise_shape=(None, 1, 1, 1)` right before the add;
    ConvNeXt's own `StochasticDepth` with `drop_path_rate`; kreg's
    `StochasticDepth`) are reported as already dropped: the old drop is
    removed from the copy and the add gets the scheduled rate, so no branch is
    ever dropped twice. Such a drop is recognized right before the add only;
    one that also feeds another layer leaves the add as it is (with the
    reason), since removing it would change that other path too. A per-sample
    drop deeper inside a branch is not looked for.

    Args:
        model: A built functional `keras.Model` (`keras.applications` and
            keras-hub models included), or a Sequential one with a functional
            model among its layers.
        max_rate: Float in `[0, 1)`, the rate of the deepest block.
        return_report: If `True`, return `(model, StochasticDepthReport)`.
        seed: Integer, optional. Seeds the `StochasticDepth` layers (the
            block at position `i` gets `seed + i`).
        verify: Whether to check the copy's inference outputs against the
            original's on one random batch (costs one forward pass of each).

    Returns:
        The new model, or `(model, report)`.

    Raises:
        TypeError: For a Sequential model without a functional model among
            its layers (it has no residual adds) or a subclassed one (its
            graph cannot be read).

    Example:

    >>> inputs = keras.Input((8, 8, 4))
    >>> x = inputs
    >>> for _ in range(3):
    ...     branch = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    ...     branch = keras.layers.Conv2D(4, 3, padding="same")(branch)
    ...     x = keras.layers.Add()([x, branch])
    >>> model = keras.Model(inputs, x)
    >>> deeper, report = add_stochastic_depth(model, 0.3, return_report=True)
    >>> [round(rate, 2) for _, _, rate in report.changed]
    [0.1, 0.2, 0.3]

    Reference:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382), deep networks
          with stochastic depth.
    """
    _check_model(model)
    max_rate = check_rate("max_rate", max_rate)
    return_report = check_bool("return_report", return_report)
    verify = check_bool("verify", verify)
    if seed is not None:
        seed = check_at_least("seed", seed, integer=True, minimum=0)
    graph = model_graph.read_graph(model)
    report = StochasticDepthReport()
    graphs = {}  # id(nested model) -> its Graph, read once
    plan = _plan(graph, report, graphs)
    rates = stochastic_depth_rates(len(plan), max_rate) if plan else []
    replacements, removed = {}, set()
    for position, (residual, rate) in enumerate(zip(plan, rates)):
        name = (
            residual.call.name
            if len(residual.graph.calls_of(residual.call.operation)) == 1
            else (f"{residual.call.name}_{residual.call.index}")
        )
        layer = StochasticDepth(rate, seed=None if seed is None else seed + position, name=name)
        replacements[id(residual.call)] = (layer, residual)
        if residual.drop is not None:
            removed.add(id(residual.drop))
        if residual.old_rate is not None:
            dropped_by = (residual.drop or residual.call).name
            report.already_dropped.append(
                (residual.prefix + name, dropped_by, residual.old_rate, rate)
            )
        else:
            report.changed.append((residual.prefix + name, residual.branch.name, rate))
    if not plan:
        warnings.warn(
            f"add_stochastic_depth found no residual add in `{model.name}`; the copy is unchanged"
            + (f" ({len(report.left)} add(s) left, see the report)" if report.left else ""),
            stacklevel=2,
        )
    copy = _rebuild(graph, graphs, replacements, removed)
    if verify:
        batch = model_graph.random_inputs(model, batch_size=2, seed=0)
        expected = keras.tree.flatten(model(batch, training=False))
        actual = keras.tree.flatten(copy(batch, training=False))
        report.max_difference = max(
            (
                float(np.max(np.abs(_numpy(e).astype("float64") - _numpy(a)), initial=0.0))
                for e, a in zip(expected, actual)
            ),
            default=0.0,
        )
    return (copy, report) if return_report else copy


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a functional "
            f"`keras.Model`. Received: model={model!r} of type {type(model).__name__}"
        )
    # A Sequential model is one chain, unless a layer of it is a functional
    # model (a backbone as its first layer): that one is entered.
    if isinstance(model, keras.Sequential) and not any(
        model_graph.is_graph_model(layer) for layer in model.layers
    ):
        raise TypeError(
            "Invalid value received for argument `model`. add_stochastic_depth needs a "
            f"functional model with residual adds; `{model.name}` is a Sequential model, "
            "whose layers form one chain without a shortcut (and none of them is a "
            "functional model)."
        )
    if not model_graph.is_graph_model(model):
        raise TypeError(
            "Invalid value received for argument `model`. add_stochastic_depth reads the "
            f"layer graph of functional models; `{type(model).__name__}` is a subclassed "
            "model whose graph cannot be read. Put kreg.layers.StochasticDepth in its "
            "residual blocks instead."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"The model `{model.name}` is not built: add_stochastic_depth needs its graph."
        )


@dataclasses.dataclass
class _Residual:
    call: object  # the add
    shortcut: int  # position of the shortcut among the add's tensors
    branch: object  # the call whose output is the (kept) branch
    drop: object = None  # the call of an existing per-sample drop, removed
    old_rate: float = None
    graph: object = None  # the Graph (model level) the add is in
    prefix: str = ""  # "nested_model/" path of that level, for the report
    depth: int = 0  # longest path from the outermost model's inputs, for the schedule


def _is_add(call):
    operation = call.operation
    if isinstance(operation, StochasticDepth):
        return True
    if call.layer is not None:
        return isinstance(operation, keras.layers.Add)
    # `x + y` and `keras.ops.add(x, y)` in a functional model: keras/src/ops/numpy.py's `Add`.
    return type(operation).__name__ == "Add" and type(operation).__module__.startswith("keras.")


def _existing_drop(call):
    """`(rate)` if `call` drops whole samples of its input, else `None`."""
    layer = call.layer
    if isinstance(layer, StochasticDepth):
        return None
    if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None:
        if all(size == 1 for size in tuple(layer.noise_shape)[1:]):
            return float(layer.rate)
    # keras.applications.convnext.StochasticDepth (and timm-style ports): one
    # `drop_path_rate` applied per sample.
    if (
        layer is not None
        and type(layer).__name__ == "StochasticDepth"
        and hasattr(layer, "drop_path_rate")
    ):
        return float(layer.drop_path_rate)
    return None


def _depths(graph):
    """The longest path from the model's inputs to each call (calls come in order)."""
    depth = {}
    for call in graph.calls:
        depth[id(call)] = 1 + max((depth[id(p)] for p, _ in call.sources), default=-1)
    return depth


def _plan(graph, report, graphs, prefix="", offset=0):
    """The residual adds of `graph` and of the models nested in it (entered
    where they are first called, as `fold_batch_norms` enters them), by depth
    from the outermost model's inputs (`offset` is that of this level's
    inputs), ties in graph order; the others go to `report.left`.

    Keras orders a model's calls by their distance to an output, so a block
    near an auxiliary output would come after deeper blocks of the main path."""
    depth = _depths(graph)
    plan = []
    for call in graph.calls:
        if call.layer is not None and model_graph.is_graph_model(call.layer):
            # A Sequential one is entered too: a functional model may be one of its layers.
            if id(call.layer) not in graphs:
                graphs[id(call.layer)] = nested = model_graph.read_graph(call.layer)
                plan += _plan(
                    nested, report, graphs, f"{prefix}{call.name}/", offset + depth[id(call)] - 1
                )
            continue
        if not _is_add(call):
            continue
        residual = _residual(call, depth)
        if isinstance(residual, str):
            report.left.append((prefix + call.name, residual))
        else:
            residual.graph, residual.prefix = graph, prefix
            residual.depth = offset + depth[id(call)]
            plan.append(residual)
    return sorted(plan, key=lambda residual: residual.depth)


def _residual(call, depth):
    """The `_Residual` of an add, or why it is not one."""
    args, kwargs = model_graph.call_arguments(call)
    tensors = [t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)]
    if len(tensors) != 2 or len(call.sources) != 2:
        return f"it adds {len(tensors)} tensors; a residual add has a shortcut and a branch"
    if tuple(tensors[0].shape) != tuple(tensors[1].shape):
        return (
            f"its inputs differ in shape ({tensors[0].shape} and {tensors[1].shape}): it broadcasts"
        )
    producers = [producer for producer, _ in call.sources]
    if isinstance(call.operation, StochasticDepth):
        # Already kreg's: its inputs are [shortcut, branch]; rescheduled.
        return _Residual(call, 0, producers[1], drop=None, old_rate=call.operation.rate)
    first, second = (depth[id(p)] for p in producers)
    if first == second:
        return "its two inputs are equally deep: neither is a shortcut around a branch"
    branch_position = 0 if first > second else 1
    branch = producers[branch_position]
    old_rate = _existing_drop(branch)
    if old_rate is not None:
        others = [
            getattr(consumer, "name", "the model's output")
            for consumer in branch.consumers
            if consumer is not call
        ]
        if others:
            # Removing the drop would take it from those paths too; keeping it
            # would drop this branch twice.
            return (
                f"its branch's per-sample drop `{branch.name}` also feeds {', '.join(others)}: "
                "removing it would change that path, keeping it would drop the branch twice"
            )
        return _Residual(
            call,
            1 - branch_position,
            branch.sources[0][0] if branch.sources else branch,
            branch,
            old_rate,
        )
    if abs(first - second) < 2:
        return "its branch is a single operation deep: not a residual block"
    return _Residual(call, 1 - branch_position, branch)


def _rebuilt_models(graph, graphs, replacements, removed):
    """The ids of the nested models whose copy is rebuilt rather than cloned:
    those with a changed add or a removed drop, those with a layer that is also
    called at another level (`clone_model` would copy it apart from that
    level's copy, untying its weights), and those holding such a model."""
    levels = [graph, *graphs.values()]
    levels_of = collections.Counter(
        layer_id
        for level in levels
        for layer_id in {id(call.layer) for call in level.calls if call.layer is not None}
    )
    rebuilt = set()
    for nested_id, nested in graphs.items():
        if _differs(nested, graphs, replacements, removed, levels_of):
            rebuilt.add(nested_id)
    return rebuilt


def _differs(graph, graphs, replacements, removed, levels_of):
    return any(
        id(call) in replacements
        or id(call) in removed
        or (
            call.layer is not None
            and (
                _differs(graphs[id(call.layer)], graphs, replacements, removed, levels_of)
                if id(call.layer) in graphs
                else levels_of[id(call.layer)] > 1
            )
        )
        for call in graph.calls
    )


def _rebuild(graph, graphs, replacements, removed, copies=None, pending=None, rebuilt=None):
    """The copy of `graph`. `copies` (id(original layer) -> its copy) and
    `pending` are shared by every level, as fold's copies are: a layer or a
    nested model used at two levels is copied once, so the copy keeps their
    weights tied."""
    top = copies is None
    if top:
        copies, pending = {}, []
        rebuilt = _rebuilt_models(graph, graphs, replacements, removed)

    def copy_of(layer):
        if id(layer) not in copies:
            if id(layer) in rebuilt:
                # Rebuilt with its own weights; a plain keras.Model, as the outer copy.
                copies[id(layer)] = _rebuild(
                    graphs[id(layer)], graphs, replacements, removed, copies, pending, rebuilt
                )
                return copies[id(layer)]
            if model_graph.is_graph_model(layer):
                copy = keras.models.clone_model(layer)
            elif type(layer) is keras.layers.Lambda:
                copy = _keras_compat.lambda_layer_copy(layer)
            else:
                copy = type(layer).from_config(layer.get_config())
            copies[id(layer)] = copy
            pending.append((layer, copy))
        return copies[id(layer)]

    def call(original, args, kwargs):
        if id(original) in removed:
            return args[0] if args else kwargs[original.tensor_keywords[0]]
        if id(original) in replacements:
            layer, residual = replacements[id(original)]
            tensors = [
                t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)
            ]
            return layer([tensors[residual.shortcut], tensors[1 - residual.shortcut]])
        operation = (
            copy_of(original.operation) if original.layer is not None else original.operation
        )
        return operation(*args, **kwargs)

    copy = model_graph.rebuild(graph, call)
    if top:
        for original, layer_copy in pending:
            layer_copy.set_weights(original.get_weights())
    return copy


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))

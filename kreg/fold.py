"""`fold_batch_norms`: a copy of a trained model with its batch norms folded away."""

import dataclasses
import warnings

import keras

from kreg import _keras_compat
from kreg import _model_graph
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization
from kreg.layers.batch_norm_folding import FOLDABLE_KERNELS
from kreg.layers.batch_norm_folding import batch_norm_scale_and_shift
from kreg.layers.batch_norm_folding import fold_scale_and_shift
from kreg.layers.conv_batch_norm import FusedBatchNormLayer


@dataclasses.dataclass
class FoldReport:
    """What `fold_batch_norms` did, layer by layer.

    Attributes:
        folded: `(layer, batch_norm)` name pairs folded into one layer.
        converted: kreg fused layers replaced by their plain Keras layer.
        skipped: `(batch_norm, reason)` for each batch norm call left in place.
    """

    folded: list = dataclasses.field(default_factory=list)
    converted: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [
            f"folded {len(self.folded)} batch norm(s), converted {len(self.converted)} "
            f"fused layer(s), left {len(self.skipped)} batch norm call(s) in place"
        ]
        lines += [f"  folded     {bn} into {layer}" for layer, bn in self.folded]
        lines += [f"  converted  {name} to its Keras layer" for name in self.converted]
        lines += [f"  kept       {bn}: {reason}" for bn, reason in self.skipped]
        return "\n".join(lines)


class _NotFoldable(Exception):
    """A batch norm that cannot be written as a fixed affine map; says why."""


def fold_batch_norms(model, return_report=False):
    """Returns a copy of `model` with every foldable batch norm folded away.

    At inference a `BatchNormalization` right after a conv or dense layer is a
    per-channel affine map, which can be folded into that layer's kernel and bias.
    The copy computes the same inference outputs (to float precision) with one
    op fewer per pair: that matters most without XLA and in exported graphs
    (TFLite, ONNX, SavedModel), where batch norm stays a separate op.

    Folded: `Dense`, `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`, `DepthwiseConv1D/2D`
    and `SeparableConv1D/2D` (into its pointwise kernel) followed directly by a
    `BatchNormalization` on their channel axis, with no activation between them.
    kreg's fused layers (`Conv2DBatchNorm`, ...) become their plain Keras layer.
    The copy holds only Keras layers where the original held only Keras and kreg
    fused layers, so it loads with plain Keras.

    Left in place, each with a reason in the report and a warning: batch norm after
    an activation or any other layer, after a layer whose output also feeds
    something else, on an axis that is not the channel axis, or across a nested
    model's boundary. Shared layers are folded only where every call of the conv
    feeds the same batch norm (then the fold is exact for each call).

    Args:
        model: A built `Sequential` or functional `keras.Model`, nested models
            included. It is not modified.
        return_report: If `True`, return `(folded_model, FoldReport)`.

    Returns:
        The folded model (a new `Sequential` or functional model, with new
        weights), or `(model, report)`.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.ReLU(),
    ... ])
    >>> folded, report = fold_batch_norms(model, return_report=True)
    >>> [type(layer).__name__ for layer in folded.layers]
    ['Conv2D', 'ReLU']

    Reference:
        - [Jacob et al., 2018](https://arxiv.org/abs/1712.05877), batch norm
          folding for integer-arithmetic inference.
    """
    report = FoldReport()
    folded = _fold_model(model, report)  # checks the model before anything else
    for bn, reason in report.skipped:
        warnings.warn(f"fold_batch_norms left `{bn}` in place: {reason}", stacklevel=2)
    return (folded, report) if return_report else folded


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a "
            f"`keras.Model`. Received: model={model!r} of type {type(model).__name__}"
        )
    if not isinstance(model, keras.Sequential) and not _keras_compat.is_functional(model):
        raise TypeError(
            "fold_batch_norms reads the layer graph of Sequential and functional "
            f"models; `{type(model).__name__}` is a subclassed model whose graph "
            "cannot be read. Rebuild it as a functional model, or use kreg's fused "
            "layers (kreg.layers.Conv2DBatchNorm, ...) inside it."
        )
    if not model.built or not model.inputs:
        raise ValueError(
            f"The model `{model.name}` is not built: fold_batch_norms needs its "
            "weights. Call it on a batch of data or build it first."
        )


def _fold_model(model, report):
    """Folds one (possibly nested) Sequential or functional model."""
    _check_model(model)
    graph = _model_graph.read_graph(model)
    pairs = _plan_pairs(model, graph, report)
    copies = _LayerCopies(pairs, report)
    if isinstance(model, keras.Sequential):
        folded = _rewrite_sequential(model, pairs, copies)
    else:
        folded = _rewrite_functional(model, pairs, copies)
    copies.copy_remaining_weights()
    return folded


# Which conv/dense layer folds into which batch norm.


def _batch_norm_scale_and_shift(bn, producer):
    """`(scale, shift)` of `bn` after `producer`'s output, or `_NotFoldable`."""
    if type(bn) is AdaptiveBatchNormalization:
        # Only the running statistics are fixed numbers a kernel can absorb.
        if bn.test_time_mode != "running":
            raise _NotFoldable(
                f"its test_time_mode is {bn.test_time_mode!r}: its statistics change "
                "with every batch (fold it in mode 'running')"
            )
    elif type(bn) is not keras.layers.BatchNormalization:
        raise _NotFoldable(f"`{type(bn).__name__}` is not a foldable batch norm")
    rank = len(producer.compute_output_shape(producer.get_build_config()["input_shape"]))
    data_format = getattr(producer, "data_format", None)
    channel_axis = 1 if data_format == "channels_first" else rank - 1
    if bn.axis % rank != channel_axis:
        raise _NotFoldable(
            f"it normalizes axis {bn.axis}, not the channel axis {channel_axis} of "
            f"`{producer.name}`"
        )
    weights = {w.name: keras.ops.convert_to_numpy(w) for w in bn.weights}
    scale, shift = batch_norm_scale_and_shift(
        weights["moving_mean"],
        weights["moving_variance"],
        bn.epsilon,
        gamma=weights.get("gamma"),
        beta=weights.get("beta"),
    )
    return keras.ops.convert_to_numpy(scale), keras.ops.convert_to_numpy(shift)


def _why_not_foldable_into(producer, producer_calls, bn, graph):
    """`None` if `producer` can be folded into `bn` for all its calls, else why not."""
    if isinstance(producer, keras.Model):
        return f"it follows the nested model `{producer.name}`; pairs are not folded across model boundaries"
    kind = type(producer)
    if kind not in FOLDABLE_KERNELS:
        parents = [cls.__name__ for cls in FOLDABLE_KERNELS if isinstance(producer, cls)]
        if parents:
            return f"`{producer.name}` subclasses {parents[0]}; its call may differ"
        return f"it follows `{producer.name}` ({kind.__name__}), not a conv or dense layer"
    if keras.activations.serialize(producer.activation) != "linear":
        activation = keras.activations.serialize(producer.activation)
        return f"`{producer.name}` applies activation {activation!r} before it"
    for call in producer_calls:
        consumers = graph.consumers.get(call, [])
        if len(consumers) != 1 or consumers[0][0] != bn.name:
            others = sorted({name for name, _ in consumers if name != bn.name})
            return f"the output of `{producer.name}` also feeds {', '.join(others) or 'nothing else'}"
    return None


def _plan_pairs(model, graph, report):
    """Returns `{conv name: (conv, bn, scale, shift)}`; records what stays."""
    layers = {layer.name: layer for layer in model.layers}
    calls_of = {}
    for name, node in graph.inputs:
        calls_of.setdefault(name, []).append((name, node))
    pairs = {}
    for (name, node), producers in graph.inputs.items():
        layer = layers.get(name)
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        bn_call = f"{name}" if len(calls_of[name]) == 1 else f"{name} (call {node})"
        if len(producers) != 1:
            report.skipped.append((bn_call, "it is called on several tensors"))
            continue
        if producers[0][0] not in layers:
            report.skipped.append((bn_call, "it normalizes the model input, not a layer's output"))
            continue
        producer = layers[producers[0][0]]
        if producer.name in pairs:
            continue  # already planned from another call of the same pair
        reason = _why_not_foldable_into(producer, calls_of[producer.name], layer, graph)
        if reason is None:
            try:
                scale, shift = _batch_norm_scale_and_shift(layer, producer)
            except _NotFoldable as error:
                reason = str(error)
        if reason is not None:
            report.skipped.append((bn_call, reason))
            continue
        pairs[producer.name] = (producer, layer, scale, shift)
        report.folded.append((producer.name, name))
    return pairs


# Building the copy.


def _folded_layer(conv, scale, shift):
    """A new layer of `conv`'s type, with bias, computing conv-then-batch-norm."""
    kernel_name, output_axes = FOLDABLE_KERNELS[type(conv)]
    weights = {w.name: keras.ops.convert_to_numpy(w) for w in conv.weights}
    kernel, bias = fold_scale_and_shift(
        weights[kernel_name], weights.get("bias"), scale, shift, output_axes
    )
    weights[kernel_name] = keras.ops.convert_to_numpy(kernel)
    weights["bias"] = keras.ops.convert_to_numpy(bias)
    config = conv.get_config()
    config["use_bias"] = True
    folded = type(conv).from_config(config)
    folded.build_from_config(conv.get_build_config())
    folded.set_weights([weights[w.name] for w in folded.weights])
    return folded


class _LayerCopies:
    """Maps each original layer to its copy (memoized: shared layers stay shared)."""

    def __init__(self, pairs, report):
        self.pairs = pairs
        self.report = report
        self.copies = {}  # id(original) -> copy
        self.absorbs = {}  # id(folded copy) -> the original batch norm inside it
        self.needs_weights = []  # plain copies whose weights are set once built

    def __call__(self, layer):
        if id(layer) in self.copies:
            return self.copies[id(layer)]
        if layer.name in self.pairs:
            _, bn, scale, shift = self.pairs[layer.name]
            copy = _folded_layer(layer, scale, shift)
            self.absorbs[id(copy)] = bn
        elif isinstance(layer, FusedBatchNormLayer):
            copy = layer.to_plain_layer()
            self.report.converted.append(layer.name)
        elif isinstance(layer, keras.Sequential) or _keras_compat.is_functional(layer):
            copy = _fold_model(layer, self.report)
        else:
            copy = type(layer).from_config(layer.get_config())
            self.needs_weights.append((layer, copy))
        self.copies[id(layer)] = copy
        return copy

    def copy_remaining_weights(self):
        for original, copy in self.needs_weights:
            if copy.built:  # a batch norm folded at every call is never built
                copy.set_weights(original.get_weights())

    def folded_partner(self, copy):
        """The copy of the batch norm that the layer copy `copy` has absorbed, if any."""
        bn = self.absorbs.get(id(copy))
        return None if bn is None else self(bn)


def _rewrite_sequential(model, pairs, copies):
    absorbed = {id(bn) for _, bn, _, _ in pairs.values()}
    layers = [copies(layer) for layer in model.layers if id(layer) not in absorbed]
    source = model.inputs[0]
    return keras.Sequential(
        [keras.Input(batch_shape=source.shape, dtype=source.dtype), *layers], name=model.name
    )


def _rewrite_functional(model, pairs, copies):
    absorbed_by_output = {}  # id(new tensor) -> the batch-norm copy folded into it

    def call_function(layer, *args, **kwargs):
        if args and absorbed_by_output.get(id(args[0])) is layer:
            return args[0]  # this batch norm is already inside the layer before it
        outputs = layer(*args, **kwargs)
        partner = copies.folded_partner(layer)
        if partner is not None:
            absorbed_by_output[id(outputs)] = partner
        return outputs

    return keras.models.clone_model(model, clone_function=copies, call_function=call_function)

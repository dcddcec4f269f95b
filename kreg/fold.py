"""`fold_batch_norms`: a copy of a trained model with its batch norms folded away."""

import dataclasses
import warnings

import keras
import numpy as np

from kreg import _keras_compat
from kreg import model_graph
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization
from kreg.layers.batch_norm_folding import FOLDABLE_KERNELS
from kreg.layers.batch_norm_folding import FORWARD_FOLDABLE_KERNELS
from kreg.layers.batch_norm_folding import batch_norm_scale_and_shift
from kreg.layers.batch_norm_folding import fold_input_scale_and_shift
from kreg.layers.batch_norm_folding import fold_scale_and_shift
from kreg.layers.conv_batch_norm import FusedBatchNormLayer
from kreg.layers.weight_normalization import WeightNormalization

__all__ = ["FoldReport", "FoldVerificationError", "fold_batch_norms", "foldable_pairs"]


@dataclasses.dataclass
class FoldReport:
    """What `fold_batch_norms` did, layer by layer.

    Attributes:
        folded: `(layer, batch_norm)` name pairs: a batch norm folded into the
            conv/dense layer before it (backward).
        forward_folded: `(batch_norm, layer)` name pairs: a batch norm folded into
            the conv/dense layer after it (forward).
        converted: kreg fused layers and `WeightNormalization` wrappers replaced
            by their plain Keras layer.
        skipped: `(batch_norm, reason)` for each batch norm call left in place.
        max_difference: the largest absolute difference between an output of
            the original and the folded model on one random batch: of the output
            closest to (or furthest beyond) its tolerance (`None` if not verified).
        tolerance: the bound `max_difference` was checked against: each output
            has its own, relative to its scale (`None` if not verified).

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.BatchNormalization(name="norm"),
    ... ])
    >>> _, report = fold_batch_norms(model, return_report=True)
    >>> report.folded, report.skipped
    ([('conv', 'norm')], [])
    """

    folded: list = dataclasses.field(default_factory=list)
    forward_folded: list = dataclasses.field(default_factory=list)
    converted: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    max_difference: float = None
    tolerance: float = None

    def __str__(self):
        lines = [
            f"folded {len(self.folded) + len(self.forward_folded)} batch norm(s) "
            f"({len(self.folded)} into the layer before, {len(self.forward_folded)} into "
            f"the layer after), converted {len(self.converted)} fused layer(s), left "
            f"{len(self.skipped)} batch norm call(s) in place"
        ]
        if self.max_difference is not None:
            lines[0] += (
                f"; verified: max |original - folded| = {self.max_difference:.2e} "
                f"(tolerance {self.tolerance:.1e})"
            )
        lines += [f"  folded     {bn} into {layer}" for layer, bn in self.folded]
        lines += [f"  folded     {bn} into {layer} (forward)" for bn, layer in self.forward_folded]
        lines += [f"  converted  {name} to its Keras layer" for name in self.converted]
        lines += [f"  kept       {bn}: {reason}" for bn, reason in self.skipped]
        return "\n".join(lines)


class FoldVerificationError(ValueError):
    """The folded model's outputs differ from the original's beyond the tolerance.

    Attributes:
        max_difference: the largest absolute output difference measured.
        tolerance: the bound it exceeded.
        pairs: the `(layer, batch_norm)` folds whose outputs differ when checked
            one by one (empty if each fold is right on its own).
    """

    def __init__(self, message, max_difference, tolerance, pairs):
        super().__init__(message)
        self.max_difference = max_difference
        self.tolerance = tolerance
        self.pairs = pairs


class _NotFoldable(Exception):
    """A pair that cannot be folded exactly; says why."""


def fold_batch_norms(model, return_report=False, verify=True):
    """Returns a copy of `model` with every foldable batch norm folded away.

    At inference a `BatchNormalization` is a per-channel affine map, which can be
    folded into the kernel and bias of the conv or dense layer right before it
    (backward) or, where that is exact, right after it (forward). The copy
    computes the same inference outputs (to float precision) with one op fewer
    per pair: that matters most without XLA and in exported graphs (TFLite, ONNX,
    SavedModel), where batch norm stays a separate op.

    Folded backward: `Dense`, `Conv1D/2D/3D`, `Conv1D/2D/3DTranspose`,
    `DepthwiseConv1D/2D` and `SeparableConv1D/2D` (into its pointwise kernel)
    followed directly by a `BatchNormalization` on their channel axis, with no
    activation between them. LoRA layers (`layer.enable_lora(rank)`) fold too:
    the scale applies to the LoRA factor as well.
    Folded forward: a batch norm whose only consumer is a `Dense`, `Conv1D/2D/3D`
    (`groups=1`) or `DepthwiseConv1D/2D` with `padding="valid"` (a batch norm on
    the input of a MobileNet-style stem, say). With zero padding the fold would
    be wrong at the borders (the padded zeros would become `shift`), so such a
    pair stays.
    kreg's fused layers (`Conv2DBatchNorm`, ...) and `WeightNormalization`
    wrappers become their plain Keras layer (the latter with the kernel
    `g * v / ||v||`).

    Never guessed: each batch norm call that cannot be folded exactly stays, with
    the reason in the report and a warning. That is a batch norm after an
    activation or any other layer, after a layer whose output also feeds
    something else, on an axis that is not the channel axis, across a nested
    model's boundary, called with `training=True` or with a mask, a subclass
    of a Keras layer (its `call` may differ), a quantized layer (int8, int4,
    float8: fold before quantizing), or an `AdaptiveBatchNormalization` in a
    test-time mode other than `"running"`. Shared layers are folded only where
    every call of the conv feeds the same batch norm (then the fold is exact for
    each call).

    With `verify=True` (the default) the original and the folded model run on
    one random batch drawn from the model's input spec, and a difference larger
    than the tolerance of the model's least precise compute dtype,
    `sqrt(machine epsilon)` times the largest `|value|` of that output (3.5e-4
    of it for float32, 3.1e-2 for float16; each output has its own), raises a
    `FoldVerificationError` naming the folds that differ.
    The report carries the measured difference. It costs one forward pass of
    each model.

    Args:
        model: A built `Sequential` or functional `keras.Model` (keras-hub
            backbones and task models included), nested models included. It is
            not modified.
        return_report: If `True`, return `(folded_model, FoldReport)`.
        verify: Whether to check the folded model against the original.

    Returns:
        The folded model (a new `Sequential` or plain functional `keras.Model`,
        with new weights), or `(model, report)`.

    Raises:
        FoldVerificationError: With `verify=True`, if the outputs differ.

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
    >>> report.max_difference < report.tolerance
    True

    Reference:
        - [Jacob et al., 2018](https://arxiv.org/abs/1712.05877), batch norm
          folding for integer-arithmetic inference.
    """
    if not isinstance(verify, bool):
        raise TypeError(
            "Invalid value received for argument `verify`. Expected a bool. Received: "
            f"verify={verify!r}"
        )
    report = FoldReport()
    copies = _LayerCopies(report)
    folded = _fold_model(model, report, copies)  # checks the model before anything else
    for bn, reason in report.skipped:
        warnings.warn(f"fold_batch_norms left `{bn}` in place: {reason}", stacklevel=2)
    if verify:
        _verify(model, folded, report, copies)
    return (folded, report) if return_report else folded


def foldable_pairs(model):
    """The folds `fold_batch_norms` would make in one level of `model`.

    Returns a list of `(layer name, batch norm name, direction)`, `direction`
    being `"backward"` (the batch norm follows the layer) or `"forward"`; nested
    models are not entered. Nothing is copied or changed.
    """
    _check_model(model)
    report = FoldReport()
    _plan(model_graph.read_graph(model), report)
    backward = [(layer, bn, "backward") for layer, bn in report.folded]
    return backward + [(layer, bn, "forward") for bn, layer in report.forward_folded]


def _check_model(model):
    model_graph.check_graph_model(
        model,
        "fold_batch_norms",
        "Rebuild it as a functional model, or use kreg's fused layers "
        "(kreg.layers.Conv2DBatchNorm, ...) inside it.",
    )
    if not model.built or not model.inputs:
        raise ValueError(
            f"The model `{model.name}` is not built: fold_batch_norms needs its "
            "weights. Call it on a batch of data or build it first."
        )


def _fold_model(model, report, copies):
    """Folds one (possibly nested) Sequential or functional model."""
    _check_model(model)
    graph = model_graph.read_graph(model)
    plan = _plan(graph, report)
    copies.add_plan(plan)
    if isinstance(model, keras.Sequential):
        folded = _rewrite_sequential(model, plan, copies)
    else:
        folded = _rewrite_functional(graph, plan, copies)
    copies.copy_remaining_weights()
    return folded


# Which batch norm folds into which layer.


@dataclasses.dataclass
class _Plan:
    # id(layer) -> {"layer": layer, "backward": (bn, scale, shift) or None, "forward": ...}
    layers: dict = dataclasses.field(default_factory=dict)
    absorbed: set = dataclasses.field(default_factory=set)  # id(batch norm Call)

    def add(self, layer, direction, bn, scale, shift):
        entry = self.layers.setdefault(
            id(layer), {"layer": layer, "backward": None, "forward": None}
        )
        entry[direction] = (bn, scale, shift)


def _plan(graph, report):
    """The folds of one model level; records what stays in `report`."""
    plan = _Plan()
    for call in graph.calls:
        bn = call.layer
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        calls_of_bn = graph.calls_of(bn)
        label = bn.name if len(calls_of_bn) == 1 else f"{bn.name} (call {call.index})"
        try:
            _check_batch_norm_call(call)
        except _NotFoldable as error:
            report.skipped.append((label, str(error)))
            continue
        producer = call.sources[0][0]
        entry = plan.layers.get(id(producer.operation), {})
        if entry.get("backward") and entry["backward"][0] is bn:
            plan.absorbed.add(id(call))  # another call of a shared pair already planned
            continue
        try:
            scale, shift = _backward_fold(graph, call, producer, plan)
        except _NotFoldable as backward_error:
            try:
                consumer, scale, shift = _forward_fold(graph, call, plan)
            except _NotFoldable as forward_error:
                reason = str(backward_error)
                if str(forward_error):
                    reason += f"; nor into the layer after it: {forward_error}"
                report.skipped.append((label, reason))
                continue
            plan.add(consumer.operation, "forward", bn, scale, shift)
            plan.absorbed.add(id(call))
            report.forward_folded.append((bn.name, consumer.operation.name))
            continue
        layer = producer.operation
        plan.add(layer, "backward", bn, scale, shift)
        for other in graph.calls_of(layer):
            plan.absorbed.update(id(c) for c in other.consumers if c is not model_graph.OUTPUT)
        report.folded.append((layer.name, bn.name))
    return plan


def _check_batch_norm_call(call):
    """Raises `_NotFoldable` unless the call is a plain inference batch norm."""
    bn = call.layer
    if type(bn) is AdaptiveBatchNormalization:
        # Only the running statistics are fixed numbers a kernel can absorb.
        if bn.test_time_mode != "running":
            raise _NotFoldable(
                f"its test_time_mode is {bn.test_time_mode!r}: its statistics change "
                "with every batch (fold it in mode 'running')"
            )
    elif type(bn) is not keras.layers.BatchNormalization:
        raise _NotFoldable(
            f"`{type(bn).__name__}` subclasses BatchNormalization; its call may differ"
        )
    if call.keywords.get("training") is True:
        raise _NotFoldable(
            "it is called with training=True: it normalizes with each batch's "
            "statistics at inference too"
        )
    # At inference batch norm ignores its mask and passes it on; the mask Keras
    # attached to the input itself travels with the folded layer's output too.
    if call.mask == "explicit":
        raise _NotFoldable(
            "it is called with a mask of its own, which the folded layer would not pass on"
        )
    extra = [k for k, v in call.keywords.items() if k not in ("training", "mask") and v is not None]
    # The input (the first positional argument) and, with a mask, the mask.
    if len(call.sources) != (2 if call.mask else 1) or extra:
        raise _NotFoldable(
            "it is called on several tensors or with arguments folding does not know"
        )


def _not_taught(layer, table):
    """Why `layer`, whose type or a parent type is in `table`, cannot take a fold,
    or `None`: exact types only (a subclass may change `call`), no quantization."""
    if type(layer) not in table:
        parent = next(cls.__name__ for cls in table if isinstance(layer, cls))
        return f"`{layer.name}` subclasses {parent}; its call may differ"
    if layer.quantization_mode is not None:
        return (
            f"`{layer.name}` is quantized ({layer.quantization_mode}): its kernel is "
            "stored in low precision with a scale; fold before quantizing"
        )
    return None


def _is_taught_kind(layer, table):
    return isinstance(layer, tuple(table))


def _channel_axis(layer, rank):
    return 1 if getattr(layer, "data_format", None) == "channels_first" else rank - 1


def _scale_and_shift(bn, layer, rank):
    """`(scale, shift)` of `bn` on the channels of `layer`'s tensor of `rank`."""
    axis = _channel_axis(layer, rank)
    if bn.axis % rank != axis:
        raise _NotFoldable(
            f"it normalizes axis {bn.axis}, not the channel axis {axis} of `{layer.name}`"
        )
    weights = {w.name: keras.ops.convert_to_numpy(w).astype("float64") for w in bn.weights}
    scale, shift = batch_norm_scale_and_shift(
        weights["moving_mean"],
        weights["moving_variance"],
        bn.epsilon,
        gamma=weights.get("gamma"),
        beta=weights.get("beta"),
    )
    return keras.ops.convert_to_numpy(scale), keras.ops.convert_to_numpy(shift)


def _backward_fold(graph, bn_call, producer, plan):
    """`(scale, shift)` to fold `bn_call` into the layer before it, or `_NotFoldable`."""
    layer = producer.operation
    if producer.is_input:
        raise _NotFoldable("it normalizes the model input, not a layer's output")
    if producer.layer is None:
        raise _NotFoldable(
            f"it follows the operation `{layer.name}` ({type(layer).__name__}), not a layer"
        )
    if model_graph.is_graph_model(layer):
        raise _NotFoldable(
            f"it follows the nested model `{layer.name}`; pairs are not folded across model "
            "boundaries"
        )
    if not _is_taught_kind(layer, FOLDABLE_KERNELS):
        raise _NotFoldable(
            f"it follows `{layer.name}` ({type(layer).__name__}), not a conv or dense layer"
        )
    reason = _not_taught(layer, FOLDABLE_KERNELS)
    if reason:
        raise _NotFoldable(reason)
    activation = keras.activations.serialize(layer.activation)
    if activation != "linear":
        raise _NotFoldable(f"`{layer.name}` applies activation {activation!r} before it")
    if getattr(layer, "lora_enabled", False) and FOLDABLE_KERNELS[type(layer)][1] != (-1,):
        raise _NotFoldable(
            f"`{layer.name}` has LoRA enabled on a kernel layout folding does not know"
        )
    bn = bn_call.layer
    for call in graph.calls_of(layer):
        consumers = call.consumers
        if (
            len(consumers) != 1
            or consumers[0] is model_graph.OUTPUT
            or consumers[0].layer is not bn
        ):
            others = sorted(
                {
                    getattr(c, "name", "the model output")
                    for c in consumers
                    if getattr(c, "layer", None) is not bn
                }
            )
            raise _NotFoldable(
                f"the output of `{layer.name}` also feeds {', '.join(others) or 'nothing else'}"
            )
        try:
            _check_batch_norm_call(consumers[0])
        except _NotFoldable as error:
            raise _NotFoldable(
                f"another call of `{layer.name}` feeds `{bn.name}` unfoldably: {error}"
            ) from None
    if plan.layers.get(id(layer), {}).get("backward"):
        raise _NotFoldable(f"`{layer.name}` already absorbs another batch norm")
    rank = len(layer.compute_output_shape(layer.get_build_config()["input_shape"]))
    return _scale_and_shift(bn, layer, rank)


def _forward_fold(graph, bn_call, plan):
    """`(consumer call, scale, shift)` to fold `bn_call` into the layer after it.

    `_NotFoldable("")` where no conv or dense layer follows it alone: the reason
    for the backward direction says it all then.
    """
    consumers = bn_call.consumers
    if len(consumers) != 1 or consumers[0] is model_graph.OUTPUT:
        raise _NotFoldable("")
    consumer = consumers[0]
    layer = consumer.layer
    if not _is_taught_kind(layer, FOLDABLE_KERNELS) or model_graph.is_graph_model(layer):
        raise _NotFoldable("")
    if not _is_taught_kind(layer, FORWARD_FOLDABLE_KERNELS):
        raise _NotFoldable(
            f"`{layer.name}` ({type(layer).__name__}): forward folding into it is not implemented"
        )
    reason = _not_taught(layer, FORWARD_FOLDABLE_KERNELS)
    if reason:
        raise _NotFoldable(reason)
    if getattr(layer, "lora_enabled", False):
        raise _NotFoldable(
            f"`{layer.name}` has LoRA enabled; forward folding into LoRA layers is not implemented"
        )
    padding = getattr(layer, "padding", "valid")
    if padding != "valid":
        raise _NotFoldable(
            f"`{layer.name}` pads its input with zeros (padding={padding!r}): the padded "
            "zeros would become the batch norm's shift, so the fold would be wrong at the borders"
        )
    if getattr(layer, "groups", 1) != 1:
        raise _NotFoldable(f"`{layer.name}` is a grouped convolution (groups={layer.groups})")
    calls = graph.calls_of(layer)
    if len(calls) != 1 or len(consumer.sources) != 1 or consumer.tensor_keywords:
        raise _NotFoldable(f"`{layer.name}` is called on other tensors too")
    if plan.layers.get(id(layer), {}).get("forward"):
        raise _NotFoldable(f"`{layer.name}` already absorbs another batch norm")
    rank = len(layer.get_build_config()["input_shape"])
    scale, shift = _scale_and_shift(bn_call.layer, layer, rank)
    return consumer, scale, shift


# Building the copy.


def _folded_layer(layer, backward, forward):
    """A new layer of `layer`'s type, with bias, computing [batch norm ->] layer [-> batch norm]."""
    weights = {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}
    dtype = weights["bias"].dtype if "bias" in weights else next(iter(weights.values())).dtype
    bias = weights.get("bias")
    if forward is not None:
        kernel_name, input_axis = FORWARD_FOLDABLE_KERNELS[type(layer)]
        _, output_axes = FOLDABLE_KERNELS[type(layer)]
        kernel, bias = fold_input_scale_and_shift(
            weights[kernel_name], bias, forward[1], forward[2], input_axis, output_axes
        )
        weights[kernel_name] = np.asarray(kernel)
    if backward is not None:
        kernel_name, output_axes = FOLDABLE_KERNELS[type(layer)]
        kernel, bias = fold_scale_and_shift(
            weights[kernel_name], bias, backward[1], backward[2], output_axes
        )
        weights[kernel_name] = keras.ops.convert_to_numpy(kernel)
        if "lora_kernel_b" in weights:  # kernel + a @ b: scaling b's output channels scales the sum
            weights["lora_kernel_b"] = weights["lora_kernel_b"] * backward[1]
    weights["bias"] = np.asarray(keras.ops.convert_to_numpy(bias)).astype(dtype)
    config = layer.get_config()
    config["use_bias"] = True
    folded = type(layer).from_config(config)
    folded.build_from_config(layer.get_build_config())
    folded.set_weights([np.asarray(weights[w.name]).astype(w.dtype) for w in folded.weights])
    return folded


class _LayerCopies:
    """Maps each original layer to its copy (memoized: shared layers stay shared)."""

    def __init__(self, report):
        self.report = report
        self.planned = {}  # id(layer) -> plan entry
        self.copies = {}  # id(original) -> copy
        self.folds = []  # (original layer, folded copy, entry): for the checks
        self.needs_weights = []  # plain copies whose weights are set once built

    def add_plan(self, plan):
        self.planned.update(plan.layers)

    def __call__(self, layer):
        if id(layer) in self.copies:
            return self.copies[id(layer)]
        entry = self.planned.get(id(layer))
        if entry is not None:
            copy = _folded_layer(layer, entry["backward"], entry["forward"])
            self.folds.append((layer, copy, entry))
        elif isinstance(layer, (FusedBatchNormLayer, WeightNormalization)):
            copy = layer.to_plain_layer()
            self.report.converted.append(layer.name)
        elif model_graph.is_graph_model(layer):
            copy = _fold_model(layer, self.report, self)
        elif type(layer) is keras.layers.Lambda:
            copy = _keras_compat.lambda_layer_copy(layer)
        else:
            copy = type(layer).from_config(layer.get_config())
            self.needs_weights.append((layer, copy))
        self.copies[id(layer)] = copy
        return copy

    def copy_remaining_weights(self):
        # A copy not built yet stays listed: a batch norm folded at every call is
        # never built, but a copy in an outer Sequential whose nested model is
        # folded first is built only when that Sequential is made.
        waiting = []
        for original, copy in self.needs_weights:
            if copy.built:
                _copy_weights(original, copy)
            else:
                waiting.append((original, copy))
        self.needs_weights = waiting


def _copy_weights(original, copy):
    """Copies `original`'s weights into its fresh copy `copy`.

    A quantized layer built from its config creates its variables in another
    order than one quantized after building (`model.quantize`), so where the
    weights do not line up, the layer's own save format (what `.keras` files
    hold) carries them.
    """
    try:
        copy.set_weights(original.get_weights())
    except ValueError:
        if _keras_compat.all_sublayers(original):
            raise
        store = {}
        original.save_own_variables(store)
        copy.load_own_variables(store)


def _rewrite_sequential(model, plan, copies):
    absorbed = {
        id(entry[d][0])
        for entry in plan.layers.values()
        for d in ("backward", "forward")
        if entry[d]
    }
    layers = [copies(layer) for layer in model.layers if id(layer) not in absorbed]
    source = model.inputs[0]
    return keras.Sequential(
        [keras.Input(batch_shape=source.shape, dtype=source.dtype), *layers], name=model.name
    )


def _rewrite_functional(graph, plan, copies):
    def call(original, args, kwargs):
        if id(original) in plan.absorbed:
            # The batch norm is inside the layer before or after it now.
            return args[0] if args else kwargs[original.tensor_keywords[0]]
        operation = original.operation
        if original.layer is not None:
            operation = copies(operation)
        return operation(*args, **kwargs)

    return model_graph.rebuild(graph, call)


# Checking the copy.


def _verify(original, folded, report, copies):
    batch = model_graph.random_inputs(original, batch_size=2, seed=0)
    expected = keras.tree.flatten(original(batch, training=False))
    actual = keras.tree.flatten(folded(batch, training=False))
    # Relative to each output's scale: softmax outputs of 1000 classes are ~1e-3,
    # and an absolute bound of float32's 3.5e-4 (or one taken from a larger output
    # beside them) would let a wrong fold through.
    relative = _tolerance(original)
    bounds = [
        relative * max(float(np.max(np.abs(_numpy(e)), initial=0.0)), relative**2) for e in expected
    ]
    differences = [_max_difference(e, a) for e, a in zip(expected, actual)]
    # The report holds the output closest to (or furthest beyond) its bound.
    difference, tolerance = max(
        zip(differences, bounds), key=lambda pair: pair[0] / pair[1], default=(0.0, relative)
    )
    if difference > tolerance:
        # Before blaming the fold: is the original itself random at inference?
        again = keras.tree.flatten(original(batch, training=False))
        if any(_max_difference(e, a) > bound for e, a, bound in zip(expected, again, bounds)):
            warnings.warn(
                "fold_batch_norms could not verify the folded model: the original "
                "model's inference outputs are random (two calls on one batch differ)",
                stacklevel=3,
            )
            return
    report.max_difference, report.tolerance = difference, tolerance
    if difference <= tolerance:
        return
    wrong = _check_each_fold(copies, relative)
    where = (
        "the folds " + ", ".join(f"{a} + {b}" for a, b in wrong)
        if wrong
        else "no single fold (each is right on its own: the rewiring of the graph is at fault)"
    )
    raise FoldVerificationError(
        f"fold_batch_norms produced a model whose outputs differ from `{original.name}`'s by "
        f"up to {difference:.3g} on a random batch (tolerance {tolerance:.2g}); wrong: {where}. "
        "Please report this model; kreg.fold_batch_norms(model, verify=False) skips the check.",
        difference,
        tolerance,
        wrong,
    )


def _numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _max_difference(expected, actual):
    expected, actual = _numpy(expected).astype("float64"), _numpy(actual).astype("float64")
    if expected.shape != actual.shape:
        return float("inf")
    same_nan = np.isnan(expected) & np.isnan(actual)
    difference = np.where(same_nan, 0.0, np.abs(expected - actual))
    return float(np.max(np.nan_to_num(difference, nan=np.inf), initial=0.0))


# Machine epsilon of the floating dtypes a Keras layer computes in (NumPy has no bfloat16).
_EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def _tolerance(model):
    """`sqrt(eps)` of the least precise floating compute dtype in `model`: folding
    rounds differently, and the error grows with depth, but a wrong fold is off by
    the order of the outputs themselves."""
    dtypes = {str(layer.compute_dtype) for layer in model_graph.sublayers(model)}
    return float(
        np.sqrt(max((_EPSILON[d] for d in dtypes if d in _EPSILON), default=_EPSILON["float32"]))
    )


def _check_each_fold(copies, relative):
    """The `(layer, batch norm)` names of each fold whose copy differs on its own."""
    rng = np.random.default_rng(1)
    wrong = []
    for layer, copy, entry in copies.folds:
        shape = [2 if size is None else size for size in layer.get_build_config()["input_shape"]]
        x = rng.standard_normal(shape).astype(layer.compute_dtype)
        expected = x
        if entry["forward"]:
            expected = entry["forward"][0](expected, training=False)
        expected = layer(expected)
        if entry["backward"]:
            expected = entry["backward"][0](expected, training=False)
        scale = float(np.max(np.abs(_numpy(expected))))
        if _max_difference(expected, copy(x)) > relative * max(scale, relative**2):
            for direction in ("forward", "backward"):
                if entry[direction]:
                    wrong.append((layer.name, entry[direction][0].name))
    return wrong

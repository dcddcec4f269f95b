"""`convert_batch_norms`: Keras's batch norms to kreg's adaptive ones, and back."""

import dataclasses

import keras

from kreg import model_graph
from kreg._validation import check_choice
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization
from kreg.layers.conv_batch_norm import FusedBatchNormLayer

TARGETS = ("adaptive", "keras")
# The config keys AdaptiveBatchNormalization adds to BatchNormalization's.
_ADAPTIVE_KEYS = ("test_time_mode", "prior_strength", "online_momentum")


@dataclasses.dataclass
class ConversionReport:
    """What `convert_batch_norms` replaced.

    Attributes:
        to: `"adaptive"` or `"keras"`.
        converted: names of the batch norm layers replaced.
        left: `(name, reason)` for each batch norm layer left as it was.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
    ...                           keras.layers.BatchNormalization(name="norm")])
    >>> _, report = convert_batch_norms(model, return_report=True)
    >>> report.to, report.converted, report.left
    ('adaptive', ['norm'], [])
    """

    to: str
    converted: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        target = (
            "AdaptiveBatchNormalization"
            if self.to == "adaptive"
            else "keras.layers.BatchNormalization"
        )
        lines = [f"convert_batch_norms: {len(self.converted)} batch norm layer(s) now {target}"]
        lines += [f"  left {name}: {reason}" for name, reason in self.left]
        return "\n".join(lines)


def convert_batch_norms(model, to="adaptive", return_report=False):
    """A copy of `model` whose batch norms are kreg's adaptive ones (or Keras's again).

    `to="adaptive"` replaces every `keras.layers.BatchNormalization` by an
    `AdaptiveBatchNormalization` with the same config (in `"running"` mode) and
    the same weights: the copy computes exactly what the original does, and can
    then switch to a test-time mode or be adapted. `to="keras"` replaces every
    `AdaptiveBatchNormalization` by a `BatchNormalization` (the mode is dropped:
    Keras's layer normalizes with its running statistics at inference).

    Nested Sequential and functional models and shared layers are converted;
    the original model is not changed. This is the way to use a pretrained model:
    Keras names saved layers by their class, so weights saved from a model built
    with `BatchNormalization` never load into the same model built with
    `AdaptiveBatchNormalization`; load them into the Keras model, then convert.

        model = keras.applications.ResNet50(weights="imagenet")
        adaptive = kreg.convert_batch_norms(model)
        kreg.set_test_time_mode(adaptive, "mixed")   # or kreg.adapt_batchnorm(adaptive, x)

    The batch norms inside kreg's fused layers (`Conv2DBatchNorm`...) stay as
    they are (they fold into the convolution at inference; `adapt_batchnorm`
    adapts them), and so do other `BatchNormalization` subclasses and the batch
    norms a custom (subclassed) layer builds inside itself; the report lists them.

    Args:
        model: A Sequential or functional Keras model.
        to: `"adaptive"` (default) or `"keras"`.
        return_report: If `True`, return `(model, ConversionReport)`.

    Returns:
        The converted copy, or `(copy, report)` with `return_report=True`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
    ...                           keras.layers.BatchNormalization()])
    >>> adaptive, report = convert_batch_norms(model, return_report=True)
    >>> type(adaptive.layers[1]).__name__, len(report.converted)
    ('AdaptiveBatchNormalization', 1)
    >>> x = np.ones((2, 3), "float32")
    >>> bool(np.allclose(adaptive.predict(x, verbose=0), model.predict(x, verbose=0)))
    True
    """
    check_choice("to", to, TARGETS)
    check_graph_model(model)
    source, target = (
        (keras.layers.BatchNormalization, AdaptiveBatchNormalization)
        if to == "adaptive"
        else (AdaptiveBatchNormalization, keras.layers.BatchNormalization)
    )
    report = ConversionReport(to=to)
    _report_what_stays(model, source, target, report)

    def replacement(layer):
        if type(layer) is not source:
            return None
        config = layer.get_config()
        if to == "keras":
            mode = config.pop("test_time_mode")
            for key in _ADAPTIVE_KEYS[1:]:
                config.pop(key)
            if mode != "running":
                report.left.append(
                    (layer.name, f"was in test_time_mode {mode!r}: now running statistics")
                )
        report.converted.append(layer.name)
        return target.from_config(config)

    # Both classes have the same weights in the same order.
    converted, converted_ids = clone_replacing(model, replacement)
    _report_unreached(model, source, converted_ids, report)
    return (converted, report) if return_report else converted


def check_graph_model(model):
    """Refuses a model whose layers cannot be replaced from outside."""
    if not isinstance(model, keras.Model) or not model_graph.is_graph_model(model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a Sequential or "
            "functional Keras model (a subclassed model's layers cannot be replaced "
            f"from outside). Received: model={model!r}"
        )


def clone_replacing(model, replacement):
    """A copy of `model` in which each layer gets `replacement(layer)`'s layer.

    `replacement` returns the new layer, or `None` to copy the layer as it is.
    Nested Sequential and functional models and shared layers are reached; a
    layer held inside a custom layer is not (`clone_model` rebuilds that layer
    from its config). The weights are copied from `model`: each replacement
    must have its layer's weights in the same order. Returns the copy and the
    ids of the layers replaced.
    """
    replaced = set()

    def clone(layer):
        new = replacement(layer)
        if new is None:
            return layer.__class__.from_config(layer.get_config())
        replaced.add(id(layer))
        return new

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    converted.set_weights(model.get_weights())
    return converted, replaced


def _report_what_stays(model, source, target, report):
    layers = model_graph.sublayers(model)
    fused = [layer for layer in layers if isinstance(layer, FusedBatchNormLayer)]
    inside_fused = _fused_batch_norm_ids(model)
    for layer in fused:
        report.left.append(
            (layer.name, "a fused layer: its batch norm folds into the kernel at inference")
        )
    for layer in layers:
        if (
            isinstance(layer, keras.layers.BatchNormalization)
            and type(layer) not in (source, target)
            and id(layer) not in inside_fused
        ):
            report.left.append(
                (layer.name, f"a {type(layer).__name__}: only {source.__name__} is converted")
            )


def _report_unreached(model, source, converted_ids, report):
    """Names the batch norms held inside another layer (a custom layer that builds
    its own): `clone_model` rebuilds that layer from its config, so they stay."""
    inside_fused = _fused_batch_norm_ids(model)
    for layer in model_graph.sublayers(model):
        if (
            type(layer) is source
            and id(layer) not in converted_ids
            and id(layer) not in inside_fused
        ):
            report.left.append(
                (
                    layer.path,
                    "inside a layer that is not a Sequential or functional model: only its class "
                    "can replace it",
                )
            )


def _fused_batch_norm_ids(model):
    return {
        id(layer.batch_norm)
        for layer in model_graph.sublayers(model)
        if isinstance(layer, FusedBatchNormLayer)
    }

"""`convert_dropouts`: Keras's dropout layers to kreg's adjustable one."""

import dataclasses
import warnings

import keras

from kreg import model_graph
from kreg.convert import check_graph_model
from kreg.convert import clone_replacing
from kreg.layers.adjustable_dropout import AdjustableDropout


@dataclasses.dataclass
class DropoutConversionReport:
    """What `convert_dropouts` replaced.

    Attributes:
        converted: names of the dropout layers replaced by `AdjustableDropout`.
        left: `(name, reason)` for each dropout layer left as it was.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.2, name="drop"),
    ...                           keras.layers.Dropout(0.0, name="off")])
    >>> _, report = convert_dropouts(model, return_report=True)
    >>> report.converted, report.left
    (['drop'], [('off', 'rate 0: it never drops, so a schedule has no rate to scale')])
    """

    converted: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [
            f"convert_dropouts: {len(self.converted)} dropout layer(s) now "
            "kreg.layers.AdjustableDropout"
        ]
        if not self.converted and not self.left:
            lines[0] += " (the model has no Dropout or SpatialDropout layer: nothing to schedule)"
        lines += [f"  left {name}: {reason}" for name, reason in self.left]
        return "\n".join(lines)


def _spatial_noise_shape(layer, spatial_axes):
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return (None, None) + (1,) * spatial_axes
    return (None,) + (1,) * spatial_axes + (None,)


# The classes converted, and the mask shape each stands for.
_NOISE_SHAPES = {
    keras.layers.Dropout: lambda layer: layer.noise_shape,
    keras.layers.SpatialDropout1D: lambda layer: (None, 1, None),
    keras.layers.SpatialDropout2D: lambda layer: _spatial_noise_shape(layer, 2),
    keras.layers.SpatialDropout3D: lambda layer: _spatial_noise_shape(layer, 3),
}


# Every Keras dropout, for the report: `AlphaDropout` and `GaussianDropout` are
# not `Dropout` subclasses (keras/src/layers/regularization/), and not converted.
_DROPOUT_KINDS = (keras.layers.Dropout, keras.layers.AlphaDropout, keras.layers.GaussianDropout)


def convert_dropouts(model, return_report=False):
    """A copy of `model` whose dropout layers have rates a callback can change.

    Keras's `Dropout` and `SpatialDropout1D/2D/3D` keep their rate as a Python
    float, fixed when the train function is traced. This returns a copy in which
    each becomes a `kreg.layers.AdjustableDropout` with the same rate, seed,
    name, dtype and mask shape (a spatial dropout's whole-feature-map mask is
    its `noise_shape`): the copy computes exactly what the original does at
    inference, and in training drops with the same rate and mask shape and
    scales alike (the random draws differ: the masks are equal in
    distribution, not value by value), and `kreg.callbacks.DropoutSchedule` (or
    `OverfittingDetector(action="strengthen")`) can then change the rates
    between epochs. The weights are copied; the original model is not changed.

    Nested Sequential and functional models and shared layers are converted.
    Left as they are, and listed in the report: a dropout built with rate 0 (it
    never drops, so there is no rate to scale; rebuild it with the rate you
    want), subclasses of `Dropout` (their `call` may differ), and dropouts held
    inside a custom (subclassed) layer, which `clone_model` cannot reach. A model
    with no dropout layer is not an error: the copy is returned with a warning.

    Args:
        model: A Sequential or functional Keras model.
        return_report: If `True`, return `(model, DropoutConversionReport)`.

    Returns:
        The converted copy, or `(copy, report)` with `return_report=True`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
    ...                           keras.layers.Dropout(0.3)])
    >>> adjustable, report = convert_dropouts(model, return_report=True)
    >>> type(adjustable.layers[1]).__name__, report.converted
    ('AdjustableDropout', ['dropout'])
    >>> adjustable.layers[1].rate = 0.5  # the next training step drops half
    """
    check_graph_model(model)
    report = DropoutConversionReport()

    def replacement(layer):
        noise_shape = _NOISE_SHAPES.get(type(layer))
        if noise_shape is None or layer.rate == 0:
            return None
        report.converted.append(layer.name)
        return AdjustableDropout(
            layer.rate,
            noise_shape=noise_shape(layer),
            seed=layer.seed,
            name=layer.name,
            dtype=layer.dtype_policy,
            trainable=layer.trainable,
        )

    converted, converted_ids = clone_replacing(model, replacement)
    for layer in model_graph.sublayers(model):
        if id(layer) in converted_ids or not isinstance(layer, _DROPOUT_KINDS):
            continue
        if type(layer) not in _NOISE_SHAPES:
            reason = (
                f"a {type(layer).__name__}: only Dropout and SpatialDropout1D/2D/3D are converted"
            )
        elif layer.rate == 0:
            reason = "rate 0: it never drops, so a schedule has no rate to scale"
        else:
            reason = (
                "inside a layer that is not a Sequential or functional model: only its class "
                "can replace it"
            )
        report.left.append((layer.path or layer.name, reason))
    if not report.converted:
        warnings.warn(str(report), stacklevel=2)
    return (converted, report) if return_report else converted

"""What part a layer plays, as the rules see it: conv, dense, recurrent, dropout, ...

The checks go by `isinstance` on public Keras classes, so subclasses (kreg's
`WeightDropLSTM`, `AdaptiveBatchNormalization`, a user's own `Dropout`) play the
part of their parent. Wrappers (`Bidirectional`, `TimeDistributed`) play the part
of the layer they wrap.
"""

import keras

from kreg.dropout_ranges import USUAL_DROPOUT_RANGES
from kreg.layers import AdjustableDropout
from kreg.layers import ConsistentDropout
from kreg.layers.conv_batch_norm import FusedBatchNormLayer
from kreg.layers.drop_block import DropBlock
from kreg.model_graph import INPUT

L = keras.layers

CONVS = (
    L.Conv1D, L.Conv2D, L.Conv3D,
    L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
    L.DepthwiseConv1D, L.DepthwiseConv2D,
    L.SeparableConv1D, L.SeparableConv2D,
)  # fmt: skip
DENSES = (L.Dense, L.EinsumDense)
NORMALIZATIONS = (
    L.BatchNormalization, L.LayerNormalization, L.GroupNormalization,
    L.UnitNormalization, L.RMSNormalization,
)  # fmt: skip
ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax)
# kreg's AdjustableDropout is Keras's Dropout with a rate held in a variable
# (what kreg.convert_dropouts puts in Dropout's place), so it plays its part.
DROPOUTS = (L.Dropout, L.AlphaDropout, L.GaussianDropout, ConsistentDropout, AdjustableDropout)
# Dropouts that draw a new mask for every element, so for every timestep.
PER_ELEMENT_DROPOUTS = (L.Dropout, L.AlphaDropout, L.GaussianDropout, AdjustableDropout)
# Layers after which the features are a flat vector for a classifier.
FLATTENERS = (
    L.Flatten,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
)  # fmt: skip

# The kreg layer that replaces a Keras layer followed by batch norm.
FUSED_NAMES = {
    L.Conv1D: "Conv1DBatchNorm",
    L.Conv2D: "Conv2DBatchNorm",
    L.Conv3D: "Conv3DBatchNorm",
    L.DepthwiseConv2D: "DepthwiseConv2DBatchNorm",
    L.Dense: "DenseBatchNorm",
}


def unwrap(layer):
    """The layer inside `Bidirectional` / `TimeDistributed`, else `layer`."""
    if isinstance(layer, L.Bidirectional):
        return layer.forward_layer
    if isinstance(layer, L.TimeDistributed):
        return layer.layer
    return layer


def is_fused_batch_norm(layer):
    """kreg's conv/dense + batch norm layers (`Conv2DBatchNorm`, ...)."""
    return isinstance(unwrap(layer), FusedBatchNormLayer)


def is_conv(layer):
    layer = unwrap(layer)
    if is_fused_batch_norm(layer):
        return isinstance(layer.base_layer, CONVS)
    return isinstance(layer, CONVS)


def is_dense(layer):
    layer = unwrap(layer)
    if is_fused_batch_norm(layer):
        return isinstance(layer.base_layer, DENSES)
    return isinstance(layer, DENSES)


def is_batch_norm(layer):
    """A batch norm layer on its own (kreg's fused layers are not: they are safe)."""
    return isinstance(unwrap(layer), L.BatchNormalization)


def uses_batch_statistics(layer):
    """Whether training normalizes with the batch's statistics."""
    return (is_batch_norm(layer) or is_fused_batch_norm(layer)) and layer.trainable


def is_normalization(layer):
    return isinstance(unwrap(layer), NORMALIZATIONS) or is_fused_batch_norm(layer)


def is_recurrent(layer):
    return isinstance(unwrap(layer), L.RNN)


def returns_sequences(layer):
    return bool(getattr(unwrap(layer), "return_sequences", False))


def is_dropout(layer):
    return isinstance(layer, DROPOUTS)


def is_element_dropout(layer):
    """Inverted dropout of single activations: Keras's `Dropout` (not its spatial
    subclasses) or kreg's `AdjustableDropout`, without a `noise_shape`."""
    return type(layer) in (L.Dropout, AdjustableDropout) and layer.noise_shape is None


def drops_and_rescales(layer):
    """Dropout of any kind, and kreg's DropBlock: layers whose training output
    is masked and rescaled, so its variance differs from the inference output's
    (Li et al. 2019, https://arxiv.org/abs/1801.05134)."""
    return is_dropout(layer) or isinstance(layer, DropBlock)


def is_per_timestep_dropout(layer):
    """Plain dropout with one mask per element (spatial dropout and a `noise_shape`
    that broadcasts over time both share the mask across timesteps)."""
    return type(layer) in PER_ELEMENT_DROPOUTS and getattr(layer, "noise_shape", None) is None


def is_flattener(layer):
    return isinstance(layer, FLATTENERS)


def is_anchor(layer):
    """Layers that give the dropout around them its role: the weighted layers, and
    the flattening that turns feature maps into classifier inputs."""
    return (
        is_conv(layer)
        or is_dense(layer)
        or is_recurrent(layer)
        or is_flattener(layer)
        or isinstance(layer, L.Embedding)
        or isinstance(layer, keras.Model)  # a subclassed model we cannot look into
    )


# Activation functions by their name without underscores ("hardsigmoid"), to
# recognize the operation nodes that `keras.ops.relu(x)` and friends leave in a
# functional model (classes `Relu`, `HardSigmoid`, ... in keras/src/ops/nn.py).
_ACTIVATION_NAMES = {
    name.replace("_", ""): name
    for name in dir(keras.activations)
    if not name.startswith("_") and name not in ("get", "serialize", "deserialize", "linear")
}


def activation_name(layer):
    """The non-linearity `layer` (or a `keras.ops` operation) applies last, or
    `None` (linear or none)."""
    if not isinstance(layer, keras.layers.Layer):
        return _ACTIVATION_NAMES.get(type(layer).__name__.lower()) if layer is not None else None
    if isinstance(layer, L.Activation):
        name = keras.activations.serialize(layer.activation)
        return None if name == "linear" else name
    if isinstance(layer, ACTIVATIONS):
        return type(layer).__name__
    if is_fused_batch_norm(layer) or not (is_conv(layer) or is_dense(layer)):
        return None
    activation = getattr(unwrap(layer), "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    return None if name == "linear" else name


def fused_alternative(layer):
    """`kreg.layers.<Fused>` for a conv/dense layer that has one, else `None`."""
    name = FUSED_NAMES.get(type(unwrap(layer)))
    return None if name is None else f"kreg.layers.{name}"


def normalizes_channels_of(bn, producer):
    """Whether batch norm `bn` normalizes the channel axis of `producer`'s output."""
    producer = unwrap(producer)
    try:
        rank = len(producer.output.shape)
    except (AttributeError, ValueError):
        rank = None  # not called yet: only a channels_last -1 is certain
    if getattr(producer, "data_format", None) == "channels_first":
        return rank is not None and bn.axis % rank == 1
    return bn.axis == -1 or (rank is not None and bn.axis % rank == rank - 1)


# The usual dropout rates by the role of the layer before the dropout, keyed by
# the role in words ("early conv"); the one table lives in kreg/dropout_ranges.py,
# which the tuner's search ranges read too.
USUAL_RATES = {role.replace("_", " "): rates for role, rates in USUAL_DROPOUT_RANGES.items()}


def early_convs(view):
    """The ids of the first half of the model's conv layers (at least the first):
    the layers that extract edges and textures."""
    convs = view.unique_layers(is_conv)
    return {id(layer) for _, layer in convs[: max(1, len(convs) // 2)]}


def dropout_role(view, node, early=None):
    """`(role, anchor node)` for the dropout at `node`, from the layer it follows:
    a key of `USUAL_RATES`, or `(None, None)` (dropout on the input, or after
    something the rules do not know)."""
    early = early_convs(view) if early is None else early
    anchors = [n for n in view.before(node, is_anchor) if n is not INPUT]
    for anchor in anchors:
        layer = anchor.layer
        if is_conv(layer):
            return ("early conv" if id(layer) in early else "late conv"), anchor
    for anchor in anchors:
        layer = anchor.layer
        if is_dense(layer) or is_flattener(layer):
            return "dense", anchor
        if is_recurrent(layer) or isinstance(layer, L.Embedding):
            return "recurrent", anchor
    return None, None

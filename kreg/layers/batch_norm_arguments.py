"""The arguments of `BatchNormalization` and `AdaptiveBatchNormalization`, read from the classes.

The one list of batch norm arguments and defaults that kreg's batch norm layers
(`AdaptiveBatchNormalization`, the fused `Conv2DBatchNorm` family) and the tuner's
norm factory use, so that none of them keeps a copy that can drift from Keras's
(renorm was missing from a copy once).
"""

import inspect

import keras

from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization


def _arguments(function, kind):
    """`{name: default}` of `function`'s parameters of `kind`, in order (no `self`)."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "self" and parameter.kind is kind
    }


# {name: default} in the order of `BatchNormalization.__init__`, without `**kwargs`
# (the base layer's `name`, `dtype`...).
BATCH_NORM_ARGUMENTS = _arguments(
    keras.layers.BatchNormalization.__init__, inspect.Parameter.POSITIONAL_OR_KEYWORD
)
# AdaptiveBatchNormalization's own arguments (keyword-only, beside
# BatchNormalization's, which it passes on as they are).
ADAPTIVE_BATCH_ARGUMENTS = tuple(
    _arguments(AdaptiveBatchNormalization.__init__, inspect.Parameter.KEYWORD_ONLY)
)


def split_batch_norm_arguments(kwargs):
    """Returns `(batch norm arguments, the others)` of a keyword dict."""
    batch_norm = {key: value for key, value in kwargs.items() if key in BATCH_NORM_ARGUMENTS}
    others = {key: value for key, value in kwargs.items() if key not in BATCH_NORM_ARGUMENTS}
    return batch_norm, others


def batch_norm_config(layer):
    """The `BATCH_NORM_ARGUMENTS` entries of a batch norm layer's config."""
    config = layer.get_config()
    return {key: config[key] for key in BATCH_NORM_ARGUMENTS}

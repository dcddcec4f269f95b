"""The batch norm layers that adaptation works on, found anywhere in a model."""

import keras

from kreg import _keras_compat


def batch_norm_layers(model):
    """Every `BatchNormalization` (kreg's included) inside `model`, nested ones too."""
    return [
        layer
        for layer in _keras_compat.all_sublayers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]



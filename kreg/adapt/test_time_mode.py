"""Switching every `AdaptiveBatchNormalization` of a model to a test-time mode."""

import keras

from kreg import model_graph
from kreg._validation import check_choice
from kreg.layers.adaptive_batch_normalization import TEST_TIME_MODES
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization


def set_test_time_mode(model, mode):
    """Switches every `AdaptiveBatchNormalization` in `model` to `mode`.

    Takes effect on the next call or `predict`, with no re-tracing. Keras's own
    `BatchNormalization` layers are not changed.

    Args:
        model: A Keras model (or layer) containing `AdaptiveBatchNormalization`s.
        mode: One of `"running"`, `"batch"`, `"mixed"`, `"online"`.

    Returns:
        The number of layers switched.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), AdaptiveBatchNormalization()])
    >>> set_test_time_mode(model, "batch")
    1
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a Keras model or "
            f"layer. Received: model={model!r} (of type {type(model).__name__})"
        )
    check_choice("mode", mode, TEST_TIME_MODES)
    layers = [
        layer
        for layer in model_graph.sublayers(model)
        if isinstance(layer, AdaptiveBatchNormalization)
    ]
    if not layers:
        raise ValueError(
            f"`{model.name}` has no `AdaptiveBatchNormalization` layer to switch to "
            f"mode {mode!r}. Build the model with kreg.layers.AdaptiveBatchNormalization, "
            "or use kreg.adapt_batchnorm, which adapts any batch norm."
        )
    for layer in layers:
        layer.test_time_mode = mode
    return len(layers)

"""The statistics of one batch norm's input, from the part of the model before it.

The robust method's shift test reads the first batch norm's input only
(`label_shift.py`). That input does not depend on any batch norm's statistics,
so its moments over a stream's samples pool exactly from the moments of each
part (`reestimation.pool_statistics`), and the layers after it need not run:
on a convolutional network, the test of a batch becomes the first convolution
on that batch, rather than the whole model on every sample since the last
update.
"""

import keras
import numpy as np
from keras import ops

from kreg.layers.batch_statistics import batch_moments
from kreg.layers.batch_statistics import in_statistics_dtype


class _InputMoments(keras.Model):
    """Outputs `layer`'s per-channel input mean, variance and count, computed by
    the layers of the model before it (a functional model's prefix)."""

    def __init__(self, prefix, axis):
        super().__init__(name=f"{prefix.name}_moments")
        self.prefix = prefix
        self.axis = axis

    def call(self, inputs):
        features = in_statistics_dtype(self.prefix(inputs, training=False))
        mean, variance, count = batch_moments(features, self.axis)
        return {
            "mean": mean[None],
            "variance": variance[None],
            "count": ops.reshape(count, (1, 1)),
        }


def input_moments_model(model, layer):
    """A model that outputs `layer`'s input moments from `model`'s inputs,
    running only the layers before `layer`; None where `model`'s graph does not
    hold such a part: a subclassed model, a layer inside a nested model or
    inside another layer (kreg's fused layers), a layer called more than once.
    The caller checks the moments it gives against a whole pass once (a mask,
    or a layer before it whose output depends on the batch, would make them
    differ)."""
    try:
        prefix = keras.Model(_inputs(model), layer.input, name=f"{model.name}_before_{layer.name}")
    except (AttributeError, ValueError, TypeError, KeyError):
        return None
    axis = layer.axis % len(prefix.outputs[0].shape)
    return _InputMoments(prefix, axis)


def _inputs(model):
    """`model.input`; a Sequential model's one `Input` where Keras answers its
    `input` only after a symbolic call (`keras/src/models/sequential.py`, whose
    `inputs` come from the functional model its `Input` builds)."""
    if isinstance(model, keras.Sequential):
        (inputs,) = model.inputs
        return inputs
    return model.input


def moments_of(moments_model, x):
    """`(mean, variance, count)` in float64 of the input of the model's batch norm over `x`."""
    outputs = moments_model.predict_on_batch(x)
    return (
        np.asarray(outputs["mean"][0], np.float64),
        np.asarray(outputs["variance"][0], np.float64),
        float(outputs["count"][0, 0]),
    )


def same_moments(a, b, tolerance=1e-3):
    """Whether two `(mean, variance, count)` agree up to float32 rounding: the
    mean within `tolerance` standard deviations, the variance within `tolerance`
    of itself, the counts equal."""
    (mean_a, variance_a, count_a), (mean_b, variance_b, count_b) = a, b
    scale = np.sqrt(np.maximum(variance_a, variance_b)) + 1e-6
    return bool(
        count_a == count_b
        and np.all(np.abs(mean_a - mean_b) <= tolerance * scale)
        and np.all(np.abs(variance_a - variance_b) <= tolerance * scale**2)
    )

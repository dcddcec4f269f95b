"""Per-channel statistics of a batch, as batch normalization computes them.

Shared by `AdaptiveBatchNormalization` (its test-time modes) and
`kreg.adapt_batchnorm` (which re-estimates any batch norm's statistics), so that
both reduce the same axes, honour a Keras mask the same way and count the same
number of values.
"""

from keras import ops


def reduction_axes(rank, axis):
    """Every axis of a rank-`rank` tensor but the normalized `axis`."""
    return [i for i in range(rank) if i != axis % rank]


def batch_moments(inputs, axis, mask=None, synchronized=False):
    """Returns `(mean, variance, count)` of `inputs` per channel along `axis`.

    `variance` is the biased (population) variance, as `BatchNormalization` uses.
    `count` is the number of values each channel's statistics are computed from
    (a scalar tensor): batch size times the other non-channel dimensions, or the
    number of unmasked positions times those dimensions.

    Args:
        inputs: Float tensor, already in the dtype the statistics are computed in.
        axis: Integer, the channel axis.
        mask: Optional boolean tensor of rank `inputs` - 1, as Keras passes to
            `BatchNormalization` (padded timesteps do not count).
        synchronized: Boolean. All-reduce the statistics across the replicas of
            a `tf.distribute` strategy (TensorFlow backend only). Ignored with a
            mask, as in `keras.layers.BatchNormalization`'s masked path.
    """
    axes = reduction_axes(len(inputs.shape), axis)
    channels = inputs.shape[axis]
    if mask is None:
        mean, variance = ops.moments(inputs, axes=axes, synchronized=synchronized)
        shape = ops.shape(inputs)
        count = ops.cast(ops.prod(ops.stack([shape[i] for i in axes])), inputs.dtype)
        return ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,)), count
    weights = ops.cast(ops.broadcast_to(ops.expand_dims(mask, -1), ops.shape(inputs)), inputs.dtype)
    weight_sum = ops.sum(weights, axis=axes, keepdims=True)
    # Guard the division only; a fully masked batch has count 0 and callers treat
    # it as carrying no information.
    mean = ops.sum(inputs * weights, axis=axes, keepdims=True) / ops.maximum(weight_sum, 1.0)
    variance = ops.sum(ops.square(inputs - mean) * weights, axis=axes, keepdims=True) / ops.maximum(
        weight_sum, 1.0
    )
    count = ops.reshape(weight_sum, (-1,))[0]
    return ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,)), count

"""Per-channel statistics of a batch, as batch normalization computes them.

Shared by `AdaptiveBatchNormalization` (its test-time modes) and
`kreg.adapt_batchnorm` (which re-estimates any batch norm's statistics), so that
both reduce the same axes, honour a Keras mask the same way, count the same
number of values and normalize with the same arithmetic.
"""

import numbers

import keras
from keras import ops


def reduction_axes(rank, axis):
    """Every axis of a rank-`rank` tensor but the normalized `axis`."""
    return [i for i in range(rank) if i != axis % rank]


def in_statistics_dtype(inputs):
    """`inputs` in at least float32, as `BatchNormalization` computes statistics
    (float16 overflows in sums of squares)."""
    return ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))


def normalize(layer, inputs, mean, variance):
    """`layer`'s batch norm of `inputs` (from `in_statistics_dtype`) with the given
    statistics and the layer's own scale and shift, in its compute dtype."""
    outputs = ops.batch_normalization(
        inputs,
        mean,
        variance,
        axis=layer.axis,
        offset=None if layer.beta is None else ops.cast(layer.beta, inputs.dtype),
        scale=None if layer.gamma is None else ops.cast(layer.gamma, inputs.dtype),
        epsilon=layer.epsilon,
    )
    return ops.cast(outputs, layer.compute_dtype)


def finite_samples(inputs, mask=None):
    """`(mask, clean, samples)`: `mask` with every sample that holds a NaN or inf
    left out, whether the batch held none, and the number of samples kept.

    The returned mask broadcasts to rank `inputs` - 1, as `batch_moments` takes
    it: a bad sample then reaches no other sample's statistics, so one NaN pixel
    leaves the other outputs of a batch as they would be without it.
    """
    rank = len(inputs.shape)
    finite = ops.all(ops.isfinite(inputs), axis=list(range(1, rank)))
    clean = ops.all(finite)
    samples = ops.sum(ops.cast(finite, inputs.dtype))
    finite = ops.reshape(finite, (-1,) + (1,) * (rank - 2))
    if mask is not None:
        finite = ops.logical_and(ops.cast(mask, "bool"), finite)
    return finite, clean, samples


def mixed_stored_weight(prior_strength, samples):
    """`N / (N + n)`: the weight of the stored statistics in the `"mixed"` mode,
    for a prior strength `N` and a batch of `n` samples (Schneider et al., 2020,
    https://arxiv.org/abs/2006.16971). `n` is a Python number or a backend
    tensor; with `N = n = 0` the weight is 0.
    """
    total = prior_strength + samples
    total = max(total, 1.0) if isinstance(total, numbers.Real) else ops.maximum(total, 1.0)
    return prior_strength / total


def combine_statistics(stored_weight, stored, batch):
    """`stored_weight * stored + (1 - stored_weight) * batch` for a `(mean,
    variance)` pair: the one update formula of every test-time mode that mixes
    stored and batch statistics ("mixed", "online", RoTTA's robust batch norm).

    Works on backend tensors and NumPy arrays alike.
    """
    return tuple(
        stored_weight * old + (1.0 - stored_weight) * new for old, new in zip(stored, batch)
    )


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
    kept = ops.broadcast_to(ops.expand_dims(ops.cast(mask, "bool"), -1), ops.shape(inputs))
    weight_sum = ops.sum(ops.cast(kept, inputs.dtype), axis=axes, keepdims=True)
    # `where`, not a product with the mask: a NaN or inf in a padded position must
    # not reach the statistics. The division is guarded only; a fully masked batch
    # has count 0 and callers treat it as carrying no information.
    mean = ops.sum(ops.where(kept, inputs, 0.0), axis=axes, keepdims=True) / ops.maximum(
        weight_sum, 1.0
    )
    squares = ops.where(kept, ops.square(inputs - mean), 0.0)
    variance = ops.sum(squares, axis=axes, keepdims=True) / ops.maximum(weight_sum, 1.0)
    count = ops.reshape(weight_sum, (-1,))[0]
    return ops.reshape(mean, (channels,)), ops.reshape(variance, (channels,)), count

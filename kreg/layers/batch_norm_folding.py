"""The arithmetic of folding an inference-mode batch norm into the layer before it.

At inference, batch norm is the per-channel affine map

    y = gamma * (x - mean) / sqrt(variance + epsilon) + beta = x * scale + shift

so a conv or dense layer `x -> x @ W + b` followed by it equals one layer with
`W' = W * scale` (scaled along the kernel's output-channel axes) and
`b' = b * scale + shift`. kreg's fused layers and `kreg.fold_batch_norms` both use
these two functions, on backend tensors and on NumPy arrays alike.
"""

import keras
from keras import ops

# Layers a following batch norm folds into: the kernel that takes the scale and
# the axes of that kernel that index output channels (see `fold_scale_and_shift`).
# Exact types only: a subclass may change what `call` computes.
FOLDABLE_KERNELS = {
    keras.layers.Dense: ("kernel", (-1,)),
    keras.layers.Conv1D: ("kernel", (-1,)),
    keras.layers.Conv2D: ("kernel", (-1,)),
    keras.layers.Conv3D: ("kernel", (-1,)),
    keras.layers.Conv1DTranspose: ("kernel", (-2,)),
    keras.layers.Conv2DTranspose: ("kernel", (-2,)),
    keras.layers.Conv3DTranspose: ("kernel", (-2,)),
    keras.layers.DepthwiseConv1D: ("kernel", (-2, -1)),
    keras.layers.DepthwiseConv2D: ("kernel", (-2, -1)),
    keras.layers.SeparableConv1D: ("pointwise_kernel", (-1,)),
    keras.layers.SeparableConv2D: ("pointwise_kernel", (-1,)),
}


def batch_norm_scale_and_shift(mean, variance, epsilon, gamma=None, beta=None):
    """Returns `(scale, shift)` with `batch_norm(x) == x * scale + shift`.

    Args:
        mean, variance: The moving statistics, one value per channel.
        epsilon: The batch norm's epsilon.
        gamma, beta: The learned scale and offset, or `None` where the batch norm
            was built with `scale=False` / `center=False`.
    """
    scale = ops.rsqrt(ops.add(variance, epsilon))
    if gamma is not None:
        scale = ops.multiply(scale, gamma)
    shift = ops.negative(ops.multiply(mean, scale))
    if beta is not None:
        shift = ops.add(shift, beta)
    return scale, shift


def fold_scale_and_shift(kernel, bias, scale, shift, output_axes=(-1,)):
    """Returns `(kernel * scale, bias * scale + shift)`, `scale` laid out on the kernel.

    Args:
        kernel: The layer's kernel.
        bias: The layer's bias, or `None` if it has none.
        scale, shift: From `batch_norm_scale_and_shift`, one value per output channel.
        output_axes: The kernel axes that index output channels, in order:
            `(-1,)` for Dense, Conv and the pointwise part of a separable conv,
            `(-2,)` for transposed convs (kernel `(..., out, in)`), and `(-2, -1)`
            for depthwise convs, whose output channel `c * multiplier + m` comes
            from kernel entry `[..., c, m]`.
    """
    rank = len(kernel.shape)
    axes = sorted(axis % rank for axis in output_axes)
    layout = [1] * rank
    for axis in axes:
        layout[axis] = kernel.shape[axis]
    folded_kernel = ops.multiply(kernel, ops.reshape(scale, layout))
    folded_bias = shift if bias is None else ops.add(ops.multiply(bias, scale), shift)
    return folded_kernel, folded_bias

"""The arithmetic of folding an inference-mode batch norm into the layer before it.

At inference, batch norm is the per-channel affine map

    y = gamma * (x - mean) / sqrt(variance + epsilon) + beta = x * scale + shift

so a conv or dense layer `x -> x @ W + b` followed by it equals one layer with
`W' = W * scale` (scaled along the kernel's output-channel axes) and
`b' = b * scale + shift`. kreg's fused layers and `kreg.fold_batch_norms` both use
these two functions, on backend tensors and on NumPy arrays alike.
"""

import keras
import numpy as np
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


# Layers a batch norm *before* them folds into (forward): the kernel and its axis
# that indexes input channels. Only layers whose response to a constant input is
# the same at every output position (so `padding="valid"` only, checked by the
# caller) and whose input channel maps to one kernel axis (no groups).
FORWARD_FOLDABLE_KERNELS = {
    keras.layers.Dense: ("kernel", -2),
    keras.layers.Conv1D: ("kernel", -2),
    keras.layers.Conv2D: ("kernel", -2),
    keras.layers.Conv3D: ("kernel", -2),
    keras.layers.DepthwiseConv1D: ("kernel", -2),
    keras.layers.DepthwiseConv2D: ("kernel", -2),
}


def fold_input_scale_and_shift(kernel, bias, scale, shift, input_axis=-2, output_axes=(-1,)):
    """Returns the kernel and bias of `layer(x * scale + shift)` as one layer.

    `W(x * scale + shift) + b = (W * scale)(x) + (W(shift) + b)`: the kernel is
    scaled along its input-channel axis, and the bias gains the response of the
    kernel to the constant `shift`, summed over every kernel axis but the output
    ones. That response is the same at every output position only where no zero
    padding enters the window (`padding="valid"`). NumPy arrays in and out.

    Args:
        kernel: The layer's kernel.
        bias: The layer's bias, or `None` if it has none.
        scale, shift: From `batch_norm_scale_and_shift`, one value per input channel.
        input_axis: The kernel axis that indexes input channels.
        output_axes: The kernel axes that index output channels (as in
            `fold_scale_and_shift`); for depthwise convs the input axis is one
            of them, and the shift's response is per `(channel, multiplier)`.
    """
    kernel = np.asarray(kernel, dtype="float64")
    rank = kernel.ndim
    layout = [1] * rank
    layout[input_axis % rank] = kernel.shape[input_axis]
    scale = np.reshape(np.asarray(scale, dtype="float64"), layout)
    shift = np.reshape(np.asarray(shift, dtype="float64"), layout)
    outputs = sorted(axis % rank for axis in output_axes)
    summed = tuple(axis for axis in range(rank) if axis not in outputs)
    response = np.sum(kernel * shift, axis=summed).reshape(-1)
    folded_bias = response if bias is None else np.asarray(bias, dtype="float64") + response
    return kernel * scale, folded_bias

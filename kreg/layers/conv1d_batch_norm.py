"""Conv1D and its batch norm as one layer, folded at inference."""

import keras
from keras import ops

from kreg.layers.conv_batch_norm import FusedBatchNormLayer


@keras.saving.register_keras_serializable(package="kreg")
class Conv1DBatchNorm(FusedBatchNormLayer):
    """`Conv1D` and `BatchNormalization` as one layer, one conv at inference.

    Training (`training=True` and the layer trainable) runs the `Conv1D` without
    a bias, then batch normalization with the batch's statistics, updating the
    moving statistics exactly as `keras.layers.BatchNormalization` does (it is
    one, inside). Inference runs a single convolution with the batch norm folded
    into the kernel and bias, then the activation:

        kernel = W * gamma / sqrt(moving_variance + epsilon)
        bias = beta - moving_mean * gamma / sqrt(moving_variance + epsilon)

    These are the outputs of `Conv1D` followed by `BatchNormalization` and the
    activation, with one op fewer per layer. `kreg.fold_batch_norms` turns the
    layer into a plain `Conv1D`.

    Args:
        filters: Integer, the number of output channels.
        kernel_size: Integer or tuple, the size of the convolution window.
        activation: Activation applied after the normalization. Defaults to
            `None` (linear).
        momentum, epsilon, center, scale, beta_initializer, gamma_initializer,
        moving_mean_initializer, moving_variance_initializer, beta_regularizer,
        gamma_regularizer, beta_constraint, gamma_constraint, renorm,
        renorm_clipping, renorm_momentum, synchronized: As in
            `keras.layers.BatchNormalization`, with the same defaults (every
            argument but `axis`: the batch norm normalizes the channel axis given
            by `data_format`). With `renorm=True`, training is batch
            renormalization; inference folds the moving statistics as usual.
        **kwargs: Every other argument of `keras.layers.Conv1D` (`strides`,
            `padding`, `kernel_initializer`, ...) and base layer arguments
            (`name`, `dtype`, `trainable`). `use_bias` and the bias arguments are
            refused: the batch norm's beta is the bias.

    Call arguments:
        inputs: The input tensor, as for `keras.layers.Conv1D`.
        training: Python boolean. Batch statistics (`True`) or the folded
            kernel (`False`, the default outside `fit`).

    Example:

    >>> layer = Conv1DBatchNorm(8, 3, activation="relu")
    >>> tuple(layer(keras.ops.ones((2, 10, 4)), training=False).shape)
    (2, 8, 8)

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167), Batch
          Normalization.
        - [Jacob et al., 2018](https://arxiv.org/abs/1712.05877), folding batch
          norm into the preceding convolution for inference.
    """

    base_class = keras.layers.Conv1D

    def _apply_kernel(self, inputs, kernel):
        layer = self.base_layer
        if layer.padding != "causal":
            return super()._apply_kernel(inputs, kernel)
        # As Conv1D.call does: pad the past only, then a "valid" convolution
        # (ops.conv itself knows no "causal").
        padding = [[0, 0], [0, 0], [0, 0]]
        time_axis = 1 if layer.data_format == "channels_last" else 2
        padding[time_axis] = [layer.dilation_rate[0] * (layer.kernel_size[0] - 1), 0]
        return ops.conv(
            ops.pad(inputs, padding),
            kernel,
            strides=list(layer.strides),
            padding="valid",
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )

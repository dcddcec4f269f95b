"""A conv or dense layer and its batch norm as one layer, folded at inference."""

import keras
from keras import ops

from kreg.layers.batch_norm_arguments import batch_norm_config
from kreg.layers.batch_norm_arguments import split_batch_norm_arguments
from kreg.layers.batch_norm_folding import FOLDABLE_KERNELS
from kreg.layers.batch_norm_folding import batch_norm_scale_and_shift
from kreg.layers.batch_norm_folding import fold_scale_and_shift

# Arguments that belong to the outer layer rather than to its conv/dense part.
_BASE_LAYER_ARGS = ("name", "dtype", "trainable", "autocast")
# The batch norm's beta is the bias: a bias before it would be cancelled anyway.
_BIAS_ARGS = ("use_bias", "bias_initializer", "bias_regularizer", "bias_constraint")
# Keys of the conv/dense config that the fused layer owns or leaves out.
_OWN_CONFIG_KEYS = _BASE_LAYER_ARGS + _BIAS_ARGS + ("activation",)

_DOC = """
    Training (`training=True` and the layer trainable) runs the {base} without a
    bias, then batch normalization with the batch's statistics, updating the
    moving statistics exactly as `keras.layers.BatchNormalization` does (it is
    one, inside). Inference runs a single {op} with the batch norm folded into the
    kernel and bias (`W * gamma / sqrt(var + eps)`, `(-mean) * gamma /
    sqrt(var + eps) + beta`), then the activation: the same outputs as
    `{base}` followed by `BatchNormalization` and the activation, with one op
    fewer per layer. `kreg.fold_batch_norms` turns it into a plain `{base}`.

    Args:
        {args}
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
        **kwargs: Every other argument of `keras.layers.{base}` (`strides`,
            `padding`, `kernel_initializer`, ...) and base layer arguments
            (`name`, `dtype`, `trainable`). `use_bias` and the bias arguments are
            refused: the batch norm's beta is the bias.

    Call arguments:
        inputs: The input tensor, as for `keras.layers.{base}`.
        training: Python boolean. Batch statistics (`True`) or the folded
            kernel (`False`, the default outside `fit`).

    Example:

    >>> layer = {name}({example_args}, activation="relu")
    >>> tuple(layer(keras.ops.ones({example_shape}), training=False).shape)
    {example_output}

    Reference:
        - [Ioffe & Szegedy, 2015](https://arxiv.org/abs/1502.03167), Batch
          Normalization.
        - [Jacob et al., 2018](https://arxiv.org/abs/1712.05877), folding batch
          norm into the preceding convolution for inference.
"""


class FusedBatchNormLayer(keras.layers.Layer):
    """What the fused layers share; subclasses name their Keras layer and its op."""

    # The Keras layer the batch norm follows; its kernel layout is in FOLDABLE_KERNELS.
    base_class = None

    def __init__(self, *args, activation=None, **kwargs):
        for arg in _BIAS_ARGS:
            if arg in kwargs:
                raise ValueError(
                    f"`{type(self).__name__}` takes no `{arg}`: its batch norm's beta "
                    f"is the bias (use `center=False` for none). Received: "
                    f"{arg}={kwargs[arg]!r}"
                )
        batch_norm_kwargs, kwargs = split_batch_norm_arguments(kwargs)
        if "axis" in batch_norm_kwargs:
            raise ValueError(
                f"`{type(self).__name__}` takes no `axis`: its batch norm normalizes the "
                f"channel axis of `data_format`. Received: axis={batch_norm_kwargs['axis']!r}"
            )
        base_kwargs = {key: kwargs.pop(key) for key in _BASE_LAYER_ARGS if key in kwargs}
        super().__init__(**base_kwargs)
        self.activation = keras.activations.get(activation)
        # Created here, not in build, so that a bad conv/dense or batch norm
        # argument fails at construction, with Keras's own message.
        self.base_layer = self.base_class(
            *args, use_bias=False, activation=None, dtype=self.dtype_policy, name="base", **kwargs
        )
        data_format = getattr(self.base_layer, "data_format", None)  # None for Dense
        self._channel_axis = 1 if data_format == "channels_first" else -1
        self.batch_norm = keras.layers.BatchNormalization(
            axis=self._channel_axis, dtype=self.dtype_policy, name="batch_norm", **batch_norm_kwargs
        )

    def build(self, input_shape):
        self.base_layer.build(input_shape)
        self.batch_norm.build(self.base_layer.compute_output_shape(input_shape))

    def folded_kernel_and_bias(self):
        """The kernel and bias of the single layer this one is at inference."""
        bn = self.batch_norm
        scale, shift = batch_norm_scale_and_shift(
            bn.moving_mean,
            bn.moving_variance,
            bn.epsilon,
            gamma=bn.gamma if bn.scale else None,
            beta=bn.beta if bn.center else None,
        )
        return fold_scale_and_shift(
            self.base_layer.kernel, None, scale, shift, FOLDABLE_KERNELS[self.base_class][1]
        )

    def _apply_kernel(self, inputs, kernel):
        raise NotImplementedError

    def unfolded_call(self, inputs, training=False):
        """The conv/dense, then the batch norm layer itself, then the activation.

        What training runs; `kreg.adapt_batchnorm` and `PreciseBatchNorm` run it at
        inference too, so that the batch norm sees (and records) its inputs.
        """
        return self.activation(self.batch_norm(self.base_layer(inputs), training=training))

    def call(self, inputs, training=False):
        if training and self.trainable:
            return self.unfolded_call(inputs, training=True)
        kernel, bias = self.folded_kernel_and_bias()
        # Folded in float32 (the statistics' dtype), run in the compute dtype.
        kernel = ops.cast(kernel, self.compute_dtype)
        bias = ops.cast(bias, self.compute_dtype)
        outputs = self._apply_kernel(inputs, kernel)
        if self._channel_axis == 1:
            bias = ops.reshape(bias, (-1,) + (1,) * (len(outputs.shape) - 2))
        outputs = ops.add(outputs, bias)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return self.base_layer.compute_output_shape(input_shape)

    def to_plain_layer(self):
        """A built Keras `base_class` layer (with bias) computing this layer's inference."""
        config = self.base_layer.get_config()
        config.update(
            name=self.name,
            use_bias=True,
            activation=keras.activations.serialize(self.activation),
            dtype=self.dtype_policy,
        )
        plain = self.base_class.from_config(config)
        plain.build(self.base_layer.get_build_config()["input_shape"])
        kernel, bias = self.folded_kernel_and_bias()
        plain.set_weights([ops.convert_to_numpy(kernel), ops.convert_to_numpy(bias)])
        return plain

    def get_config(self):
        base_config = super().get_config()
        layer_config = {
            key: value
            for key, value in self.base_layer.get_config().items()
            if key not in _OWN_CONFIG_KEYS
        }
        batch_norm = batch_norm_config(self.batch_norm)
        del batch_norm["axis"]  # from data_format
        config = {"activation": keras.activations.serialize(self.activation), **batch_norm}
        return {**base_config, **layer_config, **config}


class _ConvBatchNorm(FusedBatchNormLayer):
    def _apply_kernel(self, inputs, kernel):
        return self.base_layer.convolution_op(inputs, kernel)


def _doc(base, name, op, args, example_args, example_shape, example_output):
    return _DOC.format(
        base=base,
        name=name,
        op=op,
        args=args,
        example_args=example_args,
        example_shape=example_shape,
        example_output=example_output,
    )


_CONV_ARGS = """filters: Integer, the number of output channels.
        kernel_size: Integer or tuple, the size of the convolution window."""


@keras.saving.register_keras_serializable(package="kreg")
class Conv1DBatchNorm(_ConvBatchNorm):
    __doc__ = "`Conv1D` and `BatchNormalization` as one layer, one conv at inference.\n" + _doc(
        "Conv1D", "Conv1DBatchNorm", "convolution", _CONV_ARGS, "8, 3", "(2, 10, 4)", "(2, 8, 8)"
    )
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


@keras.saving.register_keras_serializable(package="kreg")
class Conv2DBatchNorm(_ConvBatchNorm):
    __doc__ = "`Conv2D` and `BatchNormalization` as one layer, one conv at inference.\n" + _doc(
        "Conv2D",
        "Conv2DBatchNorm",
        "convolution",
        _CONV_ARGS,
        "8, 3",
        "(2, 10, 10, 4)",
        "(2, 8, 8, 8)",
    )
    base_class = keras.layers.Conv2D


@keras.saving.register_keras_serializable(package="kreg")
class Conv3DBatchNorm(_ConvBatchNorm):
    __doc__ = "`Conv3D` and `BatchNormalization` as one layer, one conv at inference.\n" + _doc(
        "Conv3D",
        "Conv3DBatchNorm",
        "convolution",
        _CONV_ARGS,
        "8, 3",
        "(2, 6, 6, 6, 4)",
        "(2, 4, 4, 4, 8)",
    )
    base_class = keras.layers.Conv3D


@keras.saving.register_keras_serializable(package="kreg")
class DepthwiseConv2DBatchNorm(FusedBatchNormLayer):
    __doc__ = (
        "`DepthwiseConv2D` and `BatchNormalization` as one layer, one depthwise conv "
        "at inference.\n"
    ) + _doc(
        "DepthwiseConv2D",
        "DepthwiseConv2DBatchNorm",
        "depthwise convolution",
        """kernel_size: Integer or tuple, the size of the convolution window.
        depth_multiplier: Integer, output channels per input channel.""",
        "3, depth_multiplier=2",
        "(2, 10, 10, 4)",
        "(2, 8, 8, 8)",
    )
    base_class = keras.layers.DepthwiseConv2D

    def _apply_kernel(self, inputs, kernel):
        layer = self.base_layer
        return ops.depthwise_conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )


@keras.saving.register_keras_serializable(package="kreg")
class DenseBatchNorm(FusedBatchNormLayer):
    __doc__ = "`Dense` and `BatchNormalization` as one layer, one matmul at inference.\n" + _doc(
        "Dense",
        "DenseBatchNorm",
        "matmul",
        "units: Positive integer, dimensionality of the output space.",
        "8",
        "(2, 4)",
        "(2, 8)",
    )
    base_class = keras.layers.Dense

    def _apply_kernel(self, inputs, kernel):
        return ops.matmul(inputs, kernel)

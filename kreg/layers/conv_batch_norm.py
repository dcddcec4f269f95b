"""What the fused layers share: a conv or dense layer and its batch norm as one layer.

Each public fused layer has its own file (conv1d_batch_norm.py, conv2d_batch_norm.py,
conv3d_batch_norm.py, depthwise_conv2d_batch_norm.py, dense_batch_norm.py) with its
docstring written out in full, as Keras writes conv2d.py.
"""

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
        """The inference op with `kernel`: a convolution unless a subclass says otherwise."""
        return self.base_layer.convolution_op(inputs, kernel)

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

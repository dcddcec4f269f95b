import keras
import numpy as np
from keras import ops

from kreg._validation import check_bool

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@keras.saving.register_keras_serializable(package="kreg")
class WeightNormalization(keras.layers.Wrapper):
    """Reparameterizes a Dense or Conv layer's kernel as a direction and a length.

    Each output unit's weight vector is `w = g * v / ||v||`: its length `g` and
    its direction `v` (the wrapped layer's kernel) are trained separately,
    which conditions the optimization like batch norm does, without batch
    statistics (so it fits small batches and models where batch statistics
    are noise, such as reinforcement learning). It wraps Dense and Conv1D/2D/3D
    layers only: not recurrent layers, nor transposed or depthwise
    convolutions, whose kernels hold their output units on another axis.
    `g` starts at `||v||`, so the wrapped layer starts out computing what it
    computed before.

    With `data_init=True`, the first training batch sets each unit's length
    and bias so that the pre-activations of that batch have mean 0 and
    variance 1 (the paper's data-dependent initialization, section 3). The
    change is held in two frozen offsets added to `g` and to the bias
    (non-trainable variables, saved with the model), so the trained `g` and
    bias get exactly the gradients of the paper's `g` and `b`: an offset that
    is added does not scale a gradient, where a frozen factor would. Weight
    decay acts on `g` and the bias without their offsets.
    `kreg.fold_batch_norms` turns the wrapper into the plain layer, with the
    kernel `w`, for inference and export.

    Args:
        layer: A `keras.layers.Dense` or `keras.layers.Conv1D/2D/3D` (not
            built, or built).
        data_init: Boolean. Whether the first training batch sets the length
            and bias of each unit (data-dependent initialization). Defaults to
            `False`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: The wrapped layer's input.
        training: Python boolean. With `data_init=True`, the first call with
            `training=True` measures its batch.

    Example:

    >>> layer = WeightNormalization(keras.layers.Dense(3))
    >>> y = layer(keras.ops.ones((2, 4)))
    >>> tuple(y.shape)
    (2, 3)

    Reference:
        - [Salimans & Kingma, 2016](https://arxiv.org/abs/1602.07868), weight
          normalization: a simple reparameterization to accelerate training of
          deep neural networks.
    """

    def __init__(self, layer, data_init=False, **kwargs):
        if type(layer) not in (keras.layers.Dense, *_CONVS):
            raise ValueError(
                "Invalid value received for argument `layer`. Expected a "
                "keras.layers.Dense, Conv1D, Conv2D or Conv3D layer. Received: "
                f"layer={layer!r} of type {type(layer).__name__}"
            )
        super().__init__(layer, **kwargs)
        self.data_init = check_bool("data_init", data_init)

    def _channel_axis(self, rank):
        if isinstance(self.layer, _CONVS) and self.layer.data_format == "channels_first":
            return 1
        return rank - 1

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = self.layer.kernel
        units = kernel.shape[-1]

        def kernel_norm(shape, dtype=None):
            # A tensor, not NumPy: a subclassed model builds its layers inside
            # its first traced call.
            squared = ops.sum(
                ops.square(ops.cast(kernel, "float32")), axis=tuple(range(len(kernel.shape) - 1))
            )
            return ops.cast(ops.sqrt(squared), dtype or "float32")

        self.g = self.add_weight(name="g", shape=(units,), initializer=kernel_norm, trainable=True)
        if self.data_init:
            # Non-trainable and averaged across replicas: each replica measures its
            # own part of the first batch.
            self.g_offset = self.add_weight(
                name="g_offset",
                shape=(units,),
                initializer="zeros",
                trainable=False,
                aggregation="mean",
            )
            self.bias_offset = self.add_weight(
                name="bias_offset",
                shape=(units,),
                initializer="zeros",
                trainable=False,
                aggregation="mean",
            )
            self.initialized = self.add_weight(
                name="initialized",
                shape=(),
                initializer="zeros",
                trainable=False,
                aggregation="mean",
            )

    def length(self):
        """Each unit's `g` (with the data-dependent offset), in float32."""
        g = ops.cast(self.g, "float32")
        return g + ops.cast(self.g_offset, "float32") if self.data_init else g

    def normalized_kernel(self):
        """`g * v / ||v||` per output unit, in float32."""
        kernel = ops.cast(self.layer.kernel, "float32")
        squared = ops.sum(ops.square(kernel), axis=tuple(range(len(kernel.shape) - 1)))
        return kernel * (self.length() * ops.rsqrt(ops.maximum(squared, 1e-12)))

    def _linear(self, inputs, kernel):
        """The wrapped layer's output before bias and activation, with `kernel`."""
        if isinstance(self.layer, keras.layers.Conv1D) and self.layer.padding == "causal":
            # Conv1D.call pads causal inputs itself (keras/src/layers/convolutional/
            # conv1d.py); its convolution_op would hand "causal" to ops.conv.
            left = self.layer.dilation_rate[0] * (self.layer.kernel_size[0] - 1)
            padding = [(0, 0), (0, 0), (0, 0)]
            padding[2 if self.layer.data_format == "channels_first" else 1] = (left, 0)
            return ops.conv(
                ops.pad(inputs, padding),
                kernel,
                strides=list(self.layer.strides),
                padding="valid",
                dilation_rate=self.layer.dilation_rate,
                data_format=self.layer.data_format,
            )
        if isinstance(self.layer, _CONVS):
            return self.layer.convolution_op(inputs, kernel)
        return ops.matmul(inputs, kernel)

    def _broadcast(self, vector, rank):
        shape = [1] * rank
        shape[self._channel_axis(rank)] = -1
        return ops.reshape(vector, shape)

    def call(self, inputs, training=False):
        kernel = ops.cast(self.normalized_kernel(), self.compute_dtype)
        outputs = self._linear(inputs, kernel)
        rank = len(outputs.shape)
        if self.layer.use_bias:
            outputs = outputs + self._broadcast(ops.cast(self.layer.bias, outputs.dtype), rank)
        if self.data_init:
            outputs = outputs + ops.cast(self._broadcast(self.bias_offset, rank), outputs.dtype)
            if training:
                outputs = self._initialize_from_batch(outputs)
        if self.layer.activation is not None:
            outputs = self.layer.activation(outputs)
        return outputs

    def _initialize_from_batch(self, pre_activations):
        """Once (`initialized` is 0): sets the offsets so that this batch's
        pre-activations `y` become `(y - mean) / std`, and returns those. With
        `y = g t + b` (`t` the unit-length direction's output), that is
        `g <- g / std` and `b <- (b - mean) / std`, the paper's
        `g <- 1 / std(t)`, `b <- -mean(t) / std(t)`. `where`, not a branch, so
        the same code runs compiled on every backend."""
        rank = len(pre_activations.shape)
        axes = [axis for axis in range(rank) if axis != self._channel_axis(rank)]
        values = ops.cast(ops.stop_gradient(pre_activations), "float32")
        mean = ops.mean(values, axis=axes)
        std = ops.sqrt(ops.var(values, axis=axes) + 1e-6)
        first = ops.convert_to_tensor(self.initialized) < 0.5
        g = ops.cast(ops.convert_to_tensor(self.g), "float32")
        bias = (
            ops.cast(ops.convert_to_tensor(self.layer.bias), "float32")
            if self.layer.use_bias
            else 0.0
        )
        # Cast: under mixed precision a variable read in `call` is autocast to float16.
        g_offset = ops.cast(ops.convert_to_tensor(self.g_offset), "float32")
        bias_offset = ops.cast(ops.convert_to_tensor(self.bias_offset), "float32")
        length, total_bias = g + g_offset, bias + bias_offset
        self.g_offset.assign(ops.where(first, length / std - g, g_offset))
        self.bias_offset.assign(ops.where(first, (total_bias - mean) / std - bias, bias_offset))
        self.initialized.assign(1.0)
        normalized = (
            pre_activations - ops.cast(self._broadcast(mean, rank), pre_activations.dtype)
        ) / ops.cast(self._broadcast(std, rank), pre_activations.dtype)
        return ops.where(first, normalized, pre_activations)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def to_plain_layer(self):
        """The wrapped layer's type with the kernel `w` (and the data-dependent
        offsets folded in): what `kreg.fold_batch_norms` puts in its place."""
        kernel = ops.convert_to_numpy(self.normalized_kernel()).astype("float64")
        units = kernel.shape[-1]
        bias = (
            ops.convert_to_numpy(self.layer.bias).astype("float64")
            if self.layer.use_bias
            else np.zeros(units)
        )
        if self.data_init:
            bias = bias + ops.convert_to_numpy(self.bias_offset).astype("float64")
        config = self.layer.get_config()
        needs_bias = self.layer.use_bias or bool(np.any(bias != 0))
        config.update(name=self.name, use_bias=needs_bias, dtype=self.dtype_policy)
        plain = type(self.layer).from_config(config)
        plain.build_from_config(self.layer.get_build_config())
        values = [kernel, bias] if needs_bias else [kernel]
        plain.set_weights(
            [value.astype(weight.dtype) for value, weight in zip(values, plain.weights)]
        )
        return plain

    def get_config(self):
        base_config = super().get_config()
        return {**base_config, "data_init": self.data_init}

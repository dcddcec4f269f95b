"""DropBlock: dropout of contiguous regions of 1D, 2D and 3D feature maps."""

import keras
from keras import ops

from kreg import _keras_compat
from kreg._validation import check_choice
from kreg._validation import check_sizes
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import rate_property

# Layers that keep their input's layout, so the `data_format` of the layer that
# fed them still describes their output.
_LAYOUT_KEEPING = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU,
    keras.layers.PReLU, keras.layers.BatchNormalization, keras.layers.GaussianNoise,
    keras.layers.GaussianDropout, keras.layers.AlphaDropout, keras.layers.ActivityRegularization,
)  # fmt: skip


class DropBlock(AdjustableRates, keras.layers.Layer):
    """Base of `DropBlock1D/2D/3D`: the algorithm for any number of spatial axes."""

    spatial_rank = None

    def __init__(self, rate, block_size, data_format=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.add_rate("rate", rate)
        self.block_size = check_sizes("block_size", block_size)
        if len(self.block_size) == 1:
            self.block_size = self.block_size * self.spatial_rank
        if len(self.block_size) != self.spatial_rank:
            raise ValueError(
                "Invalid value received for argument `block_size`. Expected a positive "
                f"integer or a tuple of {self.spatial_rank}. Received: block_size={block_size!r}"
            )
        if data_format is None:
            data_format = keras.config.image_data_format()
        self.data_format = check_choice(
            "data_format", data_format, ("channels_last", "channels_first")
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    rate = rate_property("rate", "The current drop rate (a float; assign to change it).")

    def _spatial_axes(self):
        first = 1 if self.data_format == "channels_last" else 2
        return tuple(range(first, first + self.spatial_rank))

    def _spatial_sizes(self, shape):
        """The feature map's static spatial sizes, checked against `block_size`."""
        if len(shape) != self.spatial_rank + 2:
            raise ValueError(
                f"`{type(self).__name__}` expects inputs of rank {self.spatial_rank + 2} "
                f"(batch, {self.spatial_rank} spatial axes, channels). Received an input of "
                f"shape {tuple(shape)}."
            )
        sizes = tuple(shape[axis] for axis in self._spatial_axes())
        if any(size is None for size in sizes):
            raise ValueError(
                f"`{type(self).__name__}` needs static spatial sizes (the seed rate depends "
                f"on them). Received an input of shape {tuple(shape)} with "
                f"data_format={self.data_format!r}."
            )
        if any(block > size for block, size in zip(self.block_size, sizes)):
            raise ValueError(
                "Invalid value received for argument `block_size`. Expected at most the "
                f"feature map's spatial size {sizes} (data_format={self.data_format!r}, "
                f"input shape {tuple(shape)}). Received: block_size={self.block_size}"
            )
        return sizes

    def build(self, input_shape):
        self._spatial_sizes(input_shape)

    def compute_output_spec(self, inputs, *args, **kwargs):
        # A symbolic call (a functional model being built): the layer that made
        # the input, or the nearest before it through layout-keeping layers,
        # states its layout when it has a `data_format` (a conv, a pooling).
        self._check_producer_layout(inputs)
        return super().compute_output_spec(inputs, *args, **kwargs)

    def _check_producer_layout(self, tensor):
        for _ in range(16):
            history = getattr(tensor, "_keras_history", None)
            if history is None:
                return
            producer = _keras_compat.tensor_history(tensor)[0]
            declared = getattr(producer, "data_format", None)
            if declared in ("channels_last", "channels_first"):
                if declared != self.data_format:
                    raise ValueError(
                        "Invalid value received for argument `data_format`. Expected the "
                        f"layout of its input, {declared!r} (from `{producer.name}`). "
                        f"Received: data_format={self.data_format!r}"
                    )
                return
            inputs = _keras_compat.producer_inputs(tensor)
            if not isinstance(producer, _LAYOUT_KEEPING) or len(inputs) != 1:
                return
            tensor = inputs[0]

    def call(self, inputs, training=False):
        sizes = self._spatial_sizes(inputs.shape)
        if not training or not self.rate_in_use("rate"):
            return inputs
        rate = ops.cast(self.rate_variable("rate"), "float32")
        # Ghiasi et al. 2018, eq. (1): the seed rate that drops `rate` of the
        # units once every seed grows into a block, counting only the seeds
        # whose block fits inside the feature map.
        block_area = 1.0
        fraction_of_valid_seeds = 1.0
        for block, size in zip(self.block_size, sizes):
            block_area *= block
            fraction_of_valid_seeds *= size / (size - block + 1)
        seed_rate = rate / block_area * fraction_of_valid_seeds
        # Seeds are drawn only where a seed's block lies wholly inside the map
        # (`size - block + 1` positions along each axis), not drawn everywhere
        # and then masked: fewer random numbers, and no full-size mask.
        noise = keras.random.uniform(
            self._valid_seed_shape(ops.shape(inputs), sizes),
            dtype="float32",
            seed=self.seed_generator,
        )
        dropped = self._grow_blocks(ops.cast(noise < seed_rate, "float32"))
        keep = 1.0 - dropped
        # Rescaled by the kept fraction of the whole batch, as in the paper's
        # algorithm 1 (count(M) / count_ones(M)).
        kept_fraction = ops.maximum(ops.mean(keep), 1e-7)
        return inputs * ops.cast(keep / kept_fraction, inputs.dtype)

    def _valid_seed_shape(self, shape, sizes):
        """The input's shape with each spatial size cut to the seed positions
        whose block fits inside the map: `[k // 2, size - (k - 1) // 2)` (a seed at
        `j` drops `[j - k // 2, j - k // 2 + k)`)."""
        shape = list(shape)
        for axis, block, size in zip(self._spatial_axes(), self.block_size, sizes):
            shape[axis] = size - block + 1
        return tuple(shape)

    def _grow_blocks(self, seeds):
        """Each seed spread to its block by max-pooling (stride 1) over the seeds
        placed back in the full map. The padding is explicit, so every backend
        pads alike: `k // 2` zeros before the valid seeds and `(k - 1) // 2` after
        restore the map, then `(k - 1) // 2` before and `k // 2` after are the
        pooling's "same" padding: `k - 1` on each side in all."""
        padding = [(0, 0)] * (self.spatial_rank + 2)
        for axis, block in zip(self._spatial_axes(), self.block_size):
            padding[axis] = (block - 1, block - 1)
        return ops.max_pool(
            ops.pad(seeds, padding),
            pool_size=self.block_size,
            strides=1,
            padding="valid",
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            "rate": self.rate,
            "block_size": self.block_size,
            "data_format": self.data_format,
            "seed": self.seed,
        }
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="kreg")
class DropBlock1D(DropBlock):
    """Drops contiguous segments of a sequence's feature maps (DropBlock on 1D).

    Element dropout on a feature map barely regularizes it: a neighbouring
    position carries the same information. DropBlock drops whole segments of
    `block_size` positions of each channel instead. Seeds are drawn at a rate
    computed from `rate`, the block size and the map's length so that about
    `rate` of the units are dropped; each seed is spread to its block by
    max-pooling, and the kept units are rescaled by the kept fraction of the
    batch. At inference the layer is the identity.

    Args:
        rate: Float in `[0, 1)`. Fraction of the units to drop. Held in a
            variable that `call` reads, so a schedule (`layer.rate = 0.1`)
            applies at the next step without a retrace (a layer built with
            rate 0 never drops and cannot be raised later).
        block_size: Positive integer (or a tuple of one), the length of a
            dropped segment; at most the input's length.
        data_format: `"channels_last"` (`(batch, steps, channels)`) or
            `"channels_first"` (`(batch, channels, steps)`). Defaults to
            `keras.config.image_data_format()`.
            A mismatch is refused where the nearest layer before it with a
            `data_format` (through activations and batch norm) states the
            other, or an axis read as spatial is shorter than `block_size`;
            elsewhere a shape cannot show which axis holds the channels.
        seed: Integer, optional. Seed of the random draws.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A rank-3 tensor with a static length.
        training: Python boolean. Whether to drop (`True`) or to pass the inputs
            through (`False`, the default outside `fit`).

    Example:

    >>> layer = DropBlock1D(0.2, block_size=3, seed=1)
    >>> y = layer(keras.ops.ones((2, 16, 4)), training=True)
    >>> tuple(y.shape)
    (2, 16, 4)

    Reference:
        - [Ghiasi et al., 2018](https://arxiv.org/abs/1810.12890), DropBlock: a
          regularization method for convolutional networks.
    """

    spatial_rank = 1


@keras.saving.register_keras_serializable(package="kreg")
class DropBlock2D(DropBlock):
    """Drops contiguous square regions of image feature maps (DropBlock).

    Element dropout on a conv feature map barely regularizes it: neighbouring
    activations carry the same information. DropBlock drops whole
    `block_size x block_size` regions of each channel instead. Seeds are drawn
    at a rate computed from `rate`, the block size and the map's size so that
    about `rate` of the units are dropped; each seed is spread to its block by
    max-pooling, and the kept units are rescaled by the kept fraction of the
    batch. At inference the layer is the identity. `block_size=1` is element
    dropout; a block as large as the map approaches `SpatialDropout2D`.

    Args:
        rate: Float in `[0, 1)`. Fraction of the units to drop. Held in a
            variable that `call` reads, so a schedule (`layer.rate = 0.1`)
            applies at the next step without a retrace (a layer built with
            rate 0 never drops and cannot be raised later). The paper raises
            it linearly from 0 during training.
        block_size: Positive integer or a tuple of two, the block's height and
            width; at most the feature map's size. The paper uses 7 on the
            late stages of a ResNet-50.
        data_format: `"channels_last"` (`(batch, height, width, channels)`) or
            `"channels_first"`. Defaults to `keras.config.image_data_format()`.
            A mismatch is refused where the nearest layer before it with a
            `data_format` (through activations and batch norm) states the
            other, or an axis read as spatial is shorter than `block_size`;
            elsewhere a shape cannot show which axis holds the channels.
        seed: Integer, optional. Seed of the random draws.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A rank-4 tensor with static height and width.
        training: Python boolean. Whether to drop (`True`) or to pass the inputs
            through (`False`, the default outside `fit`).

    Example:

    >>> layer = DropBlock2D(0.1, block_size=3, seed=1)
    >>> y = layer(keras.ops.ones((2, 8, 8, 4)), training=True)
    >>> tuple(y.shape)
    (2, 8, 8, 4)

    Reference:
        - [Ghiasi et al., 2018](https://arxiv.org/abs/1810.12890), DropBlock: a
          regularization method for convolutional networks.
    """

    spatial_rank = 2


@keras.saving.register_keras_serializable(package="kreg")
class DropBlock3D(DropBlock):
    """Drops contiguous cubes of volumetric feature maps (DropBlock on 3D).

    Element dropout on a feature map barely regularizes it: neighbouring
    activations carry the same information. DropBlock drops whole blocks of
    `block_size` along each of the three spatial axes of each channel instead.
    Seeds are drawn at a rate computed from `rate`, the block size and the
    map's size so that about `rate` of the units are dropped; each seed is
    spread to its block by max-pooling, and the kept units are rescaled by the
    kept fraction of the batch. At inference the layer is the identity.

    Args:
        rate: Float in `[0, 1)`. Fraction of the units to drop. Held in a
            variable that `call` reads, so a schedule (`layer.rate = 0.1`)
            applies at the next step without a retrace (a layer built with
            rate 0 never drops and cannot be raised later).
        block_size: Positive integer or a tuple of three; at most the feature
            map's size along each axis.
        data_format: `"channels_last"` (`(batch, d1, d2, d3, channels)`) or
            `"channels_first"`. Defaults to `keras.config.image_data_format()`.
            A mismatch is refused where the nearest layer before it with a
            `data_format` (through activations and batch norm) states the
            other, or an axis read as spatial is shorter than `block_size`;
            elsewhere a shape cannot show which axis holds the channels.
        seed: Integer, optional. Seed of the random draws.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A rank-5 tensor with static spatial sizes.
        training: Python boolean. Whether to drop (`True`) or to pass the inputs
            through (`False`, the default outside `fit`).

    Example:

    >>> layer = DropBlock3D(0.1, block_size=2, seed=1)
    >>> y = layer(keras.ops.ones((2, 4, 4, 4, 3)), training=True)
    >>> tuple(y.shape)
    (2, 4, 4, 4, 3)

    Reference:
        - [Ghiasi et al., 2018](https://arxiv.org/abs/1810.12890), DropBlock: a
          regularization method for convolutional networks.
    """

    spatial_rank = 3

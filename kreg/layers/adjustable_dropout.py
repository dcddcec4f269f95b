import keras
from keras import ops

from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property


@keras.saving.register_keras_serializable(package="kreg")
class AdjustableDropout(AdjustableRates, keras.layers.Layer):
    """Keras's `Dropout`, with a rate a callback can change during training.

    Keras's `Dropout` keeps its rate as a Python float, baked into the compiled
    train function when it is traced: no schedule can reach it. This layer takes
    the same arguments and computes the same thing (inverted dropout, kept units
    scaled by `1 / (1 - rate)`, the identity at inference), but holds its rate in
    a variable that `call` reads, so `kreg.callbacks.DropoutSchedule` or
    `OverfittingDetector(action="strengthen")` can change it between epochs and
    the next step uses it, without a retrace.

    `noise_shape` covers Keras's `SpatialDropout1D/2D/3D` too: they are dropout
    with a mask of size 1 along the spatial axes (`(None, 1, None)` for
    `SpatialDropout1D`, `(None, 1, 1, None)` for `SpatialDropout2D` with
    channels last). `kreg.convert_dropouts(model)` replaces all four by this
    layer in a copy of any Sequential or functional model.

    Args:
        rate: Float in `[0, 1)`. Fraction of the input units to drop. Held in a
            variable that `call` reads (`layer.rate = 0.4` applies at the next
            step). A layer built with rate 0 never drops and cannot be raised
            later.
        noise_shape: Optional tuple of integers or `None`s: the shape of the
            binary mask, broadcast against the inputs; `None` takes the input's
            size along that axis. As in `keras.layers.Dropout`.
        seed: Integer, optional. Seed of the random mask.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor of any rank.
        training: Python boolean. Whether to drop (`True`) or to pass the inputs
            through (`False`, the default outside `fit`).

    Example:

    >>> layer = AdjustableDropout(0.5, noise_shape=(None, 1, None), seed=1)
    >>> x = keras.ops.ones((2, 4, 3))
    >>> y = layer(x, training=True)
    >>> bool(keras.ops.all(y[:, 0] == y[:, 3]))  # one mask along axis 1
    True
    >>> layer.rate = 0.0  # the next call drops nothing
    >>> bool(keras.ops.all(layer(x, training=True) == x))
    True

    Reference:
        - [Srivastava et al., 2014](https://jmlr.org/papers/v15/srivastava14a.html),
          dropout.
        - [Tompson et al., 2015](https://arxiv.org/abs/1411.4280), spatial dropout
          (whole feature maps).
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.add_rate("rate", rate)
        self.noise_shape = _check_noise_shape(noise_shape)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    rate = rate_property("rate", "The current dropout rate (a float; assign to change it).")

    def call(self, inputs, training=False):
        if not training or not self.rate_in_use("rate"):
            return inputs
        noise_shape = None
        if self.noise_shape is not None:
            shape = ops.shape(inputs)
            noise_shape = [
                shape[axis] if size is None else size for axis, size in enumerate(self.noise_shape)
            ]
        return dropout(
            inputs, self.rate_variable("rate"), noise_shape=noise_shape, seed=self.seed_generator
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed}
        return {**base_config, **config}


def _check_noise_shape(noise_shape):
    if noise_shape is None:
        return None
    if isinstance(noise_shape, str) or not hasattr(noise_shape, "__iter__"):
        raise ValueError(
            "Invalid value received for argument `noise_shape`. Expected a tuple of "
            f"positive integers or None. Received: noise_shape={noise_shape!r}"
        )
    noise_shape = tuple(noise_shape)
    for size in noise_shape:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ValueError(
                "Invalid value received for argument `noise_shape`. Expected a tuple of "
                f"positive integers or None. Received: noise_shape={noise_shape!r}"
            )
    return noise_shape

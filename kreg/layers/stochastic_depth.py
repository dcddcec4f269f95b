import keras
from keras import ops

from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property


@keras.saving.register_keras_serializable(package="kreg")
class StochasticDepth(AdjustableRates, keras.layers.Layer):
    """Adds a residual branch to its shortcut, dropping the branch per sample.

    In training, each sample's residual branch is kept with probability
    `1 - rate` and scaled by `1 / (1 - rate)`, or dropped entirely, so the block
    is the identity for that sample ("drop path"); the shortcut is always kept.
    At inference the layer is exactly `shortcut + residual`, a `keras.layers.Add`.

    Use one per residual block, with rates rising linearly with depth
    (`kreg.stochastic_depth_rates`), or let `kreg.add_stochastic_depth` put them
    into an existing functional model.

    Args:
        rate: Float in `[0, 1)`. Probability of dropping the residual branch of
            a sample. Held in a variable that `call` reads, so `layer.rate = 0.2`
            on a compiled model applies at the next step without a retrace (a
            layer built with rate 0 never drops and cannot be raised later).
        seed: Integer, optional. Seed of the random draws.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A list `[shortcut, residual]` of two tensors of the same shape.
            Their Keras masks, if any, combine as in `keras.layers.Add`.
        training: Python boolean. Whether to drop (`True`) or to add the two
            inputs unchanged (`False`, the default outside `fit`).

    Example:

    >>> inputs = keras.Input((8, 8, 16))
    >>> branch = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    >>> outputs = StochasticDepth(0.2)([inputs, branch])
    >>> tuple(outputs.shape)
    (None, 8, 8, 16)

    Reference:
        - [Huang et al., 2016](https://arxiv.org/abs/1603.09382), deep networks
          with stochastic depth.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.add_rate("rate", rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    rate = rate_property(
        "rate", "The current drop rate of the branch (a float; assign to change it)."
    )

    def _check_inputs(self, shapes):
        if (
            not isinstance(shapes, (list, tuple))
            or len(shapes) != 2
            or not all(isinstance(shape, (list, tuple)) for shape in shapes)
        ):
            raise ValueError(
                f"`{type(self).__name__}` expects a list of two tensors [shortcut, residual]. "
                f"Received inputs of shapes: {shapes}"
            )
        shortcut, residual = (tuple(shape) for shape in shapes)
        if len(shortcut) != len(residual) or any(
            a is not None and b is not None and a != b for a, b in zip(shortcut, residual)
        ):
            raise ValueError(
                f"`{type(self).__name__}` expects the shortcut and the residual branch to have "
                f"the same shape (no broadcasting). Received: shortcut shape={shortcut}, "
                f"residual shape={residual}"
            )

    def build(self, input_shape):
        self._check_inputs(input_shape)

    def call(self, inputs, training=False):
        self._check_inputs([tuple(tensor.shape) for tensor in inputs])
        shortcut, residual = inputs
        if training and self.rate_in_use("rate"):
            noise_shape = (ops.shape(residual)[0],) + (1,) * (len(residual.shape) - 1)
            residual = dropout(
                residual,
                self.rate_variable("rate"),
                noise_shape=noise_shape,
                seed=self.seed_generator,
            )
        return ops.add(shortcut, residual)

    def compute_mask(self, inputs, mask=None):
        # As keras.layers.Add (keras/src/layers/merging/base_merge.py): a step
        # is kept where either input keeps it; no mask if either has none.
        if mask is None or not isinstance(mask, (list, tuple)) or any(m is None for m in mask):
            return None
        return ops.logical_or(mask[0], mask[1])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "seed": self.seed}
        return {**base_config, **config}

import keras
from keras import ops

from kreg._validation import check_int
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property


@keras.saving.register_keras_serializable(package="kreg")
class ConsistentDropout(AdjustableRates, keras.layers.Layer):
    """Dropout with one mask per sequence, shared by every timestep.

    Ordinary `Dropout` draws a new mask at every timestep, so a recurrent model
    sees a different network at each step and the noise washes out the signal it
    carries through time. `ConsistentDropout` ("variational" or "locked" dropout)
    draws one Bernoulli mask per sample and feature and applies it to every
    timestep of that sample. Kept units are scaled by `1 / (1 - rate)` so the
    expected activation is unchanged; at inference the layer is the identity.

    The mask does not depend on the data, so padded timesteps can never change it,
    and a Keras mask passes through unchanged.

    Args:
        rate: Float in `[0, 1)`. Fraction of the features to drop. Held in a
            variable that `call` reads, so `layer.rate = 0.4` on a trained
            model applies at the next step without a retrace (a layer built
            with rate 0 never drops and cannot be raised later).
        time_axis: Integer. The axis of the input that is time. The mask has size
            1 along it (it is broadcast over the timesteps). Any axis but the
            batch axis (0); negative values count from the end. Defaults to `1`,
            for inputs shaped `(batch, time, ...)`.
        seed: Integer, optional. Seed of the random mask.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor of rank 3 or more.
        training: Python boolean. Whether to drop (`True`) or to pass the inputs
            through (`False`, the default outside `fit`).
        mask: Optional boolean tensor `(batch, time)`, passed through.

    Example:

    >>> layer = ConsistentDropout(0.5, seed=1)
    >>> x = keras.ops.ones((2, 4, 3))
    >>> y = layer(x, training=True)
    >>> bool(keras.ops.all(y[:, 0] == y[:, 3]))  # the same mask at every step
    True

    Reference:
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), dropout
          masks shared across time in recurrent networks.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), "locked"
          dropout on the inputs and outputs of an LSTM stack (AWD-LSTM).
    """

    def __init__(self, rate, time_axis=1, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.add_rate("rate", rate)
        self.time_axis = check_int("time_axis", time_axis)
        if self.time_axis == 0:
            raise ValueError(
                "Invalid value received for argument `time_axis`. Expected any "
                "axis but the batch axis 0. Received: time_axis=0"
            )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    rate = rate_property("rate", "The current dropout rate (a float; assign to change it).")

    def _normalized_time_axis(self, rank):
        if rank < 3:
            raise ValueError(
                f"`{type(self).__name__}` expects inputs of rank 3 or more "
                f"(batch, time, features...). Received an input of rank {rank}."
            )
        if not -rank < self.time_axis < rank:
            raise ValueError(
                "Invalid value received for argument `time_axis`. Expected an "
                f"axis of the rank-{rank} input other than the batch axis, i.e. "
                f"in [1, {rank - 1}] or [{-rank + 1}, -1]. "
                f"Received: time_axis={self.time_axis}"
            )
        return self.time_axis % rank

    def build(self, input_shape):
        # Checked here, with the rank known, so a wrong axis fails when the model
        # is built rather than at the first training step.
        self._normalized_time_axis(len(input_shape))

    def call(self, inputs, training=False):
        time_axis = self._normalized_time_axis(len(inputs.shape))
        if not training or not self.rate_in_use("rate"):
            return inputs
        noise_shape = list(ops.shape(inputs))
        noise_shape[time_axis] = 1
        return dropout(
            inputs, self.rate_variable("rate"), noise_shape=noise_shape, seed=self.seed_generator
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "time_axis": self.time_axis, "seed": self.seed}
        return {**base_config, **config}

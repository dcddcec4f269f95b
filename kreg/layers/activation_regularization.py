"""AR and TAR: L2 penalties on a recurrent layer's outputs and on their changes."""

import keras
from keras import ops

from kreg._validation import check_at_least


@keras.saving.register_keras_serializable(package="kreg")
class ActivationRegularization(keras.layers.Layer):
    """Adds AR and TAR penalties on a sequence of activations; passes it through.

    Activation regularization (AR) penalizes large outputs of a recurrent
    layer, temporal activation regularization (TAR) penalizes outputs that
    change quickly from one timestep to the next. Put the layer after an RNN
    that returns sequences; during training it adds

        ar * mean(h_t ** 2) + tar * mean((h_t - h_{t-1}) ** 2)

    to the model's loss with `add_loss`, the means taken over the batch, the
    valid timesteps and the features (AWD-LSTM's `.pow(2).mean()`). With a
    Keras mask `(batch, time)` only unmasked timesteps count, and TAR only
    pairs of consecutive unmasked steps. The penalty is part of the training
    objective only, as in AWD-LSTM: `evaluate` and the validation loss of
    `fit` stay the data loss. The inputs pass through unchanged, with their
    mask.

    AWD-LSTM applies AR to the dropped-out output of the last recurrent layer
    and TAR to the output before dropout; one layer on either gives both.

    Args:
        ar: Non-negative float, the weight of the AR term (AWD-LSTM's
            `alpha`). Defaults to `2.0`, AWD-LSTM's value.
        tar: Non-negative float, the weight of the TAR term (AWD-LSTM's
            `beta`). Defaults to `1.0`, AWD-LSTM's value.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A tensor `(batch, time, features...)`; rank 2 `(batch,
            features)` is accepted when `tar` is 0.
        training: Python boolean. Whether to add the penalty.
        mask: Optional boolean tensor `(batch, time)`.

    Example:

    >>> layer = ActivationRegularization(ar=2.0, tar=1.0)
    >>> h = keras.ops.convert_to_tensor([[[1.0], [3.0]]])  # (batch, time, features)
    >>> _ = layer(h, training=True)
    >>> float(layer.losses[0])  # 2 * (1 + 9) / 2 + 1 * (3 - 1) ** 2
    14.0

    Reference:
        - [Merity et al., 2017](https://arxiv.org/abs/1708.01009), Revisiting
          Activation Regularization for Language RNNs.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), AR and TAR in
          AWD-LSTM.
    """

    def __init__(self, ar=2.0, tar=1.0, **kwargs):
        super().__init__(**kwargs)
        self.ar = float(check_at_least("ar", ar))
        self.tar = float(check_at_least("tar", tar))
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        minimum = 3 if self.tar > 0.0 else 2
        if rank < minimum:
            raise ValueError(
                f"`ActivationRegularization` with tar={self.tar} expects inputs of rank "
                f"{minimum} or more (batch, {'time, ' if minimum == 3 else ''}features). "
                f"Received an input of shape {tuple(input_shape)}."
            )

    def _weighted_mean(self, squares, weights):
        """Mean of `squares` over the elements whose `(batch, time)` weight is 1.

        A sum over a count of at least 1, so that a sequence of one step (no
        pair for TAR) or an all-masked batch adds 0 rather than NaN.
        """
        rank = len(squares.shape)
        if rank < 3:
            return ops.mean(squares)
        feature_axes = tuple(range(2, rank))
        per_step = ops.sum(squares, axis=feature_axes)
        features = 1.0
        for axis in feature_axes:
            features = features * ops.cast(ops.shape(squares)[axis], "float32")
        weights = ops.ones_like(per_step) if weights is None else ops.cast(weights, "float32")
        count = ops.sum(weights) * features
        return ops.sum(per_step * weights) / ops.maximum(count, 1.0)

    def call(self, inputs, training=False, mask=None):
        if not training or (self.ar == 0.0 and self.tar == 0.0):
            return inputs
        # In float32 under mixed precision: squares of float16 overflow early.
        h = ops.cast(inputs, "float32")
        if mask is not None and len(h.shape) < 3:
            mask = None  # a mask over time means nothing without a time axis
        penalty = 0.0
        if self.ar > 0.0:
            penalty = penalty + self.ar * self._weighted_mean(ops.square(h), mask)
        if self.tar > 0.0:
            pairs = None if mask is None else ops.logical_and(mask[:, 1:], mask[:, :-1])
            penalty = penalty + self.tar * self._weighted_mean(
                ops.square(h[:, 1:] - h[:, :-1]), pairs
            )
        self.add_loss(penalty)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ar": self.ar, "tar": self.tar}

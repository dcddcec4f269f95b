"""LSTM and GRU with DropConnect on the recurrent kernel, fused kernel kept."""

import keras
from keras import ops

from kreg._keras_compat import recurrent_kernel_replaced
from kreg._validation import check_choice
from kreg._validation import check_rate
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property

WEIGHT_DROPOUT_MODES = ("unit", "weight")

_WEIGHT_DROP_DOC = """
    During training, one DropConnect mask over the recurrent kernel is drawn per
    batch and used at every timestep; inference uses the full kernel. Because the
    mask lives in the weights rather than in the step function, the layer keeps
    the fused kernel (cuDNN on GPUs) wherever `keras.layers.{base}` would use it,
    unlike `recurrent_dropout`, which turns the fused kernel off on every
    backend. Where no fused kernel applies (on CPU, with masking), the generic
    loop reads the same masked kernel, so both paths compute the same thing.

    Every argument of `keras.layers.{base}` keeps its meaning, and with
    `weight_dropout=0` the layer computes exactly what `keras.layers.{base}` does,
    with the same weights (`set_weights` works both ways).

    Args:
        units: Positive integer, dimensionality of the output space.
        weight_dropout: Float in `[0, 1)`. Fraction of the recurrent kernel to
            drop during training. Kept entries are scaled by
            `1 / (1 - weight_dropout)`. Defaults to `0.0`. Held in a variable
            read at call time: `layer.weight_dropout = 0.4` applies at the next
            step without a retrace (unless the layer was built with 0).
        weight_dropout_mode: `"unit"` (default) drops whole rows of the recurrent
            kernel: a dropped hidden unit feeds none of the gates at the next
            step, the same for every timestep of the batch. `"weight"` drops
            single weights, as in AWD-LSTM.
        **kwargs: Every other argument of `keras.layers.{base}` (`dropout`,
            `recurrent_dropout`, `return_sequences`, `return_state`,
            `go_backwards`, `stateful`, `use_cudnn`, `seed`, ...). `seed` also
            seeds the weight-dropout mask.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, timesteps)`.
        training: Python boolean. Whether to apply dropout (`True` in `fit`).

    Example:

    >>> layer = {name}(8, weight_dropout=0.25, return_sequences=True, seed=0)
    >>> tuple(layer(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 5, 8)

    Reference:
        - [Wan et al., 2013](https://proceedings.mlr.press/v28/wan13.html),
          DropConnect.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), weight-dropped
          LSTM (AWD-LSTM): DropConnect on the hidden-to-hidden weights, one mask
          per batch, which keeps the fused cuDNN kernel.
"""


class _WeightDropMixin(AdjustableRates):
    """What `WeightDropLSTM` and `WeightDropGRU` share: the mask and its config."""

    weight_dropout = rate_property("weight_dropout", "The current weight-dropout rate.")

    def __init__(self, units, weight_dropout=0.0, weight_dropout_mode="unit", **kwargs):
        # Checked before the parent builds its cell, so a bad rate fails first.
        weight_dropout = check_rate("weight_dropout", weight_dropout)
        weight_dropout_mode = check_choice(
            "weight_dropout_mode", weight_dropout_mode, WEIGHT_DROPOUT_MODES
        )
        super().__init__(units, **kwargs)
        self.add_rate("weight_dropout", weight_dropout)
        self.weight_dropout_mode = weight_dropout_mode

    def _dropped_recurrent_kernel(self):
        cell = self.cell
        kernel = ops.cast(cell.recurrent_kernel, cell.compute_dtype)
        if self.weight_dropout_mode == "unit":
            # Row i of the recurrent kernel carries hidden unit i into every gate.
            mask_shape = (kernel.shape[0], 1)
        else:
            mask_shape = kernel.shape
        # The cell's own seed generator: the layer keeps exactly the variables of
        # the plain Keras layer, so weights transfer both ways.
        mask = dropout(
            ops.ones(mask_shape, dtype=cell.compute_dtype),
            self.rate_variable("weight_dropout"),
            seed=cell.seed_generator,
        )
        return kernel * mask

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not training or not self.rate_in_use("weight_dropout"):
            return super().inner_loop(
                sequences, initial_state, mask=mask, training=training
            )
        dropped = self._dropped_recurrent_kernel()
        with recurrent_kernel_replaced(self.cell, dropped):
            return super().inner_loop(
                sequences, initial_state, mask=mask, training=training
            )

    def get_config(self):
        config = {
            "weight_dropout": self.weight_dropout,
            "weight_dropout_mode": self.weight_dropout_mode,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kreg")
class WeightDropLSTM(_WeightDropMixin, keras.layers.LSTM):
    __doc__ = "LSTM with one DropConnect mask per batch on its recurrent kernel.\n" + (
        _WEIGHT_DROP_DOC.format(base="LSTM", name="WeightDropLSTM")
    )


@keras.saving.register_keras_serializable(package="kreg")
class WeightDropGRU(_WeightDropMixin, keras.layers.GRU):
    __doc__ = "GRU with one DropConnect mask per batch on its recurrent kernel.\n" + (
        _WEIGHT_DROP_DOC.format(base="GRU", name="WeightDropGRU")
    )

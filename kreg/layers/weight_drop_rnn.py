"""LSTM and GRU with DropConnect on the recurrent kernel, fused kernel kept."""

import keras
from keras import ops
from keras import tree

from kreg._keras_compat import recurrent_kernel_replaced
from kreg._keras_compat import rnn_dropout_masks_sliced
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_rate
from kreg._validation import keras_keywords
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import dropout
from kreg.layers.adjustable_rates import rate_property

WEIGHT_DROPOUT_MODES = ("unit", "weight")


class _WeightDropMixin(AdjustableRates):
    """What `WeightDropLSTM` and `WeightDropGRU` share: the mask and its config."""

    weight_dropout = rate_property("weight_dropout", "The current weight-dropout rate.")

    def __init__(
        self, units, *args, weight_dropout=0.0, weight_dropout_mode="unit", mask_groups=1, **kwargs
    ):
        # Keras's positional arguments pass through (a drop-in for LSTM / GRU).
        keras_class = keras.layers.LSTM if isinstance(self, keras.layers.LSTM) else keras.layers.GRU
        kwargs = keras_keywords(keras_class, 1, args, kwargs, "weight_dropout")
        # Checked before the parent builds its cell, so a bad rate fails first.
        weight_dropout = check_rate("weight_dropout", weight_dropout)
        weight_dropout_mode = check_choice(
            "weight_dropout_mode", weight_dropout_mode, WEIGHT_DROPOUT_MODES
        )
        mask_groups = int(check_at_least("mask_groups", mask_groups, integer=True, minimum=1))
        super().__init__(units, **kwargs)
        self.add_rate("weight_dropout", weight_dropout)
        self.weight_dropout_mode = weight_dropout_mode
        self.mask_groups = mask_groups

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

    def _masked_inner_loop(self, sequences, initial_state, mask, training):
        dropped = self._dropped_recurrent_kernel()
        with recurrent_kernel_replaced(self.cell, dropped):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)

    def _group_inner_loop(self, sequences, initial_state, mask, start, stop, training):
        """The masked loop on samples `start:stop`, with their `dropout` masks."""
        group = self._group(sequences, initial_state, mask, start, stop)
        # Keras drew the `dropout`/`recurrent_dropout` masks for the whole batch.
        with rnn_dropout_masks_sliced(self.cell, start, stop):
            return self._masked_inner_loop(*group, training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not training or not self.rate_in_use("weight_dropout"):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        if self.mask_groups == 1:
            return self._masked_inner_loop(sequences, initial_state, mask, training)
        if tree.is_nested(mask):
            mask = mask[0]
        # Consecutive slices of the batch, one mask and one kernel call each.
        static_batch = sequences.shape[0]
        if static_batch is not None:
            # A batch smaller than `mask_groups` (a last, partial one) gets one
            # mask per sample: Keras's kernels refuse empty batches.
            groups = min(self.mask_groups, static_batch)
            bounds = [(i * static_batch) // groups for i in range(groups + 1)]
            results = [
                self._group_inner_loop(sequences, initial_state, mask, a, b, training)
                for a, b in zip(bounds[:-1], bounds[1:])
            ]
        else:
            # Batch size known only when the graph runs (TensorFlow, a traced
            # function that accepts any batch size): an empty group is skipped
            # by a conditional instead.
            batch = ops.shape(sequences)[0]
            bounds = [(i * batch) // self.mask_groups for i in range(self.mask_groups + 1)]
            results = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                results.append(
                    ops.cond(
                        b > a,
                        lambda a=a, b=b: self._as_list_of_states(
                            self._group_inner_loop(sequences, initial_state, mask, a, b, training)
                        ),
                        lambda a=a, b=b: self._empty_result(
                            *self._group(sequences, initial_state, mask, a, b)
                        ),
                    )
                )
        return tree.map_structure(lambda *parts: ops.concatenate(parts, axis=0), *results)

    @staticmethod
    def _as_list_of_states(result):
        last_output, outputs, states = result
        return last_output, outputs, list(states)

    @staticmethod
    def _group(sequences, initial_state, mask, start, stop):
        return (
            sequences[start:stop],
            [state[start:stop] for state in initial_state],
            None if mask is None else mask[start:stop],
        )

    def _empty_result(self, sequences, initial_state, mask):
        """What `inner_loop` returns for a group of no samples."""
        empty = ops.zeros((0, self.units), dtype=sequences.dtype)
        outputs = (
            ops.zeros(
                (0, sequences.shape[1] or ops.shape(sequences)[1], self.units),
                dtype=sequences.dtype,
            )
            if self.return_sequences
            else ops.zeros((0, 1, self.units), dtype=sequences.dtype)
        )
        return (
            empty,
            outputs,
            [ops.zeros((0, self.units), dtype=state.dtype) for state in initial_state],
        )

    def get_config(self):
        config = {
            "weight_dropout": self.weight_dropout,
            "weight_dropout_mode": self.weight_dropout_mode,
            "mask_groups": self.mask_groups,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kreg")
class WeightDropLSTM(_WeightDropMixin, keras.layers.LSTM):
    """LSTM with one DropConnect mask per batch on its recurrent kernel.

    During training, one DropConnect mask over the recurrent kernel is drawn per
    batch (per group of samples with `mask_groups`) and used at every timestep;
    inference uses the full kernel. Because the
    mask lives in the weights rather than in the step function, the layer keeps
    the fused kernel (cuDNN on GPUs) wherever `keras.layers.LSTM` would use it,
    unlike `recurrent_dropout`, which turns the fused kernel off on every
    backend. Where no fused kernel applies (on CPU, with masking), the generic
    loop reads the same masked kernel, so both paths compute the same thing.

    Every argument of `keras.layers.LSTM` keeps its meaning (and its
    position: kreg's own arguments are keyword-only), and with
    `weight_dropout=0` the layer computes exactly what `keras.layers.LSTM` does,
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
        mask_groups: Positive integer. The batch is split into this many groups
            of consecutive samples, each with its own mask and its own call of
            the fused kernel (or loop). One mask per batch (`1`, the default)
            regularizes less per step than Keras's per-sample masks; more
            groups regularize more, at the cost of `mask_groups` smaller kernel
            calls per step. A batch smaller than `mask_groups` gets one mask
            per sample. Measured in `bench/char_lm.py` (docs/BENCHMARKS.md).
        **kwargs: Every other argument of `keras.layers.LSTM` (`dropout`,
            `recurrent_dropout`, `return_sequences`, `return_state`,
            `go_backwards`, `stateful`, `use_cudnn`, `seed`, ...). `seed` also
            seeds the weight-dropout mask.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, timesteps)`.
        training: Python boolean. Whether to apply dropout (`True` in `fit`).

    Example:

    >>> layer = WeightDropLSTM(8, weight_dropout=0.25, return_sequences=True, seed=0)
    >>> tuple(layer(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 5, 8)

    Reference:
        - [Wan et al., 2013](https://proceedings.mlr.press/v28/wan13.html),
          DropConnect.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), weight-dropped
          LSTM (AWD-LSTM): DropConnect on the hidden-to-hidden weights, one mask
          per batch, which keeps the fused cuDNN kernel.
    """


@keras.saving.register_keras_serializable(package="kreg")
class WeightDropGRU(_WeightDropMixin, keras.layers.GRU):
    """GRU with one DropConnect mask per batch on its recurrent kernel.

    During training, one DropConnect mask over the recurrent kernel is drawn per
    batch (per group of samples with `mask_groups`) and used at every timestep;
    inference uses the full kernel. Because the
    mask lives in the weights rather than in the step function, the layer keeps
    the fused kernel (cuDNN on GPUs) wherever `keras.layers.GRU` would use it,
    unlike `recurrent_dropout`, which turns the fused kernel off on every
    backend. Where no fused kernel applies (on CPU, with masking), the generic
    loop reads the same masked kernel, so both paths compute the same thing.

    Every argument of `keras.layers.GRU` keeps its meaning (and its
    position: kreg's own arguments are keyword-only), and with
    `weight_dropout=0` the layer computes exactly what `keras.layers.GRU` does,
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
        mask_groups: Positive integer. The batch is split into this many groups
            of consecutive samples, each with its own mask and its own call of
            the fused kernel (or loop). One mask per batch (`1`, the default)
            regularizes less per step than Keras's per-sample masks; more
            groups regularize more, at the cost of `mask_groups` smaller kernel
            calls per step. A batch smaller than `mask_groups` gets one mask
            per sample. Measured in `bench/char_lm.py` (docs/BENCHMARKS.md).
        **kwargs: Every other argument of `keras.layers.GRU` (`dropout`,
            `recurrent_dropout`, `return_sequences`, `return_state`,
            `go_backwards`, `stateful`, `use_cudnn`, `seed`, ...). `seed` also
            seeds the weight-dropout mask.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, timesteps)`.
        training: Python boolean. Whether to apply dropout (`True` in `fit`).

    Example:

    >>> layer = WeightDropGRU(8, weight_dropout=0.25, return_sequences=True, seed=0)
    >>> tuple(layer(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 5, 8)

    Reference:
        - [Wan et al., 2013](https://proceedings.mlr.press/v28/wan13.html),
          DropConnect.
        - [Merity et al., 2018](https://arxiv.org/abs/1708.02182), weight-dropped
          LSTM (AWD-LSTM): DropConnect on the hidden-to-hidden weights, one mask
          per batch, which keeps the fused cuDNN kernel.
    """

"""LSTM and GRU with zoneout: state units that keep their previous value."""

import keras
from keras import ops
from keras import tree

from kreg._keras_compat import step_loop
from kreg._validation import check_rate
from kreg._validation import keras_keywords
from kreg.layers.adjustable_rates import AdjustableRates
from kreg.layers.adjustable_rates import rate_property


class _ZoneoutMixin(AdjustableRates):
    """What `ZoneoutLSTM` and `ZoneoutGRU` share: the step loop and the config.

    `STATE_RATES` names the zoneout rate of each state tensor, in the order the
    cell's `state_size` lists them. The rates live in variables that the step
    reads (`AdjustableRates`), so a callback can change them on a live model.
    """

    STATE_RATES = ()

    def __init__(self, units, **kwargs):
        # Keras's positional arguments arrive named (`keras_keywords` in the
        # subclasses), so `use_cudnn` given by position is checked too.
        if kwargs.get("use_cudnn") is True:
            raise ValueError(
                "Invalid value received for argument `use_cudnn`. Zoneout mixes the "
                "states after every step, which no fused (cuDNN) kernel does; expected "
                "'auto' or False. Received: use_cudnn=True"
            )
        super().__init__(units, **kwargs)

    def _zoneout_keep_masks(self, sequences, rates):
        """One 0/1 tensor `(batch, timesteps, units)` per zoned state: 1 keeps."""
        shape = (ops.shape(sequences)[0], ops.shape(sequences)[1], self.units)
        return [
            ops.cast(
                keras.random.uniform(shape, dtype="float32", seed=self.cell.seed_generator) < rate,
                sequences.dtype,
            )
            for rate in rates
            if rate is not None
        ]

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if tree.is_nested(mask):
            mask = mask[0]
        # None for a rate built at 0: that state is never zoned.
        rates = [
            ops.cast(self.rate_variable(name), "float32") if self.rate_in_use(name) else None
            for name in self.STATE_RATES
        ]
        if all(rate is None for rate in rates):
            return super().inner_loop(sequences, initial_state, mask=mask, training=training)
        features = sequences.shape[-1]
        if training:
            # The random choices of every step are drawn here, before the loop,
            # and travel with the inputs: a random draw inside the loop would
            # update the seed state inside `lax.scan` / `tf.while_loop`. Keras
            # draws its dropout masks before the loop for the same reason.
            keep_masks = self._zoneout_keep_masks(sequences, rates)
            sequences = ops.concatenate([sequences, *keep_masks], axis=-1)
        cell = self.cell

        def step(inputs, states):
            if training:
                keep = iter(
                    [
                        inputs[:, features + i * self.units : features + (i + 1) * self.units]
                        for i in range(len(keep_masks))
                    ]
                )
                inputs = inputs[:, :features]
            if keras.backend.backend() == "torch" and self.stateful:
                # As in `keras.layers.RNN.inner_loop`: no in-place update of a
                # state autograd still needs.
                states = tree.map_structure(ops.copy, states)
            _, new_states = cell(inputs, states, training=training)
            if not tree.is_nested(new_states):
                new_states = [new_states]
            zoned = []
            for rate, previous, new in zip(rates, states, new_states):
                if rate is None:
                    zoned.append(new)
                elif training:
                    zoned.append(new + next(keep) * (previous - new))
                else:
                    zoned.append(new + ops.cast(rate, new.dtype) * (previous - new))
            # The output of an LSTM or GRU step is its hidden state: the zoned one.
            return zoned[0], zoned

        return step_loop(
            step,
            sequences,
            list(initial_state) if tree.is_nested(initial_state) else [initial_state],
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )


@keras.saving.register_keras_serializable(package="kreg")
class ZoneoutLSTM(_ZoneoutMixin, keras.layers.LSTM):
    """LSTM whose hidden and cell state units randomly keep their previous value.

    Zoneout regularizes the recurrent state the way dropout regularizes activations,
    but instead of setting a unit to zero it keeps the unit's previous value: during
    training, at every timestep, each unit of the hidden state `h` and of the cell
    state `c` keeps its value from the previous step with probability `z` and takes
    its new value otherwise, with a new random choice per sample, unit and timestep.
    At inference every unit is the expected value, `z * previous + (1 - z) * new`.
    Gradients and information flow through the kept units unchanged, so long-range
    dependencies survive the noise. The layer's output at each step is the zoned
    hidden state.

    Cost: zoneout mixes the previous and the new state after every step, an
    operation no fused kernel implements, so the layer always runs Keras's
    generic step loop, at inference too, never cuDNN. Where plain
    `keras.layers.LSTM` runs the same loop anyway (TensorFlow and JAX on CPU),
    the cost is a few elementwise operations per step plus one random draw per
    batch; on a GPU the layer forgoes the fused kernel, which is several times
    faster. `bench/char_lm.py` measures the step time next to plain
    `keras.layers.LSTM` (docs/BENCHMARKS.md).

    The zoneout rates are held in variables that the step reads: assigning
    `layer.hidden_zoneout = ...` on a live model (from a callback) takes effect
    at the next step without a retrace; a rate built at 0 stays 0.

    Every argument of `keras.layers.LSTM` keeps its meaning (`dropout` and
    `recurrent_dropout` combine with zoneout), and the layer has exactly the
    weights and positional arguments of `keras.layers.LSTM` (the zoneout rates are
    keyword-only): `set_weights` works both ways, and with
    every zoneout rate at 0 it computes what `keras.layers.LSTM` computes.

    Args:
        units: Positive integer, dimensionality of the output space.
        cell_zoneout: Float in `[0, 1)`. Probability that a unit of the
            cell state `c` keeps its previous value. Defaults to `0.0`;
            the paper uses 0.5 for character-level language models.
        hidden_zoneout: Float in `[0, 1)`. The same for the hidden state
            `h` (the output). Defaults to `0.0`; the paper uses 0.05.
        **kwargs: Every other argument of `keras.layers.LSTM` (`dropout`,
            `return_sequences`, `return_state`, `go_backwards`, `stateful`,
            `unroll`, `seed`, ...) except `use_cudnn=True`: there is no fused
            zoneout kernel. `seed` also seeds the zoneout choices.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, timesteps)`; masked steps keep
            the previous state, as in `keras.layers.LSTM`.
        training: Python boolean. Whether to draw the zoneout choices (`True`
            in `fit`) or use the expected value (`False`).

    Example:

    >>> layer = ZoneoutLSTM(8, cell_zoneout=0.5, hidden_zoneout=0.05, return_sequences=True)
    >>> tuple(layer(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 5, 8)

    Reference:
        - [Krueger et al., 2017](https://arxiv.org/abs/1606.01305), Zoneout:
          Regularizing RNNs by Randomly Preserving Hidden Activations.
    """

    def __init__(self, units, *args, cell_zoneout=0.0, hidden_zoneout=0.0, **kwargs):
        kwargs = keras_keywords(keras.layers.LSTM, 1, args, kwargs, "cell_zoneout")
        # Checked before the parent builds its cell, so a bad rate fails first.
        cell_zoneout = check_rate("cell_zoneout", cell_zoneout)
        hidden_zoneout = check_rate("hidden_zoneout", hidden_zoneout)
        super().__init__(units, **kwargs)
        self.add_rate("cell_zoneout", cell_zoneout)
        self.add_rate("hidden_zoneout", hidden_zoneout)

    STATE_RATES = ("hidden_zoneout", "cell_zoneout")  # LSTMCell's states: [h, c]
    cell_zoneout = rate_property("cell_zoneout", "The current cell-state zoneout rate.")
    hidden_zoneout = rate_property("hidden_zoneout", "The current hidden-state zoneout rate.")

    def get_config(self):
        config = {"cell_zoneout": self.cell_zoneout, "hidden_zoneout": self.hidden_zoneout}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="kreg")
class ZoneoutGRU(_ZoneoutMixin, keras.layers.GRU):
    """GRU whose hidden state units randomly keep their previous value.

    Zoneout regularizes the recurrent state the way dropout regularizes activations,
    but instead of setting a unit to zero it keeps the unit's previous value: during
    training, at every timestep, each unit of the hidden state `h` (the GRU's only
    state) keeps its value from the previous step with probability `z` and takes its
    new value otherwise, with a new random choice per sample, unit and timestep. At
    inference every unit is the expected value, `z * previous + (1 - z) * new`.
    Gradients and information flow through the kept units unchanged, so long-range
    dependencies survive the noise. The layer's output at each step is the zoned
    hidden state.

    Cost: zoneout mixes the previous and the new state after every step, an
    operation no fused kernel implements, so the layer always runs Keras's
    generic step loop, at inference too, never cuDNN. Where plain
    `keras.layers.GRU` runs the same loop anyway (TensorFlow and JAX on CPU),
    the cost is a few elementwise operations per step plus one random draw per
    batch; on a GPU the layer forgoes the fused kernel, which is several times
    faster. `bench/char_lm.py` measures the step time next to plain
    `keras.layers.GRU` (docs/BENCHMARKS.md).

    The zoneout rates are held in variables that the step reads: assigning
    `layer.hidden_zoneout = ...` on a live model (from a callback) takes effect
    at the next step without a retrace; a rate built at 0 stays 0.

    Every argument of `keras.layers.GRU` keeps its meaning (`dropout` and
    `recurrent_dropout` combine with zoneout), and the layer has exactly the
    weights and positional arguments of `keras.layers.GRU` (the zoneout rates are
    keyword-only): `set_weights` works both ways, and with
    every zoneout rate at 0 it computes what `keras.layers.GRU` computes.

    Args:
        units: Positive integer, dimensionality of the output space.
        hidden_zoneout: Float in `[0, 1)`. Probability that a unit of the
            hidden state keeps its previous value. Defaults to `0.0`.
        **kwargs: Every other argument of `keras.layers.GRU` (`dropout`,
            `return_sequences`, `return_state`, `go_backwards`, `stateful`,
            `unroll`, `seed`, ...) except `use_cudnn=True`: there is no fused
            zoneout kernel. `seed` also seeds the zoneout choices.

    Call arguments:
        sequences: A 3D tensor `(batch, timesteps, features)`.
        initial_state: Optional list of initial state tensors.
        mask: Optional boolean tensor `(batch, timesteps)`; masked steps keep
            the previous state, as in `keras.layers.GRU`.
        training: Python boolean. Whether to draw the zoneout choices (`True`
            in `fit`) or use the expected value (`False`).

    Example:

    >>> layer = ZoneoutGRU(8, hidden_zoneout=0.1, return_sequences=True)
    >>> tuple(layer(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 5, 8)

    Reference:
        - [Krueger et al., 2017](https://arxiv.org/abs/1606.01305), Zoneout:
          Regularizing RNNs by Randomly Preserving Hidden Activations.
    """

    def __init__(self, units, *args, hidden_zoneout=0.0, **kwargs):
        kwargs = keras_keywords(keras.layers.GRU, 1, args, kwargs, "hidden_zoneout")
        hidden_zoneout = check_rate("hidden_zoneout", hidden_zoneout)
        super().__init__(units, **kwargs)
        self.add_rate("hidden_zoneout", hidden_zoneout)

    STATE_RATES = ("hidden_zoneout",)
    hidden_zoneout = rate_property("hidden_zoneout", "The current hidden-state zoneout rate.")

    def get_config(self):
        return {**super().get_config(), "hidden_zoneout": self.hidden_zoneout}

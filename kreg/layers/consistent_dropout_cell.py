import keras
from keras import ops

from kreg._keras_compat import DropoutRNNCell
from kreg._validation import check_rate


@keras.saving.register_keras_serializable(package="kreg")
class ConsistentDropoutCell(keras.layers.Layer, DropoutRNNCell):
    """Gives any RNN cell input and state dropout masks shared across timesteps.

    Keras's `LSTMCell`, `GRUCell` and `SimpleRNNCell` draw their `dropout` and
    `recurrent_dropout` masks once per sequence, because `keras.layers.RNN` does
    that for cells that inherit Keras's dropout mixin. A custom cell does not, and
    adding dropout inside its `call` would draw a new mask at every step. Wrap the
    cell instead: `keras.layers.RNN` then draws one input mask and one state mask
    per sequence and uses them at every timestep (Gal & Ghahramani's variational
    RNN dropout), exactly as it does for its own cells.

    The input mask multiplies the cell's inputs. The state mask multiplies the
    first state tensor the cell receives, which is the hidden output by Keras's
    convention; further states (an LSTM's carry, say) are left undropped, as in
    Keras's own cells. Both masks use inverted scaling and only apply when
    `training=True`. Stacks work too: `keras.layers.RNN([ConsistentDropoutCell(a),
    ConsistentDropoutCell(b)])` draws masks for each cell.

    Args:
        cell: The cell to wrap: a `keras.layers.Layer` with
            `call(inputs, states)` and `state_size`, as `keras.layers.RNN`
            expects. It must be a layer (not any object with a `call`) so that
            it saves with the model and receives `training`.
        dropout: Float in `[0, 1)`. Fraction of the input features to drop.
        recurrent_dropout: Float in `[0, 1)`. Fraction of the first state's
            features to drop.
        seed: Integer, optional. Seed of the random masks.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: A 2D tensor `(batch, features)`, one timestep.
        states: The list of state tensors of the previous timestep.
        training: Python boolean. Whether to apply dropout.

    Example:

    >>> cell = keras.layers.SimpleRNNCell(16)  # stands for any custom cell
    >>> rnn = keras.layers.RNN(
    ...     ConsistentDropoutCell(cell, dropout=0.2, recurrent_dropout=0.2, seed=0)
    ... )
    >>> tuple(rnn(keras.ops.ones((2, 5, 3)), training=True).shape)
    (2, 16)

    Reference:
        - [Gal & Ghahramani, 2016](https://arxiv.org/abs/1512.05287), A
          Theoretically Grounded Application of Dropout in Recurrent Neural
          Networks.
    """

    def __init__(self, cell, dropout=0.0, recurrent_dropout=0.0, seed=None, **kwargs):
        if not isinstance(cell, keras.layers.Layer):
            raise TypeError(
                "Invalid type for argument `cell`. Expected an RNN cell that is a "
                "`keras.layers.Layer`, with a `call(inputs, states)` method and a "
                f"`state_size` attribute. Received: cell={cell!r} of type "
                f"{type(cell).__name__}"
            )
        if not hasattr(cell, "state_size"):
            raise ValueError(
                "Invalid value received for argument `cell`. Expected an RNN cell: "
                "a layer with a `call(inputs, states)` method and a `state_size` "
                f"attribute. Received: cell={cell!r}"
            )
        own_rates = {name: getattr(cell, name, 0.0) for name in ("dropout", "recurrent_dropout")}
        if isinstance(cell, DropoutRNNCell) and any(own_rates.values()):
            # keras.layers.RNN prepares and clears the masks of the outermost cell
            # only: the inner cell's masks would be drawn inside the time loop.
            rates = ", ".join(f"{name}={rate}" for name, rate in own_rates.items())
            raise ValueError(
                "Invalid value received for argument `cell`: it draws dropout masks of "
                f"its own ({rates}), which keras.layers.RNN cannot manage inside a "
                "wrapper. Set those rates to 0 on the cell and pass them to "
                f"ConsistentDropoutCell instead. Received: cell={cell!r}"
            )
        super().__init__(**kwargs)
        self.cell = cell
        # The names `dropout`, `recurrent_dropout` and `seed_generator` are the
        # ones Keras's dropout mixin reads when `keras.layers.RNN` asks for masks.
        self.dropout = check_rate("dropout", dropout)
        self.recurrent_dropout = check_rate("recurrent_dropout", recurrent_dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def output_size(self):
        return getattr(self.cell, "output_size", None)

    def build(self, input_shape):
        if not self.cell.built:
            self.cell.build(input_shape)

    def get_initial_state(self, batch_size=None):
        get_initial_state = getattr(self.cell, "get_initial_state", None)
        if get_initial_state is not None:
            return get_initial_state(batch_size=batch_size)
        state_sizes = self.state_size
        if isinstance(state_sizes, int):
            state_sizes = [state_sizes]
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in state_sizes]

    def call(self, inputs, states, training=False):
        if training and self.dropout > 0.0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and self.recurrent_dropout > 0.0:
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            states[0] = states[0] * self.get_recurrent_dropout_mask(states[0])
        # `Layer.__call__` hands `training` to a cell whose `call` accepts it and
        # drops it for one whose `call` does not (`CallSpec` in
        # keras/src/layers/layer.py), so every layer cell can be called alike.
        return self.cell(inputs, states, training=training)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "cell": keras.saving.serialize_keras_object(self.cell),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["cell"] = keras.saving.deserialize_keras_object(
            config["cell"], custom_objects=custom_objects
        )
        return cls(**config)

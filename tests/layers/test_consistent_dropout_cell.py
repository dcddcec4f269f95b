import functools

import keras
import numpy as np
import pytest
from keras import ops

from conftest import to_numpy as _numpy
from kreg.layers import ConsistentDropoutCell
from layer_test_case import run_layer_test


@keras.saving.register_keras_serializable(package="kreg_tests")
class RecordingCell(keras.layers.Layer):
    """A custom cell that inherits nothing from Keras's RNN cells.

    Its output is its input plus its previous state, so the masks it sees can be
    read off its outputs, and it records the state it receives at each step.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units
        self.output_size = units

    def call(self, inputs, states):
        output = inputs + states[0]
        return output, [output]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="kreg_tests")
class MinimalRNNCell(keras.layers.Layer):
    """The custom cell of Keras's RNN docstring, with weights to train."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units), initializer="orthogonal", name="recurrent_kernel"
        )

    def call(self, inputs, states):
        output = ops.tanh(
            ops.matmul(inputs, self.kernel) + ops.matmul(states[0], self.recurrent_kernel)
        )
        return output, [output]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _rnn(dtype=None, **cell_kwargs):
    cell = ConsistentDropoutCell(MinimalRNNCell(6, dtype=dtype), dtype=dtype, **cell_kwargs)
    return keras.layers.RNN(cell, return_sequences=True, dtype=dtype)


@pytest.mark.parametrize(
    "cell_kwargs",
    [{"dropout": 0.3, "recurrent_dropout": 0.3, "seed": 1}, {"dropout": 0.5}],
)
def test_layer_contract_inside_keras_rnn(cell_kwargs, tmp_path):
    run_layer_test(
        functools.partial(_rnn, **cell_kwargs),
        input_shape=(4, 5, 3),
        expected_output_shape=(4, 5, 6),
        tmp_path=tmp_path,
    )


def test_input_mask_is_drawn_once_per_sequence():
    # Inputs of ones, zero initial state: output_t = sum of the masked inputs up to
    # t, so with one mask per sequence, output_t = t * output_1.
    rnn = keras.layers.RNN(
        ConsistentDropoutCell(RecordingCell(32), dropout=0.5, seed=3), return_sequences=True
    )
    y = _numpy(rnn(np.ones((16, 5, 32), dtype="float32"), training=True))
    steps = np.arange(1, 6)[None, :, None]
    np.testing.assert_allclose(y, steps * y[:, :1], rtol=1e-6)
    first = y[:, 0]
    assert set(np.unique(first)) == {0.0, 2.0}, "kept inputs are scaled by 1 / (1 - rate)"
    assert len({row.tobytes() for row in first}) == 16, "samples share a mask"


def test_state_mask_is_drawn_once_per_sequence():
    # Zero inputs except at step 0: output_t = m * output_{t-1} with one state mask
    # m, so a unit dropped at step 1 stays dropped, and kept ones grow by 1/(1-p).
    rate = 0.5
    rnn = keras.layers.RNN(
        ConsistentDropoutCell(RecordingCell(32), recurrent_dropout=rate, seed=4),
        return_sequences=True,
    )
    x = np.zeros((16, 4, 32), dtype="float32")
    x[:, 0] = 1.0
    y = _numpy(rnn(x, training=True))
    np.testing.assert_array_equal(y[:, 0], 1.0)  # the initial state is zero anyway
    kept = y[:, 1] != 0
    for t in range(2, 4):
        np.testing.assert_allclose(y[:, t][kept], (1 / (1 - rate)) ** t, rtol=1e-5)
        np.testing.assert_array_equal(y[:, t][~kept], 0.0)


def test_identity_at_inference_and_new_masks_each_call():
    rnn = _rnn(dropout=0.5, recurrent_dropout=0.5, seed=0)
    plain = keras.layers.RNN(MinimalRNNCell(6), return_sequences=True)
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")
    rnn(x)
    plain(x)
    plain.set_weights(rnn.get_weights())
    np.testing.assert_array_equal(_numpy(rnn(x)), _numpy(plain(x)))
    first = _numpy(rnn(x, training=True))
    assert not np.allclose(first, _numpy(plain(x)))
    assert not np.allclose(first, _numpy(rnn(x, training=True))), "masks must change per batch"


def test_stacked_cells_each_get_their_own_input_masks_once_per_sequence():
    # Inputs of ones, zero states. The first cell's output is t * m1 (its input mask
    # m1, held over time); the second cell sums its masked inputs m2 * t * m1, so
    # its output at step t is t(t+1)/2 * m2 * m1 when both masks hold over time.
    rnn = keras.layers.RNN(
        [
            ConsistentDropoutCell(RecordingCell(32), dropout=0.5, seed=5),
            ConsistentDropoutCell(RecordingCell(32), dropout=0.5, seed=6),
        ],
        return_sequences=True,
        return_state=True,
    )
    y, first_state, _ = (
        _numpy(t) for t in rnn(np.ones((16, 4, 32), dtype="float32"), training=True)
    )
    triangular = np.array([1, 3, 6, 10], dtype="float32")[None, :, None]
    np.testing.assert_allclose(y, triangular * y[:, :1], rtol=1e-6)
    assert set(np.unique(y[:, 0])) == {0.0, 4.0}, "each cell scales what it keeps by 1 / (1 - 0.5)"
    first_kept, kept = first_state != 0, y[:, -1] != 0
    assert not np.any(kept & ~first_kept), "the second cell sees the first cell's zeros"
    # The second cell's own mask drops about half of what the first kept.
    assert 0.3 < (first_kept & ~kept).sum() / first_kept.sum() < 0.7


def test_stacked_cells_each_get_their_own_state_mask_once_per_sequence():
    # Input 1 at step 0 only: the first cell (no dropout) outputs 1 at every step;
    # the second outputs 1 + m * previous, with its state mask m in {0, 2}: each
    # unit follows 1, 3, 7, 15 (kept) or 1, 1, 1, 1 (dropped), never a mix.
    rnn = keras.layers.RNN(
        [
            ConsistentDropoutCell(RecordingCell(32)),
            ConsistentDropoutCell(RecordingCell(32), recurrent_dropout=0.5, seed=7),
        ],
        return_sequences=True,
    )
    x = np.zeros((16, 4, 32), dtype="float32")
    x[:, 0] = 1.0
    units = _numpy(rnn(x, training=True)).transpose(0, 2, 1)  # (sample, unit, step)
    kept = units[:, :, -1] != 1.0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_array_equal(units[kept], np.tile([1.0, 3.0, 7.0, 15.0], (kept.sum(), 1)))
    np.testing.assert_array_equal(units[~kept], 1.0)


def test_stacked_cells_train_every_weight():
    cells = [
        ConsistentDropoutCell(MinimalRNNCell(6), dropout=0.2, recurrent_dropout=0.2),
        ConsistentDropoutCell(MinimalRNNCell(4), recurrent_dropout=0.3),
    ]
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.RNN(cells), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((8, 5, 3)).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    loss = model.fit(x, np.ones((8, 1)), epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed), "every weight of both cells gets a gradient"


@keras.saving.register_keras_serializable(package="kreg_tests")
class TrainingFlagCell(RecordingCell):
    """Adds 1 to its output when called with `training=True`."""

    def call(self, inputs, states, training=False):
        output = inputs + states[0] + (1.0 if training else 0.0)
        return output, [output]


@pytest.mark.parametrize("training", [True, False])
def test_the_wrapped_cell_receives_training(training):
    rnn = keras.layers.RNN(ConsistentDropoutCell(TrainingFlagCell(2)))
    y = _numpy(rnn(np.zeros((1, 3, 2), dtype="float32"), training=training))
    np.testing.assert_array_equal(y, 3.0 if training else 0.0)


def test_wraps_a_keras_cell_with_a_training_argument():
    wrapped = ConsistentDropoutCell(keras.layers.GRUCell(4, dropout=0.0), dropout=0.3)
    y = keras.layers.RNN(wrapped)(np.ones((2, 3, 5), dtype="float32"), training=True)
    assert tuple(y.shape) == (2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell": keras.layers.Dense(3)}, r"`cell`.*state_size"),
        ({"dropout": 1.5}, r"`dropout`.*\[0, 1\).*dropout=1.5"),
        ({"recurrent_dropout": -0.5}, r"`recurrent_dropout`.*recurrent_dropout=-0.5"),
        ({"recurrent_dropout": "0.2"}, r"`recurrent_dropout`.*'0.2'"),
        (
            {"cell": keras.layers.LSTMCell(4, dropout=0.5)},
            r"`cell`.*masks of its own \(dropout=0.5, recurrent_dropout=0.0\)",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    kwargs = {"cell": MinimalRNNCell(3), **kwargs}
    with pytest.raises(ValueError, match=message):
        ConsistentDropoutCell(**kwargs)


class PlainObjectCell:
    """Has what `keras.layers.RNN` reads of a cell, but is not a Keras layer."""

    state_size = 3

    def call(self, inputs, states):
        return inputs, states


@pytest.mark.parametrize(
    "cell, received",
    [("lstm", r"cell='lstm' of type str"), (PlainObjectCell(), r"of type PlainObjectCell")],
)
def test_a_cell_that_is_not_a_layer_is_a_type_error(cell, received):
    with pytest.raises(TypeError, match=r"`cell`.*keras.layers.Layer.*" + received):
        ConsistentDropoutCell(cell)

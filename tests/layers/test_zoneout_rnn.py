import functools
import inspect

import keras
import numpy as np
import pytest
from keras import ops

from conftest import to_numpy as _numpy
from kreg.layers import ZoneoutGRU
from kreg.layers import ZoneoutLSTM
from layer_test_case import run_layer_test

PAIRS = [(ZoneoutLSTM, keras.layers.LSTM), (ZoneoutGRU, keras.layers.GRU)]
PAIR_IDS = ["lstm", "gru"]
RATES = {
    ZoneoutLSTM: {"cell_zoneout": 0.5, "hidden_zoneout": 0.2},
    ZoneoutGRU: {"hidden_zoneout": 0.3},
}


def _inputs(shape=(6, 7, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _twins(zoneout_cls, keras_cls, x, **kwargs):
    ours = zoneout_cls(5, **kwargs)
    ours(x)
    theirs = keras_cls(5, **{k: v for k, v in kwargs.items() if not k.endswith("_zoneout")})
    theirs(x)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _cell_step(layer, x_t, states):
    _, new_states = layer.cell(
        ops.convert_to_tensor(x_t), [ops.convert_to_tensor(s) for s in states]
    )
    return [_numpy(s) for s in keras.tree.flatten(new_states)]


@pytest.mark.parametrize("zoneout_cls", [ZoneoutLSTM, ZoneoutGRU], ids=PAIR_IDS)
@pytest.mark.parametrize(
    "kwargs, expected_shape",
    [
        ({"return_sequences": True, "seed": 1}, (4, 5, 6)),
        ({"dropout": 0.2, "go_backwards": True}, (4, 6)),
        ({"return_state": True, "unroll": True, "recurrent_dropout": 0.2}, (4, 6)),
    ],
)
def test_layer_contract(zoneout_cls, kwargs, expected_shape, tmp_path):
    run_layer_test(
        functools.partial(zoneout_cls, 6, **RATES[zoneout_cls], **kwargs),
        input_shape=(4, 5, 3),
        expected_output_shape=expected_shape,
        tmp_path=tmp_path,
        supports_masking=True,
    )


@pytest.mark.parametrize("zoneout_cls, keras_cls", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    "kwargs", [{}, {"return_sequences": True, "go_backwards": True}, {"return_state": True}]
)
def test_without_zoneout_matches_keras_exactly(zoneout_cls, keras_cls, kwargs):
    x = _inputs()
    ours, theirs = _twins(zoneout_cls, keras_cls, x, **kwargs)
    for training in (False, True):
        for a, b in zip(
            keras.tree.flatten(ours(x, training=training)),
            keras.tree.flatten(theirs(x, training=training)),
        ):
            np.testing.assert_array_equal(_numpy(a), _numpy(b))


@pytest.mark.parametrize("zoneout_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_inference_uses_the_expected_value_of_every_state(zoneout_cls, keras_cls):
    """h_t = z h_{t-1} + (1 - z) h~_t, step by step, with the cell's own step."""
    rates = RATES[zoneout_cls]
    x = _inputs((3, 6, 4))
    layer = zoneout_cls(5, return_sequences=True, return_state=True, **rates)
    outputs, *final_states = layer(x)
    state_rates = [rates["hidden_zoneout"], rates.get("cell_zoneout")][: len(final_states)]
    states = [np.zeros((3, 5), "float32") for _ in final_states]
    expected = []
    for t in range(x.shape[1]):
        new = _cell_step(layer, x[:, t], states)
        states = [z * old + (1 - z) * n for z, old, n in zip(state_rates, states, new)]
        expected.append(states[0])
    np.testing.assert_allclose(_numpy(outputs), np.stack(expected, axis=1), rtol=1e-5, atol=1e-6)
    for state, final in zip(states, final_states):
        np.testing.assert_allclose(_numpy(final), state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zoneout_cls", [ZoneoutLSTM, ZoneoutGRU], ids=PAIR_IDS)
def test_training_keeps_each_unit_or_updates_it_with_a_fresh_choice_per_step(zoneout_cls):
    """Each unit of h is either exactly its previous value or exactly the cell's
    new value; which one is drawn per sample, unit and step with probability z."""
    rate, batch, steps, units = 0.4, 32, 6, 16
    x = _inputs((batch, steps, 3))
    # Hidden-state zoneout only: the LSTM's cell state then evolves unzoned, and
    # can be followed step by step from the observed h.
    layer = zoneout_cls(units, hidden_zoneout=rate, return_sequences=True, seed=7)
    h = _numpy(layer(x, training=True))
    previous = (
        [np.zeros((batch, units), "float32") for _ in layer.cell.state_size]
        if isinstance(layer.cell.state_size, (list, tuple))
        else [np.zeros((batch, units), "float32")]
    )
    kept_fractions, patterns = [], []
    for t in range(steps):
        new = _cell_step(layer, x[:, t], previous)
        kept = np.isclose(h[:, t], previous[0], rtol=0, atol=1e-6)
        updated = np.isclose(h[:, t], new[0], rtol=1e-5, atol=1e-6)
        assert np.all(kept | updated), f"step {t}: a unit is neither kept nor updated"
        distinguishable = ~np.isclose(previous[0], new[0], atol=1e-4)
        kept_fractions.append(kept[distinguishable].mean())
        patterns.append(kept)
        previous = [h[:, t], *new[1:]]
    n = batch * units * (steps - 1)
    assert abs(np.mean(kept_fractions[1:]) - rate) < 5 * np.sqrt(rate * (1 - rate) / n) + 0.02
    assert not np.array_equal(patterns[2], patterns[3]), "choices must change from step to step"
    assert len({row.tobytes() for row in patterns[3]}) > batch // 2, "samples must differ"
    assert not np.array_equal(h, _numpy(layer(x, training=True))), "each batch draws anew"


def test_lstm_cell_zoneout_keeps_the_carry():
    """With the whole cell state zoned out (z=1 would be refused; 0.999) the carry
    barely moves from zero, so the output is that of an LSTM with c ~ 0."""
    x = _inputs((8, 4, 3))
    layer = ZoneoutLSTM(5, cell_zoneout=0.999, return_state=True, seed=0)
    _, _, carry = layer(x, training=True)
    free = ZoneoutLSTM(5, return_state=True)
    free(x)
    free.set_weights(layer.get_weights())
    _, _, free_carry = free(x, training=True)
    assert np.abs(_numpy(carry)).mean() < 0.05 * np.abs(_numpy(free_carry)).mean()


@pytest.mark.parametrize("zoneout_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_masked_steps_keep_the_state_like_keras(zoneout_cls, keras_cls):
    x = _inputs((4, 6, 3))
    x[:, 4:] = 0.0
    inputs = keras.Input((6, 3))
    masked = keras.layers.Masking(0.0)(inputs)
    ours = keras.Model(inputs, zoneout_cls(5, return_sequences=True, **RATES[zoneout_cls])(masked))
    y = _numpy(ours(x))
    np.testing.assert_array_equal(y[:, 4], y[:, 3])
    np.testing.assert_array_equal(y[:, 5], y[:, 3])
    y = _numpy(ours(x, training=True))
    np.testing.assert_array_equal(y[:, 5], y[:, 3])


def test_trains_inside_a_model():
    x = _inputs((16, 6, 3))
    y = x.sum(axis=(1, 2))[:, None]
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            ZoneoutLSTM(8, cell_zoneout=0.3, hidden_zoneout=0.1),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    losses = model.fit(x, y, epochs=5, batch_size=8, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_config_keeps_every_keras_argument_and_adds_its_own():
    config = ZoneoutLSTM(4, cell_zoneout=0.3, hidden_zoneout=0.1, dropout=0.2).get_config()
    assert set(config) - set(keras.layers.LSTM(4).get_config()) == {
        "cell_zoneout",
        "hidden_zoneout",
    }
    assert config["dropout"] == 0.2
    assert set(ZoneoutGRU(4).get_config()) - set(keras.layers.GRU(4).get_config()) == {
        "hidden_zoneout"
    }


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ZoneoutLSTM, {"cell_zoneout": 1.0}, r"`cell_zoneout`.*\[0, 1\).*cell_zoneout=1.0"),
        (ZoneoutLSTM, {"hidden_zoneout": -0.1}, r"`hidden_zoneout`.*hidden_zoneout=-0.1"),
        (ZoneoutGRU, {"hidden_zoneout": "0.1"}, r"`hidden_zoneout`.*'0.1'"),
        (
            ZoneoutGRU,
            {"hidden_zoneout": 0.1, "use_cudnn": True},
            r"`use_cudnn`.*fused.*use_cudnn=True",
        ),
        (ZoneoutLSTM, {"cell_zoneout": 0.1, "use_cudnn": True}, r"`use_cudnn`"),
    ],
)
def test_bad_arguments_fail_at_construction(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(4, **kwargs)


def test_gru_has_no_cell_state_rate():
    with pytest.raises(ValueError, match="cell_zoneout"):
        ZoneoutGRU(4, cell_zoneout=0.2)


def test_rate_changed_on_a_live_model_applies_without_retrace():
    x = _inputs((16, 6, 3))
    layer = ZoneoutGRU(8, hidden_zoneout=0.1, return_sequences=True, seed=0)
    model = keras.Sequential([keras.Input((6, 3)), layer])
    before = _numpy(model(x))
    layer.hidden_zoneout = 0.9
    assert layer.get_config()["hidden_zoneout"] == 0.9
    after = _numpy(model(x))
    # At inference h_t = z h_{t-1} + (1 - z) h~_t: with z near 1 the state barely moves.
    assert np.abs(np.diff(after, axis=1)).mean() < 0.5 * np.abs(np.diff(before, axis=1)).mean()
    with pytest.raises(ValueError, match="cell_zoneout"):
        ZoneoutLSTM(4, hidden_zoneout=0.1).cell_zoneout = 0.2  # built at 0: stays 0


@pytest.mark.parametrize("cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_keras_positional_arguments_keep_their_places_and_a_positional_rate_is_refused(
    cls, keras_cls
):
    # A drop-in takes `LSTM(units, activation, recurrent_activation, ...)` by position.
    layer = cls(4, "relu", "tanh", **RATES[cls])
    assert layer.cell.activation is keras.activations.relu
    assert layer.cell.recurrent_activation is keras.activations.tanh
    first = next(iter(RATES[cls]))
    with pytest.raises(TypeError, match=rf"`activation`.*keyword-only.*{first}=0.1"):
        cls(4, 0.1)


@pytest.mark.parametrize("cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_use_cudnn_true_given_by_position_is_refused_as_by_keyword(cls, keras_cls):
    # Every argument of Keras's signature up to `use_cudnn`, by position, at its default.
    parameters = list(inspect.signature(keras_cls.__init__).parameters.values())[2:]
    defaults = [p.default for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert parameters[len(defaults) - 1].name == "use_cudnn"
    with pytest.raises(ValueError, match="`use_cudnn`"):
        cls(4, *defaults[:-1], True, **RATES[cls])
    layer = cls(4, *defaults[:-1], False, **RATES[cls])
    assert layer.use_cudnn is False
    with pytest.raises(TypeError, match="multiple values for argument 'activation'"):
        cls(4, "tanh", activation="relu", **RATES[cls])

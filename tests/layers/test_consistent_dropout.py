import functools

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from conftest import to_numpy as _numpy
from kreg.layers import ConsistentDropout
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "kwargs, input_shape",
    [
        ({"rate": 0.3}, (4, 6, 5)),
        ({"rate": 0.5, "time_axis": 2}, (4, 5, 6)),
        ({"rate": 0.2, "time_axis": -2, "seed": 3}, (3, 7, 4, 2)),
    ],
)
def test_layer_contract(kwargs, input_shape, tmp_path):
    run_layer_test(
        functools.partial(ConsistentDropout, **kwargs),
        input_shape=input_shape,
        expected_output_shape=input_shape,
        tmp_path=tmp_path,
        supports_masking=True,
    )


@pytest.mark.parametrize("time_axis", [1, 2, -1])
def test_mask_is_shared_by_every_timestep_and_differs_between_samples(time_axis):
    batch, steps, features = 64, 9, 32
    shape = [batch, features, features]
    shape[time_axis] = steps
    x = np.ones(shape, dtype="float32")
    y = _numpy(ConsistentDropout(0.5, time_axis=time_axis, seed=7)(x, training=True))

    dropped = np.moveaxis(y == 0, time_axis, 1)  # (batch, time, features)
    assert np.all(dropped == dropped[:, :1]), "mask changed between timesteps"
    per_sample = dropped[:, 0].reshape(batch, -1)
    assert len({row.tobytes() for row in per_sample}) == batch, "samples share a mask"


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_kept_fraction_and_mean_within_statistical_bounds(rate):
    batch, steps, features = 256, 4, 128
    x = np.ones((batch, steps, features), dtype="float32")
    y = _numpy(ConsistentDropout(rate, seed=11)(x, training=True))[:, 0]

    n = y.size
    kept = np.count_nonzero(y) / n
    # Five standard deviations of a binomial proportion: fails by chance ~1e-6.
    bound = 5 * np.sqrt(rate * (1 - rate) / n)
    assert abs(kept - (1 - rate)) < bound, f"kept {kept:.4f}, expected {1 - rate}"
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)
    # Inverted scaling keeps the mean at 1 (same bound, scaled by 1 / (1 - rate)).
    assert abs(y.mean() - 1.0) < bound / (1 - rate), f"mean {y.mean():.4f}"


def test_identity_at_inference_and_at_rate_zero():
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype("float32")
    np.testing.assert_array_equal(_numpy(ConsistentDropout(0.5)(x)), x)
    np.testing.assert_array_equal(_numpy(ConsistentDropout(0.5)(x, training=False)), x)
    np.testing.assert_array_equal(_numpy(ConsistentDropout(0.0)(x, training=True)), x)


def test_same_seed_same_mask_and_successive_calls_draw_new_masks():
    x = np.ones((8, 3, 16), dtype="float32")
    first = ConsistentDropout(0.5, seed=5)
    second = ConsistentDropout(0.5, seed=5)
    a = _numpy(first(x, training=True))
    np.testing.assert_array_equal(a, _numpy(second(x, training=True)))
    assert not np.array_equal(a, _numpy(first(x, training=True)))


def test_keras_mask_passes_through_and_padding_cannot_change_the_mask():
    layer = ConsistentDropout(0.5, seed=2)
    x = np.ones((4, 6, 8), dtype="float32")
    padded = x.copy()
    padded[:, 4:] = 0.0  # padding value
    inputs = keras.Input((6, 8))
    masked = keras.layers.Masking(0.0)(inputs)
    outputs = layer(masked)
    assert outputs._keras_mask is not None  # the mask reached the next layer

    mask = np.arange(6)[None, :] < np.array([[2], [3], [6], [1]])
    np.testing.assert_array_equal(_numpy(layer.compute_mask(x, mask)), mask)

    y_full = _numpy(ConsistentDropout(0.5, seed=2)(x, training=True))
    y_padded = _numpy(ConsistentDropout(0.5, seed=2)(padded, training=True))
    np.testing.assert_array_equal(y_full[:, :4], y_padded[:, :4])


def test_masked_lstm_downstream_sees_the_same_mask_at_valid_steps():
    model_inputs = keras.Input((5, 3))
    masked = keras.layers.Masking(0.0)(model_inputs)
    dropped = ConsistentDropout(0.4, seed=1)(masked)
    outputs = keras.layers.LSTM(4)(dropped)
    model = keras.Model(model_inputs, outputs)
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype("float32")
    x[:, 3:] = 0.0
    # The LSTM ignores the padded steps: changing them changes nothing.
    y = np.array(x)
    y[:, 3:] = 0.0
    np.testing.assert_allclose(_numpy(model(x)), _numpy(model(y)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0}, r"`rate`.*\[0, 1\).*rate=1.0"),
        ({"rate": -0.1}, r"`rate`.*rate=-0.1"),
        ({"rate": float("nan")}, r"`rate`.*rate=nan"),
        ({"rate": "0.5"}, r"`rate`.*'0.5'.*str"),
        ({"rate": None}, r"`rate`.*None"),
        ({"rate": True}, r"`rate`.*True.*bool"),
        ({"rate": 0.5, "time_axis": 0}, r"`time_axis`.*batch axis.*time_axis=0"),
        ({"rate": 0.5, "time_axis": 1.0}, r"`time_axis`.*integer.*1.0"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConsistentDropout(**kwargs)


def test_rank_and_axis_checked_when_the_shape_is_known():
    with pytest.raises(ValueError, match=r"rank 3 or more.*rank 2"):
        ConsistentDropout(0.5)(keras.Input((4,)))
    with pytest.raises(ValueError, match=r"`time_axis`.*rank-3.*time_axis=3"):
        ConsistentDropout(0.5, time_axis=3)(keras.Input((4, 5)))
    with pytest.raises(ValueError, match=r"`time_axis`.*time_axis=-3"):
        ConsistentDropout(0.5, time_axis=-3)(np.ones((2, 4, 5), dtype="float32"))


@settings(max_examples=25, deadline=None)
@given(
    rate=st.floats(0.05, 0.9),
    shape=st.lists(st.integers(1, 5), min_size=3, max_size=5),
    data=st.data(),
)
def test_property_mask_constant_along_time_and_scaled(rate, shape, data):
    time_axis = data.draw(st.integers(1, len(shape) - 1))
    x = np.ones(shape, dtype="float32")
    y = _numpy(ConsistentDropout(rate, time_axis=time_axis, seed=0)(x, training=True))
    first_step = np.take(y, [0], axis=time_axis)
    assert np.array_equal(y, np.broadcast_to(first_step, y.shape))
    assert np.all((y == 0) | np.isclose(y, 1 / (1 - rate), rtol=1e-5))

import functools

import keras
import numpy as np
import pytest

from conftest import to_numpy as _numpy
from kreg.layers import ActivationRegularization
from layer_test_case import run_layer_test


def _sequences(shape=(3, 5, 4), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _loss(layer, x, **kwargs):
    layer(x, **kwargs)
    return float(_numpy(layer.losses[0])) if layer.losses else None


@pytest.mark.parametrize("kwargs", [{}, {"ar": 0.5, "tar": 0.0}, {"ar": 0.0, "tar": 3.0}])
def test_layer_contract(kwargs, tmp_path):
    run_layer_test(
        functools.partial(ActivationRegularization, **kwargs),
        input_shape=(4, 5, 3),
        expected_output_shape=(4, 5, 3),
        tmp_path=tmp_path,
        supports_masking=True,
    )


def test_penalties_are_awd_lstm_means():
    x = _sequences()
    assert _loss(ActivationRegularization(ar=2.0, tar=0.0), x, training=True) == pytest.approx(
        2 * np.mean(x**2), rel=1e-5
    )
    expected_tar = 3 * np.mean((x[:, 1:] - x[:, :-1]) ** 2)
    assert _loss(ActivationRegularization(ar=0.0, tar=3.0), x, training=True) == pytest.approx(
        expected_tar, rel=1e-5
    )
    both = _loss(ActivationRegularization(ar=2.0, tar=3.0), x, training=True)
    assert both == pytest.approx(2 * np.mean(x**2) + expected_tar, rel=1e-5)


def test_masked_steps_do_not_count():
    x = _sequences()
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
    ar = _loss(ActivationRegularization(ar=1.0, tar=0.0), x, training=True, mask=mask)
    assert ar == pytest.approx(np.mean(x[mask] ** 2), rel=1e-5)
    pairs = mask[:, 1:] & mask[:, :-1]
    tar = _loss(ActivationRegularization(ar=0.0, tar=1.0), x, training=True, mask=mask)
    assert tar == pytest.approx(np.mean(((x[:, 1:] - x[:, :-1]) ** 2)[pairs]), rel=1e-5)
    # Changing what is masked changes nothing.
    y = x.copy()
    y[~mask] = 100.0
    assert _loss(ActivationRegularization(), y, training=True, mask=mask) == pytest.approx(
        _loss(ActivationRegularization(), x, training=True, mask=mask), rel=1e-5
    )


def test_mask_from_a_keras_layer_reaches_it_in_a_model():
    x = _sequences((2, 4, 3))
    x[:, 2:] = 0.0
    inputs = keras.Input((4, 3))
    masked = keras.layers.Masking(0.0)(inputs)
    layer = ActivationRegularization(ar=1.0, tar=0.0)
    model = keras.Model(inputs, layer(masked))
    model(x, training=True)
    assert float(_numpy(model.losses[0])) == pytest.approx(np.mean(x[:, :2] ** 2), rel=1e-5)


def test_identity_and_penalty_only_in_training():
    x = _sequences()
    layer = ActivationRegularization()
    np.testing.assert_array_equal(_numpy(layer(x, training=True)), x)
    layer(x)
    assert layer.losses == []


def test_penalty_reaches_the_training_loss_and_shrinks_activations():
    x = _sequences((32, 6, 3))
    y = np.zeros((32, 1), "float32")

    def trained(ar):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((6, 3)),
                keras.layers.LSTM(8, return_sequences=True),
                ActivationRegularization(ar=ar, tar=ar),
                keras.layers.GlobalAveragePooling1D(),
                keras.layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.Adam(0.02), "mse")
        history = model.fit(x, y, epochs=15, batch_size=32, verbose=0).history
        hidden = keras.Model(model.inputs[0], model.layers[0].output)
        return (
            history["loss"][0],
            float(np.mean(_numpy(hidden(x)) ** 2)),
            model.evaluate(x, y, verbose=0),
        )

    plain_loss, plain_energy, _ = trained(0.0)
    penalized_loss, penalized_energy, evaluated = trained(50.0)
    assert penalized_loss > plain_loss  # the penalty is in the training loss
    assert penalized_energy < 0.5 * plain_energy
    assert evaluated < penalized_loss  # and not in evaluate's


def test_single_step_sequences_add_no_nan():
    assert _loss(ActivationRegularization(), _sequences((2, 1, 3)), training=True) == pytest.approx(
        2 * np.mean(_sequences((2, 1, 3)) ** 2), rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ar": -1.0}, r"`ar`.*>= 0.*ar=-1.0"),
        ({"tar": float("inf")}, r"`tar`.*tar=inf"),
        ({"ar": "2"}, r"`ar`.*'2'"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActivationRegularization(**kwargs)


def test_tar_on_inputs_without_time_fails_at_build():
    with pytest.raises(ValueError, match=r"rank 3.*\(None, 4\)"):
        keras.Sequential([keras.Input((4,)), ActivationRegularization(tar=1.0)])
    keras.Sequential(
        [keras.Input((4,)), ActivationRegularization(ar=1.0, tar=0.0)]
    )  # AR alone is fine

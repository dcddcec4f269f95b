"""Rates held in variables: changed on a compiled model, used at the next step."""

import keras
import numpy as np
import pytest

from kreg.layers import ConsistentDropout
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM


def _kept_fraction_model(rate, jit_compile):
    """Outputs the fraction of units the dropout kept; nothing trains (SGD at 0)."""
    inputs = keras.Input((4, 256))
    dropped = ConsistentDropout(rate, seed=3)(inputs)
    kept = keras.ops.mean(keras.ops.cast(dropped != 0, "float32"), axis=-1, keepdims=True)
    outputs = kept + 0.0 * keras.layers.Dense(1)(inputs)  # one weight for the optimizer
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.0), "mae", jit_compile=jit_compile)
    return model


@pytest.mark.parametrize("jit_compile", [False, "auto"])
def test_a_new_rate_applies_at_the_next_compiled_step_without_a_retrace(jit_compile):
    model = _kept_fraction_model(0.1, jit_compile)
    x = np.ones((64, 4, 256), "float32")
    y = np.zeros((64, 4, 1), "float32")
    assert model.train_on_batch(x, y) == pytest.approx(0.9, abs=0.03)  # mae = kept fraction
    compiled = model.train_function
    model.layers[1].rate = 0.6
    assert model.train_on_batch(x, y) == pytest.approx(0.4, abs=0.03)
    assert model.train_function is compiled
    model.layers[1].rate = 0.0  # a layer built with a rate > 0 may go down to 0
    assert model.train_on_batch(x, y) == pytest.approx(1.0)


def test_rate_is_a_variable_not_a_weight_and_saved_in_the_config(tmp_path):
    layer = ConsistentDropout(0.2)
    assert layer.weights == [] and len(layer.variables) == 2  # seed state + rate
    layer.rate = 0.35
    assert layer.get_config()["rate"] == pytest.approx(0.35)
    model = keras.Sequential([keras.Input((3, 2)), layer])
    model.save(tmp_path / "m.keras")
    revived = keras.saving.load_model(tmp_path / "m.keras")
    assert revived.layers[0].rate == pytest.approx(0.35)


@pytest.mark.parametrize(
    "layer_cls, base", [(WeightDropLSTM, keras.layers.LSTM), (WeightDropGRU, keras.layers.GRU)]
)
def test_weight_dropout_is_adjustable_and_weights_stay_those_of_keras(layer_cls, base):
    layer = layer_cls(3, weight_dropout=0.2)
    x = np.ones((2, 4, 5), "float32")
    layer(x)
    plain = base(3)
    plain(x)
    plain.set_weights(layer.get_weights())
    layer.weight_dropout = 0.5
    assert layer.get_config()["weight_dropout"] == pytest.approx(0.5)
    assert layer.adjustable_rates == ["weight_dropout"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), keras.ops.convert_to_numpy(plain(x)), rtol=1e-6
    )


def test_a_layer_built_without_dropout_cannot_be_raised_and_bad_rates_are_refused():
    layer = ConsistentDropout(0.0)
    assert layer.adjustable_rates == []
    with pytest.raises(ValueError, match=r"`rate`.*built with rate=0"):
        layer.rate = 0.3
    layer = ConsistentDropout(0.3)
    with pytest.raises(ValueError, match=r"`rate`.*\[0, 1\).*rate=1.0"):
        layer.rate = 1.0
    assert layer.rate == pytest.approx(0.3)

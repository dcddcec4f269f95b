"""Every kreg layer inside Sequential, functional and subclassed models."""

import keras
import numpy as np
import pytest
from keras import ops

import kreg

# Each factory returns a fresh sequence-to-vector stack around one kreg layer.
STACKS = {
    "ConsistentDropout": lambda: [kreg.ConsistentDropout(0.3), keras.layers.LSTM(4)],
    "WeightDropLSTM": lambda: [kreg.WeightDropLSTM(4, weight_dropout=0.3)],
    "WeightDropGRU": lambda: [kreg.WeightDropGRU(4, weight_dropout=0.3)],
    "ConsistentDropoutCell": lambda: [
        keras.layers.RNN(
            kreg.ConsistentDropoutCell(keras.layers.SimpleRNNCell(4), dropout=0.3, recurrent_dropout=0.3)
        )
    ],
}


class Subclassed(keras.Model):
    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        for layer in self.stack:
            x = layer(x, training=training)
        return self.head(x)


def _models(stack_factory):
    sequential = keras.Sequential([keras.Input((5, 3)), *stack_factory(), keras.layers.Dense(1)])
    inputs = keras.Input((5, 3))
    x = inputs
    for layer in stack_factory():
        x = layer(x)
    functional = keras.Model(inputs, keras.layers.Dense(1)(x))
    return {"sequential": sequential, "functional": functional, "subclassed": Subclassed(stack_factory())}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_trains_and_predicts_in_every_model_api(name):
    x = np.random.default_rng(0).standard_normal((8, 5, 3)).astype("float32")
    target = np.zeros((8, 1), dtype="float32")
    for api, model in _models(STACKS[name]).items():
        model.compile("adam", "mse")
        loss = model.fit(x, target, epochs=1, verbose=0).history["loss"][0]
        assert np.isfinite(loss), f"{api}: loss {loss}"
        # Inference is deterministic: predict agrees with a direct call.
        np.testing.assert_allclose(
            ops.convert_to_numpy(model(x, training=False)),
            model.predict(x, verbose=0),
            rtol=1e-5,
            atol=1e-6,
            err_msg=api,
        )

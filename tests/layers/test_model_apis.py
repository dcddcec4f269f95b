"""Every kreg layer (every name in `kreg.layers.__all__`) inside Sequential,
functional and subclassed models. The layers come from tests/layer_examples.py."""

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg._keras_compat import all_sublayers
from layer_examples import EXAMPLES
from layer_examples import missing_examples


def test_every_public_layer_has_an_example():
    missing = missing_examples()
    assert not missing, (
        f"kreg.layers.__all__ has layers without an example: {missing}. "
        "Add a row for each to EXAMPLES in tests/layer_examples.py."
    )


def test_every_example_uses_its_layer():
    for name, example in EXAMPLES.items():
        model = example.model()
        used = {type(layer).__name__ for layer in all_sublayers(model)}
        assert name in used, f"EXAMPLES[{name!r}] builds {sorted(used)}, not {name}"


class Subclassed(keras.Model):
    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.flatten = keras.layers.Flatten()
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):
        for layer in self.stack:
            x = layer(x, training=training)
        return self.head(self.flatten(x))


def _models(example):
    sequential = keras.Sequential(
        [
            keras.Input(example.input_shape),
            *example.stack(),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    return {
        "sequential": sequential,
        "functional": example.model(),
        "subclassed": Subclassed(example.stack()),
    }


@pytest.mark.parametrize("name", sorted(kreg.layers.__all__))
def test_trains_and_predicts_in_every_model_api(name):
    if name not in EXAMPLES:
        pytest.fail(f"{name} has no example in tests/layer_examples.py")
    example = EXAMPLES[name]
    x = example.inputs(8)
    target = np.ones((8, 1), dtype="float32")
    for api, model in _models(example).items():
        model.compile("adam", "mse")
        before = None
        if model.built:
            before = [w.copy() for w in model.get_weights()]
        loss = model.fit(x, target, epochs=1, verbose=0).history["loss"][0]
        assert np.isfinite(loss), f"{api}: loss {loss}"
        if before is not None:
            moved = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
            assert any(moved), f"{api}: one step of fit changed no weight"
        # Inference is deterministic: predict agrees with a direct call.
        np.testing.assert_allclose(
            ops.convert_to_numpy(model(x, training=False)),
            model.predict(x, verbose=0),
            rtol=1e-5,
            atol=1e-6,
            err_msg=api,
        )

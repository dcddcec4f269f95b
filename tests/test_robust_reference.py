"""OnlineAdapter's default method, `"robust"`, against a plain reference computation.

The reference covers RoTTA's path (`shift_distance=None`): the shift test, on
by default, has its own tests in tests/test_online_adapter.py. These streams
are far from the model's statistics on purpose (the bank must replace samples),
so the test would replace the statistics at once.

The reference is written from the method's description (kreg/adapt/robust.py)
and RoTTA's reference code (github.com/BIT-DA/RoTTA, `core/utils/memory.py`,
`CSTU`), with Keras calls for every model pass: predictions with
`predict_on_batch`, the bank's statistics from a model that outputs each batch
norm's input. Any shortcut the adapter takes for speed must leave its
predictions and statistics where this straightforward loop puts them.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from kreg import OnlineAdapter
from kreg.model_graph import batch_norm_layers

_CAPACITY = 64  # OnlineAdapter's default `memory_size`
_MOMENTUM = 0.05  # its default `statistics_momentum`


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, use_bias=False)(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


class _ReferenceBank:
    """RoTTA's CSTU as its reference code writes it: `[sample, entropy, age]` per
    class, every age up by one after each sample."""

    def __init__(self, classes):
        self.classes = classes
        self.data = [[] for _ in range(classes)]

    def score(self, age, entropy):
        return 1 / (1 + math.exp(-age / _CAPACITY)) + entropy / math.log(self.classes)

    def add(self, sample, label, entropy):
        if self.remove_instance(label, self.score(0, entropy)):
            self.data[label].append([sample, entropy, 0])
        for items in self.data:
            for item in items:
                item[2] += 1

    def remove_instance(self, label, new_score):
        if len(self.data[label]) < _CAPACITY / self.classes:
            if sum(map(len, self.data)) < _CAPACITY:
                return True
            most = max(map(len, self.data))
            return self.remove_from(
                [c for c in range(self.classes) if len(self.data[c]) == most], new_score
            )
        return self.remove_from([label], new_score)

    def remove_from(self, classes, new_score):
        worst = None
        for label in classes:
            for index, (_, entropy, age) in enumerate(self.data[label]):
                score = self.score(age, entropy)
                if worst is None or score >= worst[0]:
                    worst = (score, label, index)
        if worst is None:
            return True
        if worst[0] > new_score:
            del self.data[worst[1]][worst[2]]
            return True
        return False

    def samples(self):
        return np.stack([item[0] for items in self.data for item in items])


def _reference_run(model, stream, warm_start):
    """Predictions of each batch, and the model's statistics after the stream.

    RoTTA's alpha from the first update; with `warm_start`, the first updates
    weigh the bank as a running average from the model's statistics, counted
    as one full bank (`statistics_warm_start="source"`)."""
    layers = batch_norm_layers(model)
    # With its stored statistics every batch norm normalizes as the model predicts.
    inputs_of = keras.Model(model.inputs, [layer.input for layer in layers])
    bank, since_update, updates, predictions = _ReferenceBank(3), 0, 0, []
    for x in stream:
        probabilities = model.predict_on_batch(x)
        predictions.append(probabilities)
        entropies = -np.sum(probabilities * np.log(np.clip(probabilities, 1e-7, 1.0)), axis=-1)
        for sample, p, entropy in zip(x, probabilities, entropies):
            bank.add(sample.copy(), int(p.argmax()), float(entropy))
        since_update += len(x)
        if since_update < _CAPACITY:
            continue
        since_update = 0
        samples = bank.samples()
        alpha = _MOMENTUM
        if warm_start:
            alpha = max(_MOMENTUM, len(samples) / _CAPACITY / (updates + 2))
        features = inputs_of.predict_on_batch(samples)
        for layer, feature in zip(layers, features):
            feature = np.asarray(feature, np.float64).reshape(-1, feature.shape[-1])
            if len(feature) < 2:  # one value per channel: no variance, kept
                continue
            for variable, batch in (
                (layer.moving_mean, feature.mean(axis=0)),
                (layer.moving_variance, feature.var(axis=0)),
            ):
                stored = ops.convert_to_numpy(variable).astype(np.float64)
                variable.assign((1 - alpha) * stored + alpha * batch)
        updates += 1
    return predictions, [ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("warm_start", ["shift", "source"])
def test_the_default_method_matches_a_plain_reference_computation(warm_start):
    # Batch sizes that divide 64, fall short of it and pass it; inputs spread
    # over the classes so that the bank holds several and replaces samples.
    rng = np.random.default_rng(0)
    sizes = (16, 24, 5, 30, 64, 1, 40, 20, 64, 3)
    stream = [
        rng.normal(rng.uniform(-2, 3), rng.uniform(1, 3), (n, 6, 6, 1)).astype("float32")
        for n in sizes
    ]
    model, reference = _cnn(), _cnn()
    # Without a shift, "shift" (the default) warm-starts nothing.
    adapter = OnlineAdapter(model, shift_distance=None, statistics_warm_start=warm_start)
    got = [adapter.predict_on_batch(x) for x in stream]
    expected, expected_weights = _reference_run(reference, stream, warm_start == "source")
    assert adapter._robust.updates == 3  # the stream crossed 64 samples three times
    for batch, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"batch {batch}")
    for variable, want in zip(model.weights, expected_weights):
        np.testing.assert_allclose(
            ops.convert_to_numpy(variable), want, rtol=1e-4, atol=1e-5, err_msg=variable.path
        )
    # The statistics moved: the comparison is not of two unchanged models.
    assert not np.allclose(ops.convert_to_numpy(model.get_layer("bn1").moving_mean), 0.0)

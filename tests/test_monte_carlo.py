import keras
import numpy as np
import pytest

import kreg
from conftest import to_numpy as _numpy
from kreg.monte_carlo import dropout_layers


def _features(n=16, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype("float32")


def _classifier(dropout=0.5):
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def test_dropout_is_on_and_batch_norm_uses_its_moving_statistics():
    """Each sample is BN-with-moving-statistics(x), dropped and scaled: every
    element is 0 or exactly twice the inference value. With the batch's own
    statistics (what `training=True` would give) it would be neither."""
    inputs = keras.Input((6,))
    bn = keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.Dropout(0.5, seed=1)(bn(inputs)))
    model.build((None, 6))
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([gamma, beta, np.full(6, 5.0, "float32"), np.full(6, 4.0, "float32")])
    x = _features(32, 6)
    expected = _numpy(model(x, training=False))
    result = kreg.mc_predict(model, x, samples=4, seed=0, return_samples=True)
    assert result.samples.shape == (4, 32, 6)
    dropped = result.samples == 0
    np.testing.assert_allclose(
        result.samples[~dropped], np.broadcast_to(2 * expected, dropped.shape)[~dropped], rtol=1e-5
    )
    assert 0.3 < dropped.mean() < 0.7
    # The model is unchanged: its own inference is still deterministic and BN's
    # moving statistics did not move.
    np.testing.assert_array_equal(_numpy(model(x)), expected)
    np.testing.assert_array_equal(bn.get_weights()[2], 5.0)


def test_statistics_are_those_of_the_samples():
    model = _classifier()
    x = _features()
    full = kreg.mc_predict(model, x, samples=12, seed=3, return_samples=True)
    summary = kreg.mc_predict(model, x, samples=12, seed=3)
    samples = full.samples
    np.testing.assert_allclose(summary.mean, samples.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summary.variance, samples.var(axis=0), rtol=1e-3, atol=1e-6)

    def entropy(p):
        return -np.sum(p * np.log(np.clip(p, 1e-12, 1)), axis=-1)

    predictive = entropy(samples.mean(axis=0))
    np.testing.assert_allclose(summary.predictive_entropy, predictive, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        summary.mutual_information, predictive - entropy(samples).mean(axis=0), rtol=1e-3, atol=1e-5
    )
    assert np.all(summary.mutual_information > 0), (
        "dropout disagreement must show as mutual information"
    )
    assert summary.dropout_layers == [model.layers[2].name]


def test_seeded_calls_repeat_and_leave_the_random_streams_as_they_were():
    model = _classifier()
    x = _features()
    states = [v for v in model.variables if v.name == "seed_generator_state"]
    before = [_numpy(s).copy() for s in states]
    first = kreg.mc_predict(model, x, samples=5, seed=7)
    np.testing.assert_array_equal(kreg.mc_predict(model, x, samples=5, seed=7).mean, first.mean)
    assert not np.allclose(kreg.mc_predict(model, x, samples=5, seed=8).mean, first.mean)
    for state, value in zip(states, before):
        np.testing.assert_array_equal(_numpy(state), value)
    unseeded = [kreg.mc_predict(model, x, samples=5).mean for _ in range(2)]
    assert not np.allclose(*unseeded), "without a seed each call draws new masks"


def test_masks_stay_consistent_across_time_in_kreg_sequence_layers():
    inputs = keras.Input((6, 8))
    outputs = kreg.ConsistentDropout(0.5, seed=2)(inputs)
    model = keras.Model(inputs, outputs)
    x = np.ones((4, 6, 8), "float32")
    samples = kreg.mc_predict(model, x, samples=3, seed=0, return_samples=True).samples
    for t in range(1, 6):
        np.testing.assert_array_equal(samples[:, :, t], samples[:, :, 0])
    assert not np.array_equal(samples[0], samples[1]), "each sample draws its own mask"


def test_recurrent_layers_with_dropout_are_switched_and_others_are_not():
    inputs = keras.Input((5, 3))
    x = keras.layers.LSTM(4, return_sequences=True, name="plain")(inputs)
    x = keras.layers.GRU(4, recurrent_dropout=0.3, return_sequences=True, name="keras_dropout")(x)
    x = kreg.WeightDropLSTM(4, weight_dropout=0.3, mask_groups=2, name="weight_drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
    assert sorted(layer.name for layer in dropout_layers(model)) == ["keras_dropout", "weight_drop"]
    result = kreg.mc_predict(model, _features(8, 15).reshape(8, 5, 3), samples=4, seed=0)
    assert result.predictive_entropy is None and result.mutual_information is None  # regression
    assert np.all(result.variance > 0)


def test_nested_models_and_attention_dropout_are_found():
    inner_inputs = keras.Input((5, 4))
    attention = keras.layers.MultiHeadAttention(2, 4, dropout=0.5, name="attention")
    inner = keras.Model(inner_inputs, attention(inner_inputs, inner_inputs), name="inner")
    inputs = keras.Input((5, 4))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inner(inputs))))
    names = [layer.name for layer in dropout_layers(model)]
    assert len(names) == 1 and names[0] != "attention"  # the Dropout inside it
    result = kreg.mc_predict(model, np.ones((3, 5, 4), "float32"), samples=4, seed=0)
    assert np.all(result.variance.max(axis=-1) > 0)


def test_logits_are_turned_into_probabilities():
    model = _classifier()
    x = _features()
    probabilities = kreg.mc_predict(model, x, samples=6, seed=1)
    inputs = keras.Input((4,))
    y = inputs
    for layer in model.layers[:-1]:
        y = layer(y)
    head = model.layers[-1]
    logits = keras.layers.Dense(3)
    y = logits(y)
    logits_model = keras.Model(inputs, y)
    logits.set_weights(head.get_weights())
    from_logits = kreg.mc_predict(logits_model, x, samples=6, seed=1, from_logits=True)
    np.testing.assert_allclose(from_logits.mean, probabilities.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        from_logits.mutual_information, probabilities.mutual_information, rtol=1e-4, atol=1e-6
    )


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="torch runs eagerly: nothing is traced"
)
def test_all_samples_of_all_batches_run_in_one_traced_function():
    model = _classifier()
    dropout = model.layers[2]
    calls = []
    call = dropout.call

    def counting_call(*args, **kwargs):
        calls.append(kwargs.get("training"))
        return call(*args, **kwargs)

    object.__setattr__(dropout, "call", counting_call)
    kreg.mc_predict(model, _features(64), samples=5, batch_size=8, seed=0)
    # 8 batches x 5 samples would be 40 calls if each batch or sample ran alone.
    assert 5 <= len(calls) <= 10 and all(calls), calls


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"samples": 0}, ValueError, r"`samples`.*>= 1.*samples=0"),
        ({"samples": 2.5}, ValueError, r"`samples`.*integer"),
        ({"seed": -1}, ValueError, r"`seed`.*seed=-1"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        kreg.mc_predict(_classifier(), _features(), **kwargs)


def test_models_without_dropout_or_with_several_outputs_are_refused():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no dropout layer"):
        kreg.mc_predict(plain, _features())
    inputs = keras.Input((4,))
    x = keras.layers.Dropout(0.5)(inputs)
    two = keras.Model(inputs, [keras.layers.Dense(2)(x), keras.layers.Dense(1)(x)])
    with pytest.raises(ValueError, match="one output"):
        kreg.mc_predict(two, _features())
    with pytest.raises(TypeError, match="keras.Model"):
        kreg.mc_predict(keras.layers.Dropout(0.5), _features())


def test_inputs_with_no_samples_are_refused_with_the_shape():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"argument `x`.*at least one sample.*\(0, 4\)"):
        kreg.mc_predict(model, np.ones((0, 4), "float32"), samples=3)


@pytest.mark.parametrize("kind", ["empty list", "empty tf.data dataset"])
def test_inputs_that_yield_no_batches_are_refused(kind):
    # Keras's predict fails on both with internal errors: a KeyError from its
    # data adapter, an UnboundLocalError once no batch ran.
    if kind == "empty list":
        x = []
    else:
        tf = pytest.importorskip("tensorflow")
        x = tf.data.Dataset.from_tensor_slices(np.ones((0, 4), "float32")).batch(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"argument `x`.*at least one sample"):
        kreg.mc_predict(model, x, samples=3)

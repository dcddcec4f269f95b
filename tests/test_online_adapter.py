"""kreg.OnlineAdapter: batch norm adaptation over a stream of batches."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg import OnlineAdapter
from kreg.adapt.online_adapter import ONLINE_METHODS

# Arguments that make tent and eata move visibly within a few small batches.
_FAST = dict(learning_rate=0.05, entropy_factor=1.0, redundancy_threshold=None)


def _cnn(bn=keras.layers.BatchNormalization, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = bn(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, use_bias=False)(x)
    x = bn(name="bn2")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _fused_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = kreg.Conv2DBatchNorm(4, 3, padding="same", activation="relu", name="fused")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _stream(batches=3, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0 + i, 2.0, (size, 6, 6, 1)).astype("float32") for i in range(batches)]


def _weights(model):
    return {w.path: ops.convert_to_numpy(w).copy() for w in model.weights}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def _arguments(method):
    return dict(method=method, **(_FAST if method in ("tent", "eata") else {}))


@pytest.mark.parametrize("method", ONLINE_METHODS)
def test_reset_returns_to_the_source_state(method):
    model = _cnn()
    source = _weights(model)
    adapter = OnlineAdapter(model, **_arguments(method))
    for x in _stream():
        adapter.predict_on_batch(x)
    if method in ("online", "reestimate", "tent", "eata"):  # the ones that keep something
        assert any(not np.array_equal(source[p], v) for p, v in _weights(model).items())
    adapter.reset()
    _assert_same(_weights(model), source)


@pytest.mark.parametrize("method", ["reestimate", "tent", "eata"])
def test_snapshot_and_restore_resume_exactly(method):
    model = _cnn()
    adapter = OnlineAdapter(model, **_arguments(method))
    first, second, third = _stream()
    adapter.predict_on_batch(first)
    snapshot, at_snapshot = adapter.snapshot(), _weights(model)
    expected = adapter.predict_on_batch(second)
    adapter.predict_on_batch(third)
    adapter.restore(snapshot)
    _assert_same(_weights(model), at_snapshot)
    # The running state (averages, optimizer slots, statistics so far) comes back too.
    np.testing.assert_array_equal(adapter.predict_on_batch(second), expected)


@pytest.mark.parametrize("method", ONLINE_METHODS)
def test_episodic_mode_equals_a_fresh_adapter_for_each_batch(method):
    model = _cnn()
    source = model.get_weights()
    episodic = OnlineAdapter(model, reset="batch", **_arguments(method))
    got = [episodic.predict_on_batch(x) for x in _stream()]
    for x, predictions in zip(_stream(), got):
        fresh_model = _cnn()
        fresh_model.set_weights(source)
        fresh = OnlineAdapter(fresh_model, **_arguments(method))
        np.testing.assert_allclose(predictions, fresh.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), source))


def test_stream_mode_resets_at_the_start_of_each_predict():
    model = _cnn()
    adapter = OnlineAdapter(model, method="reestimate", reset="stream")
    data = np.concatenate(_stream())
    first = adapter.predict(data, batch_size=16)
    np.testing.assert_allclose(adapter.predict(data, batch_size=16), first, rtol=1e-6)
    continual = OnlineAdapter(_cnn(), method="reestimate")
    continual.predict(data, batch_size=16)
    assert not np.allclose(continual.predict(data, batch_size=16), first)


def test_reestimate_holds_the_exact_statistics_of_the_stream_so_far():
    model = _cnn()
    stream = _stream()
    adapter = OnlineAdapter(model, method="reestimate")
    for x in stream:
        adapter.predict_on_batch(x)
    reference = _cnn()
    kreg.adapt_batchnorm(reference, np.concatenate(stream), batch_size=16, verbose=0)
    for name in ("bn1", "bn2"):
        for a, b in zip(model.get_layer(name).weights, reference.get_layer(name).weights):
            np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


def test_eata_learns_nothing_from_a_stream_of_unreliable_predictions():
    # A 3-class head predicting almost uniformly: every entropy is above
    # 0.4 ln 3, so eata leaves the weights alone, where tent moves them.
    model = _cnn()
    head = model.layers[-1]
    head.set_weights([w * 0.01 for w in head.get_weights()])
    source = _weights(model)
    eata = OnlineAdapter(model, method="eata", learning_rate=0.05)
    probabilities = [eata.predict_on_batch(x) for x in _stream()]
    assert min(-np.sum(p * np.log(p), axis=-1).min() for p in probabilities) > 0.4 * math.log(3)
    _assert_same(_weights(model), source)
    tent = OnlineAdapter(model, method="tent", learning_rate=0.05)
    for x in _stream():
        tent.predict_on_batch(x)
    assert any(not np.array_equal(source[p], v) for p, v in _weights(model).items())


def test_the_collapse_guard_fires_on_a_degenerate_stream():
    # Near-identical samples: with batch statistics only the shift reaches the
    # output, and entropy minimization drives every prediction to one class.
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, 6, 6, 1))
    stream = [(one + rng.normal(0, 1e-3, (16, 6, 6, 1))).astype("float32") for _ in range(80)]
    arguments = dict(method="eata", learning_rate=0.5, entropy_factor=1.0, redundancy_threshold=None)
    model = _cnn()
    unguarded = OnlineAdapter(model, collapse_factor=0.0, **arguments)
    last = [unguarded.predict_on_batch(x) for x in stream][-1]
    assert -np.sum(last * np.log(last), axis=-1).mean() < 0.03 * math.log(3)  # it collapses
    assert unguarded.collapse_resets == 0

    unguarded.reset()
    guarded = OnlineAdapter(model, **arguments)
    for x in stream:
        guarded.predict_on_batch(x)
    assert guarded.collapse_resets >= 1


@pytest.mark.parametrize("method", ["batch", "reestimate", "eata"])
@pytest.mark.parametrize("kind", ["keras", "adaptive", "fused"])
def test_works_with_keras_kreg_and_fused_batch_norms(kind, method):
    if kind == "fused":
        model = _fused_cnn()
    else:
        model = _cnn(keras.layers.BatchNormalization if kind == "keras" else kreg.AdaptiveBatchNormalization)
    source = _weights(model)
    adapter = OnlineAdapter(model, **_arguments(method))
    x = _stream()[0]
    predictions = adapter.predict_on_batch(x)
    assert predictions.shape == (16, 3) and np.all(np.isfinite(predictions))
    if method == "batch":
        # Prediction-time BN is the model run with its batch norms in training mode.
        reference = keras.models.clone_model(model)
        reference.set_weights(model.get_weights())
        expected = ops.convert_to_numpy(ops.stop_gradient(reference(x, training=True)))
        np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-5)
    else:
        assert any(not np.array_equal(source[p], v) for p, v in _weights(model).items())
    adapter.reset()
    _assert_same(_weights(model), source)
    # The model's own predict is untouched by the adapter's passes.
    inference = ops.convert_to_numpy(ops.stop_gradient(model(x, training=False)))
    np.testing.assert_allclose(model.predict(x, verbose=0), inference, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused_at_construction():
    model = _cnn()
    with pytest.raises(ValueError, match="method.*'eata'.*Received: method='adabn'"):
        OnlineAdapter(model, method="adabn")
    with pytest.raises(ValueError, match="reset.*Received: reset='sample'"):
        OnlineAdapter(model, reset="sample")
    with pytest.raises(ValueError, match="learning_rate"):
        OnlineAdapter(model, method="tent", learning_rate=0)
    with pytest.raises(ValueError, match="online_momentum"):
        OnlineAdapter(model, method="online", online_momentum=1.0)
    with pytest.raises(ValueError, match="entropy_factor"):
        OnlineAdapter(model, entropy_factor=2.0)
    with pytest.raises(TypeError, match="`model`"):
        OnlineAdapter("model")
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="`plain` has no BatchNormalization"):
        OnlineAdapter(plain)
    frozen = _cnn()
    for name in ("bn1", "bn2"):
        frozen.get_layer(name).trainable = False
    with pytest.raises(ValueError, match="method='eata'"):
        OnlineAdapter(frozen, method="eata")
    adapter = OnlineAdapter(model, method="reestimate")
    with pytest.raises(ValueError, match="snapshot"):
        adapter.restore({"bn1": []})

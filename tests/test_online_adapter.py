"""kreg.OnlineAdapter: batch norm adaptation over a stream of batches."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest
from keras import ops

import kreg
from kreg import OnlineAdapter
from kreg.adapt.online_adapter import METHOD_ARGUMENTS
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


def _arguments(method, **robust_only):
    # Arguments a method does not read must stay at their defaults (refused otherwise).
    fast = {"tent": dict(learning_rate=_FAST["learning_rate"]), "eata": _FAST}.get(method, {})
    return dict(method=method, **fast, **(robust_only if method == "robust" else {}))


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
            np.testing.assert_allclose(
                ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6
            )


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
    arguments = dict(
        method="eata", learning_rate=0.5, entropy_factor=1.0, redundancy_threshold=None
    )
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
        model = _cnn(
            keras.layers.BatchNormalization if kind == "keras" else kreg.AdaptiveBatchNormalization
        )
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


# Bad input: nothing a batch holds may change the model unless it is a batch to learn from.


@pytest.mark.parametrize("method", [m for m in ONLINE_METHODS if m != "none"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_batch_holding_nan_or_inf_changes_nothing_in_any_method(method, bad):
    model = _cnn()
    adapter = OnlineAdapter(model, **_arguments(method, memory_size=16))
    first, second, third = _stream()
    adapter.predict_on_batch(first)
    at_first = _weights(model)
    second[3, 2, 2, 0] = bad
    with pytest.raises(ValueError, match="Batch 1 holds NaN or infinite values"):
        adapter.predict_on_batch(second)
    _assert_same(_weights(model), at_first)
    skipping = OnlineAdapter(model, on_invalid="skip", **_arguments(method, memory_size=16))
    predictions = skipping.predict_on_batch(second)
    assert skipping.skipped_batches == 1
    assert np.all(np.isfinite(np.delete(predictions, 3, axis=0)))
    _assert_same(_weights(model), at_first)
    skipping.predict_on_batch(third)  # and it goes on adapting
    assert np.all(np.isfinite(np.concatenate([w.ravel() for w in _weights(model).values()])))


def _overflowing(batch, row=3):
    # Finite values whose squares overflow float32: the batch's statistics, and
    # the outputs of a model normalizing with them, are not finite.
    batch = batch.copy()
    batch[row] = np.where(np.arange(batch[row].size) % 2, 3e38, -3e38).reshape(batch[row].shape)
    return batch


@pytest.mark.parametrize("method", [m for m in ONLINE_METHODS if m not in ("none", "batch")])
def test_a_batch_the_model_overflows_on_is_refused_like_a_nan_batch(method):
    model, twin = _cnn(), _cnn()
    adapter = OnlineAdapter(model, **_arguments(method, memory_size=16))
    clean = OnlineAdapter(twin, **_arguments(method, memory_size=16))
    first, second, third = _stream()
    adapter.predict_on_batch(first)
    clean.predict_on_batch(first)
    at_first = _weights(model)
    with pytest.raises(ValueError, match="Batch 1 .*not finite"):
        adapter.predict_on_batch(_overflowing(second))
    _assert_same(_weights(model), at_first)
    # Nothing of it stayed in the adapter either (a memory bank, statistics so
    # far): the next batch is adapted to as by an adapter that never saw it.
    np.testing.assert_array_equal(adapter.predict_on_batch(third), clean.predict_on_batch(third))
    for ours, theirs in zip(model.weights, twin.weights, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs))
    skipping = OnlineAdapter(_cnn(), on_invalid="skip", **_arguments(method, memory_size=16))
    skipping.predict_on_batch(first)
    before = _weights(skipping.model)
    skipping.predict_on_batch(_overflowing(second))
    assert skipping.skipped_batches == 1
    _assert_same(_weights(skipping.model), before)


@pytest.mark.parametrize("shift_distance", ["auto", None])
def test_robust_recovers_from_samples_whose_statistics_overflow_only_in_the_bank(
    shift_distance,
):
    # 1e20 predicts finitely with the stored statistics, but its square
    # overflows float32: the batch that holds it is not due for an update and
    # goes into the bank (and the shift test's window); the next batch's update
    # then fails on it. That batch is refused, and neither the bank nor the
    # window must keep failing every update after it.
    first, second, third = _stream()
    adapter = OnlineAdapter(_cnn(), method="robust", memory_size=16, shift_distance=shift_distance)
    adapter.predict_on_batch(first)
    poisoned = second[:8].copy()
    poisoned[3] = np.where(np.arange(36).reshape(6, 6, 1) % 2, 1e20, -1e20)
    adapter.predict_on_batch(poisoned)
    with pytest.raises(ValueError, match="Batch 2 .*not finite"):
        adapter.predict_on_batch(second[8:])
    at_refusal = _weights(adapter.model)
    for batch in (third[:8], third[8:], second[8:]):  # two updates' worth
        assert np.all(np.isfinite(adapter.predict_on_batch(batch)))
    assert any(not np.array_equal(at_refusal[k], v) for k, v in _weights(adapter.model).items())


def test_batches_the_model_cannot_take_are_errors_naming_the_batch():
    model = _cnn()
    source = _weights(model)
    adapter = OnlineAdapter(model)
    adapter.predict_on_batch(_stream()[0])
    adapter.reset()
    with pytest.raises(ValueError, match=r"Batch 1 has shape \(4, 5, 5, 1\)"):
        adapter.predict_on_batch(np.zeros((4, 5, 5, 1), "float32"))
    with pytest.raises(ValueError, match="Batch 2 is empty"):
        adapter.predict_on_batch(np.zeros((0, 6, 6, 1), "float32"))
    with pytest.raises(TypeError, match="Batch 3 holds values of dtype <U1"):
        adapter.predict_on_batch(np.full((2, 6, 6, 1), "a"))
    _assert_same(_weights(model), source)


def test_a_batch_without_the_trailing_axis_of_one_is_taken_as_keras_takes_it():
    # Keras adds a missing trailing axis of size 1 (`Functional._adjust_input_rank`).
    first, second, _ = _stream()
    adapter = OnlineAdapter(_cnn(), method="reestimate")
    twin = OnlineAdapter(_cnn(), method="reestimate")
    adapter.predict_on_batch(first[..., 0])
    twin.predict_on_batch(first)
    np.testing.assert_array_equal(
        adapter.predict_on_batch(second[..., 0]), twin.predict_on_batch(second)
    )


def test_a_bfloat16_batch_is_checked_as_the_float_batch_it_is():
    # NumPy sees ml_dtypes' bfloat16 (what a bfloat16 tensor converts to) as
    # kind "V", not "f": it must still be taken, and its NaN still refused.
    model = _cnn()
    source = _weights(model)
    first, second, _ = _stream()
    adapter = OnlineAdapter(model, method="reestimate")
    clean = adapter.predict_on_batch(first.astype(ml_dtypes.bfloat16))
    assert np.all(np.isfinite(clean))
    adapted = _weights(model)
    second[0, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="Batch 1 holds NaN or infinite values"):
        adapter.predict_on_batch(second.astype(ml_dtypes.bfloat16))
    _assert_same(_weights(model), adapted)
    assert any(not np.array_equal(source[k], adapted[k]) for k in source)


def test_a_snapshot_restores_only_into_its_own_method_and_model():
    model = _cnn()
    tent = OnlineAdapter(model, **_arguments("tent"))
    tent.predict_on_batch(_stream()[0])
    snapshot = tent.snapshot()
    assert snapshot.method == "tent"
    tent.reset()
    source = _weights(model)
    with pytest.raises(ValueError, match="method='tent'.*this adapter's method is 'reestimate'"):
        OnlineAdapter(model, method="reestimate").restore(snapshot)
    other = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(name="bn")], name="other"
    )
    with pytest.raises(
        ValueError, match="batch norms of the model `.*`, which differ from those of `other`"
    ):
        OnlineAdapter(other, **_arguments("tent")).restore(snapshot)
    # A model built by the same code has the same batch norm paths and shapes,
    # but the snapshot holds the first model's weights and running state.
    twin = _cnn()
    twin_weights = _weights(twin)
    with pytest.raises(ValueError, match="another model"):
        OnlineAdapter(twin, **_arguments("tent")).restore(snapshot)
    _assert_same(_weights(twin), twin_weights)
    _assert_same(_weights(model), source)


def test_from_logits_is_checked_against_the_last_activation():
    with pytest.raises(ValueError, match="softmax.*Received: from_logits=True"):
        OnlineAdapter(_cnn(), method="eata", from_logits=True)
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    logits = keras.Model(inputs, keras.layers.Dense(3)(hidden), name="logits")
    with pytest.raises(
        ValueError, match="`logits` ends in a linear layer.*Received: from_logits=False"
    ):
        OnlineAdapter(logits, method="tent")
    OnlineAdapter(logits, method="tent", from_logits=True)  # consistent: accepted


@pytest.mark.parametrize(
    "last", ["ops.softmax", "ops.sigmoid", "Activation", "activations.softmax"]
)
def test_from_logits_is_checked_on_a_softmax_activation_layer_or_ops_call(last):
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(3)(keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs)))
    outputs = {
        "ops.softmax": lambda: keras.ops.softmax(logits),
        "ops.sigmoid": lambda: keras.ops.sigmoid(logits),
        "Activation": lambda: keras.layers.Activation("softmax")(logits),
        "activations.softmax": lambda: keras.activations.softmax(logits),
    }[last]()
    model = keras.Model(inputs, outputs, name="probabilities")
    with pytest.raises(
        ValueError, match="`probabilities` ends in a softmax or sigmoid.*from_logits=True"
    ):
        OnlineAdapter(model, method="tent", from_logits=True)
    OnlineAdapter(model, method="tent")  # consistent: accepted


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(name="bn1")(keras.layers.Dense(8)(inputs))
    x = keras.layers.BatchNormalization(name="bn2")(keras.layers.Dense(8, activation="relu")(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("method", ONLINE_METHODS)
def test_every_method_works_one_sample_at_a_time(method):
    # A batch norm after a dense layer sees one value per channel: no variance.
    # Normalizing with it would give every sample the same output.
    model = _mlp()
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    unadapted = model.predict(x, verbose=0)
    adapter = OnlineAdapter(model, **_arguments(method, memory_size=4))
    predictions = np.concatenate([adapter.predict_on_batch(x[i : i + 1]) for i in range(len(x))])
    assert np.all(np.isfinite(predictions))
    assert np.ptp(predictions, axis=0).max() > 1e-3  # not one answer for every input
    if method in ("none", "batch", "mixed", "online"):
        # With one value per channel they keep the stored statistics.
        np.testing.assert_allclose(predictions, unadapted, rtol=1e-4, atol=1e-5)
    for layer in ("bn1", "bn2"):
        assert np.all(ops.convert_to_numpy(model.get_layer(layer).moving_variance) > 0)


def test_reestimate_pools_single_samples_exactly():
    model = _mlp()
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    adapter = OnlineAdapter(model, method="reestimate")
    for i in range(len(x)):
        adapter.predict_on_batch(x[i : i + 1])
    dense = model.layers[1]  # the Dense layer before bn1 (layers[0] is the input)
    first_inputs = ops.convert_to_numpy(dense(x))
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.get_layer("bn1").moving_mean),
        first_inputs.mean(axis=0),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(model.get_layer("bn1").moving_variance),
        first_inputs.var(axis=0),
        rtol=1e-4,
        atol=1e-5,
    )


class _SubclassedMLP(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed_mlp")
        self.hidden = keras.layers.Dense(8)
        self.norm = keras.layers.BatchNormalization()
        self.classifier = keras.layers.Dense(5, activation="softmax")

    def call(self, x, training=False):
        return self.classifier(self.norm(self.hidden(x), training=training))


def test_robust_adapts_a_subclassed_model_with_more_than_two_classes():
    # A subclassed model declares no outputs: the bank took 2 classes and the
    # first sample predicted as class 2 or above raised an IndexError.
    keras.utils.set_random_seed(0)
    model = _SubclassedMLP()
    model(np.zeros((1, 4), "float32"))
    adapter = OnlineAdapter(model, memory_size=8)
    rng = np.random.default_rng(0)
    for _ in range(4):
        predictions = adapter.predict_on_batch(rng.normal(2.0, 1.0, (4, 4)).astype("float32"))
    assert np.all(np.isfinite(predictions))
    assert len(adapter._robust.bank.items) == 5
    adapter.reset()  # the source snapshot's empty bank comes back, and adapting goes on
    adapter.predict_on_batch(rng.normal(size=(4, 4)).astype("float32"))


# The robust method's shift test (`shift_distance`).

_SHIFT = dict(memory_size=16, shift_distance=math.log(1.5))
# The shift test as it was before the per-batch test became the default: once
# per window, consecutive shifted windows pooled.
_PER_WINDOW = dict(shift_test="window", shift_pool="consecutive")


def _source_cnn(seed=0):
    """`_cnn` with every batch norm holding the exact statistics of its source data."""
    model = _cnn(seed=seed)
    source = np.random.default_rng(seed + 10).normal(0.0, 1.0, (64, 6, 6, 1)).astype("float32")
    kreg.adapt_batchnorm(model, source, batch_size=64, verbose=0)
    return model


def test_a_covariate_shift_is_followed_at_once_with_the_recent_samples_statistics():
    model, twin = _source_cnn(), _source_cnn()
    adapter = OnlineAdapter(model, **_SHIFT)
    rng = np.random.default_rng(1)
    # 16 samples, one window, far from the source (mean +3, twice the spread).
    stream = [rng.normal(3.0, 2.0, (8, 6, 6, 1)).astype("float32") for _ in range(2)]
    last = [adapter.predict_on_batch(x) for x in stream][-1]
    assert adapter._robust.shift_updates == 1
    # The statistics of the 16 samples, every batch norm normalizing with them
    # (AdaBN on the window), and the batch that completed the window is
    # predicted with them already.
    kreg.adapt_batchnorm(twin, np.concatenate(stream), batch_size=16, verbose=0)
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last, twin.predict(stream[1], verbose=0), rtol=1e-4, atol=1e-5)
    # The bank filled under the shifted predictions was emptied: it holds the
    # last batch only, predicted with the new statistics.
    assert len(adapter._robust.bank) == 8


def test_source_like_inputs_keep_the_slow_rate_of_the_class_balanced_bank():
    model = _source_cnn()
    adapter = OnlineAdapter(model, **_SHIFT)
    plain = OnlineAdapter(_source_cnn(), memory_size=16)
    rng = np.random.default_rng(2)
    for _ in range(4):  # source-like inputs of a narrower spread: a few classes, say
        x = rng.normal(0.2, 0.9, (8, 6, 6, 1)).astype("float32")
        np.testing.assert_allclose(
            adapter.predict_on_batch(x), plain.predict_on_batch(x), rtol=1e-5, atol=1e-6
        )
    assert adapter._robust.shift_updates == 0
    assert adapter._robust.updates == 2  # RoTTA's updates from the bank went on


def test_the_shift_test_needs_statistics_pooled_over_positions():
    # A dense layer's batch norm sees class-specific features: a few classes
    # move it as far as a corruption, so the test never fires there.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6), keras.layers.BatchNormalization()]
        + [keras.layers.Dense(3, activation="softmax")]
    )
    adapter = OnlineAdapter(model, **_SHIFT)
    rng = np.random.default_rng(3)
    for _ in range(4):
        adapter.predict_on_batch(rng.normal(5.0, 3.0, (8, 4)).astype("float32"))
    assert adapter._robust.shift_updates == 0
    assert adapter._robust.updates == 2


def test_the_shift_state_is_snapshotted_and_a_nan_batch_changes_nothing():
    model = _source_cnn()
    adapter = OnlineAdapter(model, on_invalid="skip", **_SHIFT)
    rng = np.random.default_rng(4)
    stream = [rng.normal(3.0, 2.0, (8, 6, 6, 1)).astype("float32") for _ in range(4)]
    adapter.predict_on_batch(stream[0])
    snapshot, at_snapshot = adapter.snapshot(), _weights(model)
    bad = stream[1].copy()
    bad[0, 0, 0, 0] = np.nan
    adapter.predict_on_batch(bad)  # would complete the window
    _assert_same(_weights(model), at_snapshot)
    expected = [adapter.predict_on_batch(x) for x in stream[1:]]
    assert adapter._robust.shift_updates == 1
    adapter.restore(snapshot)
    _assert_same(_weights(model), at_snapshot)
    for x, predictions in zip(stream[1:], expected):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), predictions)


@pytest.mark.parametrize("value", [0, -1.0, math.inf, "far", True])
def test_a_bad_shift_distance_is_refused(value):
    with pytest.raises(ValueError, match=r"shift_distance.*> 0 or None.*Received"):
        OnlineAdapter(_cnn(), shift_distance=value)


def test_the_default_tests_for_a_shift_at_the_source_like_bound():
    # "auto" is the shift test at label_shift.py's bound, the default chosen on
    # the tuning half of bench/adaptation_grid.py; None turns it off.
    assert OnlineAdapter(_cnn()).shift_distance == pytest.approx(math.log(1.5))
    assert OnlineAdapter(_cnn(), shift_distance="auto").shift_distance == pytest.approx(
        math.log(1.5)
    )
    assert OnlineAdapter(_cnn(), shift_distance=None).shift_distance is None
    with pytest.raises(
        ValueError, match=r"shift_distance.*'auto', a finite number > 0 or None.*Received"
    ):
        OnlineAdapter(_cnn(), shift_distance="Auto")


@pytest.mark.parametrize("method", [m for m in ONLINE_METHODS if m != "robust"])
def test_a_shift_distance_outside_the_robust_method_is_refused(method):
    with pytest.raises(ValueError, match=r"shift_distance.*read only by method='robust'.*Received"):
        OnlineAdapter(_cnn(), method=method, shift_distance=math.log(1.5))


_NOT_DEFAULT = dict(
    learning_rate=0.01,
    from_logits=True,
    entropy_factor=0.5,
    redundancy_threshold=0.1,
    collapse_factor=0.1,
    prior_strength=4,
    online_momentum=0.5,
    label_shift_ratio=0.25,
    memory_size=16,
    statistics_momentum=0.1,
    memory_fill="note",
    shift_distance=0.5,
    shift_test="window",
    shift_pool="consecutive",
    statistics_warm_start="source",
)


@pytest.mark.parametrize("name", sorted(METHOD_ARGUMENTS))
def test_an_argument_the_method_never_reads_is_refused(name):
    # Each method-specific argument away from its default is refused by every method
    # that would run exactly as without it, and accepted by those that read it.
    assert set(METHOD_ARGUMENTS) == set(_NOT_DEFAULT)
    model = _cnn()
    value = _NOT_DEFAULT[name]
    for method in ONLINE_METHODS:
        if method in METHOD_ARGUMENTS[name]:
            continue
        with pytest.raises(ValueError, match=rf"`{name}`.*read only by.*Received: {name}="):
            OnlineAdapter(model, method=method, **{name: value})
    reader = METHOD_ARGUMENTS[name][0]
    if name != "from_logits":  # the model outputs probabilities: checked against it
        OnlineAdapter(model, method=reader, **{name: value})


def test_windows_shifted_one_after_another_are_pooled():
    # Corruptions that change faster than a window: the statistics are those of
    # every window since the stream last settled, not of the last one alone.
    model, twin = _source_cnn(), _source_cnn()
    adapter = OnlineAdapter(model, **_SHIFT, **_PER_WINDOW)
    rng = np.random.default_rng(5)
    stream = [rng.normal(centre, 2.0, (16, 6, 6, 1)).astype("float32") for centre in (3.0, -3.0)]
    for x in stream:
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 2
    # The first batch norm sees the inputs through a convolution alone: its
    # pooled statistics are exactly those of the 32 samples.
    kreg.adapt_batchnorm(twin, np.concatenate(stream), batch_size=32, verbose=0)
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            ops.convert_to_numpy(getattr(model.get_layer("bn1"), name)),
            ops.convert_to_numpy(getattr(twin.get_layer("bn1"), name)),
            rtol=1e-4,
            atol=1e-5,
        )


def test_robust_snapshot_and_restore_resume_exactly_with_the_banks_ages():
    # The bank keeps ages as a clock less each arrival: the clock travels with
    # the snapshot, or the restored bank would score its samples as younger or
    # older than they are, and replace others than it did the first time.
    model = _cnn()
    adapter = OnlineAdapter(model, memory_size=16)
    stream = _stream(batches=8, size=6, seed=3)
    for x in stream[:3]:
        adapter.predict_on_batch(x)
    snapshot, at_snapshot = adapter.snapshot(), _weights(model)
    ages_at_snapshot = adapter._robust.bank.contents()[1]
    expected = [adapter.predict_on_batch(x) for x in stream[3:]]
    expected_ages = adapter._robust.bank.contents()[1]
    assert adapter._robust.updates == 2  # one update after the snapshot
    adapter.restore(snapshot)
    _assert_same(_weights(model), at_snapshot)
    np.testing.assert_array_equal(adapter._robust.bank.contents()[1], ages_at_snapshot)
    for x, predictions in zip(stream[3:], expected):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), predictions)
    np.testing.assert_array_equal(adapter._robust.bank.contents()[1], expected_ages)


@pytest.mark.parametrize("shift", [None, math.log(1.5)])
def test_robust_keeps_its_own_copy_of_the_samples_it_holds(shift):
    # A stream read into one reused buffer (a camera, a queue) must adapt as
    # the same stream in fresh arrays: the bank and the shift test's window
    # hold the samples, not views of the caller's array.
    rng = np.random.default_rng(6)
    centres = (3.0, -3.0, 1.0, 0.0, 2.0, -1.0, 3.0, 0.0)
    stream = [rng.normal(centre, 2.0, (8, 6, 6, 1)).astype("float32") for centre in centres]
    fresh = OnlineAdapter(_source_cnn(), memory_size=16, shift_distance=shift)
    reused = OnlineAdapter(_source_cnn(), memory_size=16, shift_distance=shift)
    buffer = np.empty_like(stream[0])
    for x in stream:
        buffer[...] = x
        np.testing.assert_array_equal(reused.predict_on_batch(buffer), fresh.predict_on_batch(x))
    # A snapshot does not change when the caller overwrites a batch it gave.
    first = stream[0].copy()
    fresh.predict_on_batch(first)
    snapshot = fresh.snapshot()
    expected = fresh.predict_on_batch(stream[1])
    fresh.restore(snapshot)
    first[...] = 0.0
    np.testing.assert_array_equal(fresh.predict_on_batch(stream[1]), expected)


def test_a_batch_the_shift_test_refuses_leaves_the_window_as_it_was():
    # Finite inputs that overflow in the model pass the NaN check and make the
    # shift test's statistics infinite: that batch raises, and the next ones
    # adapt as if it had never come (its samples are not kept in the window).
    rng = np.random.default_rng(7)
    stream = [rng.normal(3.0, 2.0, (8, 6, 6, 1)).astype("float32") for _ in range(3)]
    adapter = OnlineAdapter(_source_cnn(), **_SHIFT)
    clean = OnlineAdapter(_source_cnn(), **_SHIFT)
    for x in stream[:1]:
        adapter.predict_on_batch(x), clean.predict_on_batch(x)
    with pytest.raises(ValueError, match="not finite"):
        adapter.predict_on_batch(np.full((8, 6, 6, 1), 3e38, "float32"))
    for x in stream[1:]:
        np.testing.assert_array_equal(adapter.predict_on_batch(x), clean.predict_on_batch(x))
    assert adapter._robust.shift_updates == clean._robust.shift_updates == 1


@pytest.mark.parametrize("batch_size", [12, 40])
def test_the_shift_test_takes_every_sample_since_the_last_update(batch_size):
    # Batches that do not divide `memory_size` (12), or exceed it (40): every
    # sample since the last update is in the window, none is left out, so the
    # windows found shifted one after another pool to AdaBN over the whole
    # stretch, batch by batch as `adapt_batchnorm` does it.
    model, twin = _source_cnn(), _source_cnn()
    adapter = OnlineAdapter(model, **_SHIFT, **_PER_WINDOW)
    rng = np.random.default_rng(8)
    centres = (3.0, 3.0, -3.0, -3.0) if batch_size == 12 else (3.0, -3.0)
    stream = [rng.normal(c, 2.0, (batch_size, 6, 6, 1)).astype("float32") for c in centres]
    for x in stream:
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 2
    window = max(batch_size, 24)  # the samples from one update to the next
    kreg.adapt_batchnorm(twin, np.concatenate(stream), batch_size=window, verbose=0)
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["entropy_factor", "collapse_factor"])
def test_robust_without_an_entropy_step_refuses_the_step_filters(name):
    # learning_rate=0 (robust's default) builds no entropy step, and the sample
    # filter and collapse watch read these only for that step.
    model = _cnn()
    with pytest.raises(ValueError, match=rf"`{name}`.*learning_rate > 0.*Received: {name}="):
        OnlineAdapter(model, **{name: _NOT_DEFAULT[name]})
    with pytest.raises(ValueError, match=rf"`{name}`.*learning_rate=0"):
        OnlineAdapter(model, method="robust", learning_rate=0, **{name: _NOT_DEFAULT[name]})
    adapter = OnlineAdapter(model, learning_rate=1e-3, **{name: _NOT_DEFAULT[name]})
    assert adapter._robust.stepper is not None


def _overflows_below_the_mean():
    # One batch norm on the raw pixels (pooled over positions, so the shift
    # test reads it), then a softmax whose first logit is -1e38 times the sum
    # of the normalized pixels: finite while the inputs sit above the stored
    # mean, infinite (NaN probabilities) for a sample below it.
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.BatchNormalization(name="bn1")(inputs)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(2, activation="softmax", use_bias=False)
    model = keras.Model(inputs, dense(x))
    kernel = np.zeros((16, 2), "float32")
    kernel[:, 0] = -1e38
    dense.kernel.assign(kernel)
    return model


def test_a_batch_refused_after_the_shift_test_fired_leaves_everything_as_it_was():
    # The shift test writes the window's statistics before the batch that
    # completed the window is predicted; when the model then overflows on it,
    # the refusal must put back the statistics and the shift test's state, as
    # for any other refused batch.
    model = _overflows_below_the_mean()
    adapter = OnlineAdapter(model, memory_size=16, shift_distance="auto")
    rng = np.random.default_rng(9)
    first, second = (rng.normal(100.0, 0.1, (8, 4, 4, 1)).astype("float32") for _ in range(2))
    assert np.all(np.isfinite(adapter.predict_on_batch(first)))
    at_first, state = _weights(model), adapter._robust.state()
    with pytest.raises(ValueError, match="Batch 1 .*not finite"):
        adapter.predict_on_batch(second)
    _assert_same(_weights(model), at_first)
    robust = adapter._robust
    assert (robust.updates, robust.shift_updates, robust.unsettled) == (0, 0, None)
    assert robust.since_update == state[1] == 8
    assert len(robust.window) == len(robust.bank) == 8


def test_robusts_entropy_step_leaves_out_bank_samples_the_updated_model_overflows_on():
    # Each sample predicted finitely when it came (above the stored mean); the
    # bank's update moves the mean into the samples, and the model overflows
    # on those now below it. The entropy step on the bank must not take them:
    # a NaN loss (0 weight times NaN is NaN) would make every scale and shift NaN.
    model = _overflows_below_the_mean()
    adapter = OnlineAdapter(
        model,
        memory_size=16,
        shift_distance=None,
        statistics_momentum=0.99999,
        learning_rate=0.01,
        collapse_factor=0.0,  # no reset to the source: the step is what is tested
    )
    rng = np.random.default_rng(10)
    for _ in range(2):
        x = (100.0 + rng.uniform(0.0, 0.1, (8, 4, 4, 1))).astype("float32")
        assert np.all(np.isfinite(adapter.predict_on_batch(x)))
    assert (adapter._robust.updates, adapter.collapse_resets) == (1, 0)
    mean = ops.convert_to_numpy(model.get_layer("bn1").moving_mean)
    assert 100.0 < mean[0] < 100.1  # the bank's update moved it into the samples
    for path, value in _weights(model).items():
        assert np.all(np.isfinite(value)), path


@pytest.mark.parametrize(
    "method, arguments",
    [("mixed", dict(prior_strength=0)), ("online", dict(online_momentum=0.0)), ("reestimate", {})],
)
def test_a_batch_the_model_overflows_on_with_its_updated_statistics_is_refused(method, arguments):
    # Finite statistics (no square overflows), but the model overflows on the
    # batch once it normalizes with them (each method's arguments give it the
    # batch's statistics): refused like a NaN batch, and the statistics it
    # moved are put back.
    model = _overflows_below_the_mean()
    adapter = OnlineAdapter(model, method=method, **arguments)
    rng = np.random.default_rng(11)
    source = _weights(model)
    x = rng.normal(100.0, 0.1, (8, 4, 4, 1)).astype("float32")
    with pytest.raises(ValueError, match="Batch 0 .*not finite"):
        adapter.predict_on_batch(x)
    _assert_same(_weights(model), source)
    assert adapter._accumulated is None
    skipping = OnlineAdapter(model, method=method, on_invalid="skip", **arguments)
    assert skipping.predict_on_batch(x).shape == (8, 2)
    assert skipping.skipped_batches == 1
    _assert_same(_weights(model), source)


# `shift_test="batch"`: the shift test before each batch, on the window so far.

_PER_BATCH = dict(memory_size=64, shift_distance=math.log(1.5), shift_test="batch")


def _corruption(rng, centre, spread, batches=1, size=16):
    return [rng.normal(centre, spread, (size, 6, 6, 1)).astype("float32") for _ in range(batches)]


def _bn1_statistics(model):
    layer = model.get_layer("bn1")
    return [ops.convert_to_numpy(v) for v in (layer.moving_mean, layer.moving_variance)]


@pytest.mark.parametrize("shift_pool", ["consecutive", "close"])
def test_a_per_batch_test_follows_a_new_corruption_before_its_first_batch_is_predicted(
    shift_pool,
):
    model = _source_cnn()
    adapter = OnlineAdapter(model, shift_pool=shift_pool, **_PER_BATCH)
    window = OnlineAdapter(_source_cnn(), **{**_PER_BATCH, "shift_test": "window"})
    rng = np.random.default_rng(6)
    first, second = _corruption(rng, 3.0, 2.0, batches=4), _corruption(rng, -3.0, 0.5)
    for x in first:
        adapter.predict_on_batch(x)
        window.predict_on_batch(x)
    # One shift at the first batch, then the same corruption pooled in until
    # the pool holds `memory_size` samples: AdaBN on all 64 at the first batch
    # norm, which sees the inputs through a convolution alone.
    assert adapter._robust.shift_updates == 4
    twin = _source_cnn()
    kreg.adapt_batchnorm(twin, np.concatenate(first), batch_size=64, verbose=0)
    for got, want in zip(_bn1_statistics(model), _bn1_statistics(twin)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    shifted = adapter.predict_on_batch(second[0])
    assert adapter._robust.shift_updates == 5
    twin = _source_cnn()
    if shift_pool == "close":
        # Far from the pool: another corruption, whose first batch is predicted
        # with its own statistics (AdaBN on it) already.
        kreg.adapt_batchnorm(twin, second[0], batch_size=16, verbose=0)
        for got, want in zip(model.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(shifted, twin.predict(second[0], verbose=0), atol=1e-5)
    else:
        # Pooled with the corruption before it, as windows shifted one after
        # another are.
        kreg.adapt_batchnorm(twin, np.concatenate(first + second), batch_size=80, verbose=0)
        for got, want in zip(_bn1_statistics(model), _bn1_statistics(twin)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Tested once per window, the same batch is predicted with the statistics
    # of the corruption before it.
    shifts = window._robust.shift_updates
    window.predict_on_batch(second[0])
    assert window._robust.shift_updates == shifts


def test_a_per_batch_test_settles_once_the_pool_holds_memory_size_samples():
    adapter = OnlineAdapter(_source_cnn(), **_PER_BATCH)
    rng = np.random.default_rng(7)
    for x in _corruption(rng, 3.0, 2.0, batches=8):
        adapter.predict_on_batch(x)
    # Four pooled batches, then a full window close to their statistics:
    # RoTTA's update from the bank, as after a shifted window.
    assert adapter._robust.shift_updates == 4
    assert adapter._robust.updates == 5
    assert adapter._robust.unsettled is None


def test_source_like_inputs_are_not_shifted_by_the_per_batch_test():
    adapter = OnlineAdapter(_source_cnn(), **_PER_BATCH)
    plain = OnlineAdapter(_source_cnn(), **{**_PER_BATCH, "shift_test": "window"})
    rng = np.random.default_rng(8)
    for x in _corruption(rng, 0.1, 0.95, batches=8):
        np.testing.assert_allclose(
            adapter.predict_on_batch(x), plain.predict_on_batch(x), rtol=1e-5, atol=1e-6
        )
    assert adapter._robust.shift_updates == 0
    assert adapter._robust.updates == plain._robust.updates == 2


def test_the_per_batch_test_runs_once_per_16_samples_at_batch_size_1(monkeypatch):
    adapter = OnlineAdapter(_source_cnn(), **_PER_BATCH)
    tested = []
    follow = adapter._robust._follow_a_shift

    def counting(window, settle=True):
        tested.append(len(window))
        return follow(window, settle)

    monkeypatch.setattr(adapter._robust, "_follow_a_shift", counting)
    rng = np.random.default_rng(9)
    for x in _corruption(rng, 0.0, 1.0, batches=64, size=1):
        adapter.predict_on_batch(x)
    assert tested == [16, 32, 48, 64]


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("shift_test", "batches", "'window', 'batch'"),
        ("shift_pool", None, "'consecutive', 'close'"),
    ],
)
def test_a_bad_shift_test_or_pool_is_refused(name, value, allowed):
    with pytest.raises(
        ValueError, match=rf"`{name}`. Expected one of {allowed}. Received: {name}={value!r}"
    ):
        OnlineAdapter(_cnn(), **{name: value})


@pytest.mark.parametrize("name, value", [("shift_test", "window"), ("shift_pool", "consecutive")])
def test_a_shift_test_or_pool_without_a_shift_distance_is_refused(name, value):
    with pytest.raises(ValueError, match=rf"`{name}`.*shift_distance=None.*Received: {name}="):
        OnlineAdapter(_cnn(), shift_distance=None, **{name: value})


def test_the_default_tests_before_each_batch_and_pools_close_shifts():
    adapter = OnlineAdapter(_cnn())
    assert (adapter.shift_test, adapter.shift_pool) == ("batch", "close")
    assert (adapter._robust.shift_test, adapter._robust.shift_pool) == ("batch", "close")
    adapter = OnlineAdapter(_cnn(), **_PER_WINDOW)
    assert (adapter._robust.shift_test, adapter._robust.shift_pool) == ("window", "consecutive")


def test_the_per_batch_state_is_snapshotted():
    model = _source_cnn()
    adapter = OnlineAdapter(model, shift_pool="close", **_PER_BATCH)
    rng = np.random.default_rng(10)
    stream = _corruption(rng, 3.0, 2.0, batches=2) + _corruption(rng, -3.0, 0.5, batches=3)
    adapter.predict_on_batch(stream[0])  # a shift, with a pool of 16 samples open
    snapshot, at_snapshot = adapter.snapshot(), _weights(model)
    expected = [adapter.predict_on_batch(x) for x in stream[1:]]
    assert adapter._robust.unsettled_samples == 48  # the second corruption's pool
    adapter.restore(snapshot)
    _assert_same(_weights(model), at_snapshot)
    assert adapter._robust.unsettled_samples == 16
    for x, predictions in zip(stream[1:], expected):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), predictions)


def _robust_state(adapter):
    robust = adapter._robust
    return (
        robust.updates,
        robust.shift_updates,
        robust.unsettled_samples,
        robust.since_update,
        len(robust.window),
        len(robust.bank),
    )


@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
def test_a_batch_refused_after_the_per_batch_test_pooled_it_in_leaves_everything_as_it_was(
    on_invalid,
):
    # A shift at the second batch opens a pool of 16 samples; the fourth batch
    # brings a window close to it, which is pooled in (the statistics written
    # before the batch is predicted), and the model then overflows on it (it
    # sits below the pooled mean): the pooled statistics, the pool, the
    # window, the bank and the counters are put back.
    model = _overflows_below_the_mean()
    # "consecutive": the stream after the refusal is built for its pooling
    # (with "close" its later windows start pools the model overflows on).
    arguments = dict(
        memory_size=64, shift_distance="auto", shift_test="batch", shift_pool="consecutive"
    )
    adapter = OnlineAdapter(model, on_invalid=on_invalid, **arguments)
    twin = _overflows_below_the_mean()
    clean = OnlineAdapter(twin, **arguments)
    rng = np.random.default_rng(12)

    def batch(centre):
        return rng.normal(centre, 0.001, (8, 4, 4, 1)).astype("float32")

    tests = []
    follow = adapter._robust._follow_a_shift

    def recording(window, settle=True):
        tests.append(follow(window, settle))
        return tests[-1]

    adapter._robust._follow_a_shift = recording
    for x in (batch(99.9), batch(100.1), batch(100.12)):
        assert np.all(np.isfinite(adapter.predict_on_batch(x)))
        clean.predict_on_batch(x)
    assert tests == [True]  # the shift, at 16 samples
    at_third, state = _weights(model), _robust_state(adapter)
    assert state == (1, 1, 16, 8, 8, 16)
    bank = adapter._robust.bank.contents()[1]
    if on_invalid == "raise":
        with pytest.raises(ValueError, match="Batch 3 .*not finite"):
            adapter.predict_on_batch(batch(99.9))
    else:
        adapter.predict_on_batch(batch(99.9))
        assert adapter.skipped_batches == 1
    assert tests == [True, True]  # pooled in, then refused
    _assert_same(_weights(model), at_third)
    assert _robust_state(adapter) == state
    np.testing.assert_array_equal(adapter._robust.bank.contents()[1], bank)
    for x in (batch(100.1), batch(100.1), batch(100.15)):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), clean.predict_on_batch(x))
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shift_pool", ["consecutive", "close"])
def test_a_nan_batch_in_an_open_pool_changes_nothing_and_reset_closes_the_pool(shift_pool):
    model = _source_cnn()
    adapter = OnlineAdapter(model, shift_pool=shift_pool, **_PER_BATCH)
    clean = OnlineAdapter(_source_cnn(), shift_pool=shift_pool, **_PER_BATCH)
    rng = np.random.default_rng(13)
    stream = _corruption(rng, 3.0, 2.0, batches=3, size=8)
    for x in stream[:2]:
        adapter.predict_on_batch(x), clean.predict_on_batch(x)
    assert adapter._robust.unsettled_samples == 16  # a pool open at the second batch
    at_pool, state = _weights(model), _robust_state(adapter)
    bad = stream[2].copy()
    bad[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="Batch 2 holds NaN or infinite values"):
        adapter.predict_on_batch(bad)
    adapter.on_invalid = "skip"
    adapter.predict_on_batch(bad)
    _assert_same(_weights(model), at_pool)
    assert _robust_state(adapter) == state
    for x in stream[2:] + _corruption(rng, -3.0, 0.5, batches=3, size=8):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), clean.predict_on_batch(x))
    adapter.reset()
    for got, want in zip(model.get_weights(), _source_cnn().get_weights()):
        np.testing.assert_array_equal(got, want)
    assert _robust_state(adapter) == (0, 0, 0, 0, 0, 0)
    assert adapter._robust.unsettled is None
    fresh = OnlineAdapter(_source_cnn(), shift_pool=shift_pool, **_PER_BATCH)
    for x in stream:
        np.testing.assert_array_equal(adapter.predict_on_batch(x), fresh.predict_on_batch(x))


@pytest.mark.parametrize("memory_size, batch_size", [(8, 1), (8, 4), (8, 17), (64, 64), (64, 100)])
@pytest.mark.parametrize("shift_pool", ["consecutive", "close"])
def test_the_per_batch_test_is_the_window_test_when_every_test_is_due(
    memory_size, batch_size, shift_pool
):
    # memory_size <= 16, or batches of memory_size samples or more: the test
    # runs only at the batches that complete a window, and a shift's pool holds
    # memory_size samples at once, so nothing is pooled in: "batch" adapts
    # exactly as "window".
    arguments = dict(memory_size=memory_size, shift_distance=math.log(1.5), shift_pool=shift_pool)
    per_batch = OnlineAdapter(_source_cnn(), shift_test="batch", **arguments)
    per_window = OnlineAdapter(_source_cnn(), shift_test="window", **arguments)
    rng = np.random.default_rng(14)
    samples = max(4 * memory_size, 3 * batch_size)
    centres = [3.0, -3.0, 0.0, 3.0]
    for i in range(0, samples, batch_size):
        x = rng.normal(centres[i * 4 // samples], 2.0, (batch_size, 6, 6, 1)).astype("float32")
        np.testing.assert_array_equal(per_batch.predict_on_batch(x), per_window.predict_on_batch(x))
    assert per_batch._robust.shift_updates == per_window._robust.shift_updates > 0
    assert per_batch._robust.updates == per_window._robust.updates


@pytest.mark.parametrize("batch_size", [1, 4, 17, 64, 100])
@pytest.mark.parametrize("memory_size", [8, 64])
def test_the_per_batch_test_never_fires_after_a_dense_layer(batch_size, memory_size):
    # The first batch norm follows a dense layer: one value per channel and
    # sample, class-specific features (see the module), however far they are.
    arguments = dict(memory_size=memory_size, shift_pool="close")
    tested = OnlineAdapter(_mlp(), shift_distance=math.log(1.5), shift_test="batch", **arguments)
    untested = OnlineAdapter(_mlp(), shift_distance=None, memory_size=memory_size)
    rng = np.random.default_rng(15)
    for centre in (5.0, -5.0, 5.0):
        x = rng.normal(centre, 3.0, (batch_size, 4)).astype("float32")
        np.testing.assert_array_equal(tested.predict_on_batch(x), untested.predict_on_batch(x))
    assert tested._robust.shift_updates == 0
    assert tested._robust.updates == untested._robust.updates


def test_the_per_batch_test_takes_a_dict_of_inputs():
    keras.utils.set_random_seed(0)
    inputs = {
        "image": keras.Input((6, 6, 1), name="image"),
        "extra": keras.Input((2,), name="extra"),
    }
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs["image"])
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    x = keras.layers.Concatenate()([x, inputs["extra"]])
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(16)
    source = {
        "image": rng.normal(0.0, 1.0, (64, 6, 6, 1)).astype("float32"),
        "extra": rng.normal(0.0, 1.0, (64, 2)).astype("float32"),
    }
    kreg.adapt_batchnorm(model, source, batch_size=64, verbose=0)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    adapter = OnlineAdapter(model, shift_pool="close", **_PER_BATCH)
    stream = [
        {"image": image, "extra": rng.normal(0.0, 1.0, (16, 2)).astype("float32")}
        for image in _corruption(rng, 3.0, 2.0, batches=4)
    ]
    for x in stream:
        assert adapter.predict_on_batch(x).shape == (16, 3)
    assert adapter._robust.shift_updates == 4  # a shift, then pooled in up to 64 samples
    pooled = keras.tree.map_structure(lambda *leaves: np.concatenate(leaves), *stream)
    kreg.adapt_batchnorm(twin, pooled, batch_size=64, verbose=0)
    for got, want in zip(_bn1_statistics(model), _bn1_statistics(twin)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_tested_once_per_window_a_close_pool_takes_each_shifted_window_alone():
    # A shifted window is further than `shift_distance` from the stored
    # statistics, which are those of the open pool: with shift_pool="close"
    # every shift starts a new pool, and without the per-batch test no close
    # window is pooled in, so each shift writes its own window's statistics.
    model, twin = _source_cnn(), _source_cnn()
    adapter = OnlineAdapter(model, shift_test="window", shift_pool="close", **_SHIFT)
    rng = np.random.default_rng(17)
    stream = _corruption(rng, 3.0, 2.0) + _corruption(rng, -3.0, 0.5)
    for x in stream:
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 2
    assert adapter._robust.unsettled_samples == 16
    kreg.adapt_batchnorm(twin, stream[1], batch_size=16, verbose=0)
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# The shift test runs each sample once, up to the first batch norm.


class _SubclassedCNN(keras.Model):
    """`_cnn` as a subclassed model: no graph to take the part before `bn1` from."""

    def __init__(self):
        super().__init__(name="subclassed_cnn")
        self.conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
        self.bn1 = keras.layers.BatchNormalization(name="bn1")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.hidden = keras.layers.Dense(5, use_bias=False)
        self.bn2 = keras.layers.BatchNormalization(name="bn2")
        self.classifier = keras.layers.Dense(3, activation="softmax")

    def call(self, x, training=False):
        x = self.pool(keras.activations.relu(self.bn1(self.conv(x), training=training)))
        return self.classifier(self.bn2(self.hidden(x), training=training))


def _shared_first_batch_norm_cnn():
    # `bn1` normalizes the convolution's output, then the second convolution's:
    # a whole pass pools both calls, the part before its first call sees one.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    shared = keras.layers.BatchNormalization(name="bn1")
    x = shared(keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(keras.layers.ReLU()(x))
    x = keras.layers.GlobalAveragePooling2D()(shared(x))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _nested_cnn():
    return keras.Sequential([keras.Input((6, 6, 1)), _cnn()], name="nested")


def _shifting_stream(size):
    # Source-like, then two corruptions, each for 64 samples.
    rng = np.random.default_rng(11)
    stream = []
    for centre, spread in ((0.0, 1.0), (3.0, 2.0), (-2.0, 0.5)):
        stream += _corruption(rng, centre, spread, batches=64 // size, size=size)
    return stream


@pytest.mark.parametrize("size", [4, 16, 64])
def test_the_shift_test_runs_the_part_before_the_first_batch_norm_on_each_sample_once(
    size, monkeypatch
):
    # The first batch norm's input does not depend on any stored statistics,
    # so the moments of the samples tested before pool exactly with the new
    # ones: the decisions and statistics are those of a whole pass over the
    # window at every test.
    model, twin = _source_cnn(), _source_cnn()
    adapter = OnlineAdapter(model, memory_size=64)
    whole = OnlineAdapter(twin, memory_size=64)
    measured = []
    moments_of = kreg.adapt.robust.moments_of

    def counting(moments_model, x):
        measured.append(len(x))
        return moments_of(moments_model, x)

    monkeypatch.setattr(kreg.adapt.robust, "moments_of", counting)
    stream = _shifting_stream(size)
    first = max(1, 16 // size)  # the batches up to the first test
    for x in stream[:first]:  # the first test: a whole pass, then the check
        adapter.predict_on_batch(x), whole.predict_on_batch(x)
    assert isinstance(adapter._robust._input_moments, keras.Model)
    whole._robust._input_moments = "new"  # the whole model on the new samples
    measured.clear()
    for x in stream[first:]:
        np.testing.assert_allclose(
            adapter.predict_on_batch(x), whole.predict_on_batch(x), rtol=1e-4, atol=1e-5
        )
    assert adapter._robust.shift_updates == whole._robust.shift_updates >= 2
    assert adapter._robust.updates == whole._robust.updates
    for got, want in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Every sample after the first test, once: at batch 4 in runs of 16, the
    # samples since the last test.
    assert sum(measured) == sum(len(x) for x in stream[first:])
    assert set(measured) == {max(size, 16)}


@pytest.mark.parametrize(
    "build", [_SubclassedCNN, _shared_first_batch_norm_cnn, _nested_cnn], ids=lambda b: b.__name__
)
def test_the_shift_test_runs_the_whole_model_where_no_shorter_pass_matches_it(build):
    # No graph to cut (subclassed, nested), or a cut whose moments differ from
    # the whole pass's (a batch norm called twice): the test runs the whole
    # model on the new samples, and still follows a shift at once.
    model = build()
    model(np.zeros((1, 6, 6, 1), "float32"))
    source = np.random.default_rng(10).normal(0.0, 1.0, (64, 6, 6, 1)).astype("float32")
    kreg.adapt_batchnorm(model, source, batch_size=64, verbose=0)
    adapter = OnlineAdapter(model, memory_size=64)
    rng = np.random.default_rng(12)
    adapter.predict_on_batch(_corruption(rng, 0.0, 1.0)[0])
    # A batch norm called twice: the new samples' moments do not pool into
    # the window's, the whole model runs on the window.
    shared = build is _shared_first_batch_norm_cnn
    assert adapter._robust._input_moments == ("window" if shared else "new")
    for x in _corruption(rng, 3.0, 2.0):
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 1


# The warm start of the bank's updates (`statistics_warm_start`).


def _update_weights(adapter, monkeypatch, sizes=None):
    """Records the share of the bank in each of `adapter`'s bank updates (and
    the bank's size in `sizes`)."""
    weights = []
    bank_weight = adapter._robust._bank_weight

    def recording(samples):
        weights.append(bank_weight(samples))
        if sizes is not None:
            sizes.append(samples)
        return weights[-1]

    monkeypatch.setattr(adapter._robust, "_bank_weight", recording)
    return weights


@pytest.mark.parametrize(
    "warm_start, expected",
    [("source", [1 / 3, 1 / 4]), ("shift", [0.05] * 2), (None, [0.05] * 2)],
)
def test_the_models_statistics_are_warm_started_only_with_source(warm_start, expected, monkeypatch):
    # Source-like inputs, no shift: "source" weighs the model's statistics as
    # one full bank; "shift" and None move them by RoTTA's alpha from the start.
    adapter = OnlineAdapter(_source_cnn(), memory_size=16, statistics_warm_start=warm_start)
    sizes = []
    weights = _update_weights(adapter, monkeypatch, sizes)
    rng = np.random.default_rng(13)
    for x in _corruption(rng, 0.0, 1.0, batches=3):
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 0
    # The first bank is not yet full (a class holds at most 16 / 3 samples):
    # "source" weighs it by its share of a full bank, 1/2 of that.
    assert sizes[0] < 16 and sizes[1:] == [16, 16]
    first = 0.5 * sizes[0] / 16 if warm_start == "source" else 0.05
    np.testing.assert_allclose(weights, [first, *expected])


def test_statistics_a_shift_wrote_are_averaged_with_the_banks_that_follow(monkeypatch):
    # A shift writes the statistics of its 16 samples: the next bank of 16
    # weighs 16 / 32, the one after 16 / 48, as a running average since the
    # shift; then down to alpha. None keeps alpha after a shift as well.
    model = _source_cnn()
    adapter = OnlineAdapter(model, memory_size=16, statistics_warm_start="shift")
    rotta = OnlineAdapter(_source_cnn(), memory_size=16, statistics_warm_start=None)
    weights = _update_weights(adapter, monkeypatch)
    rotta_weights = _update_weights(rotta, monkeypatch)
    rng = np.random.default_rng(14)
    stream = _corruption(rng, 3.0, 2.0, batches=1 + 30)
    for x in stream:
        adapter.predict_on_batch(x), rotta.predict_on_batch(x)
    assert adapter._robust.shift_updates == rotta._robust.shift_updates == 1
    running = [1 / (n + 1) for n in range(1, 31)]  # after 16 n samples
    np.testing.assert_allclose(weights, np.maximum(running, 0.05))
    assert weights[-1] == 0.05
    np.testing.assert_allclose(rotta_weights, [0.05] * 30)


def test_the_warm_start_state_is_snapshotted_and_put_back_on_a_refused_batch():
    adapter = OnlineAdapter(_source_cnn(), memory_size=16, statistics_warm_start="shift")
    rng = np.random.default_rng(15)
    stream = _corruption(rng, 3.0, 2.0, batches=4)
    adapter.predict_on_batch(stream[0])  # the shift: 16 samples
    assert adapter._robust.averaged_samples == 16
    snapshot = adapter.snapshot()
    adapter.predict_on_batch(stream[1])
    assert adapter._robust.averaged_samples == 32
    with pytest.raises(ValueError, match="not finite"):
        adapter.predict_on_batch(np.full((16, 6, 6, 1), 3e38, "float32"))
    assert adapter._robust.averaged_samples == 32
    adapter.restore(snapshot)
    assert adapter._robust.averaged_samples == 16
    adapter.reset()
    assert adapter._robust.averaged_samples is None


def test_a_bad_statistics_warm_start_is_refused():
    with pytest.raises(
        ValueError,
        match=r"`statistics_warm_start`. Expected one of 'source', 'shift', None. "
        r"Received: statistics_warm_start='always'",
    ):
        OnlineAdapter(_cnn(), statistics_warm_start="always")


def _recorded_banks(adapter, monkeypatch):
    """Records the samples of each bank `adapter` reads, as the update reads them."""
    banks = []
    contents = adapter._robust.bank.contents

    def recording():
        samples, ages = contents()
        banks.append(np.stack(samples))
        return samples, ages

    monkeypatch.setattr(adapter._robust.bank, "contents", recording)
    return banks


@pytest.mark.parametrize("one_class", [False, True])
def test_after_a_shift_the_banks_join_its_statistics_as_a_count_weighted_average(
    one_class, monkeypatch
):
    # A shift writes the statistics of its 16 samples; the two banks that
    # follow join them as a running average: bn1's stored mean is the mean of
    # the shift's window and of both banks weighted by their samples, and its
    # variance their variances so weighted (an update mixes variances
    # linearly, as RoTTA's does; only a shift pools its windows exactly). bn1's
    # input is the convolution's output, which no stored statistics change, so
    # each bank's moments there are exact. A model that predicts one class
    # fills RoTTA's bank to a third only (6 of 16 samples, at most 16 / 3 of a
    # class).
    model = _source_cnn()
    if one_class:
        model.layers[-1].bias.assign(np.array([10.0, 0.0, 0.0], "float32"))
    source = model.get_weights()
    adapter = OnlineAdapter(model, memory_size=16)  # statistics_warm_start="shift"
    banks = _recorded_banks(adapter, monkeypatch)
    rng = np.random.default_rng(16)
    stream = _corruption(rng, 3.0, 2.0, batches=3)
    for x in stream:
        adapter.predict_on_batch(x)
    assert (adapter._robust.updates, adapter._robust.shift_updates) == (3, 1)
    assert [len(bank) for bank in banks] == ([6, 6] if one_class else [16, 16])
    assert adapter._robust.averaged_samples == 16 + sum(map(len, banks))
    # Of three classes, the first bank holds samples of the shift's window as
    # well (the batch the shift was tested on goes into the emptied bank):
    # they count twice. Of one, the next batch replaced them all.
    held = any(np.array_equal(row, seen) for row in banks[0] for seen in stream[0])
    assert held is not one_class
    features = keras.Model(model.inputs, model.get_layer("bn1").input)
    parts = [stream[0], *banks]  # the shift's window, then each bank
    moments = []
    for part in parts:
        values = np.asarray(features.predict_on_batch(part), np.float64).reshape(-1, 4)
        moments.append((values.mean(0), values.var(0)))
    counts = np.array([len(part) for part in parts], np.float64)
    expected_mean = sum(c * m for c, (m, _) in zip(counts, moments)) / counts.sum()
    expected_variance = sum(c * v for c, (_, v) in zip(counts, moments)) / counts.sum()
    mean, variance = _bn1_statistics(model)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, expected_variance, rtol=1e-4, atol=1e-5)
    # None (RoTTA's alpha) is further from that average after the same stream.
    twin = _source_cnn()
    twin.set_weights(source)
    rotta = OnlineAdapter(twin, memory_size=16, statistics_warm_start=None)
    for x in stream:
        rotta.predict_on_batch(x)
    assert np.abs(_bn1_statistics(rotta.model)[0] - expected_mean).max() > 1e-2


def test_without_a_shift_test_the_shift_warm_start_is_rottas_alpha():
    # With shift_distance=None no shift writes statistics: "shift" is None.
    stream = _corruption(np.random.default_rng(17), 3.0, 2.0, batches=5)
    shift = OnlineAdapter(_source_cnn(), memory_size=16, shift_distance=None)
    rotta = OnlineAdapter(
        _source_cnn(), memory_size=16, shift_distance=None, statistics_warm_start=None
    )
    for x in stream:
        np.testing.assert_array_equal(shift.predict_on_batch(x), rotta.predict_on_batch(x))
    assert shift._robust.updates == 5 and shift._robust.averaged_samples is None
    for got, want in zip(shift.model.get_weights(), rotta.model.get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(memory_size=16),
        dict(memory_size=16, learning_rate=0.01),
        dict(memory_size=16, shift_test="window", shift_pool="consecutive"),
        # Not a multiple of 16: the shift at 16 samples pools the next 16 in.
        dict(memory_size=24),
    ],
)
def test_a_snapshot_taken_after_a_shift_resumes_its_warm_start_exactly(arguments):
    model = _source_cnn()
    adapter = OnlineAdapter(model, **arguments)
    rng = np.random.default_rng(18)
    stream = _corruption(rng, 3.0, 2.0, batches=8, size=8)
    for x in stream[:2]:
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 1
    snapshot, samples = adapter.snapshot(), adapter._robust.averaged_samples
    assert samples == 16
    expected = [adapter.predict_on_batch(x) for x in stream[2:]]
    expected_weights, expected_samples = _weights(model), adapter._robust.averaged_samples
    robust = adapter._robust
    assert robust.updates > robust.shift_updates and expected_samples > samples  # bank updates
    adapter.restore(snapshot)
    assert adapter._robust.averaged_samples == samples
    for x, predictions in zip(stream[2:], expected):
        np.testing.assert_array_equal(adapter.predict_on_batch(x), predictions)
    _assert_same(_weights(model), expected_weights)
    assert adapter._robust.averaged_samples == expected_samples
    adapter.reset()
    assert adapter._robust.averaged_samples is None


@pytest.mark.parametrize("on_invalid", ["raise", "skip"])
def test_a_batch_refused_after_the_shift_test_fired_puts_back_the_warm_start(on_invalid):
    # The shift test writes its statistics (and the warm start's count) before
    # the batch is predicted; the model overflows on the batch: both go back.
    model = _overflows_below_the_mean()
    adapter = OnlineAdapter(model, memory_size=16, on_invalid=on_invalid)
    rng = np.random.default_rng(9)
    first, second = (rng.normal(100.0, 0.1, (8, 4, 4, 1)).astype("float32") for _ in range(2))
    adapter.predict_on_batch(first)
    follow = adapter._robust._follow_a_shift
    shifted = []

    def recording(window, settle=True):
        shifted.append(follow(window, settle))
        assert adapter._robust.averaged_samples == (16 if shifted[-1] else None)
        return shifted[-1]

    adapter._robust._follow_a_shift = recording
    if on_invalid == "raise":
        with pytest.raises(ValueError, match="Batch 1 .*not finite"):
            adapter.predict_on_batch(second)
    else:
        adapter.predict_on_batch(second)
        assert adapter.skipped_batches == 1
    assert shifted == [True]
    assert adapter._robust.averaged_samples is None
    assert adapter._robust.shift_updates == 0


def test_a_bank_update_refused_after_a_shift_leaves_the_warm_start_as_it_was():
    # 1e20 predicts finitely but its square overflows float32: the bank's
    # update after a shift fails on it, before the update's share is counted.
    model = _source_cnn()
    adapter = OnlineAdapter(model, memory_size=16, shift_distance=math.log(1.5))
    rng = np.random.default_rng(19)
    first, second, third = _corruption(rng, 3.0, 2.0, batches=3)
    adapter.predict_on_batch(first)
    assert adapter._robust.averaged_samples == 16
    poisoned = second[:8].copy()
    poisoned[3] = np.where(np.arange(36).reshape(6, 6, 1) % 2, 1e20, -1e20)
    adapter.predict_on_batch(poisoned)
    at_poisoned = _weights(model)
    with pytest.raises(ValueError, match="Batch 2 .*not finite"):
        adapter.predict_on_batch(second[8:])
    _assert_same(_weights(model), at_poisoned)
    assert adapter._robust.averaged_samples == 16
    assert adapter._robust.updates == 1


def test_a_sequential_model_runs_the_part_before_its_first_batch_norm():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    source = np.random.default_rng(10).normal(0.0, 1.0, (64, 6, 6, 1)).astype("float32")
    kreg.adapt_batchnorm(model, source, batch_size=64, verbose=0)
    adapter = OnlineAdapter(model, memory_size=64)
    rng = np.random.default_rng(12)
    adapter.predict_on_batch(_corruption(rng, 0.0, 1.0)[0])
    assert isinstance(adapter._robust._input_moments, keras.Model)
    for x in _corruption(rng, 3.0, 2.0):
        adapter.predict_on_batch(x)
    assert adapter._robust.shift_updates == 1


def test_without_a_cut_the_recorded_moments_are_those_of_a_pass_over_the_window():
    # A batch norm called twice normalizes its second input with the batch's
    # statistics: the moments of a pass over the new samples alone do not pool
    # into those of a pass over the window, which the test is to read.
    model = _shared_first_batch_norm_cnn()
    source = np.random.default_rng(10).normal(0.0, 1.0, (64, 6, 6, 1)).astype("float32")
    kreg.adapt_batchnorm(model, source, batch_size=64, verbose=0)
    adapter = OnlineAdapter(model, memory_size=64)
    robust = adapter._robust
    rng = np.random.default_rng(13)
    # Drifting slowly, so that no test fires and the window grows to 48.
    stream = [rng.normal(0.05 * i, 1.0, (4, 6, 6, 1)).astype("float32") for i in range(12)]
    for x in stream:
        adapter.predict_on_batch(x)
    assert robust._input_moments == "window"
    assert robust.shift_updates == 0 and robust.window_moments[3] == 48
    samples = [row for x in stream for row in x]
    want = robust._window_statistics(samples)[kreg.adapt.robust.call_order(model, robust.layers)[0]]
    for got, expected in zip(robust.window_moments[:3], want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_new_samples_that_are_all_padding_are_tested_with_the_window():
    # A masked first batch norm (no cut: the mask is one of its inputs): the
    # samples since the last test, all padding, give it no value to pool;
    # the window before them does.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 3))
    x = keras.layers.BatchNormalization(name="bn1")(keras.layers.Masking()(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kreg.adapt_batchnorm(model, rng.normal(size=(64, 12, 3)).astype("float32"), verbose=0)
    adapter = OnlineAdapter(model, memory_size=64)
    stream = [rng.normal(0.0, 1.0, (16, 12, 3)).astype("float32") for _ in range(2)]
    stream.append(np.zeros((16, 12, 3), "float32"))
    for x in stream:
        assert np.all(np.isfinite(adapter.predict_on_batch(x)))
    assert adapter._robust._input_moments == "new"
    # The 48 samples tested, of which the first 32 hold every value.
    assert adapter._robust.window_moments[3] == 48
    assert adapter._robust.window_moments[2] == 32 * 12

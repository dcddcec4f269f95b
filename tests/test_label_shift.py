"""OnlineAdapter(method="eata") on batches of one class: the few-classes test."""

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg import OnlineAdapter
from kreg.adapt.label_shift import distance_from_stored_statistics

# Three classes told apart by where a bright spot sits in a 6x6 image. A conv
# layer responds to the spot wherever it is, so the first batch norm's
# per-channel statistics hardly depend on the class; the flattened dense layer
# after it is class-specific.
_SPOTS = ((1, 1), (1, 4), (4, 2))


def _images(labels, seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.3, (len(labels), 6, 6, 1))
    for i, label in enumerate(labels):
        row, column = _SPOTS[label]
        images[i, row : row + 2, column : column + 2, 0] += 2.0
    return images.astype("float32")


def _train():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, use_bias=False)(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    labels = np.random.default_rng(0).integers(3, size=300)
    x_train = _images(labels, seed=0)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x_train, labels, batch_size=32, epochs=15, verbose=0)
    kreg.adapt_batchnorm(model, x_train, verbose=0)  # the exact source statistics
    return model, model.get_weights()


@pytest.fixture(scope="module")
def trained():
    return _train()


def _fresh(trained):
    model, weights = trained
    model.set_weights(weights)
    return model


def _accuracy(predictions, labels):
    return float(np.mean(np.argmax(predictions, axis=-1) == labels))


def test_a_one_class_batch_keeps_the_unadapted_predictions(trained):
    model = _fresh(trained)
    labels = np.zeros(32, "int64")
    x = _images(labels, seed=1)
    unadapted = model.predict(x, verbose=0)
    assert _accuracy(unadapted, labels) == 1.0

    eata = OnlineAdapter(model, method="eata")
    np.testing.assert_allclose(eata.predict_on_batch(x), unadapted, rtol=1e-5, atol=1e-6)
    assert eata.few_classes_batches == 1
    eata.reset()

    # Without the test, the batch's own statistics erase the class: every
    # sample is normalized against the class's mean, and eata's predictions move.
    unguarded = OnlineAdapter(model, method="eata", label_shift_ratio=None)
    predictions = unguarded.predict_on_batch(x)
    assert np.max(np.abs(predictions - unadapted)) > 0.2
    assert unguarded.few_classes_batches == 0


def test_a_class_sorted_stream_stays_at_the_unadapted_accuracy(trained):
    model = _fresh(trained)
    labels = np.repeat(np.arange(3), 32)
    x = _images(labels, seed=2)
    unadapted = _accuracy(model.predict(x, verbose=0), labels)
    eata = OnlineAdapter(model, method="eata")
    assert _accuracy(eata.predict(x, batch_size=32), labels) >= unadapted - 0.01
    assert eata.few_classes_batches == 3


def test_shuffled_shifted_batches_are_still_adapted_to(trained):
    model = _fresh(trained)
    labels = np.random.default_rng(3).integers(3, size=96)
    # Lower contrast and a brightness offset: the first batch norm's input moves.
    x = 0.3 * _images(labels, seed=3) + 1.0
    source = [ops.convert_to_numpy(w).copy() for w in model.weights]
    # The toy model stays so confident that SAR's guard would take any step for
    # a collapse and undo it: switched off here.
    arguments = dict(learning_rate=1e-2, collapse_factor=0.0)
    eata = OnlineAdapter(model, method="eata", **arguments)
    guarded = eata.predict(x, batch_size=32)
    assert eata.few_classes_batches == 0
    assert any(
        not np.array_equal(a, ops.convert_to_numpy(b)) for a, b in zip(source, model.weights)
    )
    eata.reset()
    # Exactly what eata did before the test existed, one more pass per batch aside.
    unguarded = OnlineAdapter(model, method="eata", label_shift_ratio=None, **arguments)
    np.testing.assert_allclose(guarded, unguarded.predict(x, batch_size=32), rtol=1e-5, atol=1e-6)


def test_distance_is_zero_at_the_stored_statistics_and_grows_with_a_shift():
    layer = keras.layers.BatchNormalization(epsilon=0.0)
    layer.build((None, 2))
    layer.moving_mean.assign([1.0, -1.0])
    layer.moving_variance.assign([4.0, 1.0])

    def distance(mean, variance):
        return distance_from_stored_statistics(layer, np.array(mean), np.array(variance))

    assert distance([1.0, -1.0], [4.0, 1.0]) == 0.0
    # The mean moved by one stored standard deviation in each channel -> 1.
    assert distance([3.0, 0.0], [4.0, 1.0]) == pytest.approx(1.0)
    # Twice or half the variance -> ln 2 either way.
    assert distance([1.0, -1.0], [8.0, 2.0]) == pytest.approx(np.log(2.0))
    assert distance([1.0, -1.0], [2.0, 0.5]) == pytest.approx(np.log(2.0))
    # A lower spread and a shifted mean with the stored second moment still count.
    assert distance([3.0, -1.0], [0.0 + 1e-12, 1.0]) > 1.0


def test_bad_label_shift_ratio_is_refused():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    for bad in (0, -1.0, "half"):
        with pytest.raises(ValueError, match="label_shift_ratio"):
            OnlineAdapter(model, method="eata", label_shift_ratio=bad)


def test_the_test_follows_the_call_order_in_a_nested_model(trained):
    # Keras lists a nested model's layers deepest first (`_flatten_layers`),
    # so "first" and "last" must come from the order the batch norms run in.
    model = _fresh(trained)
    nested = keras.Sequential([keras.Input((6, 6, 1)), model])
    labels = np.zeros(32, "int64")
    x = _images(labels, seed=1)
    unadapted = nested.predict(x, verbose=0)
    eata = OnlineAdapter(nested, method="eata")
    np.testing.assert_allclose(eata.predict_on_batch(x), unadapted, rtol=1e-5, atol=1e-6)
    assert eata.few_classes_batches == 1


def test_a_batch_of_one_sample_is_one_class(trained):
    # The dense batch norm sees one value per channel: no variance to normalize
    # with, but a distance all the same (the batch is as far as can be).
    model = _fresh(trained)
    x = _images(np.zeros(33, "int64"), seed=4)
    unadapted = model.predict(x, verbose=0)
    eata = OnlineAdapter(model, method="eata")
    np.testing.assert_allclose(eata.predict(x, batch_size=32), unadapted, rtol=1e-5, atol=1e-6)
    assert eata.few_classes_batches == 2


def test_the_error_names_none_as_allowed():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    with pytest.raises(ValueError, match=r"> 0 or None\. Received: label_shift_ratio=0"):
        OnlineAdapter(model, method="eata", label_shift_ratio=0)


def test_robust_keeps_the_unadapted_predictions_on_a_class_sorted_clean_stream(trained):
    # The default method never normalizes with a batch's own statistics: batches
    # of one class each, in class order, are predicted as the unadapted model
    # does (its statistics move only from the class-balanced memory bank).
    model = _fresh(trained)
    labels = np.repeat(np.arange(3), 64)
    x = _images(labels, seed=3)
    unadapted = _accuracy(model.predict(x, verbose=0), labels)
    adapter = OnlineAdapter(model)
    assert adapter.method == "robust"
    adapted = _accuracy(adapter.predict(x, batch_size=16), labels)
    assert adapted >= unadapted - 0.01, (adapted, unadapted)

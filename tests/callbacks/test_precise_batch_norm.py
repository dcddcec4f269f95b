"""PreciseBatchNorm: exact batch norm statistics before every validation."""

import copy

import keras
import numpy as np
import pytest

import kreg
from conftest import to_numpy as _numpy
from kreg.callbacks import PreciseBatchNorm


def _cnn(conv_block="keras"):
    inputs = keras.Input((8, 8, 1))
    if conv_block == "fused":
        x = kreg.Conv2DBatchNorm(4, 3, activation="relu", name="block")(inputs)
    else:
        bn = (
            kreg.AdaptiveBatchNormalization
            if conv_block == "adaptive"
            else keras.layers.BatchNormalization
        )
        x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
        x = keras.layers.ReLU()(bn(name="block")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    return model


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (n, 8, 8, 1)).astype("float32")
    return x, rng.integers(0, 3, n)


def _batch_norm(model, name):
    layer = model.get_layer(name)
    return getattr(layer, "batch_norm", layer)


def _statistics(model):
    return [
        _numpy(v).copy()
        for name in ("block", "head_bn")
        for v in (_batch_norm(model, name).moving_mean, _batch_norm(model, name).moving_variance)
    ]


def _reestimated_twin(model, x, **options):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    kreg.adapt_batchnorm(twin, x, verbose=0, **options)
    return twin


@pytest.mark.parametrize("conv_block", ["keras", "adaptive", "fused"])
def test_validation_sees_the_statistics_of_the_current_weights(conv_block):
    x, y = _data()
    x_val, y_val = _data(24, seed=1)
    model = _cnn(conv_block)
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        validation_data=(x_val, y_val),
        verbose=0,
        callbacks=[PreciseBatchNorm(x, batch_size=len(x))],
    )
    expected = _reestimated_twin(model, x, batch_size=len(x))
    for got, want in zip(_statistics(model), _statistics(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The weights have not moved since the last validation: it used these statistics.
    np.testing.assert_allclose(
        history.history["val_loss"][-1], model.evaluate(x_val, y_val, verbose=0), rtol=1e-5
    )


def test_without_validation_the_statistics_are_reestimated_at_the_end():
    x, y = _data()
    model = _cnn()
    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0, callbacks=[PreciseBatchNorm(x, batch_size=16)]
    )
    expected = _reestimated_twin(model, x, batch_size=16)
    for got, want in zip(_statistics(model), _statistics(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, batch_size):
        super().__init__()
        self.x, self.batch_size = x, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        return self.x[index * self.batch_size : (index + 1) * self.batch_size]


def _datasets(x):
    yield _Batches(x, 16)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        yield tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(16)


def test_a_py_dataset_or_tf_data_gives_the_statistics_of_the_arrays():
    x, y = _data()
    reference = _cnn()
    initial = reference.get_weights()
    reference.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[PreciseBatchNorm(x, batch_size=16)],
    )
    for data in _datasets(x):
        model = _cnn()
        model.set_weights(initial)
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[PreciseBatchNorm(data)],
        )
        for got, want in zip(_statistics(model), _statistics(reference)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class _Counting(PreciseBatchNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs_estimated = []

    def _reestimate(self):
        self.epochs_estimated.append(self._epoch)
        super()._reestimate()


@pytest.mark.parametrize(
    "every_n_epochs, validation, expected",
    [(1, True, [0, 1, 2, 3, 4]), (2, True, [1, 3, 4]), (2, False, [1, 3, 4]), (5, False, [4])],
)
def test_every_n_epochs_and_the_last_epoch(every_n_epochs, validation, expected):
    x, y = _data(32)
    callback = _Counting(x, batch_size=32, every_n_epochs=every_n_epochs)
    _cnn().fit(
        x,
        y,
        batch_size=16,
        epochs=5,
        verbose=0,
        callbacks=[callback],
        validation_data=(x, y) if validation else None,
    )
    assert callback.epochs_estimated == expected


def test_steps_with_arrays_draw_a_random_subset_each_time(capsys):
    x, y = _data(64)
    model = _cnn()
    model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[PreciseBatchNorm(x, steps=2, batch_size=8, seed=0, verbose=1)],
    )
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("PreciseBatchNorm")
    ]
    assert len(lines) == 2 and all("from 16 samples" in line for line in lines)


def test_frozen_batch_norms_are_left_alone():
    x, y = _data()
    model = _cnn()
    head = model.get_layer("head_bn")
    head.moving_mean.assign(np.full(4, 7.0, "float32"))
    head.trainable = False
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[PreciseBatchNorm(x)])
    np.testing.assert_array_equal(_numpy(head.moving_mean), np.full(4, 7.0))
    assert not np.allclose(_numpy(model.get_layer("block").moving_mean), 0.0)


def test_a_deep_copy_shares_the_data_and_keeps_the_settings():
    x, _ = _data()
    callback = PreciseBatchNorm(x, steps=3, batch_size=8, every_n_epochs=2, seed=4)
    copied = copy.deepcopy(callback)
    assert copied.data is x and copied.get_config() == callback.get_config()
    assert copied.get_config() == {
        "steps": 3,
        "batch_size": 8,
        "every_n_epochs": 2,
        "seed": 4,
        "verbose": 0,
    }


def test_bad_arguments_are_refused_at_construction():
    x, _ = _data()
    with pytest.raises(ValueError, match="every_n_epochs"):
        PreciseBatchNorm(x, every_n_epochs=0)
    with pytest.raises(ValueError, match="steps"):
        PreciseBatchNorm(x, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        PreciseBatchNorm(x, batch_size=2.5)
    with pytest.raises(ValueError, match="yields no batch"):
        PreciseBatchNorm(x[:0])


@pytest.mark.tensorflow_only
def test_data_that_repeats_forever_needs_steps():
    import tensorflow as tf

    x, _ = _data()
    with pytest.raises(ValueError, match="`steps`.*repeats forever"):
        PreciseBatchNorm(tf.data.Dataset.from_tensor_slices(x).batch(8).repeat())


def test_one_shot_iterators_and_bad_seeds_are_refused_at_construction():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"`data`.*one-shot iterator.*generator function itself"):
        PreciseBatchNorm(batch for batch in (x[:8], x[8:]))
    with pytest.raises(ValueError, match="`seed`"):
        PreciseBatchNorm(x, seed="a")


def test_a_generator_function_is_read_again_at_every_epoch():
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    calls = []

    def batches():
        calls.append(1)
        yield (x[:8],)  # Keras reads a generator of tuples
        yield (x[8:],)

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()]
    )
    model.compile("sgd", "mse")
    model.fit(x, x, epochs=2, verbose=0, callbacks=[PreciseBatchNorm(batches)])
    assert len(calls) >= 2  # one fresh generator per re-estimation (is_empty may draw one more)
    mean = model.layers[1].moving_mean.numpy()
    np.testing.assert_allclose(mean, _numpy(model.layers[0](x)).mean(axis=0), atol=1e-4)


def test_a_model_without_batch_norm_is_warned_about():
    x = np.ones((8, 4), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("sgd", "mse")
    with pytest.warns(UserWarning, match="no batch norm layer"):
        model.fit(x, x, epochs=1, verbose=0, callbacks=[PreciseBatchNorm(x)])


def test_unbatched_data_is_a_clear_error_that_shows_no_array():
    tf = pytest.importorskip("tensorflow")
    x = (np.random.default_rng(0).normal(size=(16, 4)) + 12345.678).astype("float32")
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4), keras.layers.BatchNormalization()]
    )
    model.compile("sgd", "mse")
    with pytest.raises(
        ValueError, match=r"`data`.*yields ndarray objects.*tuples.*\(inputs,\)"
    ) as raised:
        PreciseBatchNorm(lambda: (x[i : i + 8] for i in (0, 8)))  # bare arrays, no tuple
    assert "12345" not in str(raised.value)
    for data in (tf.data.Dataset.from_tensor_slices(x), lambda: ((row,) for row in x)):
        precise = PreciseBatchNorm(data)  # one batch read here
        with pytest.raises(
            ValueError, match=r"`data`.*single samples.*\(4,\).*\(None, 4\).*batch"
        ) as raised:
            model.fit(x, x, epochs=1, verbose=0, callbacks=[precise])
        assert "12345" not in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ValueError, match=r"`data`.*single samples.*\(\)"):
        PreciseBatchNorm(lambda: ((np.float32(v),) for v in x[:, 0]))
    with pytest.raises(ValueError, match="no batch"):
        PreciseBatchNorm(lambda: iter(()))
    # Batched, the same data is fine (centred: SGD on inputs near 12345 diverges
    # to non-finite weights on some backends, which is another error).
    centred = x - 12345.678
    model.fit(
        centred,
        centred,
        epochs=1,
        verbose=0,
        callbacks=[PreciseBatchNorm(tf.data.Dataset.from_tensor_slices(centred).batch(8))],
    )


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.zeros((48, 7, 7, 1), "float32"), ValueError, r"shape \(48, 7, 7, 1\)"),
        (np.full((48, 8, 8, 1), "a"), TypeError, "dtype <U1"),
        (np.full((48, 8, 8, 1), np.nan, "float32"), ValueError, "not finite.*NaN or infinite"),
    ],
)
def test_arrays_the_model_cannot_take_fail_before_training_naming_data(data, error, message):
    model = _cnn()
    x, y = _data()
    before = [_numpy(w).copy() for w in model.weights]
    with pytest.raises(error, match=f"argument `data`.*{message}"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PreciseBatchNorm(data)])
    for weight, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(_numpy(weight), value, err_msg=weight.path)

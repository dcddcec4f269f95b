"""kreg's layers under tf.distribute.MirroredStrategy with two logical CPUs."""

import keras
import numpy as np
import pytest

import kreg

pytestmark = pytest.mark.tensorflow_only


@pytest.fixture(scope="module")
def strategy():
    """One strategy for the module: TensorFlow's collective ops number their
    instances per strategy, and a second MirroredStrategy in the same process
    can pair its all-reduces with the first one's ("Shape mismatch in the
    collective instance")."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _model():
    inputs = keras.Input((6, 3))
    x = kreg.ConsistentDropout(0.2, seed=1)(inputs)
    x = kreg.WeightDropLSTM(8, weight_dropout=0.3, return_sequences=True, seed=2)(x)
    x = keras.layers.RNN(
        kreg.ConsistentDropoutCell(
            keras.layers.SimpleRNNCell(6), dropout=0.2, recurrent_dropout=0.2
        ),
        return_sequences=True,
    )(x)
    x = kreg.WeightDropGRU(4, weight_dropout=0.3, weight_dropout_mode="weight", seed=3)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_trains_on_two_replicas_and_predicts_like_one_device(strategy):
    x = np.random.default_rng(0).standard_normal((32, 6, 3)).astype("float32")
    y = x.sum(axis=(1, 2))[:, None]

    with strategy.scope():
        model = _model()
        model.compile("adam", "mse")
    before = [w.copy() for w in model.get_weights()]
    losses = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    for variable in model.trainable_variables:
        replicas = [v.numpy() for v in variable.value.values]  # the tf MirroredVariable
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)

    single = _model()
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, batch_size=8, verbose=0),
        single.predict(x, batch_size=8, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def _fused_cnn():
    # synchronized=True, as for Keras's BatchNormalization: without it each replica
    # keeps its own moving statistics and the replicas' predictions differ.
    inputs = keras.Input((8, 8, 3))
    x = kreg.Conv2DBatchNorm(4, 3, activation="relu", synchronized=True)(inputs)
    x = kreg.DepthwiseConv2DBatchNorm(3, activation="relu", synchronized=True)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, kreg.DenseBatchNorm(1, synchronized=True)(x))


def test_fused_batch_norm_layers_train_on_two_replicas(strategy):
    x = np.random.default_rng(1).standard_normal((32, 8, 8, 3)).astype("float32")
    y = x.mean(axis=(1, 2, 3))[:, None]
    with strategy.scope():
        model = _fused_cnn()
        model.compile("adam", "mse")
    losses = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    moving_mean = model.layers[1].batch_norm.moving_mean
    assert not np.allclose(moving_mean.numpy(), 0.0), "moving statistics were not updated"

    single = _fused_cnn()
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, batch_size=8, verbose=0),
        single.predict(x, batch_size=8, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    folded = kreg.fold_batch_norms(model)
    np.testing.assert_allclose(
        folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_callbacks_under_two_replicas(strategy, tmp_path):
    """Kept here, beside the module's one strategy (see the fixture)."""
    from kreg.callbacks import EarlyStoppingWithCheckpoint
    from kreg.callbacks import OverfittingDetector

    x = np.random.default_rng(2).standard_normal((32, 8, 8, 3)).astype("float32")
    y = x.mean(axis=(1, 2, 3))[:, None]
    with strategy.scope():
        model = _fused_cnn()
        model.compile("adam", "mse")
    stopper = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=2)
    detector = OverfittingDetector(action=lambda *_: None)
    history = model.fit(
        x,
        y,
        validation_split=0.25,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[detector, stopper],
    ).history
    assert len(history["generalization_gap"]) == len(history["loss"])
    saved = keras.saving.load_model(tmp_path / "best.keras")
    assert len(saved.get_weights()) == len(model.get_weights())


def _adaptive_cnn(synchronized=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = kreg.AdaptiveBatchNormalization(synchronized=synchronized)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3)(x)
    x = keras.layers.BatchNormalization(synchronized=synchronized)(x)  # Keras's, adapted too
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _assert_both_replicas_hold_the_single_device_statistics(replicated, single):
    for index in (2, 5):
        for name in ("moving_mean", "moving_variance"):
            variable = getattr(replicated.layers[index], name)
            replicas = [v.numpy() for v in variable.value.values]
            np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)
            expected = getattr(single.layers[index], name).numpy()
            np.testing.assert_allclose(
                replicas[0], expected, rtol=1e-5, atol=1e-6, err_msg=variable.path
            )


def test_adapt_batchnorm_on_two_replicas_gives_the_statistics_of_one_device(strategy):
    """Each replica sees half of every batch; the re-estimated statistics, of both
    layers, must still be those of the whole batches, as on one device."""
    x = np.random.default_rng(3).normal(2.0, 3.0, (40, 8, 8, 3)).astype("float32")
    with strategy.scope():
        replicated = _adaptive_cnn()
    single = _adaptive_cnn()
    single.set_weights(replicated.get_weights())
    kreg.adapt_batchnorm(replicated, x, batch_size=8, verbose=0)
    kreg.adapt_batchnorm(single, x, batch_size=8, verbose=0)
    _assert_both_replicas_hold_the_single_device_statistics(replicated, single)


def test_synchronized_batch_mode_normalizes_with_the_global_batch(strategy):
    x = np.random.default_rng(4).normal(1.0, 2.0, (16, 8, 8, 3)).astype("float32")
    with strategy.scope():
        replicated = _adaptive_cnn(synchronized=True)
    single = _adaptive_cnn(synchronized=True)
    single.set_weights(replicated.get_weights())
    for model in (replicated, single):
        kreg.set_test_time_mode(model, "batch")
    np.testing.assert_allclose(
        replicated.predict(x, batch_size=16, verbose=0),
        single.predict(x, batch_size=16, verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )


def test_online_mode_runs_on_two_replicas_and_moves_the_statistics(strategy):
    x = np.random.default_rng(5).normal(3.0, 2.0, (16, 8, 8, 3)).astype("float32")
    with strategy.scope():
        model = _adaptive_cnn(synchronized=True)
    kreg.set_test_time_mode(model, "online")
    first = model.predict(x, batch_size=16, verbose=0)
    second = model.predict(x, batch_size=16, verbose=0)
    assert np.all(np.isfinite(first)) and not np.allclose(first, second)
    moving_mean = model.layers[2].moving_mean
    replicas = [v.numpy() for v in moving_mean.value.values]
    np.testing.assert_allclose(replicas[0], replicas[1], rtol=1e-5)  # synchronized: one update
    assert not np.allclose(replicas[0], 0.0)


def _recurrent_recipe_model():
    inputs = keras.Input((6,), dtype="int32")
    x = kreg.EmbeddingDropout(12, 4, rate=0.2, mask_zero=True, seed=1)(inputs)
    x = kreg.ZoneoutLSTM(6, cell_zoneout=0.3, hidden_zoneout=0.1, return_sequences=True, seed=2)(x)
    x = kreg.ActivationRegularization(ar=1.0, tar=1.0)(x)
    x = kreg.ZoneoutGRU(4, hidden_zoneout=0.2, seed=3)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_recurrent_regularizers_train_on_two_replicas(strategy):
    x = np.random.default_rng(6).integers(1, 12, (32, 6)).astype("int32")
    y = (x.sum(axis=1, keepdims=True) / 30.0).astype("float32")
    with strategy.scope():
        model = _recurrent_recipe_model()
        model.compile("adam", "mse")
    losses = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    for variable in model.trainable_variables:
        replicas = [v.numpy() for v in variable.value.values]
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)
    single = _recurrent_recipe_model()
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, batch_size=8, verbose=0),
        single.predict(x, batch_size=8, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_precise_batch_norm_during_fit_on_two_replicas_gives_one_devices_statistics(strategy):
    """PreciseBatchNorm's re-estimation inside `fit` under the strategy: the
    statistics of both layers are those of all replicas' samples together."""
    from kreg.callbacks import PreciseBatchNorm

    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (32, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    with strategy.scope():
        replicated = _adaptive_cnn()
        replicated.compile("sgd", "mse")
    replicated.fit(
        x,
        y,
        batch_size=16,
        epochs=1,
        verbose=0,
        validation_data=(x, y),
        callbacks=[PreciseBatchNorm(x, batch_size=8)],
    )
    single = _adaptive_cnn()
    single.set_weights(replicated.get_weights())
    kreg.adapt_batchnorm(single, x, batch_size=8, verbose=0)
    _assert_both_replicas_hold_the_single_device_statistics(replicated, single)


def _spatial_regularizers_cnn():
    inputs = keras.Input((8, 8, 3))
    x = kreg.WeightNormalization(
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"), data_init=True
    )(inputs)
    x = kreg.DropBlock2D(0.2, 3, seed=1)(x)
    branch = keras.layers.Conv2D(4, 3, padding="same")(x)
    x = kreg.StochasticDepth(0.3, seed=2)([x, branch])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def _trains_on_two_replicas_like_one_device(strategy, make_model, x, y):
    """Fits `make_model()` under the strategy; every mirrored variable (the
    layers' rates and offsets included) agrees on both replicas, and a model on
    one device with its weights predicts the same."""
    with strategy.scope():
        model = make_model()
        model.compile("adam", "mse")
    before = [w.copy() for w in model.get_weights()]
    losses = model.fit(x, y, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    for variable in model.variables:
        if hasattr(variable.value, "values"):
            replicas = [v.numpy() for v in variable.value.values]
            np.testing.assert_allclose(replicas[0], replicas[1], rtol=1e-6, err_msg=variable.path)
    single = make_model()
    single.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, batch_size=8, verbose=0),
        single.predict(x, batch_size=8, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_drop_block_stochastic_depth_and_weight_normalization_on_two_replicas(strategy):
    x = np.random.default_rng(7).standard_normal((32, 8, 8, 3)).astype("float32")
    y = x.mean(axis=(1, 2, 3))[:, None]
    _trains_on_two_replicas_like_one_device(strategy, _spatial_regularizers_cnn, x, y)


@pytest.mark.parametrize(
    "name", ["DropBlock1D", "DropBlock2D", "DropBlock3D", "StochasticDepth", "WeightNormalization"]
)
def test_layer_example_trains_on_two_replicas_and_predicts_like_one_device(strategy, name):
    """Each layer in its tests/layer_examples.py stack (DropBlock1D and 3D, and
    StochasticDepth inside a subclassed block, are in no model above)."""
    from layer_examples import EXAMPLES

    example = EXAMPLES[name]
    x, y = example.inputs(32, seed=3), np.ones((32, 1), "float32")
    _trains_on_two_replicas_like_one_device(strategy, example.model, x, y)


def test_weight_averaging_on_two_replicas_reestimates_like_one_device(strategy):
    """WeightAveraging's swap and re-estimation under the strategy: both replicas
    hold the averaged weights and the statistics one device computes for them."""
    from kreg.callbacks import WeightAveraging

    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, (32, 8, 8, 3)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    with strategy.scope():
        replicated = _adaptive_cnn()
        replicated.compile("sgd", "mse")
    raw = replicated.get_weights()
    replicated.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        validation_data=(x, y),
        callbacks=[WeightAveraging("ema", bn_data=x, bn_batch_size=8, momentum=0.5)],
    )
    kernel = replicated.trainable_variables[0]
    replicas = [v.numpy() for v in kernel.value.values]
    np.testing.assert_array_equal(replicas[0], replicas[1])
    assert not np.allclose(replicas[0], raw[0])
    single = _adaptive_cnn()
    single.set_weights(replicated.get_weights())
    kreg.adapt_batchnorm(single, x, batch_size=8, verbose=0)
    _assert_both_replicas_hold_the_single_device_statistics(replicated, single)

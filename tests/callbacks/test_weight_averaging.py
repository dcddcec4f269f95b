"""WeightAveraging: EMA or SWA of the weights, validated with statistics of their own."""

import keras
import numpy as np
import pytest
from keras import ops

import kreg
from kreg._keras_compat import trainable_values_in_fit
from kreg.callbacks import WeightAveraging
from kreg.callbacks.weight_average import ema_decay


def _numpy(values):
    return [ops.convert_to_numpy(v).copy() for v in values]


def _cnn(batch_norm=True):
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=not batch_norm)(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, (n, 6, 6, 1)).astype("float32"), rng.integers(0, 3, n)


class _Recorder(keras.callbacks.Callback):
    """The raw weights after each training batch (`"batch"`, placed before
    WeightAveraging: validation swaps the average in before `on_epoch_end`), or
    at each epoch's start (`"begin"`, placed after it)."""

    def __init__(self, hook):
        super().__init__()
        self.hook, self.weights = hook, []

    def on_train_batch_end(self, batch, logs=None):
        if self.hook == "batch":
            self.weights.append(_numpy(trainable_values_in_fit(self.model)))

    def on_epoch_begin(self, epoch, logs=None):
        if self.hook == "begin":
            self.weights.append(_numpy(self.model.trainable_variables))


def _fit(averaging, epochs=4, validation=True, model=None):
    """One batch per epoch, so that the raw weights at each epoch's end are
    every weight the EMA saw."""
    x, y = _data()
    model = model or _cnn()
    before, after = _Recorder("batch"), _Recorder("begin")
    history = model.fit(
        x, y, batch_size=len(x), epochs=epochs, verbose=0, validation_data=(x[:16], y[:16]) if validation else None,
        callbacks=[before, averaging, after],
    )  # fmt: skip
    return model, history.history, before.weights, after.weights


def _reestimated(model, x):
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    kreg.adapt_batchnorm(twin, x, verbose=0)
    return _numpy([twin.get_layer("bn").moving_mean, twin.get_layer("bn").moving_variance])


def test_ema_with_warmup_stays_in_the_model_with_its_own_statistics():
    x, _ = _data()
    model, history, raw, _ = _fit(WeightAveraging("ema", bn_data=x, momentum=0.9))
    expected = [w.copy() for w in raw[0]]
    for step, weights in enumerate(raw[1:], start=2):
        decay = min(0.9, 1 - (1 + (step - 1)) ** (-2 / 3))
        expected = [e * decay + (1 - decay) * w for e, w in zip(expected, weights)]
    for actual, wanted in zip(_numpy(model.trainable_variables), expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
    statistics = _numpy([model.get_layer("bn").moving_mean, model.get_layer("bn").moving_variance])
    for actual, wanted in zip(statistics, _reestimated(model, x)):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
    # The last validation saw exactly the model fit leaves behind.
    loss = model.evaluate(x[:16], _data()[1][:16], verbose=0, return_dict=True)["loss"]
    assert history["val_loss"][-1] == pytest.approx(loss, rel=1e-5)


def test_ema_every_n_steps_updates_at_multiples_of_n_with_the_decay_to_the_nth():
    x, _ = _data()
    averaging = WeightAveraging("ema", bn_data=x, momentum=0.9, update_every_n_steps=2)
    model, _, raw, _ = _fit(averaging, epochs=5)  # one step per epoch
    assert averaging.get_state()["count"] == 2  # after steps 2 and 4
    decay = min(0.9, 1 - 2 ** (-2 / 3)) ** 2
    expected = [decay * a + (1 - decay) * b for a, b in zip(raw[1], raw[3])]
    for actual, wanted in zip(averaging.get_state()["values"], expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)


def test_swa_averages_the_epochs_from_start_and_training_goes_on_from_the_raw_weights():
    x, _ = _data()
    model, _, raw_end, raw_begin = _fit(WeightAveraging("swa", bn_data=x, start_epoch=1), epochs=4)
    expected = [np.mean(stack, axis=0) for stack in zip(*raw_end[1:])]
    for actual, wanted in zip(_numpy(model.trainable_variables), expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
    # Each epoch starts from the raw weights the previous one ended with.
    for ended, begun in zip(raw_end[:-1], raw_begin[1:]):
        for a, b in zip(ended, begun):
            np.testing.assert_array_equal(a, b)


def test_validation_logs_are_the_averaged_models_and_raw_ones_on_request():
    x, y = _data()
    averaging = WeightAveraging(
        "swa", bn_data=x, start_epoch=0, raw_validation_data=(x[:16], y[:16])
    )
    _, history, _, _ = _fit(averaging, epochs=3)
    assert len(history["raw_val_loss"]) == 3 and len(history["val_loss"]) == 3
    assert history["raw_val_loss"][1] != pytest.approx(history["val_loss"][1]), (
        "the two models differ"
    )


def test_swa_anneals_the_learning_rate_and_restores_it():
    x, _ = _data()
    model = _cnn()
    rates = []
    watcher = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: rates.append(
            float(ops.convert_to_numpy(model.optimizer.learning_rate))
        )
    )
    averaging = WeightAveraging(
        "swa",
        bn_data=x,
        start_epoch=1,
        swa_learning_rate=0.01,
        annealing_epochs=2,
        annealing_strategy="linear",
    )
    model.fit(x, _data()[1], epochs=4, batch_size=32, verbose=0, callbacks=[averaging, watcher])
    assert rates == pytest.approx([0.1, 0.055, 0.01, 0.01])
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.1)


def test_a_model_without_batch_norm_is_averaged_and_the_skip_said_once(capsys):
    model, _, raw, _ = _fit(WeightAveraging("swa", start_epoch=0), model=_cnn(batch_norm=False))
    assert capsys.readouterr().out.count("no trainable batch norm") == 1
    np.testing.assert_allclose(
        _numpy(model.trainable_variables)[0], np.mean([w[0] for w in raw], axis=0), rtol=1e-5
    )


def test_an_error_during_reestimation_leaves_the_raw_weights():
    x, y = _data()
    bad = x.copy()
    bad[3] = np.nan
    model = _cnn()
    raw = _Recorder("batch")
    with pytest.raises(ValueError, match="not finite"):
        model.fit(
            x,
            y,
            epochs=1,
            batch_size=32,
            verbose=0,
            callbacks=[raw, WeightAveraging("ema", bn_data=bad)],
        )
    for actual, wanted in zip(_numpy(model.trainable_variables), raw.weights[-1]):
        np.testing.assert_array_equal(actual, wanted)


def test_get_and_set_state_resume_the_average_exactly():
    x, y = _data()
    keras.utils.set_random_seed(3)
    straight = _cnn()
    start = straight.get_weights()
    one = WeightAveraging("swa", bn_data=x, start_epoch=1)
    straight.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[one])

    resumed = _cnn()
    resumed.set_weights(start)
    first = WeightAveraging("swa", bn_data=x, start_epoch=1)
    resumed.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[first])
    state = first.get_state()
    optimizer_state = _numpy(resumed.optimizer.variables)
    second = WeightAveraging("swa", bn_data=x, start_epoch=1)
    second.set_state(state)
    for variable, value in zip(resumed.optimizer.variables, optimizer_state):
        variable.assign(value)
    resumed.fit(x, y, batch_size=32, epochs=4, initial_epoch=2, verbose=0, callbacks=[second])
    assert second.get_state()["count"] == one.get_state()["count"] == 3
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_best_epoch_is_judged_and_saved_on_the_averaged_model(tmp_path):
    from kreg.callbacks import EarlyStoppingWithCheckpoint

    x, y = _data()
    model = _cnn()
    path = str(tmp_path / "best.keras")
    averaging = WeightAveraging("ema", bn_data=x, momentum=0.8)
    stopper = EarlyStoppingWithCheckpoint(path, patience=10, resume=False)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        verbose=0,
        validation_data=(x[:16], y[:16]),
        callbacks=[averaging, stopper],
    ).history
    saved = keras.saving.load_model(path)
    loss = saved.evaluate(x[:16], y[:16], verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(min(history["val_loss"]), rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "polyak"}, "method"),
        ({"momentum": 0.0}, "momentum"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": "0.9"}, "momentum"),
        ({"warmup_power": -1.0}, "warmup_power"),
        ({"method": "swa", "momentum": 0.9}, "momentum"),
        ({"method": "swa", "momentum": 0.999}, "momentum"),
        ({"method": "swa", "warmup_power": 2 / 3}, "warmup_power"),
        ({"method": "swa", "update_every_n_steps": 1}, "update_every_n_steps"),
        ({"update_every_n_steps": 0}, "update_every_n_steps"),
        ({"raw_validation_data": np.zeros((4, 6, 6, 1))}, "raw_validation_data"),
        ({"raw_validation_data": (np.zeros((4, 6, 6, 1)),)}, "raw_validation_data"),
        ({"raw_validation_data": (np.zeros((4, 6, 6, 1)), np.zeros(3))}, "raw_validation_data"),
        ({"raw_validation_data": "val"}, "raw_validation_data"),
        ({"method": "ema", "start_epoch": 3}, "start_epoch"),
        ({"method": "swa", "start_epoch": 1.5}, "start_epoch"),
        ({"method": "swa", "start_epoch": -1}, "start_epoch"),
        ({"method": "swa", "swa_learning_rate": 0.0}, "swa_learning_rate"),
        ({"annealing_strategy": "step"}, "annealing_strategy"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"bn_data": np.zeros((0, 6, 6, 1), "float32")}, "no batch"),
        ({"bn_data": (row for row in np.zeros((4, 6, 6, 1)))}, "generator"),
        # Named as WeightAveraging's arguments, and checked without bn_data too.
        ({"bn_data": np.zeros((4, 6, 6, 1)), "bn_steps": 0}, "`bn_steps`.*bn_steps=0"),
        ({"bn_data": np.zeros((4, 6, 6, 1)), "bn_batch_size": 0}, "`bn_batch_size`"),
        ({"bn_steps": -1}, "`bn_steps`"),
        ({"bn_batch_size": 0}, "`bn_batch_size`"),
        ({"seed": "x"}, "`seed`"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightAveraging(**kwargs)


def test_bad_arguments_that_need_the_fit_are_refused_at_its_start():
    x, y = _data()
    model = _cnn()
    for averaging, match in [
        (WeightAveraging("swa", bn_data=x, start_epoch=3), "start_epoch"),
        (WeightAveraging("ema", bn_data=np.zeros((4, 5), "float32")), "bn_data"),
        (WeightAveraging("ema"), "bn_data"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.fit(x, y, epochs=3, verbose=0, callbacks=[averaging])
    with pytest.raises(ValueError, match="Two WeightAveraging"):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[WeightAveraging(bn_data=x), WeightAveraging("swa", bn_data=x)],
        )


def test_ema_decay_warms_up_as_timm():
    assert ema_decay(1, 0.999, warmup_power=2 / 3) == 0.0  # the first update copies
    assert ema_decay(2, 0.999, warmup_power=2 / 3) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay(10**6, 0.999, warmup_power=2 / 3) == 0.999
    assert ema_decay(2, 0.9, warmup_power=None) == 0.9


def test_config_and_deep_copy_keep_the_settings():
    import copy

    x, _ = _data()
    averaging = WeightAveraging(
        "swa", bn_data=x, start_epoch=0.5, swa_learning_rate=0.05, verbose=1
    )
    clone = copy.deepcopy(averaging)
    assert clone.get_config() == averaging.get_config() and clone.bn_data is x
    assert (
        WeightAveraging(bn_data=x, **averaging.get_config()).get_config() == averaging.get_config()
    )
    assert averaging.get_config()["momentum"] is None
    ema = WeightAveraging(warmup_power=0)
    assert (ema.momentum, ema.warmup_power) == (0.999, 0.0)
    assert WeightAveraging(**ema.get_config()).get_config() == ema.get_config()
    assert WeightAveraging().warmup_power == pytest.approx(2 / 3)


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_a_fit_stopped_by_an_error_does_not_keep_the_annealed_learning_rate():
    # `fit` skips `on_train_end` after an error: the next fit must start from
    # the compiled rate, not take SWA's annealed one as the rate to restore.
    x, y = _data()
    model = _cnn()
    averaging = WeightAveraging("swa", bn_data=x, start_epoch=1, swa_learning_rate=0.01)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[averaging, _Interrupt()])
    rates = []
    watcher = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: rates.append(
            float(ops.convert_to_numpy(model.optimizer.learning_rate))
        )
    )
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[averaging, watcher])
    assert rates == pytest.approx([0.1, 0.01])
    assert float(ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.1)


def test_set_state_puts_back_the_raw_weights_and_their_moving_statistics():
    # The model saved after fit holds the average and its re-estimated
    # statistics; a resume continues training from the raw weights with the
    # moving statistics they had, not the average's.
    x, y = _data()
    model = _cnn()
    # Before WeightAveraging in the list, without validation: the raw model at
    # each epoch's end (synced from JAX's training state), before the swap.
    raw = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(
            raw,
            "values",
            _numpy(model.trainable_variables) + _numpy(model.get_layer("bn").non_trainable_weights),
        )
    )
    first = WeightAveraging("ema", bn_data=x)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[raw, first])
    resumed = keras.models.clone_model(model)
    resumed.set_weights(model.get_weights())
    resumed.compile("sgd", "sparse_categorical_crossentropy")
    second = WeightAveraging("ema", bn_data=x)
    second.set_state(first.get_state())
    at_begin = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: setattr(
            at_begin,
            "values",
            (
                _numpy(resumed.trainable_variables),
                _numpy(resumed.get_layer("bn").non_trainable_weights),
            ),
        )
    )
    resumed.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[second, at_begin])
    assert len(raw.values) == len(at_begin.values[0]) + 2
    for actual, wanted in zip(at_begin.values[0] + at_begin.values[1], raw.values):
        np.testing.assert_array_equal(actual, wanted)


def test_set_state_of_another_set_of_trainable_weights_is_refused_before_any_assignment():
    # A layer frozen between the fits: the state's weights would be assigned,
    # by position, to other variables.
    x, y = _data()
    model = _cnn()
    first = WeightAveraging("ema", bn_data=x)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[first])
    model.layers[1].trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    before = model.get_weights()
    second = WeightAveraging("ema", bn_data=x)
    second.set_state(first.get_state())
    with pytest.raises(ValueError, match=r"set_state.*4 trainable weights.*Received: 5 weights"):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[second])
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_ema_of_float16_weights_is_accumulated_in_float32():
    # With momentum 0.999, `(1 - decay) * (weight - average)` falls below half a
    # float16 step of the average: an average kept in float16 stops moving.
    keras.config.set_dtype_policy("float16")
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 4)).astype("float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.05), "mse")
    raw = _Recorder("batch")
    averaging = WeightAveraging("ema", momentum=0.999, warmup_power=0)
    model.fit(x, x[:, :1] * 3, batch_size=8, epochs=2, verbose=0, callbacks=[raw, averaging])
    expected = [w.astype("float64") for w in raw.weights[0]]
    for weights in raw.weights[1:]:
        expected = [0.999 * e + 0.001 * w.astype("float64") for e, w in zip(expected, weights)]
    values = averaging.get_state()["values"]
    assert all(v.dtype == np.float32 for v in values)
    for actual, wanted in zip(values, expected):
        np.testing.assert_allclose(actual, wanted, rtol=0, atol=1e-5)
    # The model holds the average in its own dtype.
    for variable, value in zip(model.trainable_variables, values):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable), value.astype("float16"))


def test_raw_weights_left_by_an_interrupted_fit_go_back_after_a_layer_is_frozen():
    # The model holds the average when the error stops fit; the next fit puts
    # the raw weights back into the variables they were read from, not into
    # the new, shorter list of trainable variables.
    x, y = _data()
    model = _cnn()
    raw = _Recorder("batch")
    averaging = WeightAveraging("ema", bn_data=x)
    with pytest.raises(KeyboardInterrupt):
        model.fit(
            x, y, epochs=4, batch_size=32, verbose=0, callbacks=[raw, averaging, _Interrupt()]
        )
    every_weight = list(model.trainable_variables)
    model.layers[1].trainable = False
    model.compile("sgd", "sparse_categorical_crossentropy")
    at_begin = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: setattr(at_begin, "values", _numpy(every_weight))
    )
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[averaging, at_begin])
    for actual, wanted in zip(at_begin.values, raw.weights[-1]):
        np.testing.assert_array_equal(actual, wanted)

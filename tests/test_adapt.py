"""adapt_batchnorm and set_test_time_mode."""

import keras
import numpy as np
import pytest

import kreg
from conftest import to_numpy as _numpy
from kreg import adapt_batchnorm
from kreg import set_test_time_mode


def _cnn(bn=keras.layers.BatchNormalization):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = bn(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3)(x)
    x = bn(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def _target(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.5, 2.0, (n, 8, 8, 1)).astype("float32")


def _inputs_of(model, layer_name, x):
    """What `layer_name` receives when `model` runs in inference mode."""
    layer = model.get_layer(layer_name)
    return _numpy(keras.Model(model.inputs[0], layer.input)(x, training=False))


def _statistics(layer):
    return _numpy(layer.moving_mean), _numpy(layer.moving_variance)


def _all_weights(model):
    return {w.path: _numpy(w).copy() for w in model.weights}


def test_reestimate_gives_the_exact_statistics_of_the_whole_data():
    model = _cnn()
    x = _target()
    features = _inputs_of(model, "bn1", x).reshape(-1, 4)
    report = adapt_batchnorm(model, x, batch_size=7, verbose=0)  # 96 = 13 batches of 7 + 5
    mean, variance = _statistics(model.get_layer("bn1"))
    np.testing.assert_allclose(mean, features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, features.var(0), rtol=1e-5, atol=1e-6)
    assert report.method == "reestimate" and report.samples == 96
    assert [change.name for change in report.layers] == ["bn1", "bn2"]
    assert report.layers[0].mean_shift > 0.1  # the source statistics were zeros/ones


def test_reestimate_with_one_batch_matches_the_adapted_models_own_inputs():
    # With the whole data in one batch, each layer upstream normalizes with exactly
    # the statistics it ends up with, so every layer's estimate is that of its
    # inputs in the adapted model.
    model = _cnn()
    x = _target()
    adapt_batchnorm(model, x, batch_size=len(x), verbose=0)
    for name, channels in (("bn1", 4), ("bn2", 5)):
        features = _inputs_of(model, name, x).reshape(-1, channels)
        mean, variance = _statistics(model.get_layer(name))
        np.testing.assert_allclose(mean, features.mean(0), rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(variance, features.var(0), rtol=1e-4, atol=1e-5, err_msg=name)


def test_reestimate_changes_only_the_moving_statistics():
    model = _cnn(kreg.layers.AdaptiveBatchNormalization)
    before = _all_weights(model)
    adapt_batchnorm(model, _target(), verbose=0)
    after = _all_weights(model)
    changed = sorted(path for path in before if not np.array_equal(before[path], after[path]))
    assert changed == [
        "bn1/moving_mean",
        "bn1/moving_variance",
        "bn2/moving_mean",
        "bn2/moving_variance",
    ]


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, batch_size, fail_at=None):
        super().__init__()
        self.x, self.batch_size, self.fail_at = x, batch_size, fail_at

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        if index == self.fail_at:
            raise RuntimeError("the camera was unplugged")
        batch = self.x[index * self.batch_size : (index + 1) * self.batch_size]
        return batch, np.zeros(len(batch))  # targets are ignored


def test_a_py_dataset_and_steps_are_accepted_like_predict():
    x = _target()
    from_arrays, from_dataset = _cnn(), _cnn()
    from_dataset.set_weights(from_arrays.get_weights())
    adapt_batchnorm(from_arrays, x[:32], batch_size=16, verbose=0)
    report = adapt_batchnorm(from_dataset, _Batches(x, 16), steps=2, verbose=0)
    assert report.samples == 32
    for name in ("bn1", "bn2"):
        for a, b in zip(
            _statistics(from_arrays.get_layer(name)), _statistics(from_dataset.get_layer(name))
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.tensorflow_only
def test_a_tf_data_dataset_with_targets_is_accepted():
    import tensorflow as tf

    x = _target()
    from_arrays, from_dataset = _cnn(), _cnn()
    from_dataset.set_weights(from_arrays.get_weights())
    adapt_batchnorm(from_arrays, x, batch_size=10, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(10)
    adapt_batchnorm(from_dataset, dataset, verbose=0)
    for a, b in zip(
        _statistics(from_arrays.get_layer("bn2")), _statistics(from_dataset.get_layer("bn2"))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["reestimate", "tent", "eata"])
def test_a_failure_midway_leaves_the_model_unchanged(method):
    model = _cnn()
    before = _all_weights(model)
    # TensorFlow wraps the error of a PyDataset in its own type.
    with pytest.raises(Exception, match="unplugged"):
        adapt_batchnorm(model, _Batches(_target(), 16, fail_at=3), method=method, verbose=0)
    after = _all_weights(model)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert all(w.trainable for w in model.trainable_weights)


def _entropy(probabilities):
    return float(np.mean(-np.sum(probabilities * np.log(probabilities + 1e-12), axis=-1)))


def test_tent_lowers_the_prediction_entropy_by_training_only_scale_and_shift():
    model = _cnn()
    x = _target(n=128)
    reestimated = _cnn()
    reestimated.set_weights(model.get_weights())
    adapt_batchnorm(reestimated, x, verbose=0)
    before = _all_weights(model)

    report = adapt_batchnorm(model, x, method="tent", epochs=5, learning_rate=0.05, verbose=0)
    assert report.method == "tent" and report.affine_updated
    changed = {
        path for path in before if not np.array_equal(before[path], _all_weights(model)[path])
    }
    assert {"bn1/gamma", "bn1/beta", "bn2/gamma", "bn2/beta"} <= changed
    assert all(path.startswith(("bn1/", "bn2/")) for path in changed), changed
    assert _entropy(model.predict(x, verbose=0)) < _entropy(reestimated.predict(x, verbose=0))


def test_nested_models_and_shared_layers_are_adapted():
    shared = keras.layers.BatchNormalization(name="shared")
    inner_in = keras.Input((4,))
    inner = keras.Model(
        inner_in, keras.layers.BatchNormalization(name="inner_bn")(inner_in), name="inner"
    )
    inputs = keras.Input((4,))
    a = shared(inputs)
    b = shared(keras.layers.Lambda(lambda t: t * 3.0 + 1.0)(inputs))
    model = keras.Model(inputs, keras.layers.Add()([inner(a), b]))
    x = np.random.default_rng(1).normal(size=(50, 4)).astype("float32")
    adapt_batchnorm(model, x, verbose=0)
    # The shared layer saw both of its inputs.
    both = np.concatenate([x, x * 3.0 + 1.0])
    np.testing.assert_allclose(_numpy(shared.moving_mean), both.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_numpy(shared.moving_variance), both.var(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(_numpy(inner.get_layer("inner_bn").moving_variance), 1.0)


def test_set_test_time_mode_switches_every_adaptive_layer_and_only_those():
    inner = keras.Sequential(
        [keras.Input((4,)), kreg.layers.AdaptiveBatchNormalization()], name="inner"
    )
    model = keras.Sequential(
        [
            keras.Input((4,)),
            kreg.layers.AdaptiveBatchNormalization(),
            keras.layers.BatchNormalization(),
            inner,
        ]
    )
    assert set_test_time_mode(model, "mixed") == 2
    assert model.layers[0].test_time_mode == "mixed" and inner.layers[0].test_time_mode == "mixed"


# Bad input.


def test_bad_arguments_are_refused_with_the_cause():
    model = _cnn()
    with pytest.raises(ValueError, match="method.*'reestimate', 'tent'.*'adabn'"):
        adapt_batchnorm(model, _target(), method="adabn")
    with pytest.raises(ValueError, match="epochs"):
        adapt_batchnorm(model, _target(), method="tent", epochs=0)
    with pytest.raises(TypeError, match="built `keras.Model`"):
        adapt_batchnorm(keras.layers.BatchNormalization(), _target())
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match="`plain` has no BatchNormalization"):
        adapt_batchnorm(plain, np.ones((4, 3)))
    with pytest.raises(ValueError, match="no `AdaptiveBatchNormalization`"):
        set_test_time_mode(plain, "batch")
    with pytest.raises(ValueError, match="mode"):
        set_test_time_mode(model, "tent")


def test_data_that_yields_nothing_is_an_error_and_changes_nothing():
    model = _cnn()
    before = _all_weights(model)
    with pytest.raises(ValueError, match="yields no batch"):
        adapt_batchnorm(model, _target()[:0], verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(model)[path], value)


def test_a_pipeline_that_turns_out_empty_is_the_same_error():
    import tensorflow as tf

    model = _cnn()
    empty = tf.data.Dataset.from_tensor_slices(_target(8)).filter(lambda x: False).batch(4)
    with pytest.raises(ValueError, match="yields no batch"):
        adapt_batchnorm(model, empty, verbose=0)


def test_tent_refuses_a_model_whose_batch_norms_are_frozen():
    model = _cnn()
    for name in ("bn1", "bn2"):
        model.get_layer(name).trainable = False
    with pytest.raises(ValueError, match="method='reestimate'"):
        adapt_batchnorm(model, _target(), method="tent", verbose=0)


def test_fold_folds_adaptive_layers_in_running_mode_only():
    def model(mode):
        return keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(4),
                kreg.layers.AdaptiveBatchNormalization(test_time_mode=mode),
            ]
        )

    x = np.random.default_rng(2).normal(size=(16, 5)).astype("float32")
    running = model("running")
    adapt_batchnorm(running, x * 2 + 1, verbose=0)
    folded, report = kreg.fold_batch_norms(running, return_report=True)
    assert len(report.folded) == 1 and len(folded.layers) == 1
    np.testing.assert_allclose(_numpy(folded(x)), _numpy(running(x)), rtol=1e-5, atol=1e-5)

    with pytest.warns(UserWarning, match="test_time_mode is 'batch'"):
        _, report = kreg.fold_batch_norms(model("batch"), return_report=True)
    assert not report.folded


def test_an_adapted_model_still_saves_and_loads_weights(tmp_path):
    model = _cnn()
    source = _all_weights(model)
    model.save_weights(tmp_path / "source.weights.h5")
    adapt_batchnorm(model, _target(), verbose=0)
    model.load_weights(tmp_path / "source.weights.h5")  # back to the source model
    np.testing.assert_array_equal(_all_weights(model)["bn1/moving_mean"], source["bn1/moving_mean"])
    model.save(tmp_path / "adapted.keras")
    loaded = keras.saving.load_model(tmp_path / "adapted.keras")
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]


def test_adapting_again_after_adding_a_batch_norm_covers_the_new_layer():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="first")])
    x = np.random.default_rng(4).normal(3.0, 2.0, (40, 3)).astype("float32")
    adapt_batchnorm(model, x, verbose=0)
    model.add(keras.layers.Dense(2))
    model.add(keras.layers.BatchNormalization(name="second"))
    report = adapt_batchnorm(model, x, verbose=0)
    assert [change.name.split("/")[-1] for change in report.layers] == ["first", "second"]
    assert not np.allclose(_numpy(model.get_layer("second").moving_variance), 1.0)


class _CountedBatches(keras.utils.PyDataset):
    """A PyDataset written the newer way: `num_batches`, no `__len__`."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    @property
    def num_batches(self):
        return 2

    def __getitem__(self, index):
        return self.x[index * 20 : (index + 1) * 20]


def test_a_py_dataset_with_num_batches_only_is_accepted():
    report = adapt_batchnorm(_cnn(), _CountedBatches(_target(40)), verbose=0)
    assert report.samples == 40


def test_fully_masked_data_is_an_error_not_nan_statistics():
    model = keras.Sequential(
        [keras.Input((5, 3)), keras.layers.Masking(0.0), keras.layers.BatchNormalization()]
    )
    before = _all_weights(model)
    with pytest.raises(ValueError, match="masked"):
        adapt_batchnorm(model, np.zeros((8, 5, 3), "float32"), verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(model)[path], value)


@pytest.mark.parametrize("from_logits", [False, True])
def test_tent_entropy_of_a_single_sigmoid_unit_counts_both_classes(from_logits):
    from kreg.adapt.entropy import EntropyMinimizer

    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.BatchNormalization(), keras.layers.Dense(1)]
    )
    minimizer = EntropyMinimizer(model, from_logits=from_logits)
    p = np.array([[0.5], [0.9]], "float32")
    y_pred = np.log(p / (1 - p)) if from_logits else p
    expected = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    np.testing.assert_allclose(_numpy(minimizer.compute_loss(y_pred=y_pred)), expected, rtol=1e-5)


def test_nonfinite_or_zero_rates_are_refused():
    with pytest.raises(ValueError, match="learning_rate"):
        adapt_batchnorm(_cnn(), _target(), method="tent", learning_rate=0)
    with pytest.raises(ValueError, match="learning_rate"):
        adapt_batchnorm(_cnn(), _target(), method="tent", learning_rate=float("inf"))
    with pytest.raises(ValueError, match="prior_strength"):
        kreg.layers.AdaptiveBatchNormalization(prior_strength=float("inf"))


# Everywhere: fused layers, and data that cannot give statistics.


def test_the_batch_norms_inside_fused_layers_are_adapted():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            kreg.Conv2DBatchNorm(4, 3, activation="relu", name="conv_bn"),
            keras.layers.Flatten(),
            kreg.DenseBatchNorm(3, name="dense_bn"),
        ]
    )
    x = _target()
    conv_out = _numpy(model.get_layer("conv_bn").base_layer(x)).reshape(-1, 4)
    report = adapt_batchnorm(model, x, batch_size=len(x), verbose=0)
    assert [change.name.split("/")[-2] for change in report.layers] == ["conv_bn", "dense_bn"]
    bn = model.get_layer("conv_bn").batch_norm
    np.testing.assert_allclose(_numpy(bn.moving_mean), conv_out.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(bn.moving_variance), conv_out.var(0), rtol=1e-5, atol=1e-5)
    # The adapted inference (folded kernel) normalizes the dense layer's inputs.
    outputs = _numpy(model.predict(x, batch_size=len(x), verbose=0))
    np.testing.assert_allclose(outputs.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(outputs.var(0), 1.0, rtol=1e-2)


def test_tent_trains_the_scale_and_shift_of_fused_layers():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            kreg.Conv2DBatchNorm(4, 3, name="conv_bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    gamma = _numpy(model.get_layer("conv_bn").batch_norm.gamma).copy()
    adapt_batchnorm(model, _target(), method="tent", learning_rate=0.05, verbose=0)
    assert not np.array_equal(_numpy(model.get_layer("conv_bn").batch_norm.gamma), gamma)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_data_is_an_error_and_changes_nothing(bad):
    model = _cnn()
    before = _all_weights(model)
    x = _target()
    x[5, 3, 3, 0] = bad
    with pytest.raises(ValueError, match="not finite.*NaN or infinite"):
        adapt_batchnorm(model, x, verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(model)[path], value, err_msg=path)


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.zeros((16, 7, 7, 1), "float32"), ValueError, r"shape \(16, 7, 7, 1\)"),
        (np.full((16, 8, 8, 1), "a"), TypeError, "dtype <U1"),
        (np.full((16, 8, 8, 1), np.nan, "float32"), ValueError, "not finite.*NaN or infinite"),
        (np.ones((16, 8, 8, 1), "complex64"), TypeError, "dtype complex64"),
    ],
)
@pytest.mark.parametrize("method", ["reestimate", "tent"])
def test_arrays_the_model_cannot_take_are_errors_naming_data(method, data, error, message):
    model = _cnn()
    before = _all_weights(model)
    with pytest.raises(error, match=f"argument `data`.*{message}"):
        adapt_batchnorm(model, data, method=method, verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(model)[path], value, err_msg=path)


def test_one_value_per_channel_is_an_error_not_a_zero_variance():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(name="bn")]
    )
    before = _all_weights(model)
    with pytest.raises(ValueError, match="bn` saw 1 value per channel.*at least two"):
        adapt_batchnorm(model, np.ones((1, 3), "float32"), verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(model)[path], value, err_msg=path)


@pytest.mark.parametrize("not_a_model", ["a string", None, np.ones(3)])
def test_a_non_model_is_a_type_error_naming_model(not_a_model):
    with pytest.raises(TypeError, match="argument `model`"):
        adapt_batchnorm(not_a_model, _target())
    with pytest.raises(TypeError, match="argument `model`"):
        set_test_time_mode(not_a_model, "batch")


def _dense_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(name="bn2"),
        ]
    )


def test_batches_of_one_are_pooled_exactly_and_write_no_zero_variance():
    model = _dense_model()
    x = np.random.default_rng(2).normal(1.0, 2.0, (40, 3)).astype("float32")
    first_inputs = _inputs_of(model, "bn1", x)
    adapt_batchnorm(model, x, batch_size=1, verbose=0)
    mean, variance = _statistics(model.get_layer("bn1"))
    # The first batch norm's statistics are those of all 40 samples, pooled.
    np.testing.assert_allclose(mean, first_inputs.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(variance, first_inputs.var(axis=0), rtol=1e-4, atol=1e-5)
    # The one after it saw inputs normalized with stored statistics, which vary.
    assert np.all(_statistics(model.get_layer("bn2"))[1] > 1e-3)


def test_pooled_statistics_do_not_depend_on_the_batch_size():
    x = np.random.default_rng(3).normal(1.0, 2.0, (48, 8, 8, 1)).astype("float32")
    results = []
    for batch_size in (2, 5, 48):
        keras.utils.set_random_seed(0)
        model = _cnn()
        adapt_batchnorm(model, x, batch_size=batch_size, verbose=0)
        results.append(_statistics(model.get_layer("bn1")))
    for mean, variance in results[1:]:
        np.testing.assert_allclose(mean, results[0][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(variance, results[0][1], rtol=1e-4, atol=1e-5)


def test_a_channel_constant_over_the_data_keeps_its_stored_variance():
    model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization(name="bn")])
    model.get_layer("bn").moving_variance.assign(np.array([2.0, 3.0], "float32"))
    x = np.stack([np.linspace(0.0, 1.0, 16), np.full(16, 4.0)], axis=1).astype("float32")
    adapt_batchnorm(model, x, verbose=0)
    mean, variance = _statistics(model.get_layer("bn"))
    np.testing.assert_allclose(mean, [0.5, 4.0], rtol=1e-5)
    assert variance[1] == 3.0 and variance[0] > 0


@pytest.mark.parametrize("method", ["tent", "eata"])
def test_from_logits_that_contradicts_the_last_activation_is_refused(method):
    softmax = _cnn()
    before = _all_weights(softmax)
    with pytest.raises(ValueError, match="ends in a softmax.*Received: from_logits=True"):
        adapt_batchnorm(softmax, _target(), method=method, from_logits=True, verbose=0)
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    linear = keras.Model(inputs, keras.layers.Dense(3)(hidden), name="linear_head")
    with pytest.raises(ValueError, match="`linear_head` ends in a linear layer.*from_logits=False"):
        adapt_batchnorm(linear, np.ones((8, 4), "float32"), method=method, verbose=0)
    for path, value in before.items():
        np.testing.assert_array_equal(_all_weights(softmax)[path], value, err_msg=path)


def test_the_statistics_pass_reads_the_stored_statistics_as_they_are_at_each_call():
    # The robust method combines the stored statistics with the bank's from the
    # values the pass returns: a pass compiled once must read the variables
    # when it runs, not the values they held when it was traced.
    from kreg.adapt.reestimation import collect_statistics
    from kreg.model_graph import batch_norm_layers

    model, x = _cnn(), _target(16)
    layers = batch_norm_layers(model)
    options = dict(steps=None, batch_size=16, verbose=0)
    for shift in (0.0, 2.5):  # the second call reuses the compiled pass
        for layer in layers:
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.arange(channels, dtype="float32") + shift)
            layer.moving_variance.assign(np.full(channels, 1.0 + shift, "float32"))
        _, _, stored = collect_statistics(
            model, layers, x, options, need_variance=False, stored_weight=1.0, with_stored=True
        )
        for layer, (mean, variance) in zip(layers, stored):
            np.testing.assert_array_equal(mean, _numpy(layer.moving_mean))
            np.testing.assert_array_equal(variance, _numpy(layer.moving_variance))

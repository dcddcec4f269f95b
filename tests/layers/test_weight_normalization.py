import keras
import numpy as np
import pytest
from keras import ops

import kreg
from conftest import float16_convolutions_run
from conftest import needs_channels_first_convolutions
from conftest import to_numpy as _numpy
from kreg.layers import WeightNormalization
from layer_test_case import run_layer_test


@pytest.mark.parametrize(
    "make_layer, input_shape, output_shape",
    [
        (lambda: keras.layers.Dense(3, activation="relu"), (4, 5), (4, 3)),
        (lambda: keras.layers.Conv2D(4, 3, padding="same"), (2, 6, 6, 3), (2, 6, 6, 4)),
        (lambda: keras.layers.Conv1D(2, 3, use_bias=False), (3, 8, 2), (3, 6, 2)),
        pytest.param(
            lambda: keras.layers.Conv2D(4, 3, data_format="channels_first"),
            (2, 3, 6, 6),
            (2, 4, 4, 4),
            marks=needs_channels_first_convolutions,
        ),
    ],
)
@pytest.mark.parametrize("data_init", [False, True])
def test_layer_contract(make_layer, input_shape, output_shape, data_init, tmp_path):
    def factory(**kwargs):
        return WeightNormalization(make_layer(), data_init=data_init, **kwargs)

    run_layer_test(
        factory,
        input_shape=input_shape,
        expected_output_shape=output_shape,
        tmp_path=tmp_path,
        run_mixed_precision_check=float16_convolutions_run(
            factory().layer.get_config().get("data_format")
        ),
    )


def test_kernel_is_g_times_the_unit_direction_and_starts_as_the_plain_layer():
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 3)).astype("float32")
    plain = keras.layers.Conv2D(5, 3, activation="tanh")
    expected = _numpy(plain(x))
    layer = WeightNormalization(plain)
    np.testing.assert_allclose(
        _numpy(layer(x)), expected, rtol=1e-5, atol=1e-6
    )  # g starts at ||v||
    layer.g.assign(np.arange(1, 6, dtype="float32"))
    kernel = _numpy(layer.normalized_kernel()).reshape(-1, 5)
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), np.arange(1, 6), rtol=1e-5)
    v = _numpy(plain.kernel).reshape(-1, 5)
    np.testing.assert_allclose(
        kernel / np.linalg.norm(kernel, axis=0), v / np.linalg.norm(v, axis=0), rtol=1e-5
    )
    assert {w.name for w in layer.trainable_weights} == {"kernel", "bias", "g"}


def test_data_dependent_init_normalizes_the_first_batch_then_stays():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, (64, 8)).astype("float32")
    layer = WeightNormalization(keras.layers.Dense(4), data_init=True)
    first = _numpy(layer(x, training=True))
    np.testing.assert_allclose(first.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(first.std(axis=0), 1.0, rtol=1e-3)
    offsets = _numpy(layer.g_offset).copy(), _numpy(layer.bias_offset).copy()
    np.testing.assert_allclose(_numpy(layer(x)), first, rtol=1e-4, atol=1e-4)  # inference agrees
    later = _numpy(layer(rng.normal(0.0, 1.0, (64, 8)).astype("float32"), training=True))
    np.testing.assert_array_equal(
        _numpy(layer.g_offset), offsets[0]
    )  # only the first batch sets them
    np.testing.assert_array_equal(_numpy(layer.bias_offset), offsets[1])
    assert abs(later.mean()) > 0.1


def test_after_data_init_the_length_trains_as_the_papers_g():
    # Salimans & Kingma 2016, section 3: the data-dependent init sets g and b,
    # which then train as usual: y = g t + b, dL/dg = mean(r t) for L = mean(r y).
    # A frozen factor s after the layer (y = s (g t + b)) would move the length
    # by s^2 times that instead.
    rng = np.random.default_rng(4)
    layer = WeightNormalization(keras.layers.Dense(3), data_init=True)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, layer(inputs))
    layer(
        rng.normal(0.0, 8.0, (256, 6)).astype("float32"), training=True
    )  # the init: std far from 1
    x = rng.standard_normal((32, 6)).astype("float32")
    r = rng.standard_normal((32, 3)).astype("float32")
    v = _numpy(layer.layer.kernel)
    t = x @ (v / np.linalg.norm(v, axis=0))
    before = np.linalg.norm(_numpy(layer.normalized_kernel()), axis=0)
    learning_rate = 0.01
    model.compile(
        keras.optimizers.SGD(learning_rate),
        loss=lambda y_true, y_pred: ops.sum(y_true * y_pred, axis=-1),
    )
    model.train_on_batch(x, r)
    after = np.linalg.norm(_numpy(layer.normalized_kernel()), axis=0)
    np.testing.assert_allclose(
        after - before, -learning_rate * np.mean(r * t, axis=0), rtol=1e-3, atol=1e-6
    )


def test_fold_batch_norms_turns_it_into_the_plain_layer():
    inputs = keras.Input((8, 8, 3))
    x = WeightNormalization(keras.layers.Conv2D(4, 3, activation="relu"), data_init=True)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = WeightNormalization(keras.layers.Dense(2, use_bias=False))(x)
    model = keras.Model(inputs, outputs)
    batch = np.random.default_rng(2).standard_normal((16, 8, 8, 3)).astype("float32")
    model(batch, training=True)  # the data-dependent init
    folded, report = kreg.fold_batch_norms(model, return_report=True)
    assert [type(layer).__name__ for layer in folded.layers] == [
        "InputLayer",
        "Conv2D",
        "Flatten",
        "Dense",
    ]
    assert len(report.converted) == 2
    np.testing.assert_allclose(_numpy(folded(batch)), _numpy(model(batch)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "layer, kwargs, message",
    [
        (keras.layers.LSTM(3), {}, r"`layer`.*Dense, Conv1D, Conv2D or Conv3D.*LSTM"),
        (keras.layers.DepthwiseConv2D(3), {}, r"`layer`.*DepthwiseConv2D"),
        (keras.layers.Dense(3), {"data_init": "yes"}, r"`data_init`.*True or False.*'yes'"),
    ],
)
def test_bad_arguments_fail_at_construction(layer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WeightNormalization(layer, **kwargs)


@pytest.mark.parametrize(
    "data_format",
    ["channels_last", pytest.param("channels_first", marks=needs_channels_first_convolutions)],
)
def test_causal_conv1d_computes_what_the_plain_layer_computes(data_format):
    # Conv1D pads causal inputs in its own call; the wrapper must too.
    shape = (2, 9, 3) if data_format == "channels_last" else (2, 3, 9)
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    plain = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, data_format=data_format)
    expected = _numpy(plain(x))
    np.testing.assert_allclose(
        _numpy(WeightNormalization(plain)(x)), expected, rtol=1e-5, atol=1e-5
    )

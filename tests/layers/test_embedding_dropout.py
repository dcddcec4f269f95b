import keras
import numpy as np
import pytest

from conftest import to_numpy as _numpy
from kreg.layers import EmbeddingDropout
from layer_test_case import _check_config_round_trip


def _ids(shape=(8, 12), vocabulary=20, seed=0):
    return np.random.default_rng(seed).integers(1, vocabulary, shape).astype("int32")


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 0.3, "seed": 1}, {"rate": 0.5, "mask_zero": True}, {"rate": 0.0}],
)
def test_config_round_trip_and_registration(kwargs):
    # The shared layer test feeds float inputs; ids need their own checks (below).
    layer = EmbeddingDropout(20, 6, **kwargs)
    _check_config_round_trip(layer)
    layer(_ids())
    _check_config_round_trip(layer)
    symbolic = layer(keras.Input((5,), dtype="int32"))
    assert tuple(symbolic.shape) == (None, 5, 6)


def test_trains_saves_and_loads_with_identical_outputs(tmp_path):
    ids = _ids()
    model = keras.Sequential(
        [
            keras.Input((12,), dtype="int32"),
            EmbeddingDropout(20, 6, rate=0.3, mask_zero=True, seed=0),
            keras.layers.LSTM(4),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    before = _numpy(model.layers[0].embeddings).copy()
    loss = model.fit(ids, np.ones((8, 1)), epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))
    assert not np.array_equal(before, _numpy(model.layers[0].embeddings))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(_numpy(loaded(ids)), _numpy(model(ids)))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_jit_compiled_training(jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("torch.compile is not what kreg's layers are checked with")
    model = keras.Sequential(
        [
            keras.Input((12,), dtype="int32"),
            EmbeddingDropout(20, 3, rate=0.5),
            keras.layers.Flatten(),
        ]
    )
    model.compile("sgd", "mse", jit_compile=jit_compile)
    assert np.isfinite(model.fit(_ids(), np.ones((8, 36)), verbose=0).history["loss"][0])


def test_drops_whole_rows_the_same_at_every_position_and_scales_the_rest():
    rate = 0.5
    layer = EmbeddingDropout(40, 8, rate=rate, seed=2)
    ids = _ids((16, 30), vocabulary=40)
    full = _numpy(layer(ids))
    dropped = _numpy(layer(ids, training=True))
    zero = np.all(dropped == 0, axis=-1)
    np.testing.assert_allclose(dropped[~zero], full[~zero] / (1 - rate), rtol=1e-6)
    dropped_ids = set(ids[zero])
    assert dropped_ids.isdisjoint(set(ids[~zero])), "an id is dropped at some positions only"
    assert 0.2 < len(dropped_ids) / len(set(ids.ravel())) < 0.8
    again = np.all(_numpy(layer(ids, training=True)) == 0, axis=-1)
    assert not np.array_equal(zero, again), "each batch draws a new set of rows"


def test_inference_and_zero_rate_are_keras_embedding_and_weights_transfer_both_ways():
    ids = _ids()
    ours = EmbeddingDropout(20, 6, rate=0.4, mask_zero=True)
    theirs = keras.layers.Embedding(20, 6, mask_zero=True)
    ours(ids)
    theirs(ids)
    ours.set_weights(theirs.get_weights())
    np.testing.assert_array_equal(_numpy(ours(ids)), _numpy(theirs(ids)))
    theirs.set_weights([w * 2 for w in ours.get_weights()])
    np.testing.assert_array_equal(_numpy(theirs(ids)), 2 * _numpy(ours(ids)))
    assert len(ours.weights) == len(theirs.weights) == 1
    plain = EmbeddingDropout(20, 6, rate=0.0)
    plain(ids)
    plain.set_weights(theirs.get_weights())
    np.testing.assert_array_equal(_numpy(plain(ids, training=True)), _numpy(theirs(ids)))


def test_mask_zero_is_kept_for_the_next_layer():
    ids = _ids((4, 6))
    ids[:, 4:] = 0
    layer = EmbeddingDropout(20, 3, rate=0.5, mask_zero=True)
    np.testing.assert_array_equal(_numpy(layer.compute_mask(ids)), ids != 0)
    inputs = keras.Input((6,), dtype="int32")
    x = layer(inputs)
    assert x._keras_mask is not None
    outputs = keras.layers.LSTM(2, return_sequences=True)(x)
    y = _numpy(keras.Model(inputs, outputs)(ids, training=True))
    np.testing.assert_array_equal(y[:, 5], y[:, 3])  # masked steps keep the state


def test_config_is_embeddings_plus_rate_and_seed():
    config = EmbeddingDropout(20, 6, rate=0.1, seed=3, mask_zero=True).get_config()
    assert set(config) - set(keras.layers.Embedding(20, 6).get_config()) == {"rate", "seed"}
    assert config["rate"] == 0.1 and config["mask_zero"] is True


def test_mixed_precision_drops_in_float16():
    layer = EmbeddingDropout(20, 4, rate=0.5, dtype="mixed_float16")
    y = layer(_ids(), training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert layer.embeddings.dtype == "float32"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate": 1.0}, r"`rate`.*\[0, 1\).*rate=1.0"),
        ({"rate": "0.1"}, r"`rate`.*'0.1'"),
        ({"input_dim": 0}, r"input_dim"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message):
    kwargs = {"input_dim": 20, "output_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        EmbeddingDropout(**kwargs)


def test_rate_changed_on_a_live_model_applies_at_the_next_step_without_retrace():
    layer = EmbeddingDropout(40, 4, rate=0.1, seed=0)
    model = keras.Sequential([keras.Input((30,), dtype="int32"), layer])
    model.compile("sgd", "mse")
    ids = _ids((16, 30), vocabulary=40)

    def dropped_fraction():
        y = _numpy(model(ids, training=True))
        return np.all(y == 0, axis=-1).mean()

    low = np.mean([dropped_fraction() for _ in range(5)])
    layer.rate = 0.8
    assert layer.get_config()["rate"] == 0.8
    high = np.mean([dropped_fraction() for _ in range(5)])
    assert low < 0.3 < 0.6 < high
    with pytest.raises(ValueError, match="rate"):
        EmbeddingDropout(40, 4, rate=0.0).rate = 0.5


def test_weights_argument_loads_a_pretrained_matrix():
    matrix = np.random.default_rng(0).standard_normal((20, 6)).astype("float32")
    layer = EmbeddingDropout(20, 6, rate=0.3, weights=matrix)
    ids = _ids()
    np.testing.assert_array_equal(_numpy(layer(ids)), matrix[ids])


@pytest.mark.parametrize("mode", ["int8", "int4"])
@pytest.mark.parametrize("through_model", [False, True])
def test_quantized_layer_drops_whole_rows_of_its_lookup(mode, through_model):
    ids = _ids((16, 30), vocabulary=40)
    layer = EmbeddingDropout(40, 8, rate=0.5, seed=2)
    model = keras.Sequential([keras.Input((30,), dtype="int32"), layer])
    full = _numpy(layer(ids))
    if through_model:
        model.quantize(mode)
    else:
        layer.quantize(mode)
    assert layer.quantization_mode == mode
    assert keras.backend.standardize_dtype(layer._embeddings.dtype) == "int8"
    quantized = _numpy(layer(ids))
    np.testing.assert_allclose(quantized, full, atol=0.1 if mode == "int4" else 0.02)
    dropped = _numpy(layer(ids, training=True))
    zero = np.all(dropped == 0, axis=-1)
    np.testing.assert_allclose(dropped[~zero], quantized[~zero] / 0.5, rtol=1e-6)
    assert set(ids[zero]).isdisjoint(set(ids[~zero])), "an id is dropped at some positions only"
    assert 0.2 < len(set(ids[zero])) / len(set(ids.ravel())) < 0.8


def test_subclasses_are_refused_by_quantize_as_keras_refuses_its_own():
    class Custom(EmbeddingDropout):
        pass

    layer = Custom(10, 4, rate=0.2)
    layer.build()
    with pytest.raises(NotImplementedError):
        layer.quantize("int8")


def test_keras_positional_arguments_keep_their_places_and_a_positional_rate_is_refused():
    # A drop-in takes `Embedding(input_dim, output_dim, embeddings_initializer, ...)`.
    layer = EmbeddingDropout(20, 6, "ones", rate=0.2)
    layer.build((None,))
    np.testing.assert_array_equal(_numpy(layer.embeddings), np.ones((20, 6)))
    assert layer.rate == pytest.approx(0.2)
    with pytest.raises(TypeError, match=r"`embeddings_initializer`.*keyword-only.*rate=0.1"):
        EmbeddingDropout(20, 6, 0.1)


def test_pretrained_weights_given_by_position_load_as_by_keyword():
    # `Embedding(input_dim, output_dim, embeddings_initializer, embeddings_regularizer,
    # embeddings_constraint, mask_zero, weights)`: the matrix is Keras's seventh argument.
    matrix = np.arange(12, dtype="float32").reshape(4, 3)
    layer = EmbeddingDropout(4, 3, "uniform", None, None, False, matrix, rate=0.5)
    np.testing.assert_array_equal(layer.get_weights()[0], matrix)
    assert layer.rate == pytest.approx(0.5)
    with pytest.raises(TypeError, match="multiple values for argument 'mask_zero'"):
        EmbeddingDropout(4, 3, "uniform", None, None, False, mask_zero=True)

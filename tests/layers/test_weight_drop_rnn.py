import functools

import keras
import numpy as np
import pytest

from conftest import to_numpy as _numpy
from kreg import _keras_compat
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM
from layer_test_case import run_layer_test

PAIRS = [(WeightDropLSTM, keras.layers.LSTM), (WeightDropGRU, keras.layers.GRU)]
PAIR_IDS = ["lstm", "gru"]


def _inputs(shape=(6, 7, 3), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def _twins(kreg_cls, keras_cls, x, units=5, **kwargs):
    """A kreg layer and its Keras counterpart, built, with the same weights."""
    ours = kreg_cls(units, **kwargs)
    ours(x)
    theirs = keras_cls(
        units,
        **{k: v for k, v in kwargs.items() if not k.startswith("weight_") and k != "mask_groups"},
    )
    theirs(x)
    theirs.set_weights(ours.get_weights())
    return ours, theirs


def _capture_dropped_kernels(layer):
    """Records every dropped recurrent kernel the layer draws."""
    captured = []
    draw = layer._dropped_recurrent_kernel

    def recording_draw():
        kernel = draw()
        captured.append(kernel)
        return kernel

    layer._dropped_recurrent_kernel = recording_draw
    return captured


@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
@pytest.mark.parametrize(
    "kwargs, expected_shape",
    [
        ({"weight_dropout": 0.25}, (4, 6)),
        (
            {"weight_dropout": 0.5, "weight_dropout_mode": "weight", "return_sequences": True},
            (4, 5, 6),
        ),
        ({"weight_dropout": 0.3, "dropout": 0.2, "go_backwards": True, "seed": 4}, (4, 6)),
        ({"weight_dropout": 0.3, "return_state": True, "unroll": True}, (4, 6)),
        ({"weight_dropout": 0.3, "mask_groups": 2, "return_sequences": True}, (4, 5, 6)),
        ({"weight_dropout": 0.3, "mask_groups": 3, "return_state": True}, (4, 6)),
    ],
)
def test_layer_contract(kreg_cls, kwargs, expected_shape, tmp_path):
    run_layer_test(
        functools.partial(kreg_cls, 6, **kwargs),
        input_shape=(4, 5, 3),
        expected_output_shape=expected_shape,
        tmp_path=tmp_path,
        supports_masking=True,
    )


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"return_sequences": True, "go_backwards": True},
        {"return_state": True},
        {"use_cudnn": False, "unroll": True},
    ],
)
def test_without_weight_dropout_matches_keras_exactly(kreg_cls, keras_cls, kwargs):
    x = _inputs()
    ours, theirs = _twins(kreg_cls, keras_cls, x, weight_dropout=0.0, **kwargs)
    for training in (False, True):
        for a, b in zip(
            keras.tree.flatten(ours(x, training=training)),
            keras.tree.flatten(theirs(x, training=training)),
        ):
            np.testing.assert_array_equal(_numpy(a), _numpy(b))


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_with_weight_dropout_training_differs_and_inference_matches_keras(kreg_cls, keras_cls):
    x = _inputs()
    ours, theirs = _twins(kreg_cls, keras_cls, x, weight_dropout=0.5, seed=1)
    reference = _numpy(theirs(x))
    np.testing.assert_array_equal(_numpy(ours(x)), reference)
    np.testing.assert_array_equal(_numpy(ours(x, training=False)), reference)
    assert not np.allclose(_numpy(ours(x, training=True)), reference, atol=1e-4)


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mode", ["unit", "weight"])
def test_training_equals_keras_with_one_masked_kernel_for_all_timesteps(kreg_cls, keras_cls, mode):
    """The whole sequence runs on a single dropped kernel, drawn once per batch."""
    x = _inputs((6, 9, 3))
    ours, theirs = _twins(
        kreg_cls,
        keras_cls,
        x,
        weight_dropout=0.4,
        weight_dropout_mode=mode,
        return_sequences=True,
        seed=2,
    )
    captured = _capture_dropped_kernels(ours)
    trained = _numpy(ours(x, training=True))
    assert len(captured) == 1, "the mask must be drawn once per batch"

    kernel, recurrent_kernel, *rest = ours.get_weights()
    theirs.set_weights([kernel, _numpy(captured[0]), *rest])
    np.testing.assert_allclose(trained, _numpy(theirs(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
def test_unit_mode_drops_whole_rows_with_inverted_scaling(kreg_cls):
    rate, units = 0.3, 256
    layer = kreg_cls(units, weight_dropout=rate, seed=5)
    x = _inputs((2, 2, 3))
    layer(x)
    captured = _capture_dropped_kernels(layer)
    layer(x, training=True)
    layer(x, training=True)
    original = _numpy(layer.cell.recurrent_kernel)
    ratio = _numpy(captured[0]) / original  # per entry: 0 or 1 / (1 - rate)

    row_kept = ratio[:, 0] != 0
    np.testing.assert_allclose(ratio[row_kept], 1 / (1 - rate), rtol=1e-5)
    np.testing.assert_array_equal(ratio[~row_kept], 0.0)
    kept = row_kept.mean()
    assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / units), kept
    assert not np.array_equal(_numpy(captured[0]), _numpy(captured[1])), (
        "each batch must draw a new mask"
    )


def test_weight_mode_drops_single_weights():
    rate = 0.5
    layer = WeightDropLSTM(64, weight_dropout=rate, weight_dropout_mode="weight", seed=3)
    x = _inputs((2, 2, 3))
    layer(x)
    captured = _capture_dropped_kernels(layer)
    layer(x, training=True)
    dropped = _numpy(captured[0]) == 0
    # Rows are neither all kept nor all dropped, and about half is dropped.
    assert 0 < dropped.sum(axis=1).min() and dropped.sum(axis=1).max() < dropped.shape[1]
    n = dropped.size
    assert abs(dropped.mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_fused_kernel_receives_the_masked_kernel(kreg_cls, keras_cls, monkeypatch):
    """The backend's fused kernel stays in use, and gets the dropped weights.

    Keras's `recurrent_dropout` never reaches the fused kernel at all; that is the
    slowdown weight dropout avoids.
    """
    kernels = _keras_compat.fused_rnn_kernels()
    name = keras_cls.__name__.lower()
    fused = getattr(kernels, name)
    received = []

    def spy(*args, **kwargs):
        received.append(_numpy(kwargs["recurrent_kernel"]))
        return fused(*args, **kwargs)

    monkeypatch.setattr(kernels, name, spy)
    x = _inputs()
    ours = kreg_cls(8, weight_dropout=0.5, seed=0)
    ours(x)
    captured = _capture_dropped_kernels(ours)
    ours(x, training=True)
    assert len(received) == 2  # the build call, then the training call
    np.testing.assert_array_equal(received[1], _numpy(captured[0]))
    assert (received[1] == 0).all(axis=1).any(), "no row of the kernel was dropped"
    ours(x, training=False)
    np.testing.assert_array_equal(received[2], _numpy(ours.cell.recurrent_kernel))

    received.clear()
    keras_cls(8, recurrent_dropout=0.5)(x, training=True)
    assert received == [], "Keras's recurrent_dropout was expected to skip the fused kernel"


@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
def test_fused_and_generic_paths_compute_the_same(kreg_cls):
    """Same seed, same weights: the fused path and the step loop agree.

    On PyTorch the fused function runs on the CPU too; on TensorFlow and JAX it
    needs a GPU, and both layers take the generic loop.
    """
    x = _inputs()
    fused = kreg_cls(5, weight_dropout=0.5, seed=9, use_cudnn="auto")
    generic = kreg_cls(5, weight_dropout=0.5, seed=9, use_cudnn=False)
    fused(x)
    generic(x)
    generic.set_weights(fused.get_weights())
    np.testing.assert_allclose(
        _numpy(fused(x, training=True)), _numpy(generic(x, training=True)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_masking_and_stateful_keep_working(kreg_cls, keras_cls):
    x = _inputs((4, 6, 3))
    x[:, 4:] = 0.0
    inputs = keras.Input((6, 3), batch_size=4)
    masked = keras.layers.Masking(0.0)(inputs)
    ours = keras.Model(inputs, kreg_cls(5, weight_dropout=0.5, stateful=True)(masked))
    theirs = keras.Model(inputs, keras_cls(5, stateful=True)(masked))
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-6)
    # Stateful: the second call starts from the state the first one left.
    np.testing.assert_allclose(_numpy(ours(x)), _numpy(theirs(x)), rtol=1e-6)
    ours(x, training=True)  # masked steps and dropped kernel together run


def test_config_keeps_every_keras_argument_and_adds_its_own():
    ours = WeightDropLSTM(4, weight_dropout=0.2, weight_dropout_mode="weight", dropout=0.1)
    theirs = keras.layers.LSTM(4, dropout=0.1)
    config = ours.get_config()
    assert set(config) - set(theirs.get_config()) == {
        "weight_dropout",
        "weight_dropout_mode",
        "mask_groups",
    }
    assert config["weight_dropout"] == 0.2 and config["weight_dropout_mode"] == "weight"
    assert config["dropout"] == 0.1


@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_dropout": 1.0}, r"`weight_dropout`.*\[0, 1\).*weight_dropout=1.0"),
        ({"weight_dropout": float("nan")}, r"`weight_dropout`.*nan"),
        ({"weight_dropout": "high"}, r"`weight_dropout`.*'high'.*str"),
        ({"weight_dropout_mode": "row"}, r"`weight_dropout_mode`.*'unit', 'weight'.*'row'"),
        ({"mask_groups": 0}, r"`mask_groups`.*integer >= 1.*mask_groups=0"),
        ({"mask_groups": 2.0}, r"`mask_groups`.*integer.*float"),
        ({"mask_groups": True}, r"`mask_groups`.*bool"),
    ],
)
def test_bad_arguments_fail_at_construction(kreg_cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        kreg_cls(4, **kwargs)


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("mode", ["unit", "weight"])
def test_mask_groups_give_each_slice_of_the_batch_its_own_mask(kreg_cls, keras_cls, mode):
    """Group g of the batch runs exactly Keras's layer with the g-th dropped kernel."""
    x = _inputs((9, 6, 3))
    # 16 units: two "unit" masks agree by chance with probability 2**-16 (with
    # 5 they did, 1 in 32, for one seed on JAX).
    ours, theirs = _twins(
        kreg_cls,
        keras_cls,
        x,
        units=16,
        weight_dropout=0.5,
        weight_dropout_mode=mode,
        mask_groups=3,
        return_sequences=True,
        seed=4,
    )
    captured = _capture_dropped_kernels(ours)
    trained = _numpy(ours(x, training=True))
    assert len(captured) == 3, "one mask per group"
    assert not np.array_equal(_numpy(captured[0]), _numpy(captured[1]))
    kernel, _, *rest = ours.get_weights()
    for group, dropped in enumerate(captured):
        theirs.set_weights([kernel, _numpy(dropped), *rest])
        rows = slice(3 * group, 3 * group + 3)
        np.testing.assert_allclose(trained[rows], _numpy(theirs(x[rows])), rtol=1e-5, atol=1e-6)
    captured.clear()
    np.testing.assert_array_equal(_numpy(ours(x)), _numpy(ours(x, training=False)))
    assert captured == [], "inference draws no mask"


def _capture_keras_dropout_masks(layer):
    """Records the whole-batch `dropout`/`recurrent_dropout` masks Keras draws per call."""
    captured = []
    reset = layer._maybe_reset_dropout_masks

    def recording_reset(cell):
        captured.append((cell._dropout_mask, cell._recurrent_dropout_mask))
        reset(cell)

    layer._maybe_reset_dropout_masks = recording_reset
    return captured


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=PAIR_IDS)
def test_mask_groups_combine_with_keras_dropout_and_recurrent_dropout(kreg_cls, keras_cls):
    """Each group runs with its own slice of Keras's per-sample dropout masks.

    Keras draws those masks for the whole batch before the loop; a group that got
    the whole-batch masks failed with a shape mismatch.
    """
    x = _inputs((8, 6, 3))
    ours, theirs = _twins(
        kreg_cls,
        keras_cls,
        x,
        weight_dropout=0.5,
        mask_groups=2,
        dropout=0.3,
        recurrent_dropout=0.2,
        return_sequences=True,
        seed=4,
    )
    kernels = _capture_dropped_kernels(ours)
    keras_masks = _capture_keras_dropout_masks(ours)
    trained = _numpy(ours(x, training=True))
    assert len(kernels) == 2 and len(keras_masks) == 1
    # One mask per gate: Keras's cells switch to `implementation=1` with recurrent dropout.
    dropout_mask, recurrent_mask = keras_masks[0]
    kernel, _, *rest = ours.get_weights()
    for group, dropped in enumerate(kernels):
        rows = slice(4 * group, 4 * group + 4)
        theirs.set_weights([kernel, _numpy(dropped), *rest])
        # Keras reuses masks already on the cell: the same per-sample draws.
        theirs.cell._dropout_mask = [mask[rows] for mask in dropout_mask]
        theirs.cell._recurrent_dropout_mask = [mask[rows] for mask in recurrent_mask]
        expected = _numpy(theirs(x[rows], training=True))
        np.testing.assert_allclose(trained[rows], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
def test_mask_groups_split_uneven_and_small_batches(kreg_cls):
    layer = kreg_cls(4, weight_dropout=0.5, mask_groups=4, return_state=True, seed=0)
    x = _inputs((7, 5, 3))
    layer(x)
    captured = _capture_dropped_kernels(layer)
    for batch, masks in ((7, 4), (2, 2), (1, 1)):
        captured.clear()
        outputs = layer(x[:batch], training=True)
        assert all(tuple(o.shape)[0] == batch for o in outputs)
        assert len(captured) == masks


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("kreg_cls", [WeightDropLSTM, WeightDropGRU], ids=PAIR_IDS)
def test_mask_groups_with_a_batch_size_known_only_at_run_time(kreg_cls):
    import tensorflow as tf

    layer = kreg_cls(
        4,
        weight_dropout=0.5,
        mask_groups=3,
        dropout=0.2,
        recurrent_dropout=0.2,
        return_sequences=True,
        seed=0,
    )
    x = _inputs((8, 5, 3))
    layer(x)
    traced = tf.function(
        lambda batch: layer(batch, training=True), input_signature=[tf.TensorSpec((None, 5, 3))]
    )
    for batch in (8, 2, 1):
        assert tuple(traced(x[:batch]).shape) == (batch, 5, 4)


def test_mask_groups_train_in_a_model_with_a_partial_last_batch():
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            WeightDropLSTM(6, weight_dropout=0.4, mask_groups=4),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    x = _inputs((10, 5, 3))
    losses = model.fit(x, x.sum(axis=(1, 2))[:, None], batch_size=8, epochs=3, verbose=0).history[
        "loss"
    ]
    assert np.all(np.isfinite(losses))


@pytest.mark.parametrize("kreg_cls, keras_cls", PAIRS, ids=["lstm", "gru"])
def test_keras_positional_arguments_keep_their_places_and_a_positional_rate_is_refused(
    kreg_cls, keras_cls
):
    # A drop-in takes `LSTM(units, activation, recurrent_activation, ...)` by position.
    layer = kreg_cls(4, "relu", "tanh", weight_dropout=0.25)
    reference = keras_cls(4, "relu", "tanh")
    assert layer.cell.activation is reference.cell.activation is keras.activations.relu
    assert layer.cell.recurrent_activation is keras.activations.tanh
    assert layer.weight_dropout == pytest.approx(0.25)
    with pytest.raises(TypeError, match=r"`activation`.*keyword-only.*weight_dropout=0.3"):
        kreg_cls(4, 0.3)

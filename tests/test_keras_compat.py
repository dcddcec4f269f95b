"""Fails loudly when a Keras upgrade moves what kreg/_keras_compat.py relies on."""

import inspect
import os

import keras
import numpy as np
import pytest
from keras import ops

from kreg import _keras_compat


def test_dropout_mixin_is_the_one_keras_rnn_draws_masks_for():
    mixin = _keras_compat.DropoutRNNCell
    assert issubclass(keras.layers.LSTMCell, mixin)
    for method in ("get_dropout_mask", "get_recurrent_dropout_mask", "reset_dropout_mask"):
        assert callable(getattr(mixin, method, None)), f"DropoutRNNCell.{method} is gone"
    # RNN draws the masks of mixin cells before its time loop (per sequence).
    source = inspect.getsource(keras.layers.RNN)
    assert "_maybe_config_dropout_masks" in source and "DropoutRNNCell" in source


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_kernels_exist_and_take_the_recurrent_kernel(name):
    fused = getattr(_keras_compat.fused_rnn_kernels(), name)
    assert "recurrent_kernel" in inspect.signature(fused).parameters
    layer_source = inspect.getsource(getattr(keras.layers, name.upper()).inner_loop)
    assert f"backend.{name}(" in layer_source
    assert "recurrent_kernel=self.cell.recurrent_kernel" in layer_source


@pytest.mark.parametrize("layer_cls", [keras.layers.LSTM, keras.layers.GRU])
def test_replaced_recurrent_kernel_is_what_the_layer_computes_with(layer_cls):
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype("float32")
    layer = layer_cls(5)
    layer(x)
    reference = layer_cls(5)
    reference(x)
    kernel, recurrent_kernel, *rest = layer.get_weights()
    zeros = np.zeros_like(recurrent_kernel)
    reference.set_weights([kernel, zeros, *rest])

    variable = layer.cell.recurrent_kernel
    with _keras_compat.recurrent_kernel_replaced(layer.cell, ops.convert_to_tensor(zeros)):
        replaced = ops.convert_to_numpy(layer(x))
    np.testing.assert_allclose(replaced, ops.convert_to_numpy(reference(x)), rtol=1e-6)
    assert layer.cell.recurrent_kernel is variable


def test_replacement_is_undone_when_the_block_raises():
    layer = keras.layers.LSTM(2)
    layer.build((None, 3, 1))
    variable = layer.cell.recurrent_kernel
    with pytest.raises(RuntimeError):
        with _keras_compat.recurrent_kernel_replaced(layer.cell, ops.zeros((2, 8))):
            raise RuntimeError("interrupted")
    assert layer.cell.recurrent_kernel is variable
    assert len(layer.trainable_weights) == 3, "the replacement must not be tracked"


def test_functional_check_tells_graph_models_from_subclassed_ones():
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert _keras_compat.is_functional(functional)
    assert not _keras_compat.is_functional(Subclassed())


def test_lambda_copy_calls_the_same_function_with_the_same_output_shape_and_mask():
    def shape_of(input_shape):
        return input_shape[:-1] + (1,)

    original = keras.layers.Lambda(
        lambda t, k: ops.sum(t, axis=-1, keepdims=True) * k,
        output_shape=shape_of,
        mask=lambda t, mask: None,
        arguments={"k": 3.0},
        name="summed",
    )
    copy = _keras_compat.lambda_layer_copy(original)
    assert copy is not original and copy.name == "summed"
    assert copy.function is original.function and copy.mask is original.mask
    assert copy.compute_output_shape((2, 4)) == (2, 1)
    x = np.ones((2, 4), "float32")
    np.testing.assert_allclose(ops.convert_to_numpy(copy(x)), np.full((2, 1), 12.0))


def test_all_sublayers_reaches_nested_models_and_composite_layers():
    import kreg

    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner"
    )
    model = keras.Sequential([keras.Input((4,)), inner, kreg.DenseBatchNorm(2, name="fused")])
    names = {layer.name for layer in _keras_compat.all_sublayers(model)}
    assert {"inner", "inner_dense", "fused"} <= names
    fused = model.get_layer("fused")
    assert fused.batch_norm.name in names and fused.base_layer.name in names
    assert model.name not in names


def test_call_replaced_runs_the_replacement_inside_compiled_predict_and_restores():
    layer = keras.layers.Dense(2, kernel_initializer="ones")
    model = keras.Sequential([keras.Input((3,)), layer])
    x = np.ones((4, 3), "float32")
    original = model.predict(x, verbose=0)
    with _keras_compat.call_replaced(layer, lambda inputs, **kwargs: inputs[:, :2] * 0.0 - 1.0):
        model.make_predict_function(force=True)
        np.testing.assert_array_equal(model.predict(x, verbose=0), -np.ones((4, 2)))
    model.make_predict_function(force=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), original)
    assert "call" not in vars(layer)


def test_predict_on_data_without_batches_raises_the_error_adapt_catches():
    # A tf.data pipeline whose length is unknown and turns out empty: Keras's
    # predict loop never assigns its outputs. If Keras starts raising a clear error
    # instead, `adapt_batchnorm` must catch that one (see PREDICT_ERROR_WITHOUT_BATCHES).
    import tensorflow as tf

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    empty = (
        tf.data.Dataset.from_tensor_slices(np.ones((4, 3), "float32"))
        .filter(lambda x: False)
        .batch(2)
    )
    with pytest.raises(_keras_compat.PREDICT_ERROR_WITHOUT_BATCHES):
        model.predict(empty, verbose=0)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="compares with the TensorFlow backend's private check",
)
@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.LSTM(2),
        keras.layers.LSTM(2, activation="relu"),
        keras.layers.LSTM(2, recurrent_activation="hard_sigmoid"),
        keras.layers.LSTM(2, unroll=True),
        keras.layers.LSTM(2, use_bias=False),
        keras.layers.GRU(2),
        keras.layers.GRU(2, reset_after=False),
        keras.layers.GRU(2, activation="relu"),
    ],
    ids=lambda layer: f"{type(layer).__name__}-{layer.cell.activation.__name__}-{layer.unroll}",
)
def test_fused_rnn_arguments_match_keras_cudnn_conditions(layer):
    import importlib

    # `keras.src.backend.tensorflow.rnn` the attribute is the function `rnn`.
    rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

    arguments = dict(
        activation=layer.cell.activation,
        recurrent_activation=layer.cell.recurrent_activation,
        unroll=layer.unroll,
        use_bias=layer.cell.use_bias,
    )
    if isinstance(layer, keras.layers.GRU):
        expected = rnn._do_gru_arguments_support_cudnn(
            **arguments, reset_after=layer.cell.reset_after
        )
    else:
        expected = rnn._do_lstm_arguments_support_cudnn(**arguments)
    assert _keras_compat.fused_rnn_arguments_ok(layer) == expected
    assert "cudnn_ok" in inspect.getsource(
        type(layer).inner_loop
    ) or "use_cudnn" in inspect.getsource(type(layer))


def test_functional_nodes_history_and_arguments():
    inputs = keras.Input((3,), name="x")
    dense = keras.layers.Dense(3, name="dense")
    hidden = dense(inputs)
    outputs = dense(inputs=keras.ops.relu(hidden) + 1.0)
    model = keras.Model(inputs, outputs)
    nodes = _keras_compat.functional_nodes(model)
    operations = [_keras_compat.node_operation(node) for node in nodes]
    assert _keras_compat.node_is_input(nodes[0]) and operations[0].name == "x"
    assert [op.name for op in operations if op is dense] == ["dense", "dense"]
    last = nodes[-1]
    assert _keras_compat.node_index(last) == 1
    args, kwargs = _keras_compat.node_arguments(last)
    assert args == () and set(kwargs) == {"inputs"}
    operation, node_index, tensor_index = _keras_compat.tensor_history(kwargs["inputs"])
    assert type(operation).__name__ == "Add" and (node_index, tensor_index) == (0, 0)
    assert _keras_compat.tensor_history(outputs)[:2] == (dense, 1)


def test_step_loop_is_the_loop_keras_rnn_runs():
    assert "backend.rnn(" in inspect.getsource(keras.layers.RNN.inner_loop)
    parameters = inspect.signature(_keras_compat._backend.rnn).parameters
    for name in (
        "go_backwards",
        "mask",
        "unroll",
        "input_length",
        "zero_output_for_mask",
        "return_all_outputs",
    ):
        assert name in parameters, f"backend.rnn lost its `{name}` argument"

    def cumulative_sum(inputs, states):
        total = states[0] + inputs
        return total, [total]

    x = np.ones((2, 3, 1), dtype="float32")
    last, outputs, states = _keras_compat.step_loop(
        cumulative_sum, ops.convert_to_tensor(x), [ops.zeros((2, 1))]
    )
    np.testing.assert_allclose(ops.convert_to_numpy(outputs)[0, :, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(ops.convert_to_numpy(last), 3.0)


@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.2], ids=["one-mask", "per-gate-masks"])
def test_rnn_dropout_masks_sliced_are_the_masks_the_cell_reads(recurrent_dropout):
    """Keras keeps a call's dropout masks on the cell under the names the slice replaces."""
    layer = keras.layers.LSTM(3, dropout=0.5, recurrent_dropout=recurrent_dropout, seed=0)
    x = np.ones((6, 2, 4), dtype="float32")
    layer(x)
    seen = {}

    def recording_inner_loop(sequences, initial_state, mask, training=False):
        cell = layer.cell
        full = (cell._dropout_mask, cell._recurrent_dropout_mask)
        with _keras_compat.rnn_dropout_masks_sliced(cell, 1, 3):
            seen["sliced"] = (cell.get_dropout_mask(None), cell.get_recurrent_dropout_mask(None))
        seen["restored"] = (cell._dropout_mask, cell._recurrent_dropout_mask) == full
        return type(layer).inner_loop(layer, sequences, initial_state, mask, training=training)

    object.__setattr__(layer, "inner_loop", recording_inner_loop)
    layer(x, training=True)
    dropout_mask, recurrent_mask = seen["sliced"]
    for mask in dropout_mask if isinstance(dropout_mask, list) else [dropout_mask]:
        assert tuple(mask.shape) == (2, 4)
    if recurrent_dropout:
        assert all(tuple(mask.shape) == (2, 3) for mask in recurrent_mask)
    else:
        assert recurrent_mask is None
    assert seen["restored"]


def test_print_msg_is_the_one_keras_callbacks_use(capsys):
    from keras.src.utils import io_utils

    assert "print_msg" in inspect.getsource(keras.callbacks.EarlyStopping)
    assert callable(io_utils.print_msg)
    _keras_compat.print_msg("hello from kreg")
    assert capsys.readouterr().out == "hello from kreg\n"


def test_initial_epoch_set_by_a_callback_is_where_fit_starts():
    import numpy as np

    class StartAtTwo(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            _keras_compat.set_initial_epoch(self.model, 2)

    seen = []
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    x = np.ones((4, 2), "float32")
    model.fit(x, x[:, :1], epochs=4, verbose=0, callbacks=[StartAtTwo(), record])
    assert seen == [2, 3]
    _keras_compat.set_initial_epoch(model, None)
    seen.clear()
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[record])
    assert seen == [0, 1]


def test_numpy_batches_reads_arrays_and_py_datasets_in_predicts_order():
    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return x[4 * index : 4 * index + 4], np.zeros(len(x[4 * index : 4 * index + 4]))

    from_arrays = list(_keras_compat.numpy_batches(x, batch_size=4))
    from_dataset = list(_keras_compat.numpy_batches(Batches(), steps=2))
    assert [len(b) for b in from_arrays] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(from_arrays), x)
    assert len(from_dataset) == 2 and all(isinstance(b, np.ndarray) for b in from_dataset)
    np.testing.assert_array_equal(np.concatenate(from_dataset), x[:8])


def test_declared_direction_is_what_keras_callbacks_infer_for_mode_auto():
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=[keras.metrics.CosineSimilarity(), "mae"])
    x = np.ones((4, 2), "float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    assert _keras_compat.declared_direction(model, "val_cosine_similarity") == "max"
    assert _keras_compat.declared_direction(model, "mae") == "min"
    assert _keras_compat.declared_direction(model, "val_loss") == "min"
    assert _keras_compat.declared_direction(model, "not_a_metric") is None


def test_trainable_values_in_fit_are_each_steps_new_weights():
    """Read after every batch, they change at every step, and the last ones are
    what the variables hold once `fit` writes its state back (JAX at the epoch's end)."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    seen, at_end = [], []
    watcher = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(
            [ops.convert_to_numpy(v).copy() for v in _keras_compat.trainable_values_in_fit(model)]
        ),
        on_epoch_end=lambda epoch, logs: at_end.append(
            [ops.convert_to_numpy(v).copy() for v in model.trainable_variables]
        ),
    )
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    model.fit(x, np.ones((12, 2)), batch_size=4, epochs=1, verbose=0, callbacks=[watcher])
    assert len(seen) == 3
    assert not np.array_equal(seen[0][0], seen[1][0]) and not np.array_equal(seen[1][0], seen[2][0])
    for last, stored in zip(seen[-1], at_end[0]):
        np.testing.assert_array_equal(last, stored)


@keras.saving.register_keras_serializable(package="kreg_test_compat")
class _Vocabulary(keras.layers.Layer):
    """A layer with an asset file, as Keras's lookup layers write theirs."""

    def __init__(self, words=("a", "b"), **kwargs):
        super().__init__(**kwargs)
        self.words = list(words)

    def call(self, inputs):
        return inputs

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, "vocabulary.txt"), "w") as file:
            file.write("\n".join(self.words))

    def load_assets(self, dir_path):
        with open(os.path.join(dir_path, "vocabulary.txt")) as file:
            self.words = file.read().split("\n")

    def get_config(self):
        return {**super().get_config(), "words": self.words}


def _snapshot_model():
    inputs = keras.Input((4,))
    x = _Vocabulary(["x", "y", "z"])(inputs)
    x = keras.layers.Dense(3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.3, seed=1)(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((8, 4)), rng.standard_normal((8, 1)), epochs=1, verbose=0)
    return model


def _h5_tree(source):
    import h5py

    tree = {}
    with h5py.File(source, "r") as file:
        file.visititems(
            lambda name, item: tree.__setitem__(
                name,
                (np.array(item) if isinstance(item, h5py.Dataset) else None, dict(item.attrs)),
            )
        )
    return tree


def _assert_same_h5(ours, theirs):
    ours, theirs = _h5_tree(ours), _h5_tree(theirs)
    assert sorted(ours) == sorted(theirs)
    for name, (value, attrs) in theirs.items():
        assert ours[name][1] == attrs, name
        if value is not None:
            np.testing.assert_array_equal(ours[name][0], value, err_msg=name)


def test_a_model_snapshot_writes_what_model_save_writes(tmp_path):
    import io
    import zipfile

    model = _snapshot_model()
    snapshot = _keras_compat.model_snapshot(model)
    keras_path, ours_path = tmp_path / "keras.keras", tmp_path / "ours.keras"
    model.save(keras_path)
    before = [np.array(w) for w in model.get_weights()]
    # Training goes on after the snapshot: the file holds the weights of then.
    model.set_weights([w + 1.0 for w in model.get_weights()])
    model.layers[1].words.append("changed")
    _keras_compat.write_model_snapshot(snapshot, str(ours_path))
    assert snapshot.assets is None, "the assets' temporary folder is deleted"
    with zipfile.ZipFile(ours_path) as ours, zipfile.ZipFile(keras_path) as theirs:
        assert ours.namelist() == theirs.namelist()
        assert any(n.endswith("/vocabulary.txt") for n in ours.namelist())
        for name in theirs.namelist():
            if name.endswith(".h5"):
                _assert_same_h5(io.BytesIO(ours.read(name)), io.BytesIO(theirs.read(name)))
            elif name != "metadata.json":  # the date differs
                assert ours.read(name) == theirs.read(name), name
    loaded = keras.saving.load_model(ours_path)
    for got, expected in zip(loaded.get_weights(), before):
        np.testing.assert_array_equal(got, expected)
    assert loaded.layers[1].words == ["x", "y", "z"]
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)


@pytest.mark.parametrize("weights_only", [False, True])
def test_a_snapshot_from_the_layout_of_an_earlier_one_writes_what_keras_writes(
    tmp_path, weights_only
):
    import io
    import zipfile

    model = _snapshot_model()
    first = _keras_compat.model_snapshot(model, weights_only=weights_only)
    first.discard()
    # Keras's walk found every object it saved from: the next save skips it.
    assert first.layout is not None and len(first.layout.weights) == len(first.weights)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    model.optimizer.iterations.assign(7)
    again = _keras_compat.model_snapshot(model, weights_only=weights_only, layout=first.layout)
    suffix = ".weights.h5" if weights_only else ".keras"
    ours, theirs = tmp_path / f"ours{suffix}", tmp_path / f"keras{suffix}"
    _keras_compat.write_model_snapshot(again, str(ours))
    if weights_only:
        model.save_weights(theirs)
        _assert_same_h5(ours, theirs)
        return
    model.save(theirs)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        assert a.namelist() == b.namelist()
        _assert_same_h5(
            io.BytesIO(a.read("model.weights.h5")), io.BytesIO(b.read("model.weights.h5"))
        )
        assert any(n.endswith("/vocabulary.txt") for n in a.namelist())


def test_a_weights_snapshot_writes_what_save_weights_writes(tmp_path):
    model = _snapshot_model()
    snapshot = _keras_compat.model_snapshot(model, weights_only=True)
    model.save_weights(tmp_path / "keras.weights.h5")
    model.set_weights([w * 0.0 for w in model.get_weights()])
    _keras_compat.write_model_snapshot(snapshot, str(tmp_path / "ours.weights.h5"))
    _assert_same_h5(tmp_path / "ours.weights.h5", tmp_path / "keras.weights.h5")


@pytest.mark.parametrize("weights_only", [False, True])
def test_a_snapshot_hands_over_its_copy_of_every_weight_and_optimizer_variable(weights_only):
    model = _snapshot_model()
    first = _keras_compat.model_snapshot(model, weights_only=weights_only)
    first.discard()
    # The walk and the replay of its layout pair the same variables.
    for walked in (True, False):
        snapshot = (
            first if walked else _keras_compat.model_snapshot(model, weights_only, first.layout)
        )
        snapshot.discard()
        variables = model.weights + model.optimizer.variables
        assert {id(v) for v in variables} <= set(snapshot.copies)
        before = {id(v): np.array(v.numpy()) for v in variables}
        model.set_weights([w + 1.0 for w in model.get_weights()])
        model.optimizer.iterations.assign_add(3)
        for variable in variables:  # copies of then, not views of the variables
            copied_from, copy = snapshot.copies[id(variable)]
            assert copied_from is variable
            np.testing.assert_array_equal(copy, before[id(variable)])


def test_an_optimizer_that_saves_its_own_way_is_not_paired():
    class Reordered(keras.optimizers.Adam):
        def save_own_variables(self, store):
            for i, variable in enumerate(reversed(self.variables)):
                store[str(i)] = variable.numpy()

    model = _snapshot_model()
    model.compile(Reordered(1e-2), "mse")
    model.optimizer.build(model.trainable_variables)
    snapshot = _keras_compat.model_snapshot(model, weights_only=True)
    assert not {id(v) for v in model.optimizer.variables} & set(snapshot.copies)
    assert {id(v) for v in model.weights} <= set(snapshot.copies)


def test_a_copy_is_used_only_for_the_very_variable_it_was_taken_from():
    # Copies are keyed by id(): another object that happens to get the same id
    # (a temporary variable gone, a new one in its place) takes a fresh copy.
    from kreg.callbacks.training_state import host_arrays

    kept = keras.Variable(np.zeros(3, "float32"))
    other = keras.Variable(np.ones(3, "float32"))
    stale = np.full(3, 7.0, "float32")
    copies = {id(kept): (kept, stale), id(other): (kept, stale)}  # `other` takes kept's id
    taken_kept, taken_other = host_arrays([kept, other], copies)
    assert taken_kept is stale
    np.testing.assert_array_equal(taken_other, np.ones(3))

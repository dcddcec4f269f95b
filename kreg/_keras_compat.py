"""The only module in kreg that touches Keras internals.

Each name here is something kreg cannot do through the public API of Keras 3.15.
`tests/test_keras_compat.py` checks every one of them, so a Keras upgrade that
moves or changes one fails that test loudly instead of silently turning a kreg
regularizer into a no-op.
"""

import contextlib
import sys
import zipfile

import keras
import numpy as np
from keras.src import backend as _backend
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
from keras.src.ops.nn import Sigmoid as _Sigmoid
from keras.src.ops.nn import Softmax as _Softmax
from keras.src.optimizers.base_optimizer import BaseOptimizer as _BaseOptimizer
from keras.src.saving import saving_lib as _saving_lib

# `keras.layers.RNN` draws a cell's dropout masks once per sequence, before its
# time loop, and clears them afterwards, only for cells that inherit this mixin
# (`RNN._maybe_config_dropout_masks`). `ConsistentDropoutCell` inherits it so that
# any custom cell gets the same per-sequence masks under a plain `keras.layers.RNN`.
__all__ = [
    "DropoutRNNCell",
    "PREDICT_ERROR_WITHOUT_BATCHES",
    "PROBABILITY_OPERATIONS",
    "all_sublayers",
    "call_replaced",
    "declared_direction",
    "functional_nodes",
    "fused_rnn_arguments_ok",
    "fused_rnn_kernels",
    "is_functional",
    "lambda_layer_copy",
    "model_snapshot",
    "node_arguments",
    "numpy_batches",
    "node_index",
    "node_is_input",
    "node_operation",
    "propagated_mask",
    "recurrent_kernel_replaced",
    "rnn_dropout_masks_sliced",
    "tensor_history",
    "step_loop",
    "trainable_values_in_fit",
    "write_model_snapshot",
]

# What `Model.predict` raises when its data runs out before the first batch:
# Keras 3.15's predict loop (`keras/src/backend/tensorflow/trainer.py`, and the
# jax and torch trainers alike) returns `batch_outputs`, which only the first
# batch assigns, so an empty iterator ends in this error rather than a clear one.
# `adapt_batchnorm` turns it into its own "no batch" error.
PREDICT_ERROR_WITHOUT_BATCHES = UnboundLocalError

# The operations `keras.ops.softmax` and `keras.ops.sigmoid` (and the
# `keras.activations` functions that call them) leave in a functional model's
# graph when called on a symbolic tensor (keras/src/ops/nn.py): a model ending in
# one outputs probabilities, which only these private classes tell.
PROBABILITY_OPERATIONS = (_Softmax, _Sigmoid)


def fused_rnn_kernels():
    """Returns the module whose `lstm` / `gru` functions are the fused kernels.

    `LSTM.inner_loop` and `GRU.inner_loop` call `backend.lstm` / `backend.gru`
    (cuDNN on TensorFlow and JAX GPUs, cuDNN or a native loop on PyTorch) and fall
    back to the generic step-by-step loop when those raise `NotImplementedError`.
    Tests patch these functions to check that weight dropout keeps the fused path.
    """
    return _backend


def step_loop(step_function, inputs, initial_states, **kwargs):
    """Keras's generic recurrent loop, `backend.rnn`, the one `RNN.inner_loop` runs.

    It handles masking (a masked step keeps the previous states), `go_backwards`,
    `unroll` and returning all outputs the same way on every backend (a
    `tf.while_loop`, `jax.lax.scan`, a Python loop on torch). A layer that needs
    its own step function (zoneout mixes old and new states after the cell) calls
    it with the same arguments as `keras.layers.RNN.inner_loop`.
    """
    return _backend.rnn(step_function, inputs, initial_states, **kwargs)


@contextlib.contextmanager
def recurrent_kernel_replaced(cell, kernel):
    """Makes `cell.recurrent_kernel` read as `kernel` for the duration of the block.

    `LSTM`/`GRU.inner_loop` read `self.cell.recurrent_kernel` when they hand the
    weights to the fused kernel, and the cell's `call` reads the same attribute at
    every step of the generic loop. Replacing the attribute for one `inner_loop`
    therefore gives both paths the same (masked) kernel, with no copy of either.
    This is the same pattern as Keras's own dropout masks, which live on the cell
    for the length of one call. `object.__setattr__` bypasses Keras's attribute
    tracking: the tensor is not a weight and must not be tracked as one.
    """
    variable = cell.recurrent_kernel
    object.__setattr__(cell, "recurrent_kernel", kernel)
    try:
        yield
    finally:
        object.__setattr__(cell, "recurrent_kernel", variable)


@contextlib.contextmanager
def rnn_dropout_masks_sliced(cell, start, stop):
    """Makes the cell's cached `dropout`/`recurrent_dropout` masks cover samples `start:stop`.

    `RNN.call` draws the masks of a `DropoutRNNCell` for the whole batch before
    `inner_loop` (`RNN._maybe_config_dropout_masks`, keras/src/layers/rnn/rnn.py)
    and keeps them on the cell as `_dropout_mask` / `_recurrent_dropout_mask`
    (keras/src/layers/rnn/dropout_rnn_cell.py), which `LSTM/GRU.inner_loop` and
    the cell's `call` read: one tensor, or a list of one per gate where the cell
    sets `dropout_mask_count` (`implementation=1`). A layer that runs the loop on
    a slice of the batch (weight drop's `mask_groups`) must hand it the same
    slice of those masks.
    """
    names = ("_dropout_mask", "_recurrent_dropout_mask")
    saved = {name: getattr(cell, name, None) for name in names}
    for name, full in saved.items():
        if full is not None:
            sliced = (
                [mask[start:stop] for mask in full]
                if isinstance(full, (list, tuple))
                else full[start:stop]
            )
            object.__setattr__(cell, name, sliced)
    try:
        yield
    finally:
        for name, full in saved.items():
            if full is not None:
                object.__setattr__(cell, name, full)


def is_functional(model):
    """Whether `model` is a graph (functional) model whose layer graph can be read.

    `keras.Model(inputs, outputs)` returns the private `Functional` class; a
    subclassed model does not inherit it. `Sequential` is checked separately.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def lambda_layer_copy(layer):
    """A new `keras.layers.Lambda` that calls the same Python objects as `layer`.

    A Lambda's config holds a Python lambda as bytecode, which `Lambda.from_config`
    refuses in safe mode, and which, once loaded, looks its names up in a Keras
    module's globals rather than the lambda's own (`func_load` in
    keras/src/utils/python_utils.py). The output shape, when given, is held only
    in the private `_output_shape` (keras/src/layers/core/lambda_layer.py).
    """
    import keras

    config = {key: layer.get_config()[key] for key in ("name", "trainable", "dtype")}
    return keras.layers.Lambda(
        layer.function,
        output_shape=layer._output_shape,
        mask=layer.mask,
        arguments=layer.arguments,
        **config,
    )


def all_sublayers(layer):
    """Every layer inside `layer`, recursively (nested models, composite layers).

    `model.layers` lists only the top level; Keras's own recursive walk is the
    private `_flatten_layers`.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


@contextlib.contextmanager
def call_replaced(layer, call):
    """Makes `layer(...)` run `call` instead of `layer.call` for the block.

    `Layer.__call__` (through `Operation.__call__`) looks up `self.call` on every
    call, so an instance attribute shadows the method, inside compiled functions
    traced in the block too. The layer's weights, config and call signature are
    untouched. `object.__setattr__` keeps Keras's attribute tracking out of it.
    """
    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        object.__delattr__(layer, "call")


# A functional model's graph. Keras keeps it as `Node` objects (keras/src/ops/node.py):
# one per call of an operation, listed on the operation (`_inbound_nodes`) and, for
# the nodes that belong to a model, by depth on the model (`Function._nodes_by_depth`,
# keras/src/ops/function.py); each symbolic tensor names the node that made it
# (`_keras_history`). `model.get_config()` is no substitute: keras-hub models
# serialize their constructor arguments, not their layers.


def functional_nodes(model):
    """The nodes of a functional `model`, each after the nodes it consumes."""
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def node_operation(node):
    """The operation (layer, nested model or op) the node is a call of."""
    return node.operation


def node_index(node):
    """Which call of its operation the node is (the index `_keras_history` uses)."""
    return next(i for i, n in enumerate(node.operation._inbound_nodes) if n is node)


def node_arguments(node):
    """`(args, kwargs)` the operation was called with, symbolic tensors included."""
    return node.arguments.args, node.arguments.kwargs


def node_is_input(node):
    """Whether the node is an `InputLayer`'s, a model input."""
    return node.is_input


def tensor_history(tensor):
    """`(operation, node index, output index)` of the call that made `tensor`."""
    history = tensor._keras_history
    return history.operation, history.node_index, history.tensor_index


def producer_inputs(tensor):
    """The symbolic tensors the call that made `tensor` consumed (`[]` for a
    model input or a tensor without history)."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return []
    node = history.operation._inbound_nodes[history.node_index]
    return [
        x
        for x in keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
        if isinstance(x, keras.KerasTensor)
    ]


def fused_rnn_arguments_ok(layer):
    """Whether an `LSTM`/`GRU`'s arguments allow Keras's fused (cuDNN) kernel,
    whatever its dropout and whether a GPU is present.

    The conditions of `cudnn_ok` in keras/src/backend/tensorflow/rnn.py (and
    the JAX and PyTorch equivalents), which are private and also ask for a GPU,
    plus the layer's own `use_cudnn` switch (keras/src/layers/rnn/lstm.py).
    """
    import keras

    serialize = keras.activations.serialize
    return (
        layer.use_cudnn in ("auto", True)
        and serialize(layer.cell.activation) == "tanh"
        and serialize(layer.cell.recurrent_activation) == "sigmoid"
        and not layer.unroll
        and layer.cell.use_bias
        and (not isinstance(layer, keras.layers.GRU) or layer.cell.reset_after)
    )


def propagated_mask(tensor):
    """The mask Keras attached to `tensor` (`Layer.compute_mask` of the layer that
    made it), which `Layer.__call__` passes on as `mask=` by itself; or `None`."""
    return getattr(tensor, "_keras_mask", None)


def print_msg(message, line_break=True):
    """Prints where Keras's own callbacks print (stdout, or absl logging).

    `keras.src.utils.io_utils.print_msg` follows
    `keras.config.disable_interactive_logging()`, which sends Keras's messages to
    absl logging instead of stdout; a plain `print` would ignore that switch.
    """
    from keras.src.utils import io_utils

    io_utils.print_msg(message, line_break=line_break)


def trainable_values_in_fit(model):
    """The current values of `model.trainable_variables`, also between two steps of `fit`.

    JAX's `fit` keeps the training state outside the model's variables between
    steps and writes it back only at the end of an epoch (`JAXTrainer.fit` sets
    `model._jax_state` after each step, `jax_state_sync` copies it back,
    keras/src/backend/jax/trainer.py); a callback reading the variables in
    `on_train_batch_end` would see the epoch's first weights. The other backends
    update the variables in place.
    """
    state = getattr(model, "_jax_state", None)
    if state and not getattr(model, "_jax_state_synced", True) and state.get("trainable_variables"):
        return list(state["trainable_variables"])
    return [variable.value for variable in model.trainable_variables]


def set_initial_epoch(model, epoch):
    """Makes the next `fit` of `model` start at `epoch` (0-based), or reset with `None`.

    `fit` reads the private `model._initial_epoch` after the callbacks'
    `on_train_begin` and before its first epoch, in preference to its own
    `initial_epoch` argument; `keras.callbacks.BackupAndRestore` sets it to
    resume (`keras/src/callbacks/backup_and_restore.py`). Keras never resets it,
    so a resumed model keeps starting there until it is set back to `None`.
    """
    object.__setattr__(model, "_initial_epoch", epoch)


def numpy_batches(data, batch_size=None, steps=None, targets=False):
    """The input batches of `data` as NumPy structures, in order, as `predict` reads them.

    Arrays, `tf.data.Dataset`, `keras.utils.PyDataset` and generators, through
    the adapter `fit` and `predict` use (`keras/src/trainers/data_adapters/`):
    stepping through data one batch at a time in Python (EATA's per-batch
    update) has no public equivalent. Targets and sample weights are dropped,
    unless `targets`: then each batch is `(x, y, sample_weight)`, and a tuple
    `data` is read as `(x, y[, sample_weight])`, as fit's `validation_data`.
    """
    import keras
    from keras.src.trainers.data_adapters import get_data_adapter

    x, y, sample_weight = data, None, None
    if targets and isinstance(data, tuple):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    adapter = get_data_adapter(
        x, y, sample_weight, batch_size=batch_size or 32, steps_per_epoch=steps, shuffle=False
    )
    for index, batch in enumerate(adapter.get_numpy_iterator()):
        if steps is not None and index >= steps:
            return
        unpacked = keras.utils.unpack_x_y_sample_weight(batch)
        yield unpacked if targets else unpacked[0]


def declared_direction(model, monitor):
    """`"max"` or `"min"` for `monitor` as Keras's own callbacks infer `mode="auto"`;
    `None` where Keras cannot tell.

    `MonitorCallback._set_monitor_op` (keras/src/callbacks/monitor_callback.py)
    calls `loss` minimized and otherwise reads the direction (`_direction`, "up"
    or "down") that the compiled metric of that name declares, which no name
    list can know (`CosineSimilarity` is maximized). A multi-output model's
    per-output losses, which Keras's probe cannot tell, are minimized.
    """
    from keras import ops
    from keras.src.callbacks.monitor_callback import MonitorCallback

    probe = MonitorCallback(monitor=monitor, mode="auto")
    probe.set_model(model)
    try:
        probe._set_monitor_op()
    except ValueError:  # Keras's "isn't able to automatically determine"
        # A multi-output model logs one loss per output (`{output}_loss`), each a
        # `Mean` tracker of its compiled loss (`CompileLoss.build`,
        # keras/src/trainers/compile_utils.py) that Keras's probe never looks at:
        # a loss, minimized like `loss`.
        compile_loss = getattr(model, "_compile_loss", None)
        loss_names = {m.name for m in getattr(compile_loss, "metrics", None) or ()}
        return "min" if monitor.removeprefix("val_") in loss_names else None
    return "max" if probe.monitor_op is ops.greater else "min"


# A model's file as host arrays, written later (off the training thread).
#
# `model.save` and `model.save_weights` read the variables while they write the
# file, so a writer in another thread would read weights the next training steps
# are changing. Keras has no public way to split the two. What follows runs
# Keras's own traversal (`_save_state` in keras/src/saving/saving_lib.py, the one
# `save_model` and `save_weights_only` run) into a store that keeps host copies
# of what each object saves, and later replays them into Keras's own
# `H5IOStore`, in the same order, inside the same zip layout as
# `_save_model_to_fileobj`: the file has the entries, names and metadata of a
# `model.save` of the model at the time of the snapshot.


class _RecordingStore(_saving_lib.H5IOStore):
    """The weights store `_save_state` writes to, kept in memory as NumPy copies.

    `_save_state` accepts only Keras's own store classes, hence the subclass;
    none of `H5IOStore`'s file handling is used.
    """

    def __init__(self):  # no file: skips H5IOStore.__init__ on purpose
        self.mode = "w"
        self.entries = []  # [(inner_path, metadata, {key: array})], in save order
        self.owners = []  # the object that saved each entry (see `_caller_saveable`)
        # {id(variable): (variable, its copy)}, for the variables handed over as
        # such; the variable is kept so that its id cannot be reused meanwhile.
        self.copies = {}
        self._values = None

    def __bool__(self):
        return True

    def make(self, path, metadata=None):
        self.owners.append(_caller_saveable())
        self._values = {}
        self.entries.append((path, dict(metadata) if metadata else None, self._values))
        return self

    def __setitem__(self, key, value):
        # A copy: a backend may hand out a view of a buffer the next step reuses.
        self._values[key] = np.array(keras.ops.convert_to_numpy(value), copy=True)
        if isinstance(value, keras.Variable):  # a layer's (`Layer.save_own_variables`)
            self.copies[id(value)] = (value, self._values[key])

    def __getitem__(self, key):
        return self._values[key]

    def __len__(self):
        return len(self._values)

    def keys(self):
        return self._values.keys()

    def __contains__(self, key):
        return key in self._values

    def close(self):
        pass


class _AssetStore(_saving_lib.DiskIOStore):
    """Keras's asset store (a temporary folder each layer writes its asset files
    into), made at the first layer that has assets: most models have none, and
    `_save_state` asks only those layers (`save_assets`, as `StringLookup`'s)."""

    def __init__(self):  # the folder comes with the first `make`
        self.working_dir = None
        self.owners = []

    def make(self, path):
        self.owners.append((_caller_saveable(), path))
        if self.working_dir is None:
            super().__init__(_saving_lib._ASSETS_DIRNAME, mode="w")
        return super().make(path)

    def close(self):
        if self.working_dir is not None:
            super().close()
            self.working_dir = None


def _caller_saveable():
    """The object `_save_state` is saving when it calls a store's `make`.

    `_save_state(saveable, ...)` calls `saveable.save_own_variables(
    weights_store.make(inner_path, ...))` and `saveable.save_assets(
    assets_store.make(inner_path))`: its local `saveable` is the object that
    fills the entry. Knowing it, the next save of the same model skips Keras's
    walk over every attribute of every object (`_walk_saveable`, most of a
    small model's save time) and asks those objects again, in the same order.
    `None` where Keras no longer names it so: the next save walks again.
    """
    return sys._getframe(2).f_locals.get("saveable")


class SaveLayout:
    """The objects a model's file is saved from, in Keras's order, with the entry
    each fills: what `_save_state` found walking the model, kept for saving the
    same model again without the walk. Valid while the model's objects stay
    the same (one `fit`: `EarlyStoppingWithCheckpoint` takes a new one per `fit`).
    """

    def __init__(self, weights, assets):
        self.weights = weights  # [(saveable, inner_path, metadata)]
        self.assets = assets  # [(saveable, inner_path)]


def _layout(weights, assets):
    if any(owner is None for owner in weights.owners):
        return None
    if assets is not None and any(owner is None for owner, _ in assets.owners):
        return None
    return SaveLayout(
        [
            (owner, path, metadata)
            for owner, (path, metadata, _) in zip(weights.owners, weights.entries)
        ],
        [] if assets is None else list(assets.owners),
    )


class ModelSnapshot:
    """What `model.save` (or `save_weights`) would write now, held in memory.

    Made by `model_snapshot` on the thread that trains; `write_model_snapshot`
    writes it from any thread, without the model.
    """

    def __init__(
        self, weights, config_json=None, metadata_json=None, assets=None, layout=None, copies=None
    ):
        self.weights = weights
        # {id(variable): (variable, host copy)} of the variables the file holds, taken with
        # the snapshot: a backup of the same moment reuses them (`host_copy`)
        # instead of copying the same weights off the device again.
        self.copies = copies or {}
        self.layout = layout
        self.config_json = config_json
        self.metadata_json = metadata_json
        self.assets = assets

    @property
    def weights_only(self):
        return self.config_json is None

    def discard(self):
        """Deletes the temporary folder of the assets (after writing, or instead)."""
        if self.assets is not None:
            self.assets.close()
            self.assets = None


def model_snapshot(model, weights_only=False, layout=None):
    """A `ModelSnapshot` of `model`: its weights file's entries as host arrays and,
    for a whole model, its config and metadata JSON and its assets (written to a
    temporary folder now: a layer writes its own asset files).

    `layout`, the `SaveLayout` of an earlier snapshot of the same model
    (`snapshot.layout`), saves from the objects it lists instead of walking
    the model again.
    """
    weights = _RecordingStore()
    assets = None if weights_only else _AssetStore()
    owners = None
    try:
        if layout is None:
            _saving_lib._save_state(
                model,
                weights_store=weights,
                assets_store=assets,
                inner_path="",
                visited_saveables=set(),
            )
            layout = _layout(weights, assets)
            owners = weights.owners
        else:
            owners = [owner for owner, _, _ in layout.weights]
            for owner, path, metadata in layout.weights:
                owner.save_own_variables(weights.make(path, metadata=metadata))
            for owner, path in layout.assets if assets is not None else ():
                owner.save_assets(assets.make(path))
    except BaseException:
        if assets is not None:
            assets.close()
        raise
    copies = _copies(weights, owners)
    if weights_only:
        return ModelSnapshot(weights.entries, layout=layout, copies=copies)
    config_json, metadata_json = _saving_lib._serialize_model_as_json(model)
    return ModelSnapshot(weights.entries, config_json, metadata_json, assets, layout, copies)


def _copies(store, owners):
    """`{id(variable): (variable, copy)}` of what `store` recorded: a layer hands over its
    variables; an optimizer hands over `variable.numpy()` under the key `str(i)`
    for `self.variables[i]` (`save_own_variables` and `load_own_variables` in
    keras/src/optimizers/base_optimizer.py), paired back here; an optimizer
    that saves its own way is not paired (its variables are copied again)."""
    copies = dict(store.copies)
    for owner, (_, _, values) in zip(owners or (), store.entries):
        saves = getattr(type(owner), "save_own_variables", None)
        if saves is _BaseOptimizer.save_own_variables and len(values) == len(owner.variables):
            for i, variable in enumerate(owner.variables):
                if str(i) in values:
                    copies.setdefault(id(variable), (variable, values[str(i)]))
    return copies


def _replay(entries, store):
    for path, metadata, values in entries:
        store.make(path, metadata=metadata)
        for key, value in values.items():
            store[key] = value


def write_model_snapshot(snapshot, path):
    """Writes `snapshot` to `path`: a `.weights.h5` file as `save_weights` writes
    it, or a `.keras` file as `save` writes it. Deletes the snapshot's temporary
    assets folder, whether the write succeeds or not."""
    try:
        if snapshot.weights_only:
            store = _saving_lib.H5IOStore(path, mode="w")
            try:
                _replay(snapshot.weights, store)
            finally:
                store.close()
            return
        with open(path, "wb") as file, zipfile.ZipFile(file, "w") as archive:
            with archive.open(_saving_lib._METADATA_FILENAME, "w") as member:
                member.write(snapshot.metadata_json.encode())
            with archive.open(_saving_lib._CONFIG_FILENAME, "w") as member:
                member.write(snapshot.config_json.encode())
            store = _saving_lib.H5IOStore(_saving_lib._VARS_FNAME_H5, archive=archive, mode="w")
            try:
                _replay(snapshot.weights, store)
            except BaseException:
                store.archive = None  # as `_save_model_to_fileobj`: no half entry
                raise
            finally:
                store.close()
            if snapshot.assets is not None and snapshot.assets.working_dir is not None:
                _saving_lib._write_to_zip_recursively(
                    archive, snapshot.assets.working_dir, _saving_lib._ASSETS_DIRNAME
                )
            file.flush()
    finally:
        snapshot.discard()

"""The files of the run journal `EarlyStoppingWithCheckpoint` keeps beside its
checkpoint: their formats, how each is read and checked (`run_journal` writes them).

Two kinds of file:

- a backup per epoch (`.<name>.backup-<epoch>.npz`): a host copy of every
  variable a resumed run needs, the model's weights, the state of every seed
  generator (`Dropout`'s, kreg's random layers', any `keras.random.SeedGenerator`
  a layer holds: `model.variables` has them, `save_weights` and `.keras` files
  do not), the optimizer's variables (its `iterations` included) and, when a
  `WeightAveraging` takes part in the `fit`, its `get_state()` (the average
  and, while the model holds the average, the raw weights and statistics);
- the state file (`<name>.state.json`), the commit record: the run's settings
  and two generations, the latest epoch's and the one before it, each naming
  its backup, the best epoch's backup and the counters of early stopping.

The files a generation names are complete before the state that names them is
written, and older ones are deleted only after, so a process killed at any
moment leaves a state that matches files on disk. A backup that cannot be read
(overwritten, truncated by a full disk) falls back to the previous generation,
as Keras's `BackupAndRestore(double_checkpoint=True)` does. Reading the state
checks every field and every name it holds (plain file names inside the
checkpoint's folder only), so an unusable file is an error naming the file and
how to start fresh, never a half-restored run.
"""

import fnmatch
import json
import math
import numbers
import os
import zipfile

import keras
import numpy as np

FORMAT = "kreg.EarlyStoppingWithCheckpoint"
VERSION = 3
# The variables of a backup, in the order they are restored.
GROUPS = ("weights", "seeds", "optimizer", "backend_random") + (
    "averaging_meta",
    "averaging_values",
    "averaging_raw",
    "averaging_raw_statistics",
)


class StateFileError(ValueError):
    """The state file beside a checkpoint, or a backup it names, cannot be used to resume."""


class BackupUnreadable(Exception):
    """A backup file is missing or is not a backup (the previous one is tried)."""


def _fail(path, problem):
    raise StateFileError(
        f"Cannot resume from the state file {path!r}: {problem}. To start fresh, "
        "delete that file (and the `.backup-*` files beside it) or pass `resume=False`."
    )


def _is_int(value, minimum=0):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_finite_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_plain_name(value, prefix):
    """A file name of this run's folder: no folder part, no way out of it."""
    return (
        isinstance(value, str)
        and value.startswith(prefix)
        and os.path.basename(value) == value
        and "/" not in value
        and "\\" not in value
        and value not in (".", "..")
    )


def _generation_checks(backup_prefix, folder, kept_names):
    name = lambda v: v is None or _is_plain_name(v, backup_prefix)  # noqa: E731
    return {
        "best": lambda v: v is None or _is_finite_number(v),
        "best_epoch": _is_int,
        "wait": _is_int,
        "next_epoch": _is_int,
        "stop_reason": lambda v: isinstance(v, str),
        "stopped_epoch": _is_int,
        "backup": name,
        "best_backup": name,
        "kept": lambda v: (
            isinstance(v, list) and all(_is_kept_entry(entry, folder, kept_names) for entry in v)
        ),
    }


def _is_kept_entry(entry, folder, kept_names):
    # A kept checkpoint is named by formatting `filepath`, whose folder holds no
    # placeholder: it lies in that folder, and nowhere else, and its name is one
    # `filepath` formats to (a kept file is deleted once it drops out of the best:
    # never another file of the folder).
    return (
        isinstance(entry, dict)
        and _is_finite_number(entry.get("value"))
        and _is_int(entry.get("epoch"))
        and isinstance(entry.get("path"), str)
        and os.path.dirname(entry["path"]) == folder
        and _is_plain_name(os.path.basename(entry["path"]), "")
        and fnmatch.fnmatchcase(os.path.basename(entry["path"]), kept_names)
    )


def read_state(path, backup_prefix, folder, kept_names="*"):
    """The checked state in `path`, or `None` when there is no file.

    `backup_prefix` is how this run's backup names start, `folder` the folder
    part of its `filepath` and `kept_names` a glob of the checkpoint names
    `filepath` formats to: a name outside them is a `StateFileError`.
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            state = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        _fail(path, f"it is not readable JSON ({error})")
    if not isinstance(state, dict):
        _fail(path, f"expected a JSON object, found {type(state).__name__}")
    if state.get("format") != FORMAT or state.get("version") != VERSION:
        _fail(
            path,
            f"expected format {FORMAT!r} version {VERSION}, found format "
            f"{state.get('format')!r} version {state.get('version')!r}",
        )
    checks = {
        "monitor": lambda v: isinstance(v, str) and v != "",
        "mode": lambda v: v in ("auto", "min", "max"),
        "finished": lambda v: isinstance(v, bool),
        "previous": lambda v: v is None or isinstance(v, dict),
        **_generation_checks(backup_prefix, folder, kept_names),
    }
    _check_fields(path, state, checks)
    if state["previous"] is not None:
        _check_fields(
            path,
            state["previous"],
            _generation_checks(backup_prefix, folder, kept_names),
            "previous.",
        )
    return state


def _check_fields(path, record, checks, prefix=""):
    for key, check in checks.items():
        if key not in record:
            _fail(path, f"the field {prefix + key!r} is missing")
        if not check(record[key]):
            _fail(path, f"the field {prefix + key!r} has an unusable value {record[key]!r}")


def new_state(monitor, mode):
    return {
        "format": FORMAT,
        "version": VERSION,
        "monitor": monitor,
        "mode": mode,
        "finished": False,
        "previous": None,
        **new_generation(),
    }


def new_generation():
    return {
        "best": None,
        "best_epoch": 0,
        "wait": 0,
        "next_epoch": 0,
        "stop_reason": "RUNNING",
        "stopped_epoch": 0,
        "backup": None,
        "best_backup": None,
        "kept": [],
    }


def generation(state):
    """The fields of `state` that belong to its latest generation."""
    return {key: state[key] for key in new_generation()}


# Backups.


def _variables(model):
    """The variables a backup holds, by group, in a fixed order."""
    known = {id(v) for v in model.weights}
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    return {
        "weights": list(model.weights),
        # What `model.variables` has beyond the weights: the state of every seed
        # generator (`Layer.variables`, keras/src/layers/layer.py).
        "seeds": [v for v in model.variables if id(v) not in known],
        "optimizer": list(optimizer.variables) if optimizer is not None else [],
    }


def _backend_random_state():
    """The random state of the backend that no seed generator holds, as arrays.

    On PyTorch, a layer whose `SeedGenerator` has no seed (`Dropout()`'s
    default) draws its masks from torch's global generators
    (`dropout` in keras/src/backend/torch/random.py), not from the generator's
    state: the CPU one, and on a GPU each CUDA device's (saved only once CUDA
    is in use, so a CPU run never starts it). TensorFlow and JAX draw every
    mask from the generator's state.
    """
    if keras.backend.backend() != "torch":
        return []
    import torch

    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return [state.cpu().numpy().copy() for state in states]


def _set_backend_random_state(arrays):
    """Restores what `_backend_random_state` saved, on the backend that saved it:
    a TensorFlow or JAX backup holds none, and the CUDA generators are set only
    on a machine with as many devices as the one that saved them."""
    if not arrays or keras.backend.backend() != "torch":
        return
    import torch

    as_tensor = lambda array: torch.from_numpy(np.asarray(array, dtype=np.uint8))  # noqa: E731
    torch.random.set_rng_state(as_tensor(arrays[0]))
    cuda = arrays[1:]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([as_tensor(array) for array in cuda])


def host_arrays(values, copies=None):
    """`values` (variables or tensors of any backend) as NumPy arrays of their
    own: copies, so that training does not change them afterwards. `copies`,
    `{id(variable): (variable, array)}` taken at this same moment, are used as
    they are for those very variables."""
    copies = copies or {}
    return [_taken_copy(copies, value) for value in values]


def _taken_copy(copies, value):
    variable, array = copies.get(id(value), (None, None))
    if variable is value:
        return array
    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def host_copy(model, averaging=None, copies=None):
    """Every variable of the backup as NumPy arrays, copied off the device,
    and the state of `averaging` (the `WeightAveraging` of this fit, if any).

    `copies` (`ModelSnapshot.copies` of a snapshot taken at this same moment,
    with no training step between) are reused: on an epoch that saves the best
    model, its weights and optimizer state are copied off the device once.
    The arrays are only read afterwards, by the writer of each file.
    """
    arrays = {
        group: host_arrays(variables, copies) for group, variables in _variables(model).items()
    }
    arrays["backend_random"] = _backend_random_state()
    arrays.update(_averaging_arrays(averaging))
    return arrays


# The average of a `WeightAveraging` (kreg/callbacks/weight_averaging.py). At
# an epoch's end it may have swapped the average (and its re-estimated
# statistics) into the model, so the backup's "weights" are the average's and
# the raw ones live in its state; a resume must put them back, or training
# would go on from the average.


def fit_averaging(callback):
    """The `WeightAveraging` taking part in `callback`'s `fit`, or `None`.

    It marks the model in its `on_train_begin`; callbacks of one `fit` share
    its `params` dict (a mark left by an earlier fit an error stopped is not
    this fit's). Placed after `callback` in the list, it is not found at
    `callback`'s `on_train_begin`.
    """
    marker = getattr(callback.model, "_kreg_weight_averaging", None)
    averaging = marker() if marker is not None else None
    if averaging is None or not averaging._in_fit or averaging.params is not callback.params:
        return None
    return averaging


def _averaging_arrays(averaging):
    if averaging is None:
        return {group: [] for group in GROUPS if group.startswith("averaging_")}
    state = averaging.get_state()
    rate = state.get("swa_start_rate")
    return {
        # The method last: backups written before it was kept have two entries.
        "averaging_meta": [
            np.array(state["count"], dtype="int64"),
            np.array(np.nan if rate is None else rate, dtype="float64"),
            np.array(averaging.method),
        ],
        "averaging_values": list(state["values"] or []),
        "averaging_raw": list(state["raw"] or []),
        "averaging_raw_statistics": list(state["raw_statistics"] or []),
    }


def check_averaging_fits(model, averaging, arrays, path):
    """Raises a `StateFileError` where the backup's average cannot continue in
    `averaging` (the `fit_averaging` of the resuming fit)."""
    if not arrays["averaging_meta"]:
        return  # a backup without an average: a new average begins
    if averaging is None:
        raise StateFileError(
            f"Cannot resume from the backup {path!r}: it holds the state of a WeightAveraging, "
            "and this fit has none before the EarlyStoppingWithCheckpoint in its callbacks "
            "(training would go on from the averaged weights). Pass the same WeightAveraging, "
            "before it in the list, or pass `resume=False` to start fresh."
        )
    meta = arrays["averaging_meta"]
    if len(meta) > 2 and str(meta[2]) != averaging.method:
        raise StateFileError(
            f"Cannot resume from the backup {path!r}: it holds the average of a WeightAveraging "
            f"with method={str(meta[2])!r}, and this fit's has method={averaging.method!r} (the "
            "average of one method cannot be continued by the other). Pass "
            f"WeightAveraging(method={str(meta[2])!r}, ...), or pass `resume=False` to start fresh."
        )
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    for group in ("averaging_values", "averaging_raw"):
        saved = [tuple(a.shape) for a in arrays[group]]
        if saved and saved != shapes:
            raise StateFileError(
                f"Cannot resume from the backup {path!r}: its WeightAveraging state holds "
                f"{len(saved)} weights of shapes {short_shapes(saved)}, this model has "
                f"{len(shapes)} trainable weights of shapes {short_shapes(shapes)}."
            )


def restore_averaging(averaging, arrays):
    """Gives `averaging` the state a backup holds (after `restore_backup`)."""
    if averaging is None or not arrays["averaging_meta"]:
        return
    count, rate = arrays["averaging_meta"][:2]
    averaging._restore_in_fit(
        {
            "count": int(count),
            "swa_start_rate": None if np.isnan(rate) else float(rate),
            "values": arrays["averaging_values"] or None,
            "raw": arrays["averaging_raw"] or None,
            "raw_statistics": arrays["averaging_raw_statistics"] or None,
        }
    )


def write_backup(path, arrays):
    """Writes `host_copy(model)`'s arrays to `path` (an `.npz` file)."""
    with open(path, "wb") as file:
        np.savez(
            file,
            **{
                f"{group}_{i:06d}": _storable(a)
                for group in GROUPS
                for i, a in enumerate(arrays[group])
            },
        )
        file.flush()


def _storable(array):
    """`array`, or as float32 if its dtype is not NumPy's own (bfloat16, the
    float8 types of `ml_dtypes`: kind "V"), which `.npz` keeps as raw bytes that
    no variable takes back; float32 holds each of their values exactly."""
    return array.astype("float32") if array.dtype.kind == "V" else array


def read_backup(path):
    """The arrays of the backup `path`; `BackupUnreadable` if it cannot be one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {group: [] for group in GROUPS}
            for key in sorted(archive.files):
                group, _, index = key.rpartition("_")
                if group not in arrays or not index.isdigit() or int(index) != len(arrays[group]):
                    raise ValueError(f"unexpected entry {key!r}")
                arrays[group].append(archive[key])
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise BackupUnreadable(
            f"{path!r} is not a readable backup ({type(error).__name__}: {error})"
        ) from None
    return arrays


def check_backup_fits(model, arrays, path):
    """Raises a one-line `StateFileError` where the backup is not of this model."""
    for group, variables in _variables(model).items():
        saved = [tuple(a.shape) for a in arrays[group]]
        ours = [tuple(v.shape) for v in variables]
        if saved != ours:
            raise StateFileError(
                f"Cannot resume from the backup {path!r}: it holds {len(saved)} {group} "
                f"variables of shapes {short_shapes(saved)}, this model has {len(ours)} of shapes "
                f"{short_shapes(ours)} (the architecture changed). To start fresh, pass "
                "`resume=False` or delete the state file and the backups beside it."
            )


def short_shapes(shapes, limit=6):
    """`shapes` in a message: the first `limit`, then an ellipsis."""
    text = ", ".join(str(s) for s in shapes[:limit])
    return f"[{text}{', ...' if len(shapes) > limit else ''}]"


def restore_backup(model, arrays):
    """Assigns the arrays of a checked backup to the model and its optimizer."""
    for group, variables in _variables(model).items():
        for variable, array in zip(variables, arrays[group]):
            variable.assign(array)
    _set_backend_random_state(arrays["backend_random"])

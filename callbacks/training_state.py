"""The state file `EarlyStoppingWithCheckpoint` keeps beside its checkpoint.

One JSON object, written atomically after every epoch, is the commit record of
a run: the files it names (the backup to resume from, the best epoch's backup,
the kept checkpoints) are complete before it is written, and older ones are
deleted only after. A process killed at any moment therefore leaves a state
that matches files on disk. Reading checks every field, so a file that cannot be
used is an error naming the file and how to start fresh, never a half-restored run.
"""

import json
import math
import numbers
import os

FORMAT = "kreg.EarlyStoppingWithCheckpoint"
VERSION = 2


class StateFileError(ValueError):
    """The state file beside a checkpoint cannot be used to resume."""


def _fail(path, problem):
    raise StateFileError(
        f"Cannot resume from the state file {path!r}: {problem}. To start fresh, "
        "delete that file (and the `.backup-*.weights.h5` files beside it) or pass "
        "`resume=False`."
    )


def _is_int(value, minimum=0):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_finite_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def read_state(path):
    """The checked state in `path`, or `None` when there is no file."""
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
        "best": lambda v: v is None or _is_finite_number(v),
        "best_epoch": _is_int,
        "wait": _is_int,
        "next_epoch": _is_int,
        "finished": lambda v: isinstance(v, bool),
        "stop_reason": lambda v: isinstance(v, str),
        "stopped_epoch": _is_int,
        "backup": lambda v: v is None or isinstance(v, str),
        "best_backup": lambda v: v is None or isinstance(v, str),
        "kept": lambda v: isinstance(v, list) and all(_is_kept_entry(entry) for entry in v),
    }
    for key, check in checks.items():
        if key not in state:
            _fail(path, f"the field {key!r} is missing")
        if not check(state[key]):
            _fail(path, f"the field {key!r} has an unusable value {state[key]!r}")
    if not state["finished"]:
        folder = os.path.dirname(os.path.abspath(path))
        for key in ("backup", "best_backup"):
            name = state[key]
            if name is not None and not os.path.exists(os.path.join(folder, name)):
                _fail(path, f"the file it names as {key!r}, {name!r}, is missing")
    return state


def _is_kept_entry(entry):
    return (
        isinstance(entry, dict)
        and _is_finite_number(entry.get("value"))
        and _is_int(entry.get("epoch"))
        and isinstance(entry.get("path"), str)
    )


def new_state(monitor):
    return {
        "format": FORMAT,
        "version": VERSION,
        "monitor": monitor,
        "best": None,
        "best_epoch": 0,
        "wait": 0,
        "next_epoch": 0,
        "finished": False,
        "stop_reason": "RUNNING",
        "stopped_epoch": 0,
        "backup": None,
        "best_backup": None,
        "kept": [],
    }

"""Checking and formatting `EarlyStoppingWithCheckpoint`'s `filepath`.

Placeholders follow `keras.callbacks.ModelCheckpoint`: `filepath.format(epoch=
epoch + 1, **logs)` (`keras/src/callbacks/model_checkpoint.py`,
`_get_file_path`), so `"best-{epoch:02d}-{val_loss:.4f}.keras"` names the same
file either callback would write.
"""

import glob
import os
import string

import numpy as np

from kreg.callbacks.monitoring import monitored_scalar


def _fail(filepath, problem):
    raise ValueError(
        f"Invalid value received for argument `filepath`: {problem}. Received: "
        f"filepath={filepath!r}"
    )


def placeholders(filepath):
    """The field names of `filepath`'s `{...}` placeholders."""
    try:
        return {
            field.split(".")[0].split("[")[0]
            for _, field, _, _ in string.Formatter().parse(filepath)
            if field is not None
        }
    except ValueError as error:  # an unmatched brace
        _fail(filepath, f"it is not a valid format string ({error})")


def check_filepath(filepath, save_weights_only, keep_best):
    """Returns `filepath` as a string if it can name the checkpoint(s); raises otherwise."""
    if isinstance(filepath, bytes) or not isinstance(filepath, (str, os.PathLike)):
        _fail(
            filepath,
            f"expected a path (str or os.PathLike) to a file, got {type(filepath).__name__}",
        )
    filepath = os.fspath(filepath)
    if isinstance(filepath, bytes):
        _fail(filepath, "expected a text path, got bytes")
    if filepath == "" or filepath.endswith(("/", os.sep)) or os.path.isdir(filepath):
        _fail(
            filepath, "it is a folder; name the checkpoint file inside it, e.g. 'folder/best.keras'"
        )
    extension = ".weights.h5" if save_weights_only else ".keras"
    if not filepath.endswith(extension):
        saved = "weights only" if save_weights_only else "the whole model"
        _fail(
            filepath,
            f"with save_weights_only={save_weights_only} it saves {saved}, so the path must end "
            f"in `{extension}`",
        )
    fields = placeholders(filepath)
    if placeholders(os.path.dirname(filepath)):
        _fail(filepath, "placeholders may name the file, not its folder")
    if fields and keep_best is None:
        _fail(
            filepath,
            f"it has the placeholder(s) {sorted(fields)}, which name one file per epoch; pass "
            "`keep_best=k` to keep the k best of them, or use a fixed name",
        )
    if keep_best is not None and keep_best > 1 and not fields:
        _fail(
            filepath,
            f"keep_best={keep_best} keeps several files, so the name needs a placeholder such as "
            f"{{epoch}}",
        )
    if fields:
        try:
            filepath.format(epoch=1, **{field: 0.5 for field in fields if field != "epoch"})
        except (ValueError, TypeError, KeyError, IndexError) as error:
            _fail(
                filepath,
                f"its placeholders cannot be formatted as ModelCheckpoint formats them ({error})",
            )
    return filepath


def format_filepath(filepath, epoch, logs):
    """The file name for `epoch` (0-based), as ModelCheckpoint would write it.

    A vector-valued metric (one value per class) enters the name as its mean.
    """
    values = {key: _number_or_value(value) for key, value in (logs or {}).items()}
    return filepath.format(epoch=epoch + 1, **values)


def _number_or_value(value):
    # A number (or a vector of them) is formatted as its monitored scalar; any
    # other logged value (a string some callback added) as it is.
    return monitored_scalar(value) if np.asarray(value).dtype.kind in "fiub" else value


def name_glob(filepath):
    """A glob of the file names `filepath` formats to (each placeholder a `*`)."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(os.path.basename(filepath)):
        parts.append(glob.escape(literal))
        if field is not None:
            parts.append("*")
    return "".join(parts)

"""Writing files so that the path on disk always holds a complete file.

A file is written under a temporary name in the same folder, flushed to disk,
then renamed over the target: `os.replace` is atomic on POSIX and Windows, so a
process killed at any moment leaves either the old complete file or the new
one, plus at worst a stray temporary file that `remove_stale_temporaries` clears.
"""

import glob
import json
import os
import tempfile

_TEMPORARY_MARK = ".tmp-"


def _suffix(path):
    """The extension Keras checks: `.weights.h5` counts as one."""
    name = os.path.basename(path)
    return ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1]


def _temporary_prefix(path):
    return f".{os.path.basename(path)}{_TEMPORARY_MARK}"


def _fsync_path(path, directory=False):
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open folders; the rename still stands
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path, write, sync_folder=True):
    """Calls `write(temporary_path)`, then moves the result to `path` atomically.

    The temporary file has the same extension as `path`, so writers that check
    extensions (`model.save`, `model.save_weights`) accept it. The file's data
    is flushed to disk before the rename. `sync_folder=False` leaves the folder's
    flush to a later write in the same folder: one folder flush makes every
    rename before it durable, so a writer of several files flushes once, after
    the last (the one that commits the others).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(
        prefix=_temporary_prefix(path), suffix=_suffix(path), dir=directory
    )
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the usual mode.
        os.chmod(temporary, 0o666 & ~_umask())
        write(temporary)
        _fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    if sync_folder:
        _fsync_path(directory, directory=True)


def write_json_atomically(path, data):
    def write(temporary):
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.flush()

    write_atomically(path, write)


def remove_stale_temporaries(path, name_pattern=None):
    """Deletes temporary files a killed writer of `path` left behind.

    `name_pattern`, a glob of file names in `path`'s folder, covers writers of
    several files at once (a checkpoint name with `{epoch}` placeholders).
    """
    directory = os.path.dirname(os.path.abspath(path))
    name = (
        glob.escape(_temporary_prefix(path))
        if name_pattern is None
        else f".{name_pattern}{_TEMPORARY_MARK}"
    )
    pattern = os.path.join(directory, name + "*")
    for stale in glob.glob(pattern):
        os.remove(stale)

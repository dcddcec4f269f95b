"""Optional dependencies: import one, or say which kreg extra installs it.

`pip install kreg` brings Keras and NumPy only (pyproject.toml). A feature that
needs more imports it through `require`, so a user who lacks it reads the one
command that fixes it instead of a bare `No module named 'keras_tuner'`.
"""

import contextlib
import importlib
import os


class MissingExtraError(ImportError):
    """A kreg feature needs a package that its extra installs, and it is missing."""


def require(module, extra, feature):
    """Imports `module` and returns it; raises `MissingExtraError` naming `extra`.

    Args:
        module: The module to import, e.g. `"keras_tuner"`.
        extra: The kreg extra that installs it (pyproject.toml's
            `optional-dependencies`; tests/test_extras.py checks the name).
        feature: What needs it, as the user calls it, e.g. `"kreg.tuning"`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        # Only the module itself (or its own package) missing means the extra is not
        # installed; a module that is there but fails inside is a different problem.
        missing = getattr(error, "name", None)
        if missing is None or module.split(".")[0] != missing.split(".")[0]:
            raise
        raise MissingExtraError(
            f"{feature} needs {missing!r}, which is not installed. "
            f'Install it with: pip install "kreg[{extra}]"',
            name=missing,
        ) from error


def import_keras():
    """Imports Keras; if its backend is TensorFlow and TensorFlow is missing (the
    core install brings none), says to install the extra or pick another backend.

    Keras 3.15 reads `KERAS_BACKEND` (else ~/.keras/keras.json, else
    `"tensorflow"`) and fails deep inside its own imports, with
    `No module named 'tensorflow'`, when that backend is not installed.
    """
    try:
        return importlib.import_module("keras")
    except ImportError as error:
        if getattr(error, "name", None) != "tensorflow":
            raise
        raise MissingExtraError(
            "Keras's backend is TensorFlow (KERAS_BACKEND, ~/.keras/keras.json, or "
            "Keras's default), and TensorFlow is not installed. Install it with: "
            'pip install "kreg[tensorflow]", or use an installed backend: '
            "KERAS_BACKEND=jax or KERAS_BACKEND=torch",
            name="tensorflow",
        ) from error


@contextlib.contextmanager
def stderr_silenced():
    """Sends the process's stderr (file descriptor 2, which C++ libraries write
    to) to the null device for the block.

    For the `kreg` command's start-up only: TensorFlow 2.21 logs its start-up
    notices (oneDNN, CUDA drivers) through absl before absl is initialized, and
    `TF_CPP_MIN_LOG_LEVEL` does not reach those. An exception raised in the block
    is reported after stderr is back.
    """
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)

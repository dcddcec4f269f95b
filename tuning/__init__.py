"""Search spaces over regularization for keras-tuner and Optuna, installed as `kreg.tuning`.

This folder sits at the top of the repository and installs as a subpackage of
kreg (see `package-dir` in pyproject.toml). keras-tuner (the `tuning` extra) is
imported only when a name that needs it (a hypermodel, `OverfittingPruning`) is
first used; Optuna (the `optuna` extra) only when an Optuna function is called.
"""

from typing import TYPE_CHECKING

import keras as _keras

from kreg._extras import require as _require
from kreg.tuning.losses import SparseCategoricalCrossentropy
from kreg.tuning.optuna_pruning import optuna_pruning_callback
from kreg.tuning.pruning import pruning_detector
from kreg.tuning.regularization_space import DEFAULT_DROPOUT_RANGES
from kreg.tuning.regularization_space import NORMS
from kreg.tuning.regularization_space import ROLES
from kreg.tuning.regularization_space import RegularizationSpace
from kreg.tuning.regularization_space import make_norm

# The names that subclass keras-tuner's classes, and the module each lives in:
# imported at first use, so `pip install "kreg[optuna]"` (no keras-tuner, no
# tensorboard) can use the space and the Optuna callback.
_KERAS_TUNER_NAMES = {
    "CNNHyperModel": "kreg.tuning.hypermodels",
    "RecurrentHyperModel": "kreg.tuning.hypermodels",
    "RegularizedHyperModel": "kreg.tuning.hypermodels",
    "OverfittingPruning": "kreg.tuning.pruning",
}


if TYPE_CHECKING:  # for readers and the API reference; loaded by `__getattr__`
    from kreg.tuning.hypermodels import CNNHyperModel
    from kreg.tuning.hypermodels import RecurrentHyperModel
    from kreg.tuning.hypermodels import RegularizedHyperModel
    from kreg.tuning.pruning import OverfittingPruning


def require_keras_tuner(feature):
    """Imports keras-tuner (and, on TensorFlow, tensorboard) or names the extra."""
    keras_tuner = _require("keras_tuner", extra="tuning", feature=feature)
    if _keras.backend.backend() == "tensorflow":
        # On this backend keras-tuner imports tensorboard in every trial
        # (`Tuner._configure_tensorboard_dir`, keras_tuner/src/engine/tuner.py), and
        # TensorFlow 2.21 no longer brings it: every trial would fail, one by one.
        _require("tensorboard", extra="tuning", feature=f"{feature} on the TensorFlow backend")
    return keras_tuner


def __getattr__(name):
    if name not in _KERAS_TUNER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_keras_tuner(f"kreg.tuning.{name}")
    import importlib

    value = getattr(importlib.import_module(_KERAS_TUNER_NAMES[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "CNNHyperModel",
    "DEFAULT_DROPOUT_RANGES",
    "NORMS",
    "OverfittingPruning",
    "ROLES",
    "RecurrentHyperModel",
    "RegularizationSpace",
    "RegularizedHyperModel",
    "SparseCategoricalCrossentropy",
    "make_norm",
    "optuna_pruning_callback",
    "pruning_detector",
]

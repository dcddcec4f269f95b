"""Search spaces over regularization for keras-tuner and Optuna, installed as `kreg.tuning`.

This folder sits at the top of the repository and installs as a subpackage of
kreg (see `package-dir` in pyproject.toml). keras-tuner is imported only here;
Optuna (the optional `optuna` extra) only when an Optuna function is called.
"""

import keras as _keras

from kreg._extras import require

# keras-tuner is an extra: without it, one line saying how to install it.
require("keras_tuner", extra="tuning", feature="kreg.tuning")

if _keras.backend.backend() == "tensorflow":
    # On this backend keras-tuner imports tensorboard in every trial
    # (`Tuner._configure_tensorboard_dir`, keras_tuner/src/engine/tuner.py), and
    # TensorFlow 2.21 no longer brings it: every trial would fail, one by one.
    require("tensorboard", extra="tuning", feature="kreg.tuning on the TensorFlow backend")

from kreg.tuning.hypermodels import CNNHyperModel
from kreg.tuning.hypermodels import RecurrentHyperModel
from kreg.tuning.hypermodels import RegularizedHyperModel
from kreg.tuning.losses import SparseCategoricalCrossentropy
from kreg.tuning.optuna_pruning import optuna_pruning_callback
from kreg.tuning.pruning import OverfittingPruning
from kreg.tuning.pruning import pruning_detector
from kreg.tuning.regularization_space import DEFAULT_DROPOUT_RANGES
from kreg.tuning.regularization_space import NORMS
from kreg.tuning.regularization_space import ROLES
from kreg.tuning.regularization_space import RegularizationSpace
from kreg.tuning.regularization_space import make_norm

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

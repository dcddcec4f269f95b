"""Callbacks for `model.fit`, installed as `kreg.callbacks`.

This folder sits at the top of the repository and installs as a subpackage of
kreg (see `package-dir` in pyproject.toml).
"""

from kreg.callbacks.checkpoint_writer import CheckpointWriteError
from kreg.callbacks.dropout_schedule import DropoutSchedule
from kreg.callbacks.early_stopping_with_checkpoint import EarlyStoppingWithCheckpoint
from kreg.callbacks.early_stopping_with_checkpoint import StopReason
from kreg.callbacks.overfitting_detector import OverfittingDetector
from kreg.callbacks.plotting import plot_training_curves
from kreg.callbacks.precise_batch_norm import PreciseBatchNorm
from kreg.callbacks.weight_averaging import WeightAveraging

__all__ = [
    "CheckpointWriteError",
    "DropoutSchedule",
    "EarlyStoppingWithCheckpoint",
    "OverfittingDetector",
    "PreciseBatchNorm",
    "StopReason",
    "WeightAveraging",
    "plot_training_curves",
]

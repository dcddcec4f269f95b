"""kreg: regularization and normalization for Keras 3.

Layers live in `kreg.layers` (and are re-exported here), callbacks for
`model.fit` in `kreg.callbacks`, and keras-tuner search spaces in `kreg.tuning`.
"""

import contextlib as _contextlib
import os as _os
import sys as _sys

# The `kreg` command imports this package (and so TensorFlow) before its `main`
# runs: its TensorFlow log level must be set here. Library users keep theirs.
_quiet_start = (
    _os.path.basename(_sys.argv[0] if _sys.argv else "") == "kreg"
    and "TF_CPP_MIN_LOG_LEVEL" not in _os.environ
)
if _quiet_start:
    _os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

from kreg._extras import import_keras as _import_keras
from kreg._extras import stderr_silenced as _stderr_silenced

# First: without TensorFlow on the TensorFlow backend, one line naming the extra.
with _stderr_silenced() if _quiet_start else _contextlib.nullcontext():
    _import_keras()

from kreg import layers
from kreg._version import __version__ as __version__
from kreg.adapt import AdaptationReport
from kreg.adapt import OnlineAdapter
from kreg.adapt import adapt_batchnorm
from kreg.adapt import set_test_time_mode
from kreg.convert import ConversionReport
from kreg.convert import convert_batch_norms
from kreg.diagnose import Finding
from kreg.diagnose import diagnose
from kreg.dropout_conversion import DropoutConversionReport
from kreg.dropout_conversion import convert_dropouts
from kreg.fold import FoldReport
from kreg.fold import fold_batch_norms
from kreg.layers import *  # noqa: F403 (the names in kreg.layers.__all__, added below)
from kreg.monte_carlo import MonteCarloPrediction
from kreg.monte_carlo import mc_predict
from kreg.stochastic_depth import StochasticDepthReport
from kreg.stochastic_depth import add_stochastic_depth
from kreg.stochastic_depth import stochastic_depth_rates

__all__ = [
    "Finding",
    "diagnose",
    "AdaptationReport",
    "OnlineAdapter",
    "adapt_batchnorm",
    "set_test_time_mode",
    "ConversionReport",
    "convert_batch_norms",
    "DropoutConversionReport",
    "convert_dropouts",
    "FoldReport",
    "fold_batch_norms",
    "MonteCarloPrediction",
    "mc_predict",
    "StochasticDepthReport",
    "add_stochastic_depth",
    "stochastic_depth_rates",
]
# The layers, listed once in kreg.layers; `__all__ += <submodule>.__all__` is the
# form static readers (griffe for the API reference, type checkers) follow.
__all__ += layers.__all__

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

from kreg.adapt import AdaptationReport
from kreg.adapt import OnlineAdapter
from kreg.adapt import adapt_batchnorm
from kreg.adapt import set_test_time_mode
from kreg.convert import ConversionReport
from kreg.convert import convert_batch_norms
from kreg.diagnose import Finding
from kreg.diagnose import diagnose
from kreg.fold import FoldReport
from kreg.fold import fold_batch_norms
from kreg.layers import ActivationRegularization
from kreg.layers import AdaptiveBatchNormalization
from kreg.layers import ConsistentDropout
from kreg.layers import ConsistentDropoutCell
from kreg.layers import Conv1DBatchNorm
from kreg.layers import Conv2DBatchNorm
from kreg.layers import Conv3DBatchNorm
from kreg.layers import DenseBatchNorm
from kreg.layers import DepthwiseConv2DBatchNorm
from kreg.layers import EmbeddingDropout
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM
from kreg.layers import ZoneoutGRU
from kreg.layers import ZoneoutLSTM
from kreg.monte_carlo import MonteCarloPrediction
from kreg.monte_carlo import mc_predict

from kreg._version import __version__ as __version__

__all__ = [
    "Finding",
    "diagnose",
    "AdaptationReport",
    "OnlineAdapter",
    "adapt_batchnorm",
    "set_test_time_mode",
    "ConversionReport",
    "convert_batch_norms",
    "FoldReport",
    "fold_batch_norms",
    "ActivationRegularization",
    "AdaptiveBatchNormalization",
    "ConsistentDropout",
    "ConsistentDropoutCell",
    "Conv1DBatchNorm",
    "Conv2DBatchNorm",
    "Conv3DBatchNorm",
    "DenseBatchNorm",
    "DepthwiseConv2DBatchNorm",
    "EmbeddingDropout",
    "WeightDropGRU",
    "WeightDropLSTM",
    "ZoneoutGRU",
    "ZoneoutLSTM",
    "MonteCarloPrediction",
    "mc_predict",
]

"""kreg: regularization and normalization for Keras 3.

Layers live in `kreg.layers` (and are re-exported here), callbacks for
`model.fit` in `kreg.callbacks`, and keras-tuner search spaces in `kreg.tuning`.
"""

from kreg.layers import ConsistentDropout
from kreg.layers import ConsistentDropoutCell
from kreg.layers import WeightDropGRU
from kreg.layers import WeightDropLSTM

__version__ = "0.1.0"

__all__ = [
    "ConsistentDropout",
    "ConsistentDropoutCell",
    "WeightDropGRU",
    "WeightDropLSTM",
]

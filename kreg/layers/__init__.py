"""kreg's Keras layers. Each is registered under the `kreg` package for saving."""

from kreg.layers.consistent_dropout import ConsistentDropout
from kreg.layers.consistent_dropout_cell import ConsistentDropoutCell
from kreg.layers.weight_drop_rnn import WeightDropGRU
from kreg.layers.weight_drop_rnn import WeightDropLSTM

__all__ = [
    "ConsistentDropout",
    "ConsistentDropoutCell",
    "WeightDropGRU",
    "WeightDropLSTM",
]

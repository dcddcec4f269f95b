"""kreg's Keras layers. Each is registered under the `kreg` package for saving."""

from kreg.layers.activation_regularization import ActivationRegularization
from kreg.layers.adaptive_batch_normalization import AdaptiveBatchNormalization
from kreg.layers.adjustable_dropout import AdjustableDropout
from kreg.layers.consistent_dropout import ConsistentDropout
from kreg.layers.consistent_dropout_cell import ConsistentDropoutCell
from kreg.layers.conv1d_batch_norm import Conv1DBatchNorm
from kreg.layers.conv2d_batch_norm import Conv2DBatchNorm
from kreg.layers.conv3d_batch_norm import Conv3DBatchNorm
from kreg.layers.dense_batch_norm import DenseBatchNorm
from kreg.layers.depthwise_conv2d_batch_norm import DepthwiseConv2DBatchNorm
from kreg.layers.drop_block import DropBlock1D
from kreg.layers.drop_block import DropBlock2D
from kreg.layers.drop_block import DropBlock3D
from kreg.layers.embedding_dropout import EmbeddingDropout
from kreg.layers.stochastic_depth import StochasticDepth
from kreg.layers.weight_drop_rnn import WeightDropGRU
from kreg.layers.weight_drop_rnn import WeightDropLSTM
from kreg.layers.weight_normalization import WeightNormalization
from kreg.layers.zoneout_rnn import ZoneoutGRU
from kreg.layers.zoneout_rnn import ZoneoutLSTM

__all__ = [
    "ActivationRegularization",
    "AdaptiveBatchNormalization",
    "AdjustableDropout",
    "ConsistentDropout",
    "ConsistentDropoutCell",
    "Conv1DBatchNorm",
    "Conv2DBatchNorm",
    "Conv3DBatchNorm",
    "DenseBatchNorm",
    "DepthwiseConv2DBatchNorm",
    "DropBlock1D",
    "DropBlock2D",
    "DropBlock3D",
    "EmbeddingDropout",
    "StochasticDepth",
    "WeightDropGRU",
    "WeightDropLSTM",
    "WeightNormalization",
    "ZoneoutGRU",
    "ZoneoutLSTM",
]

"""Adapt a trained model's batch normalization to the data it meets.

`adapt_batchnorm(model, data)` re-estimates every batch norm's statistics on the
data the model will meet (AdaBN); `method="tent"` also tunes their scale and shift
to make the predictions confident (Tent). `OnlineAdapter` does the same batch by batch for
a stream (EATA, Tent and the statistics methods), `set_test_time_mode` switches every
`AdaptiveBatchNormalization` of a model to a test-time mode.

One module per job: `test_time_mode` (switching modes), `reestimation` (the exact
one-pass statistics), `entropy` (entropy minimization), `batch_statistics_pass`
(what both methods run the model with), `report` (what changed). The batch
norms are found by `kreg.model_graph.batch_norm_layers`, the reader fold and
diagnose share.
"""

from kreg.adapt.adaptation import METHODS
from kreg.adapt.adaptation import adapt_batchnorm
from kreg.adapt.online_adapter import AdapterSnapshot
from kreg.adapt.online_adapter import OnlineAdapter
from kreg.adapt.report import AdaptationReport
from kreg.adapt.report import LayerChange
from kreg.adapt.test_time_mode import set_test_time_mode
from kreg.model_graph import batch_norm_layers

__all__ = [
    "METHODS",
    "AdaptationReport",
    "AdapterSnapshot",
    "OnlineAdapter",
    "LayerChange",
    "adapt_batchnorm",
    "batch_norm_layers",
    "set_test_time_mode",
]

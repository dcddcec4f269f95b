"""Running a model with every batch norm normalizing by its batch's statistics.

Both adaptation methods need it: the re-estimation pass records each batch
norm's input statistics on the way, entropy minimization trains through it.
"""

import contextlib
import threading

from keras import ops

from kreg import _keras_compat
from kreg import model_graph
from kreg.layers.batch_statistics import batch_moments
from kreg.layers.batch_statistics import combine_statistics
from kreg.layers.batch_statistics import in_statistics_dtype
from kreg.layers.batch_statistics import normalize
from kreg.layers.conv_batch_norm import FusedBatchNormLayer

# Both methods run the model with every batch norm normalizing by its batch's
# statistics, whatever its mode or training flag, and the rest of the model in
# inference mode (dropout off). Each batch norm's `call` is replaced for the
# duration; `_keras_compat.call_replaced` restores it. kreg's fused layers
# (`Conv2DBatchNorm`...) never call their batch norm at inference (they fold it
# into the kernel), so theirs is replaced by the unfolded path as well.


def replicated(model):
    """Whether the model runs on several replicas of a `tf.distribute` strategy."""
    strategy = getattr(model, "distribute_strategy", None)
    return strategy is not None and strategy.num_replicas_in_sync > 1


def strategy_scope(model):
    """The model's strategy scope, for the helper models built around it."""
    return model.distribute_strategy.scope() if replicated(model) else contextlib.nullcontext()


def _normalize_with_batch_statistics(layer, inputs, mask, synchronized, stored_weight):
    """`layer`'s output with its batch's statistics (mixed with `stored_weight` of
    the stored ones); also returns the local batch statistics."""
    inputs = in_statistics_dtype(inputs)
    mean, variance, count = batch_moments(inputs, layer.axis, mask)
    norm_mean, norm_variance, norm_count = mean, variance, count
    if synchronized and mask is None:
        # All replicas normalize with the global batch's statistics, so the layers
        # after this one see what they would see on one device.
        norm_mean, norm_variance, norm_count = batch_moments(inputs, layer.axis, synchronized=True)
    stored = (
        ops.cast(layer.moving_mean, inputs.dtype),
        ops.cast(layer.moving_variance, inputs.dtype),
    )
    # A batch with one value per channel (one sample after a dense layer) has no
    # variance: it normalizes with the stored statistics, as
    # AdaptiveBatchNormalization does, so that the layers after it see inputs
    # that vary and their statistics hold no zero variance.
    weight = ops.cast(ops.where(norm_count > 1, stored_weight, 1.0), inputs.dtype)
    norm_mean, norm_variance = combine_statistics(weight, stored, (norm_mean, norm_variance))
    return normalize(layer, inputs, norm_mean, norm_variance), (mean, variance, count)


class Recorder(threading.local):
    """The statistics each batch norm call computed, per thread.

    Under `tf.distribute.MirroredStrategy` every replica runs the model in its own
    thread at the same time, so each keeps its own record.
    """

    calls = None  # [(layer, (mean, variance, count))] while recording


@contextlib.contextmanager
def batch_statistics_used(model, layers, recorder=None, stored_weight=0.0):
    """Makes every batch norm in `layers` normalize with its batch's statistics.

    With `stored_weight` > 0 they normalize with `stored_weight` of their stored
    statistics and the rest of the batch's (RoTTA's robust batch norm).

    Entered once around the whole `predict` / `fit`, not inside a replica's call:
    replicas run concurrently and must not swap the layers' `call` under each other.
    """
    synchronized = replicated(model)

    def batch_statistics_call(layer):
        def call(inputs, training=None, mask=None):
            outputs, moments = _normalize_with_batch_statistics(
                layer, inputs, mask, synchronized, stored_weight
            )
            if recorder is not None and recorder.calls is not None:
                recorder.calls.append((layer, moments))
            return outputs

        return call

    def unfolded_call(fused):
        def call(inputs, training=None):
            return fused.unfolded_call(inputs, training=False)

        return call

    batch_norm_ids = {id(layer) for layer in layers}
    fused_layers = [
        layer
        for layer in model_graph.sublayers(model)
        if isinstance(layer, FusedBatchNormLayer) and id(layer.batch_norm) in batch_norm_ids
    ]
    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(_keras_compat.call_replaced(layer, batch_statistics_call(layer)))
        for fused in fused_layers:
            stack.enter_context(_keras_compat.call_replaced(fused, unfolded_call(fused)))
        yield

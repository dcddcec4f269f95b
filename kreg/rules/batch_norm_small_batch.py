"""Batch norm in a model trained with tiny batches."""

from kreg.rules import _roles

ID = "batch-norm-small-batch"
SEVERITY = "warning"
MIN_BATCH_SIZE = 16  # seeds 003: batch norm is "good for large batch sizes (>16)"


def check(view):
    if view.batch_size is None or view.batch_size >= MIN_BATCH_SIZE:
        return
    layers = view.unique_layers(_roles.uses_batch_statistics)
    if layers:
        yield (
            [path for path, _ in layers],
            f"batch norm with batch_size={view.batch_size}: each step normalizes with "
            f"the mean and variance of {view.batch_size} sample(s), noisy statistics "
            "that differ from the moving averages used at inference (with 1 sample "
            "the variance of a dense feature is 0)",
            "keras.layers.GroupNormalization (conv) or keras.layers.LayerNormalization "
            f"(dense, recurrent): no batch statistics; or train with batches of "
            f">= {MIN_BATCH_SIZE}",
        )

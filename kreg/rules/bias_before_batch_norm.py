"""A conv/dense bias that the batch norm right after it cancels."""

from kreg.rules import _roles

ID = "bias-before-batch-norm"
SEVERITY = "warning"


def check(view):
    for node in view.calls:
        if not _roles.is_batch_norm(node.layer) or len(node.inputs) != 1:
            continue
        producer = node.inputs[0]
        layer = getattr(producer, "layer", None)
        if (
            layer is None
            or not (_roles.is_conv(layer) or _roles.is_dense(layer))
            or _roles.is_fused_batch_norm(layer)
            or not getattr(_roles.unwrap(layer), "use_bias", False)
            or _roles.activation_name(layer) is not None
            # The bias is cancelled only where batch norm is all the output feeds,
            # and only along the axis batch norm takes its means over.
            or any(consumer is not node for consumer in producer.consumers)
            or not _roles.normalizes_channels_of(_roles.unwrap(node.layer), layer)
        ):
            continue
        fused = _roles.fused_alternative(layer)
        yield (
            [producer.path, node.path],
            f"`{producer.path}` adds a bias that batch norm `{node.path}` subtracts "
            "again with the batch mean: wasted parameters and compute (batch norm's "
            "beta is the bias)",
            f"{type(_roles.unwrap(layer)).__name__}(..., use_bias=False)"
            + (f", or {fused} (conv and batch norm in one layer)" if fused else ""),
        )

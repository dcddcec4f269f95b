"""Batch norm on the hidden states a recurrent layer returns."""

from kreg.rules import _roles

ID = "batch-norm-on-recurrent-state"
SEVERITY = "warning"


def check(view):
    for node in view.calls:
        if not _roles.is_batch_norm(node.layer):
            continue
        for anchor in view.before(node, _roles.is_anchor):
            layer = getattr(anchor, "layer", None)
            if layer is not None and _roles.is_recurrent(layer) and _roles.returns_sequences(layer):
                yield (
                    [anchor.path, node.path],
                    f"batch norm `{node.path}` normalizes the hidden-state sequence of "
                    f"`{anchor.path}` with statistics pooled over the batch and every "
                    "timestep, which shift with sequence length and padding",
                    "keras.layers.LayerNormalization (normalizes each timestep's "
                    "features on its own, no batch statistics)",
                )

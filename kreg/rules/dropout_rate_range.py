"""Dropout rates above the usual range for the layer they follow."""

from kreg.rules import _roles

ID = "dropout-rate-range"
SEVERITY = "warning"
_RNN_RATES = ("dropout", "recurrent_dropout", "weight_dropout")


def check(view):
    early = _roles.early_convs(view)
    for node in view.calls:
        if _roles.is_dropout(node.layer):
            role, anchor = _roles.dropout_role(view, node, early)
            if role is None or role == "early conv":  # early-conv-dropout says it better
                continue
            low, high = _roles.USUAL_RATES[role]
            if node.layer.rate > high:
                yield (
                    [anchor.path, node.path],
                    f"dropout rate {node.layer.rate:g} after {role} layer `{anchor.path}` "
                    f"is above the usual {low:g}-{high:g}: training accuracy collapses "
                    "before the model can fit",
                    f"lower it to {low:g}-{high:g} (raise it gradually while validation "
                    "loss still improves)",
                )
        elif _roles.is_recurrent(node.layer):
            layer = _roles.unwrap(node.layer)
            high = _roles.USUAL_RATES["recurrent"][1]
            for argument in _RNN_RATES:
                rate = getattr(layer, argument, 0) or 0
                if rate > high:
                    yield (
                        [node.path],
                        f"`{node.path}` has {argument}={rate:g}, above the usual 0-{high:g} "
                        "for recurrent layers: the layer loses most of its signal",
                        f"lower {argument} to <= {high:g}",
                    )

"""Dropout after the final classifier, on the model's output."""

from kreg.model_graph import OUTPUT
from kreg.rules import _roles

ID = "dropout-on-output"
SEVERITY = "error"


def _passes_output_on(layer):
    # What may sit between the dropout and the output without undoing it.
    return (
        (_roles.activation_name(layer) is not None and not _roles.is_anchor(layer))
        or _roles.is_dropout(layer)
        or type(layer).__name__ in ("Reshape", "Permute")
    )


def check(view):
    for node in view.calls:
        if not _roles.is_dropout(node.layer) or node.layer.rate == 0:
            continue
        if OUTPUT in view.after(node, lambda layer: not _passes_output_on(layer)):
            yield (
                [node.path],
                f"dropout `{node.path}` acts on the model's output: in training it "
                "zeroes random predictions, so the loss is computed against noise; "
                "dropout regularizes hidden layers, not outputs",
                "remove it; put keras.layers.Dropout before the final classifier "
                "instead (Dense -> Dropout -> Dense(classes))",
            )

"""Dropout right after the first convolutions (seeds 000: "the #1 CNN mistake")."""

from kreg.dropout_ranges import USUAL_DROPOUT_RANGES
from kreg.rules import _roles

ID = "early-conv-dropout"
SEVERITY = "warning"
MAX_RATE = USUAL_DROPOUT_RANGES["early_conv"][1]


def check(view):
    early = _roles.early_convs(view)
    for node in view.calls:
        if not _roles.is_dropout(node.layer) or node.layer.rate <= MAX_RATE:
            continue
        role, conv = _roles.dropout_role(view, node, early)
        if role == "early conv":
            yield (
                [conv.path, node.path],
                f"dropout rate {node.layer.rate:g} right after the early convolution "
                f"`{conv.path}`: early feature maps hold edges and textures that every "
                "later layer needs, and dropping them slows training and costs accuracy",
                f"remove it or lower the rate to <= {MAX_RATE}; regularize the classifier "
                "instead (keras.layers.Dropout(0.3-0.5) after the Dense layers) or, if "
                "needed, late conv blocks (keras.layers.SpatialDropout2D(0.1-0.3))",
            )

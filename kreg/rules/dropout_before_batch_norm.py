"""Dropout right before batch norm: the "variance shift" of Li et al. (CVPR 2019,
https://arxiv.org/abs/1801.05134). Batch norm's moving variance is gathered on
dropped (and rescaled) activations in training, but applied to undropped ones at
inference, so the statistics it normalizes with are wrong at inference."""

from kreg.model_graph import INPUT
from kreg.rules import _roles

ID = "dropout-before-batch-norm"
SEVERITY = "warning"


def check(view):
    for node in view.calls:
        if not _roles.drops_and_rescales(node.layer) or node.layer.rate == 0:
            continue
        # Through activations only: they keep the variance shift.
        following = view.after(
            node, lambda op: _roles.activation_name(op) is None or _roles.is_anchor(op)
        )
        for bn in following:
            if bn is INPUT or not hasattr(bn, "layer") or not _roles.is_batch_norm(bn.layer):
                continue
            yield (
                [node.path, bn.path],
                f"dropout `{node.path}` feeds batch norm `{bn.path}`: its moving variance is "
                "estimated on dropped activations and applied to undropped ones at "
                "inference (variance shift), which costs accuracy",
                "move the dropout after the last batch norm (before the classifier), or remove it",
            )

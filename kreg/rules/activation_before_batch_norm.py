"""An activation before batch norm (Conv -> ReLU -> BN instead of Conv -> BN -> ReLU)."""

from kreg.model_graph import INPUT
from kreg.rules import _roles

ID = "activation-before-batch-norm"
SEVERITY = "warning"


def check(view):
    for node in view.calls:
        if not _roles.is_batch_norm(node.layer):
            continue
        # Dropout (or DropBlock) between the activation and the batch norm changes
        # nothing here.
        for producer in view.before(node, lambda layer: not _roles.drops_and_rescales(layer)):
            activation = None if producer is INPUT else _roles.activation_name(producer.operation)
            if activation is None:
                continue
            convs = [producer, *view.before(producer, _roles.is_anchor)]
            fused = [_roles.fused_alternative(n.layer) for n in convs if n is not INPUT]
            fused = [name for name in fused if name]
            yield (
                [producer.path, node.path],
                f"batch norm `{node.path}` normalizes the output of activation "
                f"{activation!r} (`{producer.path}`): the activation clips or skews the "
                "distribution batch norm assumes; batch norm belongs before the non-linearity",
                "order the block Conv/Dense(activation=None) -> BatchNormalization -> "
                "Activation"
                + (f", or use {fused[0]}(..., activation={activation!r})" if fused else ""),
            )

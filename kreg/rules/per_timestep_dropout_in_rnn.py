"""Ordinary (per-timestep) dropout between the layers of a recurrent stack."""

from kreg.rules import _roles

ID = "per-timestep-dropout-in-rnn"
SEVERITY = "warning"


def _is_sequence_rnn(node):
    layer = getattr(node, "layer", None)
    return layer is not None and _roles.is_recurrent(layer) and _roles.returns_sequences(layer)


def check(view):
    for node in view.calls:
        if not _roles.is_per_timestep_dropout(node.layer):
            continue
        rnn_before = [n for n in view.before(node, _roles.is_anchor) if _is_sequence_rnn(n)]
        after = view.after(node, _roles.is_anchor)
        rnn_after = [n for n in after if hasattr(n, "layer") and _roles.is_recurrent(n.layer)]
        if rnn_before and rnn_after:
            yield (
                [rnn_before[0].path, node.path, rnn_after[0].path],
                f"`{node.path}` ({type(node.layer).__name__}) draws a new mask at every "
                "timestep of the hidden-state sequence between recurrent layers, which "
                "breaks the temporal patterns the next layer reads",
                f"kreg.layers.ConsistentDropout({node.layer.rate:g}) (one mask per "
                "sequence, the same at every timestep)",
            )

"""Dropout called with `training=True`: Monte-Carlo dropout, random predictions."""

from kreg.rules import _roles

ID = "monte-carlo-dropout"
SEVERITY = "info"


def check(view):
    for path, layer in view.training_calls:
        if _roles.is_dropout(layer):
            yield (
                [path],
                f"dropout `{path}` is called with training=True: it stays on at "
                "inference, so every prediction is random (Monte-Carlo dropout)",
                "if that is not intended, call it without `training`; if it is, "
                "average several predictions",
            )

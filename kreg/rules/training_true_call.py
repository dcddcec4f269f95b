"""A layer or nested model called with `training=True` in a functional model.

Only what the functional config records can be seen: a Sequential model keeps no
call arguments, and `model(x, training=True)` at evaluation leaves no trace.
Dropout called this way is Monte-Carlo dropout, see `monte_carlo_dropout`.
"""

from kreg.rules import _roles

ID = "training-true-call"
SEVERITY = "error"


def check(view):
    for path, layer in view.training_calls:
        if _roles.is_dropout(layer):
            continue
        yield (
            [path],
            f"`{path}` is called with training=True, so it behaves as in training at "
            "inference too (batch norm normalizes with each test batch's statistics, "
            "dropout and noise stay on): predictions depend on the batch",
            "call it without `training` (Keras passes the right value), or with "
            "training=False to freeze a batch norm for fine-tuning",
        )

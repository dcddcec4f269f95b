"""`diagnose`: checks a Keras model for the regularization and normalization
mistakes that fail silently."""

import dataclasses

from kreg import model_graph
from kreg._validation import check_at_least
from kreg.rules import RULES

SEVERITIES = ("error", "warning", "info")


class ModelView(model_graph.FlatGraph):
    """What every rule reads: the model's calls as one graph (nested models
    opened up, see `kreg.model_graph.FlatGraph`) and the training batch size
    (`batch_size`, `None` if not given)."""

    def __init__(self, model, batch_size=None):
        super().__init__(model)
        self.batch_size = batch_size


@dataclasses.dataclass(frozen=True)
class Finding:
    """One mistake (or piece of advice) `diagnose` found.

    Attributes:
        rule: the rule id, e.g. `"early-conv-dropout"`.
        severity: `"error"`, `"warning"` or `"info"`.
        layers: the paths of the layers involved, e.g. `("block/conv", "dropout")`.
        message: what is wrong and why, in one line.
        fix: what to do instead, naming the Keras or kreg layer to use.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)),
    ...     keras.layers.Dense(3, activation="softmax"),
    ...     keras.layers.Dropout(0.5, name="last_dropout"),
    ... ])
    >>> finding = [f for f in diagnose(model) if f.rule == "dropout-on-output"][0]
    >>> finding.severity, finding.layers
    ('error', ('last_dropout',))
    """

    rule: str
    severity: str
    layers: tuple
    message: str
    fix: str

    def __str__(self):
        layers = ", ".join(self.layers)
        return f"{self.severity} {self.rule} [{layers}]: {self.message} Fix: {self.fix}"

    def to_dict(self):
        return {**dataclasses.asdict(self), "layers": list(self.layers)}


def diagnose(model, batch_size=None):
    """Checks `model` for regularization and normalization mistakes.

    Reads the layer graph (Sequential and functional models, nested ones
    opened up) and applies every rule in `kreg.rules`: dropout after early
    convolutions or on the output, activation before batch norm, a bias that
    batch norm cancels, per-timestep dropout or batch norm inside a recurrent
    stack, batch norm with tiny batches, dropout rates outside the usual range,
    deep conv stacks without normalization, `recurrent_dropout` that costs the
    fused LSTM/GRU kernel, layers called with `training=True`, and batch norms
    that `kreg.fold_batch_norms` can fold before export. The model is not
    changed and no data is needed.

    A layer called with `training=True` is seen only in functional models: a
    Sequential model's config does not record call arguments, and a model
    evaluated as `model(x, training=True)` leaves no trace in the model at all.

    Args:
        model: A Sequential or functional `keras.Model` (nested models included;
            a subclassed model inside one is checked as a single opaque layer).
        batch_size: The batch size the model is trained with, if known. Batch
            norm is only checked against tiny batches when it is given.

    Returns:
        A list of `Finding`s, errors first, then warnings, then info; empty if
        the model looks right.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((28, 28, 1)),
    ...     keras.layers.Conv2D(32, 3, activation="relu"),
    ...     keras.layers.BatchNormalization(),
    ...     keras.layers.Flatten(),
    ...     keras.layers.Dense(10, activation="softmax"),
    ... ])
    >>> [finding.rule for finding in diagnose(model)]
    ['activation-before-batch-norm']
    """
    model_graph.check_graph_model(
        model, "diagnose", "Rebuild it as a functional model to check it."
    )
    if batch_size is not None:
        batch_size = check_at_least("batch_size", batch_size, integer=True, minimum=1)
    view = ModelView(model, batch_size=batch_size)
    findings, seen = [], set()
    for rule in RULES:
        for layers, message, fix in rule.check(view):
            key = (rule.ID, tuple(layers))
            if key not in seen:  # a shared layer is found once, not once per call
                seen.add(key)
                findings.append(Finding(rule.ID, rule.SEVERITY, tuple(layers), message, fix))
    return sorted(findings, key=lambda finding: SEVERITIES.index(finding.severity))

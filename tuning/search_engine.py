"""One way to declare hyperparameters on keras-tuner's `HyperParameters` and on Optuna's trials.

`RegularizationSpace` registers its hyperparameters with keras-tuner's calls
(`Float`, `Choice`, `Fixed`, `conditional_scope`). An Optuna trial (`optuna.Trial`,
`FixedTrial`, ...) gets the same calls through `OptunaHyperParameters`, so both
engines see the same names, ranges and conditions. Optuna itself is never imported
here: a trial is recognized by its `suggest_*` methods.
"""

import contextlib


def is_optuna_trial(hp):
    """Whether `hp` is an Optuna trial (anything with Optuna's `suggest_*` methods)."""
    return hasattr(hp, "suggest_float") and hasattr(hp, "suggest_categorical")


class OptunaHyperParameters:
    """keras-tuner's registration calls on an Optuna trial (define-by-run).

    Optuna samples a value when it is first asked for, so a conditional
    hyperparameter is simply not asked for while its condition is false: inside
    an inactive `conditional_scope` the calls return `None`, as keras-tuner's do.
    A value fixed beforehand (`study.enqueue_trial`, `optuna.trial.FixedTrial`) is
    returned as is by Optuna.
    """

    def __init__(self, trial):
        self.trial = trial
        self._inactive_scopes = 0

    @property
    def values(self):
        return dict(self.trial.params)

    def Float(self, name, min_value, max_value, step=None, sampling="linear", default=None):
        if self._inactive_scopes:
            return None
        log = sampling == "log"
        return self.trial.suggest_float(
            name, min_value, max_value, step=None if log else step, log=log
        )

    def Choice(self, name, values, default=None):
        if self._inactive_scopes:
            return None
        return self.trial.suggest_categorical(name, list(values))

    def Fixed(self, name, value):
        if self._inactive_scopes:
            return None
        # A one-value categorical records the value in `trial.params` like the others.
        return self.trial.suggest_categorical(name, [value])

    @contextlib.contextmanager
    def conditional_scope(self, parent_name, parent_values):
        active = self.trial.params.get(parent_name) in list(parent_values)
        self._inactive_scopes += 0 if active else 1
        try:
            yield
        finally:
            self._inactive_scopes -= 0 if active else 1


def as_hyperparameters(hp):
    """`hp` itself (keras-tuner), or an `OptunaHyperParameters` over an Optuna trial."""
    if is_optuna_trial(hp):
        return OptunaHyperParameters(hp)
    if not all(hasattr(hp, method) for method in ("Float", "Choice", "Fixed")):
        raise TypeError(
            "Invalid value received for argument `hp`. Expected the trial's "
            "keras_tuner.HyperParameters or an optuna.Trial. "
            f"Received: hp={hp!r} (of type {type(hp).__name__})"
        )
    return hp


def values_of(hp):
    """The active hyperparameter values of a keras-tuner `hp`, an Optuna trial
    (`trial`, `study.best_trial`) or a dict (`study.best_params`)."""
    if isinstance(hp, dict):
        return dict(hp)
    if isinstance(hp, OptunaHyperParameters) or is_optuna_trial(hp) or not hasattr(hp, "is_active"):
        params = getattr(hp, "params", None)
        if params is None:
            params = getattr(hp, "values", None)
        if params is None:
            raise ValueError(
                "Invalid value received for argument `hp`. Expected keras-tuner "
                "HyperParameters, an Optuna trial or a dict of values. "
                f"Received: hp={hp!r}"
            )
        return dict(params)
    return {name: value for name, value in hp.values.items() if hp.is_active(name)}


def fatal_value_error(message):
    """A `ValueError` that also ends a keras-tuner search at once.

    Raised while a hypermodel builds, an ordinary `ValueError` would fail the
    trial and the next ones alike; keras-tuner's `FatalValueError` (a subclass
    of `ValueError`) stops the search with the message instead. Under Optuna it
    is an ordinary `ValueError` that ends `study.optimize`.
    """
    try:
        from keras_tuner.errors import FatalValueError
    except ImportError:  # an Optuna search without keras-tuner installed
        return ValueError(message)
    return FatalValueError(message)

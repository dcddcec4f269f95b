import copy

import keras_tuner

from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_seed
from kreg.tuning.precise_statistics import precise_batch_norm_callback
from kreg.callbacks import OverfittingDetector
from kreg.callbacks.overfitting_detector import OVERFITTING
from kreg.callbacks.overfitting_detector import STATE_CODES
from kreg.callbacks.overfitting_detector import UNDERFITTING
from kreg.callbacks.overfitting_detector import _scalar
from kreg.callbacks.overfitting_detector import infer_mode

PRUNABLE_STATES = (OVERFITTING, UNDERFITTING)


def _check_prune_on(prune_on):
    if isinstance(prune_on, str):
        prune_on = (prune_on,)
    prune_on = tuple(prune_on)
    for state in prune_on:
        check_choice("prune_on", state, PRUNABLE_STATES)
    return prune_on


class StopTrial:
    """The detector action that ends a trial's `fit` in the states `prune_on`.

    A plain object (not a lambda) so that keras-tuner's per-trial deep copies of
    the detector keep it.
    """

    def __init__(self, prune_on=(OVERFITTING,)):
        self.prune_on = _check_prune_on(prune_on)

    def __call__(self, detector, epoch):
        if detector.state not in self.prune_on or detector.model is None or getattr(detector.model, "stop_training", False):
            return
        if not getattr(detector, "objective_stalled", lambda: True)():
            return  # the search's objective still improves: `TrialPruningDetector` asks again
        detector.model.stop_training = True
        since = "" if detector.onset_epoch is None else f" since epoch {detector.onset_epoch + 1}"
        print(f"kreg: {detector.state}{since}; ending this trial after epoch {epoch + 1}.")


class TrialPruningDetector(OverfittingDetector):
    """An `OverfittingDetector` that ends a trial only once the search's objective stalls too.

    The detector reads the loss curves, which can call a run overfitting while
    the metric the search ranks trials by still improves: on the digits search
    of `bench/tuning_early_stop.py` the validation loss stops improving at
    epochs 20-37 while validation accuracy keeps creeping up for dozens of
    epochs (docs/BENCHMARKS.md). Pruning therefore asks for both: the
    detector's state in `prune_on`, and no new best of `objective` over the
    last `objective_patience` epochs. Built by `pruning_detector`.
    """

    def __init__(self, prune_on, objective, objective_mode, objective_patience, **detector_kwargs):
        super().__init__(action=StopTrial(prune_on), **detector_kwargs)
        self.objective = objective
        self.objective_mode = objective_mode
        self.objective_patience = (
            2 * self.patience if objective_patience is None
            else int(check_at_least("objective_patience", objective_patience, integer=True, minimum=1))
        )
        self._objective_values = []

    def reset(self):
        super().reset()
        self._objective_values = []

    def objective_stalled(self):
        """Whether `objective` set no new best over the last `objective_patience` epochs."""
        values = self._objective_values
        if not values:
            return True  # never logged: the detector's state alone decides
        if len(values) <= self.objective_patience:
            return False
        best = values.index(min(values))  # signed so that lower is better; first best
        return best < len(values) - self.objective_patience

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch >= self.start_from_epoch and self.objective in logs:
            sign = -1.0 if self.objective_mode == "max" else 1.0
            self._objective_values.append(sign * _scalar(logs[self.objective]))
        super().on_epoch_end(epoch, logs)
        # The detector acts once, when a state is first reached; pruning waits
        # for the objective, so it is asked every epoch the state holds.
        if self.model is not None:
            self.action(self, epoch)


def _objective_name_and_mode(objective, default):
    """`(name, "min" | "max")` of a keras-tuner objective: a name or an `Objective`."""
    if objective is None:
        objective = default
    if isinstance(objective, str):
        return objective, infer_mode(objective)
    name, direction = getattr(objective, "name", None), getattr(objective, "direction", None)
    if not isinstance(name, str) or direction not in ("min", "max"):
        raise ValueError(
            "Invalid value received for argument `objective`. Expected a metric name or a "
            f"keras_tuner.Objective. Received: objective={objective!r}"
        )
    return name, direction


def pruning_detector(prune_on=(OVERFITTING,), objective=None, objective_patience=None, **detector_kwargs):
    """An `OverfittingDetector` that ends a trial's training once it overfits.

    Pass it in `callbacks=` to any tuner's `search`: keras-tuner deep-copies it
    for every trial, so each trial starts with a fresh detector. A trial ends
    when the detector's state is in `prune_on` *and* the search's objective
    has set no new best for `objective_patience` epochs: the loss curves the
    detector reads can stall while the objective (validation accuracy, say)
    still creeps up, and such a trial's best epoch is still ahead. The trial's
    score is unchanged in meaning: keras-tuner scores a trial by its best epoch
    (and checkpoints that epoch), which is behind it when it is stopped.
    Use `OverfittingPruning` to also count the epochs each trial trained.

    Args:
        prune_on: The detector states that end a trial: `"overfitting"`
            (default) and/or `"underfitting"` (training stalled while validation
            tracks it).
        objective: The tuner's objective: a logged metric name or a
            `keras_tuner.Objective`. Defaults to the detector's `monitor`
            (`"val_loss"`). Pass the tuner's, e.g. `"val_accuracy"`.
        objective_patience: Epochs without a new best of `objective` before
            a trial may end. Defaults to twice the detector's `patience`.
        **detector_kwargs: Arguments of `kreg.callbacks.OverfittingDetector`
            (`patience`, `smoothing`, ...), except `action`.

    Returns:
        A `kreg.callbacks.OverfittingDetector` (a `TrialPruningDetector`).

    Example:

    ```python
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=20)
    tuner.search(x, y, validation_split=0.2, epochs=50,
                 callbacks=[kreg.tuning.pruning_detector(objective="val_accuracy")])
    ```
    """
    if "action" in detector_kwargs:
        raise ValueError(
            "Invalid value received for argument `action`. pruning_detector sets the "
            f"action itself. Received: action={detector_kwargs['action']!r}"
        )
    name, mode = _objective_name_and_mode(objective, detector_kwargs.get("monitor", "val_loss"))
    return TrialPruningDetector(prune_on, name, mode, objective_patience, **detector_kwargs)


class OverfittingPruning:
    """Tuner mixin: ends each trial once `OverfittingDetector` sees it overfit.

    keras-tuner has no in-trial pruning of its own: a trial ends early only
    when a callback stops its `fit`. Mixed into a tuner class, this adds a fresh
    pruning `OverfittingDetector` to every trial's callbacks (which ends a
    trial only once the tuner's objective has also stopped improving; see
    `pruning_detector`), and a
    `kreg.callbacks.PreciseBatchNorm` on the training inputs, so that batch
    norms are validated with their real population statistics (moving
    statistics that lag the weights make a noisy validation curve, not
    overfitting: on a few hundred samples such trials validate near chance
    and would be pruned for it). It checks up front
    that the search has validation data (the detector needs `val_loss`), and
    records per trial the epochs trained (`trial_epochs`) and the epoch it was
    pruned after (`pruned_trials`). Trials are scored as keras-tuner always
    scores them, by their best epoch, which the detector has already passed when
    it stops a trial.

    Args:
        prune_on: The detector states that end a trial: `"overfitting"`
            (default) and/or `"underfitting"`. `()` only watches and counts.
        detector_kwargs: Optional dict of `pruning_detector` arguments
            (`patience`, `smoothing`, `objective_patience`, ...), except
            `action`; `objective` defaults to the tuner's.
        *args, **kwargs: The tuner's own arguments. Its `seed` must be an
            integer >= 1 or `None`: keras-tuner reads `seed=0` as "no seed"
            and draws a random one, so 0 is refused here.

    Example:

    ```python
    class PrunedRandomSearch(kreg.tuning.OverfittingPruning, keras_tuner.RandomSearch):
        pass

    tuner = PrunedRandomSearch(hypermodel, objective="val_accuracy", max_trials=20)
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=50)
    print(tuner.total_epochs, sorted(tuner.pruned_trials))
    ```
    """

    def __init__(self, *args, prune_on=(OVERFITTING,), detector_kwargs=None, **kwargs):
        check_seed("seed", kwargs.get("seed"))
        detector_kwargs = dict(detector_kwargs or {})
        self.detector = pruning_detector(prune_on, **detector_kwargs)
        self.trial_epochs = {}
        self.pruned_trials = {}
        super().__init__(*args, **kwargs)
        if "objective" not in detector_kwargs:
            # Trials end only once the objective the search ranks them by stalls.
            self.detector.objective, self.detector.objective_mode = _objective_name_and_mode(
                self.oracle.objective, self.detector.monitor
            )

    @property
    def total_epochs(self):
        """Epochs trained by all the trials this tuner ran."""
        return sum(self.trial_epochs.values())

    def run_trial(self, trial, *args, **kwargs):
        has_split = bool(kwargs.get("validation_split"))
        if kwargs.get("validation_data") is None and not has_split:
            raise keras_tuner.errors.FatalValueError(
                "OverfittingPruning needs validation data: the detector reads `val_loss`. "
                "Pass `validation_data=` or `validation_split=` to `search()`. "
                f"Received: search keyword arguments {sorted(kwargs)}"
            )
        callbacks = list(kwargs.get("callbacks") or [])
        # Batch norms validated with moving statistics that lag the weights give a
        # noisy validation curve the detector would read as overfitting: every
        # trial's batch norms are re-estimated before each validation.
        precise = None
        if getattr(self.hypermodel, "precise_batch_norm", True):  # False: the user's choice
            precise = precise_batch_norm_callback(args, kwargs, callbacks)
        # keras-tuner deep-copies the callbacks for each execution; copying here
        # too keeps the template untouched whatever the tuner does.
        kwargs["callbacks"] = ([precise] if precise else []) + callbacks + [copy.deepcopy(self.detector)]
        self.trial_epochs.setdefault(trial.trial_id, 0)
        return super().run_trial(trial, *args, **kwargs)

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self.trial_epochs[trial.trial_id] = self.trial_epochs.get(trial.trial_id, 0) + 1
        state = (logs or {}).get("overfitting_state")
        pruning = [STATE_CODES[s] for s in self.detector.action.prune_on]
        if model.stop_training and state in pruning:
            self.pruned_trials[trial.trial_id] = epoch

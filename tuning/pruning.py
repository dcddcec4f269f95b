import contextlib
import copy
import inspect
import math

import keras

from kreg._keras_compat import declared_direction
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_seed
from kreg.callbacks import OverfittingDetector
from kreg.callbacks.monitoring import MODES
from kreg.callbacks.monitoring import monitor_direction
from kreg.callbacks.monitoring import monitored_scalar
from kreg.callbacks.monitoring import without_validation
from kreg.callbacks.overfitting_detector import OVERFITTING
from kreg.callbacks.overfitting_detector import SATURATED
from kreg.callbacks.overfitting_detector import UNDERFITTING
from kreg.tuning.precise_statistics import precise_batch_norm_callback
from kreg.tuning.search_engine import fatal_value_error

PRUNABLE_STATES = (OVERFITTING, SATURATED, UNDERFITTING)


def _check_prune_on(prune_on):
    if isinstance(prune_on, str):
        prune_on = (prune_on,)
    prune_on = tuple(prune_on)
    for state in prune_on:
        check_choice("prune_on", state, PRUNABLE_STATES)
    return prune_on


class StopTrial:
    """The detector action that ends a trial's `fit` once `detector.pruning_reason()` gives one.

    A plain object (not a lambda) so that keras-tuner's per-trial deep copies of
    the detector keep it.
    """

    def __init__(self, prune_on=(SATURATED,)):
        self.prune_on = _check_prune_on(prune_on)

    def __call__(self, detector, epoch):
        if detector.model is None or getattr(detector.model, "stop_training", False):
            return
        reason = detector.pruning_reason()
        if reason is None:
            return
        detector.search.ended_after = epoch
        self.end(detector, epoch, reason)

    def end(self, detector, epoch, reason):
        """Ends the trial: stops its `fit` (subclasses may end it otherwise)."""
        detector.model.stop_training = True
        detector._say(f"kreg: {reason}; ending this trial after epoch {epoch + 1}.")


class SearchBest:
    """The best objective value of the trials a search has finished (lower is better).

    keras-tuner deep-copies the callbacks of every trial; a deep copy of this
    object is the object itself, so every trial's copy of a pruning detector
    reads and updates the same search-wide record.
    """

    def __init__(self):
        self.value = None  # signed: lower is better
        self.ended_after = None  # the epoch the current trial was ended after, if it was
        # True where the tuner sets `value` before each trial (from its oracle, which
        # scores a trial by all its executions): trials then do not record their own.
        self.set_by_tuner = False

    def update(self, value):
        # A diverged (NaN) trial sets no best: NaN compares false with everything.
        if (
            value is not None
            and math.isfinite(value)
            and (self.value is None or value < self.value)
        ):
            self.value = value

    def __deepcopy__(self, memo):
        return self


# The overfitting band of the pruning detector, in noise SDs, unless given: the
# level the pruning rule (`prune_on="saturated"`) was chosen with on the three
# recorded searches of bench/tuning_early_stop.py. At the detector's own default
# (`DEFAULT_THRESHOLDS["noise"]` in callbacks/overfitting_criteria.py)
# fewer epochs are overfitting and more saturated, so more trials are judged on
# the short window: 10 of 12 wrongly ended on seed 3, against 1 of 12
# (docs/BENCHMARKS.md).
PRUNING_NOISE_THRESHOLD = 1.0


@keras.saving.register_keras_serializable(package="kreg")
class TrialPruningDetector(OverfittingDetector):
    """An `OverfittingDetector` that ends a trial once it cannot reach the search's best.

    Pruning exists to save epochs without changing the search's answer, so a
    trial ends only when, at its pace, it would not reach the best objective
    value of the trials the search has finished: its best value so far, plus
    its gain over a recent window extrapolated linearly to the last epoch of
    `fit` (optimistic for a learning curve that flattens), is still behind.
    The window is `objective_patience` epochs while the trial learns, and the
    detector's shorter `patience` once its state is in `prune_on` (by
    default saturated: validation has not improved beyond its noise for
    `patience` epochs): such a trial's best epoch is behind it, so its recent
    pace is what is left. Both windows count validated epochs; a trial that
    has not yet logged more than its window is not judged. The first trial,
    and any trial that leads the search, is never ended, nor is a trial at
    its last epoch (nothing is left to save). A NaN epoch
    (diverged) counts as the worst value there is, and sets no search best.

    Why not end every overfitting trial: the loss curves the detector reads can
    stall while the objective still creeps up. On the digits search of
    `bench/tuning_early_stop.py` the validation loss stops falling fast at
    epochs 20-37 while the validation accuracy of the eventual best trial sets
    new bests until epoch 70-96; ending trials at the detector's onset lost the
    search's best in 6 of 12 trials (docs/BENCHMARKS.md). Built by
    `pruning_detector`.
    """

    def __init__(
        self,
        prune_on,
        objective,
        objective_mode,
        objective_patience,
        action=None,
        **detector_kwargs,
    ):
        # Before the detector's own set-up, whose `reset()` starts the trial's record.
        self.search = SearchBest()
        criterion = inspect.signature(OverfittingDetector).parameters["criterion"].default
        if detector_kwargs.get("criterion", criterion) == "noise":
            if detector_kwargs.get("threshold") is None:
                detector_kwargs["threshold"] = PRUNING_NOISE_THRESHOLD
        # `action`: a `StopTrial` (the default, built from `prune_on`) or a subclass
        # that ends a trial its own way (kreg.tuning.optuna_pruning_callback).
        super().__init__(
            action=StopTrial(prune_on) if action is None else action, **detector_kwargs
        )
        self.objective = objective
        # "auto": the direction the compiled metric declares, read at the first
        # epoch that logs the objective (kreg.callbacks.monitoring).
        self.objective_mode = check_choice("objective_mode", objective_mode, MODES)
        self.objective_patience = (
            2 * self.patience
            if objective_patience is None
            else int(
                check_at_least("objective_patience", objective_patience, integer=True, minimum=1)
            )
        )

    def reset(self):
        super().reset()
        self._objective_values = []
        self._objective_epochs = []  # the epochs that logged the objective (validation_freq)
        self._epoch = None
        self._objective_direction = None  # "min" or "max", read at the first epoch that logs it
        self.search.ended_after = None

    def pace_window(self):
        """Epochs over which the trial's pace is measured: shorter in a `prune_on` state."""
        return self.patience if self.state in self.action.prune_on else self.objective_patience

    def cannot_catch_up(self):
        """Whether, at its pace over the last `pace_window()` epochs, the trial would
        not reach the search's best by the last epoch of its `fit`."""
        values, window = self._objective_values, self.pace_window()
        epochs = (self.params or {}).get("epochs")
        if self.search.value is None or not epochs or self._epoch is None or len(values) <= window:
            return False
        best, earlier = min(values), min(values[:-window])  # signed: lower is better
        if math.isinf(best):
            return True  # diverged (NaN) throughout
        if math.isinf(earlier):
            return False  # just recovered from NaN: no pace yet
        # Gain per epoch, >= 0: with `fit(validation_freq=k)` the window's
        # validations span k epochs each.
        pace = (earlier - best) / (self._objective_epochs[-1] - self._objective_epochs[-1 - window])
        return best - pace * (epochs - 1 - self._epoch) > self.search.value

    def pruning_reason(self):
        """Why the trial should end now, or `None` while it should go on."""
        epochs = (self.params or {}).get("epochs")
        if epochs and self._epoch is not None and self._epoch >= epochs - 1:
            return None  # the last epoch: nothing left to save
        if not self.action.prune_on or not self.cannot_catch_up():
            return None  # `prune_on=()`: watching only
        window = self.pace_window()
        overfitting = "" if window == self.objective_patience else f"{self.state}, and "
        return (
            f"{overfitting}at its pace over the last {window} epochs {self.objective} "
            "would not reach the search's best by the last epoch"
        )

    def on_epoch_end(self, epoch, logs=None):
        with _fatal_in_a_search():
            self._on_epoch_end(epoch, logs)

    def _on_epoch_end(self, epoch, logs):
        logs = logs if logs is not None else {}
        self._epoch = epoch
        if epoch >= self.start_from_epoch and not without_validation(
            logs, (self.monitor, self.train_monitor)
        ):
            # Before the objective's check: the objective defaults to `monitor`,
            # and a misspelt one is named as the argument that was passed.
            self._check_logs(logs)
        if self.objective not in logs and not without_validation(logs, (self.objective,)):
            # A misspelt objective would never prune, silently.
            raise ValueError(
                f"Invalid value received for argument `objective`. `{self.objective}` is not "
                f"in the epoch's logs, which hold {sorted(logs)}. Pass one of those (the "
                f"tuner's objective). Received: objective={self.objective!r}"
            )
        if epoch >= self.start_from_epoch and self.objective in logs:
            if self._objective_direction is None:
                self._check_objective_direction()
                self._objective_direction = monitor_direction(
                    self.model, self.objective, self.objective_mode
                )
            sign = -1.0 if self._objective_direction == "max" else 1.0
            value = sign * monitored_scalar(logs[self.objective])
            # A NaN epoch (diverged) counts as the worst value there is.
            self._objective_values.append(value if math.isfinite(value) else math.inf)
            self._objective_epochs.append(epoch)
        super().on_epoch_end(epoch, logs)
        # The detector acts once, when a state is first reached; pruning is
        # decided anew every epoch.
        if self.model is not None:
            self.action(self, epoch)

    def _check_objective_direction(self):
        """A direction given against the one the objective's compiled metric declares
        would judge every improving trial as falling behind; a name alone whose
        metric declares none has no direction at all."""
        declared = declared_direction(self.model, self.objective)
        if declared is None and self.objective_mode == "auto":
            # `monitor_direction` would ask for `mode`, the monitor's argument.
            raise fatal_value_error(
                f"Invalid value received for argument `objective`: the model's metric "
                f"{self.objective!r} declares no direction, so a name alone cannot say "
                f"whether it is maximized or minimized. Pass keras_tuner.Objective("
                f"{self.objective!r}, 'max') or keras_tuner.Objective({self.objective!r}, "
                f"'min'). Received: objective={self.objective!r}"
            )
        if declared is not None and self.objective_mode not in ("auto", declared):
            raise fatal_value_error(
                f"Invalid value received for argument `objective`: the model's metric "
                f"{self.objective!r} declares that it is "
                f"{'maximized' if declared == 'max' else 'minimized'}. Use direction "
                f"{declared!r} (keras_tuner.Objective({self.objective!r}, {declared!r})) or the "
                f"name alone. Received: objective={self.objective!r} with direction "
                f"{self.objective_mode!r}"
            )

    def on_train_end(self, logs=None):
        with _fatal_in_a_search():
            super().on_train_end(logs)
        if self._objective_values and not self.search.set_by_tuner:
            self.search.update(min(self._objective_values))

    def get_config(self):
        config = {key: value for key, value in self._detector_config().items() if key != "action"}
        if type(self.action) is not StopTrial:
            raise TypeError(
                f"A TrialPruningDetector ending trials with {self.action!r} cannot be serialized."
            )
        return {
            **config,
            "prune_on": list(self.action.prune_on),
            "objective": self.objective,
            "objective_mode": self.objective_mode,
            "objective_patience": self.objective_patience,
        }


@contextlib.contextmanager
def _fatal_in_a_search():
    """Bad input the detector finds in `fit` (a monitor missing from the logs, a
    mode against the metric's declared direction) as a `ValueError` that ends a
    keras-tuner search: an ordinary one fails the trial, and keras-tuner goes on
    with the next, which fails alike (`BaseTuner._try_run_and_update_trial`,
    keras_tuner/src/engine/base_tuner.py)."""
    try:
        yield
    except ValueError as error:
        fatal = fatal_value_error(str(error))
        if isinstance(error, type(fatal)):
            raise
        raise fatal from error


def _objective_name_and_mode(objective, default):
    """`(name, "min" | "max" | "auto")` of a keras-tuner objective: a name (its
    direction read from the compiled metric in `fit`) or an `Objective`."""
    if objective is None:
        objective = default
    if isinstance(objective, str):
        return objective, "auto"
    name, direction = getattr(objective, "name", None), getattr(objective, "direction", None)
    if not isinstance(name, str) or direction not in ("min", "max"):
        raise ValueError(
            "Invalid value received for argument `objective`. Expected a metric name or a "
            f"keras_tuner.Objective. Received: objective={objective!r}"
        )
    return name, direction


def pruning_detector(
    prune_on=(SATURATED,), objective=None, objective_patience=None, **detector_kwargs
):
    """An `OverfittingDetector` that ends a trial once it cannot reach the search's best.

    Pass it in `callbacks=` to any tuner's `search`: keras-tuner deep-copies it
    for every trial, so each trial starts with a fresh detector, while the
    copies share one record of the best objective value of the trials
    finished so far. A trial ends when, at its pace (its objective's gain over
    the last `objective_patience` epochs, or over the detector's `patience`
    once the detector's state is in `prune_on`, extrapolated to the last
    epoch), it would not reach that best; the first trial, and any trial that
    leads the search, trains on (see `TrialPruningDetector`). The loss curves
    the detector reads can stall while the objective (validation accuracy,
    say) still creeps up to the search's best, so overfitting alone ends no
    trial. The trial's score is unchanged in meaning: keras-tuner scores a
    trial by its best epoch (and checkpoints that epoch), which is behind it
    when it is stopped. Pass a new detector to each search: the record its
    copies share is that of every search it was passed to. Each `fit` is
    judged on its own: with `executions_per_trial > 1` a trial's later
    executions are judged against its earlier ones, and with Hyperband every
    round against the search's best. `OverfittingPruning` does better on all
    three: it reads the search's best from the tuner's oracle before each
    trial (finished trials only, scored as the oracle scores them, those of
    every worker of a distributed search too), leaves Hyperband's promotion
    rounds to Hyperband, and counts the epochs each trial trained.

    Args:
        prune_on: The detector states in which a trial's pace is judged over
            the detector's `patience` instead of `objective_patience`:
            `"saturated"` (default: validation no longer improves beyond its
            noise while training does), `"overfitting"` and/or
            `"underfitting"`. `()` ends no trial. On the three recorded
            searches of `bench/tuning_early_stop.py` `"saturated"` ended 0, 0
            and 1 of 12 trials wrongly and trained 35-39% of the epochs;
            `"overfitting"` (read on `val_loss`, which turns up while the
            accuracy still creeps up) 0, 2 and 1, at 41-47%.
        objective: The tuner's objective: a logged metric name or a
            `keras_tuner.Objective`. Defaults to the detector's `monitor`
            (`"val_loss"`). Pass the tuner's, e.g. `"val_accuracy"`. A
            name's direction is the one its compiled metric declares, read
            at the first epoch that logs it (a metric that declares none
            needs a `keras_tuner.Objective`); an `Objective` whose direction
            is against the declared one is a `ValueError` there.
        objective_patience: The window, in validated epochs (`k` epochs
            apart under `fit(validation_freq=k)`), over which the pace of a
            trial that is not in a `prune_on` state is measured. Defaults to
            twice the detector's `patience`. A trial is judged only once it
            has logged more validated epochs than its window: a `fit` of no
            more than `objective_patience` validated epochs is never ended.
        **detector_kwargs: Arguments of `kreg.callbacks.OverfittingDetector`
            (`patience`, `smoothing`, ...), except `action`. Its `threshold`
            defaults to 1 noise SD here (`PRUNING_NOISE_THRESHOLD`; the
            detector's own is higher), the level this rule was chosen with.

    Returns:
        A `kreg.callbacks.OverfittingDetector` (a `TrialPruningDetector`). Bad
        input it finds in `fit` (a name missing from the logs, a direction
        against the metric's) is keras-tuner's `FatalValueError`, a
        `ValueError` that ends the search at once rather than failing trial
        after trial alike.

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
    """Tuner mixin: ends a trial once it cannot reach the search's best, sooner once it saturates.

    keras-tuner has no in-trial pruning of its own: a trial ends early only
    when a callback stops its `fit`. Mixed into a tuner class, this adds a fresh
    pruning `OverfittingDetector` to every trial's callbacks (which ends a
    trial once, at its pace, it would not reach the best score of the
    search's finished trials, read from the tuner's oracle; a saturated
    trial is judged on a shorter window; see `pruning_detector`), and a
    `kreg.callbacks.PreciseBatchNorm` on the training inputs, so that batch
    norms are validated with their real population statistics (moving
    statistics that lag the weights make a noisy validation curve, not
    overfitting: on a few hundred samples such trials validate near chance
    and would be pruned for it). It checks up front
    that the search has validation data (the detector needs `val_loss`), and
    records per trial the epochs trained (`trial_epochs`) and the epoch it was
    pruned after (`pruned_trials`). Trials are scored as keras-tuner always
    scores them, by their best epoch, which the detector has already passed when
    it stops a trial. Under `keras_tuner.Hyperband` only the trials of a
    bracket's last round (`tuner/round == tuner/bracket`) are judged: the earlier
    rounds are ranked against each other for promotion, which ending one of
    them early would skew.

    Args:
        prune_on: The detector states in which a trial's pace is judged over
            the detector's `patience` (see `pruning_detector`): `"saturated"`
            (default), `"overfitting"` and/or `"underfitting"`. `()` only
            watches and counts.
        detector_kwargs: Optional dict of `pruning_detector` arguments
            (`patience`, `smoothing`, `objective_patience`, ...), except
            `action`; `objective` defaults to the tuner's (name it when the
            tuner has several objectives).
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

    def __init__(self, *args, prune_on=(SATURATED,), detector_kwargs=None, **kwargs):
        check_seed("seed", kwargs.get("seed"))
        detector_kwargs = dict(detector_kwargs or {})
        self.detector = pruning_detector(prune_on, **detector_kwargs)
        self.trial_epochs = {}
        self.pruned_trials = {}
        super().__init__(*args, **kwargs)
        if "objective" not in detector_kwargs:
            if hasattr(self.oracle.objective, "objectives"):
                # keras-tuner's MultiObjective: a sum no epoch logs, that no trial would be
                # judged by.
                raise ValueError(
                    "Invalid value received for argument `detector_kwargs`. With several "
                    "objectives, name the one whose pace is judged, e.g. "
                    "detector_kwargs={'objective': 'val_accuracy'}. Received: objective="
                    f"{[o.name for o in self.oracle.objective.objectives]!r}"
                )
            # Trials are judged by the objective the search ranks them by.
            self.detector.objective, self.detector.objective_mode = _objective_name_and_mode(
                self.oracle.objective, self.detector.monitor
            )
        # The oracle scores a trial by all its executions and knows the trials of
        # every worker: the search's best is read from it before each trial.
        self.detector.search.set_by_tuner = self.detector.objective == self.oracle.objective.name

    @property
    def total_epochs(self):
        """Epochs trained by all the trials this tuner ran."""
        return sum(self.trial_epochs.values())

    def run_trial(self, trial, *args, **kwargs):
        has_split = bool(kwargs.get("validation_split"))
        if kwargs.get("validation_data") is None and not has_split:
            raise fatal_value_error(
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
        kwargs["callbacks"] = (
            ([precise] if precise else []) + callbacks + [copy.deepcopy(self.detector)]
        )
        self.trial_epochs.setdefault(trial.trial_id, 0)
        if self.detector.search.set_by_tuner:
            self.detector.search.value = self.reference_for(trial)
        return super().run_trial(trial, *args, **kwargs)

    def reference_for(self, trial):
        """The score `trial` is judged against (signed: lower is better), or `None`
        where it is not to be pruned."""
        values = trial.hyperparameters.values
        if values.get("tuner/round", 0) < values.get("tuner/bracket", 0):
            # A Hyperband round that successive halving ranks for promotion (a
            # bracket's last round is its number; keras_tuner/src/tuners/hyperband.py):
            # its trials compete with each other, not with the search's best, and
            # ending one early would change the ranking, not save its epochs.
            return None
        # Finished trials only (the oracle averages a trial's executions), every
        # worker's too; none yet: the trial leads. Without a completed trial the
        # oracle's "best" is any other (running, or failed with a NaN score).
        best = self.oracle.get_best_trials(1)
        if (
            not best
            or best[0].status != "COMPLETED"
            or best[0].score is None
            or not math.isfinite(best[0].score)
        ):
            return None
        # The search's best is read only for the oracle's own objective (`set_by_tuner`).
        return (-1.0 if self.oracle.objective.direction == "max" else 1.0) * best[0].score

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        self.trial_epochs[trial.trial_id] = self.trial_epochs.get(trial.trial_id, 0) + 1
        if self.detector.search.ended_after == epoch:
            self.pruned_trials[trial.trial_id] = epoch

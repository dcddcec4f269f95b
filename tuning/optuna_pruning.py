"""Optuna pruning for Keras that also ends a trial once it cannot reach the study's best."""

import math
import warnings

import keras

from kreg._extras import require
from kreg._validation import check_choice
from kreg.callbacks.monitoring import check_declared_direction
from kreg.callbacks.monitoring import monitor_direction
from kreg.callbacks.monitoring import monitored_scalar
from kreg.callbacks.monitoring import without_validation
from kreg.callbacks.overfitting_detector import OVERFITTING
from kreg.tuning.pruning import StopTrial
from kreg.tuning.pruning import TrialPruningDetector

ON_OVERFITTING = ("stop", "prune")


def _study_direction(mode):
    """Optuna's name for a direction: `"min"` -> `"minimize"`, `"max"` -> `"maximize"`;
    `None` for `"auto"` (read from the compiled metric at the first epoch's end)."""
    return {"min": "minimize", "max": "maximize"}.get(mode)


class _EndOptunaTrial(StopTrial):
    """Ends an Optuna trial the detector gives up on: stops its `fit`, or prunes
    it (`on_overfitting="prune"`), and notes why on the trial."""

    def __init__(self, callback, prune_on):
        super().__init__(prune_on)
        self.callback = callback

    def end(self, detector, epoch, reason):
        callback = self.callback
        callback.ended_after = epoch
        if detector.onset_epoch is not None:
            callback.trial.set_user_attr("overfitting_onset_epoch", detector.onset_epoch)
        callback.trial.set_user_attr("stopped_after_epoch", epoch)
        callback.trial.set_user_attr("stopped_because", reason)
        if callback.on_overfitting == "prune":
            raise callback.optuna.TrialPruned(f"kreg: {reason}; pruned after epoch {epoch + 1}.")
        super().end(detector, epoch, reason)


class OptunaPruningCallback(keras.callbacks.Callback):
    """Reports a Keras metric to an Optuna trial every epoch; ends hopeless trials.

    Built by `kreg.tuning.optuna_pruning_callback`; see there.
    """

    def __init__(self, trial, optuna, monitor, mode, on_overfitting, detector_kwargs):
        super().__init__()
        self.trial = trial
        self.optuna = optuna
        self.monitor = monitor
        self.mode = mode
        self.direction = _study_direction(mode)
        self.on_overfitting = on_overfitting
        # The rule of keras-tuner's pruning (kreg.tuning.pruning), judging
        # `monitor` against the study's best instead of a tuner's.
        prune_on = detector_kwargs.pop("prune_on", (OVERFITTING,))
        objective_patience = detector_kwargs.pop("objective_patience", None)
        self.detector = TrialPruningDetector(
            prune_on,
            monitor,
            mode,
            objective_patience,
            action=_EndOptunaTrial(self, prune_on),
            **detector_kwargs,
        )
        # The study is the record of the best (every worker's, through RDB storage).
        self.detector.search.set_by_tuner = True
        self.best = None
        self.ended_after = None

    def set_model(self, model):
        super().set_model(model)
        self.detector.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.detector.set_params(params)  # `epochs`: the last epoch the pace is extrapolated to

    def study_best(self):
        """The best value of the study's completed trials, signed (lower is better),
        or `None` before any (then this trial leads and is not ended)."""
        study = getattr(self.trial, "study", None)
        try:
            best = study.best_value  # completed trials only, read from the storage
        except (AttributeError, ValueError, RuntimeError):
            return None  # no study (FixedTrial), no completed trial, several objectives
        if best is None or not math.isfinite(best):
            return None
        return -best if self.direction == "maximize" else best

    def on_train_begin(self, logs=None):
        self._checked_direction = False
        self._checked_declared = False  # `mode` against the compiled metric's direction
        if self.mode != "auto":
            self._check_direction(self.direction)
        self.best = None
        self.ended_after = None
        self._reported = False
        self._epochs_ended = 0
        self._warned_missing = False
        self.detector.on_train_begin(logs)

    def _check_direction(self, direction):
        self._checked_direction = True
        self.direction = direction
        self.detector.objective_mode = "max" if direction == "maximize" else "min"
        study = getattr(self.trial, "study", None)
        directions = getattr(study, "directions", None)
        if directions is not None and len(directions) == 1:
            expected = directions[0].name.lower()
            if expected != self.direction:
                raise ValueError(
                    f"Invalid value received for argument `monitor`. The study is "
                    f"`direction='{expected}'` but `{self.monitor}` is one to "
                    f"{self.direction[:-1]}e (pass `mode=`, or monitor what the study "
                    f"optimizes). Received: monitor={self.monitor!r}"
                )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self._epochs_ended += 1
        value = logs.get(self.monitor)
        if value is None:
            if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in logs):
                # No validation this epoch: `validation_freq` > 1, or no validation
                # data at all, which `on_train_end` refuses if it lasts the whole fit.
                if not self._warned_missing:
                    self._warned_missing = True
                    warnings.warn(
                        f"kreg: epoch {epoch + 1} has no validation logs, so `{self.monitor}` "
                        "was not reported to Optuna (expected with `validation_freq` > 1; "
                        "otherwise pass `validation_data=` or `validation_split=` to `fit`).",
                        stacklevel=2,
                    )
                return
            raise ValueError(
                f"Invalid value received for argument `monitor`. `{self.monitor}` is not "
                f"in the epoch's logs, which hold {sorted(logs)}. Received: "
                f"monitor={self.monitor!r}"
            )
        if not self._checked_direction:
            # mode="auto": the direction the compiled metric declares, as Keras's
            # callbacks and OverfittingDetector read it (its metrics exist by now).
            self._check_direction(_study_direction(monitor_direction(self.model, self.monitor)))
        if not self._checked_declared:
            # A `mode` against the compiled metric's direction would report and
            # judge it upside down (its metrics exist by now).
            self._checked_declared = True
            check_declared_direction(self.model, self.monitor, self.mode)
        # A vector-valued metric (F1Score, one value per class) by its mean.
        value = monitored_scalar(keras.ops.convert_to_numpy(value))
        self._reported = True
        if math.isfinite(value) and (
            self.best is None
            or (value > self.best if self.direction == "maximize" else value < self.best)
        ):
            self.best = value
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(
                f"Trial {self.trial.number} pruned by {type(self.trial.study.pruner).__name__} "
                f"after epoch {epoch + 1} ({self.monitor}={value:.4g})."
            )
        detector = self.detector
        names = {"monitor": detector.monitor, "train_monitor": detector.train_monitor}
        missing = [(argument, name) for argument, name in names.items() if name not in logs]
        if missing and not without_validation(logs, tuple(names.values())):
            # A misspelt name would leave the overfitting rule unread, silently.
            argument, name = missing[0]
            raise ValueError(
                f"Invalid value received for argument `detector_kwargs`: its {argument} "
                f"`{name}` is not in the epoch's logs, which hold {sorted(logs)}. Received: "
                f"detector_kwargs={{{argument!r}: {name!r}}}"
            )
        if not missing:  # else an epoch without validation: the rule waits for one
            detector.search.value = self.study_best()
            detector.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self._epochs_ended and not self._reported:
            # A trial that reported nothing cannot be pruned, nor watched for
            # overfitting: say so rather than let the study run unpruned.
            raise ValueError(
                f"Invalid value received for argument `monitor`. `{self.monitor}` was in "
                "no epoch's logs: nothing was reported to Optuna and no pruning or "
                "overfitting check ran. Pass `validation_data=` or `validation_split=` "
                f"to `fit`, or monitor a training metric. Received: monitor={self.monitor!r}"
            )


def optuna_pruning_callback(
    trial,
    monitor="val_loss",
    mode="auto",
    on_overfitting="stop",
    detector_kwargs=None,
):
    """A Keras callback that ends an Optuna trial once it cannot reach the study's best.

    Every epoch it reports `monitor` to the trial (`trial.report(value, epoch)`)
    and, when the study's pruner says so (`trial.should_prune()`), raises
    `optuna.TrialPruned`, as Optuna's own Keras integration does. It also
    applies the rule of kreg's keras-tuner pruning (`pruning_detector`,
    `TrialPruningDetector`): the trial ends once its best `monitor` value so
    far, plus its gain per epoch over the last `objective_patience` epochs
    (over the detector's `patience` once its `OverfittingDetector` state is
    in `prune_on`) extrapolated to the last epoch of `fit`, is still behind
    the study's best value (`study.best_value`: its completed trials, those
    of every worker sharing its RDB storage too). Overfitting alone ends no
    trial: the loss curves can stall while the objective still creeps up to
    the study's best. The first trial, and any trial that leads the study,
    is never ended. The study's values must be in `monitor`'s units (return
    `callback.best`, the trial's best `monitor` value).

    With `on_overfitting="stop"` (default) an ended trial stops training and
    completes with its best score: a pruned Optuna trial never becomes
    `study.best_trial`, and its best epoch is already behind it.
    `on_overfitting="prune"` raises `optuna.TrialPruned` instead. Either way
    the trial's user attributes record `stopped_after_epoch`,
    `stopped_because` and, once the detector found it overfitting,
    `overfitting_onset_epoch`; `callback.ended_after` is the epoch it ended
    after (`None` if it ran to the end).

    Args:
        trial: The `optuna.Trial` of the objective.
        monitor: The logged quantity reported to Optuna each epoch. Defaults
            to `"val_loss"`. It must go the study's way (minimized for
            `direction="minimize"`); a mismatch is a `ValueError` when `fit`
            starts (with `mode="auto"`, at the first epoch's end, before
            anything is reported). A `fit` whose logs never hold it (a `val_` metric without
            validation data) is a `ValueError` when it ends: nothing could be
            pruned. A vector-valued metric (`keras.metrics.F1Score()`, one
            value per class) is reported by its mean.
        mode: `"min"`, `"max"` or `"auto"` (default: the direction the
            compiled metric declares, read at the first epoch's end as
            Keras's callbacks read it; a metric that declares none is a
            `ValueError` asking for `mode`). A `"min"` or `"max"` against the
            direction the compiled metric declares is a `ValueError` at the
            first epoch's end.
        on_overfitting: What ending a trial does: `"stop"` (default: stop
            training, the trial completes) or `"prune"` (raise
            `optuna.TrialPruned`).
        detector_kwargs: Optional dict of `pruning_detector` arguments:
            `prune_on` (default `("overfitting",)`; `()` ends no trial, the
            study's pruner still prunes), `objective_patience` and the
            `OverfittingDetector` arguments (`patience`, `smoothing`, ...),
            except `action` and `objective` (the callback judges `monitor`).
            Its `monitor` or `train_monitor` missing from the logs of an
            epoch that ran validation is a `ValueError`.

    Returns:
        A `keras.callbacks.Callback` for `model.fit(callbacks=[...])`.

    Raises:
        ImportError: Optuna is not installed (`pip install "kreg[optuna]"`).

    Example:

    ```python
    space = kreg.tuning.RegularizationSpace()
    hypermodel = kreg.tuning.CNNHyperModel((8, 8, 1), 10, space=space)

    def objective(trial):
        model = hypermodel.build(trial)  # the same space, names and ranges
        callback = kreg.tuning.optuna_pruning_callback(trial, "val_accuracy")
        history = hypermodel.fit(trial, model, x, y, validation_data=(x_val, y_val), epochs=30,
                                 callbacks=[callback])
        return max(history.history["val_accuracy"])

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner())
    study.optimize(objective, n_trials=20)
    print(space.describe(study.best_trial))
    ```
    """
    optuna = require("optuna", extra="optuna", feature="kreg.tuning.optuna_pruning_callback")
    check_choice("mode", mode, ("auto", "min", "max"))
    check_choice("on_overfitting", on_overfitting, ON_OVERFITTING)
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(
            "Invalid value received for argument `monitor`. Expected the name of a "
            f"logged metric, e.g. 'val_loss'. Received: monitor={monitor!r}"
        )
    if not (hasattr(trial, "report") and hasattr(trial, "should_prune")):
        raise TypeError(
            "Invalid value received for argument `trial`. Expected an optuna.Trial "
            f"(the objective's argument). Received: trial={trial!r}"
        )
    directions = getattr(getattr(trial, "study", None), "directions", None)
    if directions is not None and len(directions) > 1:
        # `trial.report` and pruning exist for single-objective studies only.
        raise ValueError(
            "Invalid value received for argument `trial`. Its study has "
            f"{len(directions)} objectives, and Optuna prunes only single-objective "
            "studies. Create the study with one `direction=`, or train without this "
            f"callback. Received: directions={[d.name.lower() for d in directions]}"
        )
    detector_kwargs = dict(detector_kwargs or {})
    for name, why in (
        ("action", "sets the detector's action itself"),
        ("objective", "judges `monitor`"),
    ):
        if name in detector_kwargs:
            raise ValueError(
                f"Invalid value received for argument `detector_kwargs`. The callback {why}. "
                f"Received: {name}={detector_kwargs[name]!r}"
            )
    return OptunaPruningCallback(trial, optuna, monitor, mode, on_overfitting, detector_kwargs)

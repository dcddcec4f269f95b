"""Optuna pruning for Keras that also knows about overfitting."""

import math
import warnings

import keras

from kreg._extras import require
from kreg._keras_compat import declared_direction
from kreg._validation import check_choice
from kreg.callbacks import OverfittingDetector
from kreg.callbacks.overfitting_detector import infer_mode

ON_OVERFITTING = ("stop", "prune")


def _direction(monitor, mode):
    # mode="auto" reads the name as OverfittingDetector does (one list of maximized metrics).
    mode = infer_mode(monitor) if mode == "auto" else mode
    return "maximize" if mode == "max" else "minimize"


class _OverfittingAction:
    """The detector's action: ends the trial's `fit` and notes why on the trial."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, detector, epoch):
        if detector.state != "overfitting":
            return
        callback = self.callback
        callback.overfitting_epoch = epoch
        onset = detector.onset_epoch
        callback.trial.set_user_attr("overfitting_onset_epoch", onset)
        callback.trial.set_user_attr("stopped_after_epoch", epoch)
        since = "" if onset is None else f" since epoch {onset + 1}"
        if callback.on_overfitting == "prune":
            raise callback.optuna.TrialPruned(f"Overfitting{since}; pruned after epoch {epoch + 1}.")
        detector.model.stop_training = True
        print(f"kreg: overfitting{since}; ending trial {callback.trial.number} after epoch {epoch + 1}.")


class OptunaPruningCallback(keras.callbacks.Callback):
    """Reports a Keras metric to an Optuna trial every epoch; prunes and stops on overfitting.

    Built by `kreg.tuning.optuna_pruning_callback`; see there.
    """

    def __init__(self, trial, optuna, monitor, mode, on_overfitting, detector_kwargs):
        super().__init__()
        self.trial = trial
        self.optuna = optuna
        self.monitor = monitor
        self.mode = mode
        self.direction = _direction(monitor, mode)
        self.on_overfitting = on_overfitting
        self.detector = OverfittingDetector(action=_OverfittingAction(self), **detector_kwargs)
        self.best = None
        self.overfitting_epoch = None

    def set_model(self, model):
        super().set_model(model)
        self.detector.set_model(model)

    def on_train_begin(self, logs=None):
        self._checked_direction = False
        if self.mode != "auto":
            self._check_direction(self.direction)
        self.best = None
        self.overfitting_epoch = None
        self._reported = False
        self._epochs_ended = 0
        self._warned_missing = False
        self.detector.on_train_begin(logs)

    def _check_direction(self, direction):
        self._checked_direction = True
        self.direction = direction
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
            declared = declared_direction(self.model, self.monitor)
            self._check_direction(_direction(self.monitor, declared or "auto"))
        value = float(keras.ops.convert_to_numpy(value))
        self._reported = True
        if math.isfinite(value) and (
            self.best is None or (value > self.best if self.direction == "maximize" else value < self.best)
        ):
            self.best = value
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(
                f"Trial {self.trial.number} pruned by {type(self.trial.study.pruner).__name__} "
                f"after epoch {epoch + 1} ({self.monitor}={value:.4g})."
            )
        if self.detector.monitor in logs and self.detector.train_monitor in logs:
            self.detector.on_epoch_end(epoch, logs)

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
    """A Keras callback that lets an Optuna trial prune, and ends it once it overfits.

    Every epoch it reports `monitor` to the trial (`trial.report(value, epoch)`)
    and, when the study's pruner says so (`trial.should_prune()`), raises
    `optuna.TrialPruned`, as Optuna's own Keras integration does. It also runs
    a `kreg.callbacks.OverfittingDetector` on the training and validation
    losses: once the trial overfits, its best epoch is behind it, so
    training stops there. With `on_overfitting="stop"` (default) the trial
    then ends normally and keeps its best score (return e.g.
    `max(history.history["val_accuracy"])`, or `callback.best`): a pruned
    Optuna trial never becomes `study.best_trial`, yet an overfitting trial's
    best epoch may well be the best of the search. `on_overfitting="prune"`
    raises `optuna.TrialPruned` instead. Either way the trial's user
    attributes record `overfitting_onset_epoch` and `stopped_after_epoch`.

    Args:
        trial: The `optuna.Trial` of the objective.
        monitor: The logged quantity reported to Optuna each epoch. Defaults
            to `"val_loss"`. It must go the study's way (minimized for
            `direction="minimize"`); a mismatch is a `ValueError` when `fit`
            starts (with `mode="auto"`, at the first epoch's end, before
            anything is reported). A `fit` whose logs never hold it (a `val_` metric without
            validation data) is a `ValueError` when it ends: nothing could be
            pruned.
        mode: `"min"`, `"max"` or `"auto"` (default: the direction the
            compiled metric declares, as Keras's callbacks and
            `OverfittingDetector` read it; by name where it declares none:
            `"max"` for accuracies, AUC, precision, recall, F1, IoU and R2).
        on_overfitting: `"stop"` (default) or `"prune"`.
        detector_kwargs: Optional dict of `OverfittingDetector` arguments
            (`patience`, `smoothing`, ...), except `action`.

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
        history = hypermodel.fit(trial, model, x, y, validation_data=(x_val, y_val), epochs=30,
                                 callbacks=[kreg.tuning.optuna_pruning_callback(trial, "val_accuracy")])
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
    detector_kwargs = dict(detector_kwargs or {})
    if "action" in detector_kwargs:
        raise ValueError(
            "Invalid value received for argument `detector_kwargs`. The callback sets "
            f"the detector's action itself. Received: action={detector_kwargs['action']!r}"
        )
    return OptunaPruningCallback(trial, optuna, monitor, mode, on_overfitting, detector_kwargs)

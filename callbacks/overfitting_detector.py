import math
import numbers
import warnings

import keras
import numpy as np

from kreg._keras_compat import declared_direction
from kreg._keras_compat import print_msg
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_rate
from kreg.callbacks.monitoring import without_validation
from kreg.callbacks.overfitting_criteria import CRITERIA
from kreg.callbacks.overfitting_criteria import DEFAULT_THRESHOLDS
from kreg.callbacks.overfitting_criteria import TESTS

LEARNING, OVERFITTING, UNDERFITTING = "learning", "overfitting", "underfitting"
# How the state is written into the logs (History and TensorBoard need numbers).
STATE_CODES = {LEARNING: 0.0, OVERFITTING: 1.0, UNDERFITTING: 2.0}
ACTIONS = ("warn", "stop", "rollback", "strengthen")
# Words in a metric's name that mean higher is better (mode="auto").
_MAXIMIZED = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")


def infer_mode(name):
    """`"max"` for accuracies, AUC, precision, recall, F1, IoU and R2; `"min"` otherwise.

    The fallback where the model does not say: in `fit`, `mode="auto"` first
    takes the direction the compiled metric declares, as Keras's callbacks do.
    """
    metric = name.removeprefix("val_")
    return "max" if any(word in metric for word in _MAXIMIZED) else "min"


def _scalar(value):
    """A vector-valued metric (one value per class) counts by its mean."""
    return float(np.mean(np.asarray(value, dtype="float64")))


@keras.saving.register_keras_serializable(package="kreg")
class OverfittingDetector(keras.callbacks.Callback):
    """Detects when training starts to overfit, or fails to fit at all.

    Reads the training and validation curves at the end of each epoch that
    ran validation (`fit(validation_freq=...)` skips some)
    (optionally smoothed with an exponential moving average) and calls the run:

    - **overfitting** when `criterion` says so. The default, `"progress"`: over
      the last `patience` epochs the validation curve gained, relatively, less
      than a tenth (`threshold`) of what the training curve gained, while
      training still gained at least 2%. That covers a U-shaped validation curve
      and a memorization plateau (validation flat while the training loss keeps
      falling) alike; a run whose validation still improves in step with
      training, slowly included, raises no alarm. Prechelt's `"gl"`, `"pq"` and
      `"up"` and a p-value test (`"p_value"`, after CatBoost's `IncToDec`) are
      the alternatives; `bench/overfitting_detector.py` measures them all on 12
      real runs (docs/BENCHMARKS.md);
    - **underfitting** when the training curve improved by less than
      `underfit_tolerance` (relative) over the last `patience` epochs while the
      generalization gap stays within `min_gap`;
    - **learning** otherwise.

    The onset of overfitting (`onset_epoch`, 0-based like Keras's epochs) is the
    epoch with the best raw validation value before the detection: the last
    epoch before the model started to overfit. If validation later improves
    enough that the criterion no longer holds, the detection was a plateau: the
    state returns to learning and a later one is detected (and acted on) afresh.

    Each epoch the callback adds `generalization_gap` (validation minus
    training) and `overfitting_state` (0 learning, 1 overfitting, 2
    underfitting) to the logs, so `History` and TensorBoard record them. When a
    state is first reached, `action` runs:

    - `"warn"` (default): a `UserWarning`;
    - `"stop"`: stop training;
    - `"rollback"`: restore the weights of the onset epoch (kept in memory, as
      `EarlyStopping(restore_best_weights=True)` keeps them) and stop;
    - `"strengthen"`: raise the rate of every kreg dropout layer whose rate is
      adjustable (`ConsistentDropout`, `WeightDropLSTM`/`GRU`; see
      `kreg.layers.adjustable_rates`) by `strengthen_step` on overfitting, lower
      it by the same step on underfitting; training goes on with the new rates
      at the next step, no retrace;
    - a callable, called as `action(detector, epoch)`.

    Each monitor keeps its own direction: `mode` for `monitor`, `train_mode` for
    `train_monitor`. With `"auto"`, the direction the compiled metric
    declares (as Keras's own callbacks read it; `CosineSimilarity` is
    maximized), else the one its name suggests (accuracy, AUC, F1: maximized). A vector-valued
    metric (`keras.metrics.F1Score()`, one value per class) counts by its mean.

    Args:
        monitor: Validation quantity. Defaults to `"val_loss"`.
        train_monitor: Training quantity. Defaults to `"loss"`.
        patience: Epochs (>= 1) the criterion looks back over. Defaults to 5.
        min_delta: A validation gain (absolute, >= 0) at most this large counts
            as none. Defaults to 0.
        min_gap: Gap (>= 0) between validation and training below which a
            stall counts as underfitting. Defaults to 0.
        smoothing: Factor in `[0, 1)` of the exponential moving average applied
            to both curves before the criterion; 0 uses the raw curves.
            Defaults to 0.3, which with `threshold` 0.2 met the most targets
            on the runs of `bench/overfitting_detector.py`.
        underfit_tolerance: Relative improvement of the training curve over
            `patience` epochs below which training counts as stalled. Defaults
            to 0.01 (1%).
        mode: `"auto"` (default), `"min"` or `"max"`: the direction of `monitor`.
        action: `"warn"` (default), `"stop"`, `"rollback"`, `"strengthen"` or
            a callable.
        start_from_epoch: Epochs to ignore at the start (warm-up).
        train_mode: `"auto"` (default), `"min"` or `"max"`: the direction of
            `train_monitor`.
        criterion: One of `"progress"` (default), `"gl"`, `"pq"`, `"up"`,
            `"p_value"` (see above).
        threshold: The criterion's level; `None` (default) takes its own
            default (progress 0.2, gl 5 percent, pq 0.5, up 2 strips,
            p_value 0.2).
        strengthen_step: Rate added (or removed) per detection by
            `action="strengthen"`. Defaults to 0.1; rates stay in `[0, 0.9]`.
        verbose: 0 or 1 (default): whether `"stop"`, `"rollback"` and
            `"strengthen"` print what they did, where Keras's callbacks print.

    Example:

    ```python
    detector = kreg.callbacks.OverfittingDetector(action="rollback")
    history = model.fit(x, y, validation_split=0.2, epochs=50, callbacks=[detector])
    print(detector.state, detector.onset_epoch, history.history["generalization_gap"])
    ```

    Reference:
        - [Prechelt, 1998](https://doi.org/10.1007/3-540-49430-8_3), Early
          Stopping - But When? (the GL, PQ and UP criteria).
        - CatBoost's overfitting detector (`IncToDec`), for the p-value test.
    """

    def __init__(
        self,
        monitor="val_loss",
        train_monitor="loss",
        patience=5,
        min_delta=0.0,
        min_gap=0.0,
        smoothing=0.3,
        underfit_tolerance=0.01,
        mode="auto",
        action="warn",
        start_from_epoch=0,
        train_mode="auto",
        criterion="progress",
        threshold=None,
        strengthen_step=0.1,
        verbose=1,
    ):
        super().__init__()
        for name, value in (("monitor", monitor), ("train_monitor", train_monitor)):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected the name of a "
                    f"logged metric. Received: {name}={value!r}"
                )
        self.monitor = monitor
        self.train_monitor = train_monitor
        self.patience = int(check_at_least("patience", patience, integer=True, minimum=1))
        self.min_delta = check_at_least("min_delta", min_delta)
        self.min_gap = check_at_least("min_gap", min_gap)
        self.smoothing = check_rate("smoothing", smoothing)
        self.underfit_tolerance = check_at_least("underfit_tolerance", underfit_tolerance)
        self.mode = check_choice("mode", mode, ("auto", "min", "max"))
        self.train_mode = check_choice("train_mode", train_mode, ("auto", "min", "max"))
        self.criterion = check_choice("criterion", criterion, CRITERIA)
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) or threshold <= 0:
                raise ValueError(
                    "Invalid value received for argument `threshold`. Expected None or a "
                    f"finite number > 0. Received: threshold={threshold!r}"
                )
        self.threshold = threshold
        if not (callable(action) or action in ACTIONS):
            raise ValueError(
                "Invalid value received for argument `action`. Expected one of "
                f"{', '.join(map(repr, ACTIONS))} or a callable. Received: action={action!r}"
            )
        self.action = action
        self.start_from_epoch = check_at_least("start_from_epoch", start_from_epoch, integer=True)
        self.strengthen_step = check_rate("strengthen_step", strengthen_step)
        if isinstance(verbose, bool) or verbose not in (0, 1):
            raise ValueError(f"Invalid value received for argument `verbose`. Expected 0 or 1. Received: verbose={verbose!r}")
        self.verbose = verbose
        if self.criterion in ("gl", "pq") and "max" in (self._direction(monitor, mode), self._direction(train_monitor, train_mode)):
            raise ValueError(
                f"Invalid value received for argument `criterion`: {criterion!r} needs "
                "positive errors to minimize (Prechelt's GL is a percentage of the best "
                f"error); {monitor!r} / {train_monitor!r} are maximized. Use "
                "criterion='progress' or 'p_value'."
            )
        self.reset()

    @staticmethod
    def _direction(name, mode):
        return infer_mode(name) if mode == "auto" else mode

    def _resolved_direction(self, name, mode):
        """`mode`, or for "auto" the direction the model's metric declares (read
        at the first epoch in `fit`), else the one its name suggests."""
        if mode == "auto" and self._declared and name in self._declared:
            return self._declared[name]
        return self._direction(name, mode)

    def reset(self):
        """Forgets the curves seen so far (done at the start of every `fit`)."""
        self.state = LEARNING
        self.onset_epoch = None
        self.states = []
        self.onset_weights = None
        self._smooth_train = []
        self._smooth_val = []
        self._raw_val = []
        self._epochs = []
        self._best_weights = None
        self._best_raw = math.inf
        self._new_best = False
        self._fired = set()
        self._last_logs = None
        self._declared = None  # read from the model at the first epoch in fit

    def _smooth(self, history, value):
        if not history:
            return value
        return self.smoothing * history[-1] + (1 - self.smoothing) * value

    def _overfitting(self):
        threshold = DEFAULT_THRESHOLDS[self.criterion] if self.threshold is None else self.threshold
        test = TESTS[self.criterion]
        return test(self._smooth_train, self._smooth_val, self.patience, threshold, self.min_delta)

    def update(self, epoch, train_value, val_value):
        """Feeds one epoch's values; returns the state. Pure of Keras: testable alone."""
        train = (-1.0 if self._resolved_direction(self.train_monitor, self.train_mode) == "max" else 1.0) * _scalar(train_value)
        val = (-1.0 if self._resolved_direction(self.monitor, self.mode) == "max" else 1.0) * _scalar(val_value)
        self._smooth_train.append(self._smooth(self._smooth_train, train))
        self._smooth_val.append(self._smooth(self._smooth_val, val))
        self._raw_val.append(val)
        self._epochs.append(epoch)
        self._new_best = val < self._best_raw
        if self._new_best:
            self._best_raw = val

        overfitting = self._overfitting()
        if self.state == OVERFITTING and not overfitting and self._new_best:
            # Validation found a new best and the criterion no longer holds:
            # that was a plateau, not the onset. A later one is acted on afresh.
            self.state, self.onset_epoch, self.onset_weights = LEARNING, None, None
            self._fired.discard(OVERFITTING)
        if self.state != OVERFITTING and overfitting:
            self.state = OVERFITTING
            best = min(range(len(self._raw_val)), key=self._raw_val.__getitem__)
            self.onset_epoch = self._epochs[best]
        elif self.state != OVERFITTING:
            self.state = UNDERFITTING if self._stalled() else LEARNING
        self.states.append(self.state)
        return self.state

    def _stalled(self):
        if len(self._smooth_train) <= self.patience:
            return False
        if self._smooth_val[-1] - self._smooth_train[-1] > self.min_gap:
            return False
        before = self._smooth_train[-1 - self.patience]
        improvement = (before - self._smooth_train[-1]) / max(abs(before), 1e-12)
        return improvement < self.underfit_tolerance

    def on_train_begin(self, logs=None):
        self.reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if epoch < self.start_from_epoch:
            return
        self._last_logs = logs
        if without_validation(logs, (self.monitor, self.train_monitor)):
            return  # an epoch `fit(validation_freq=...)` ran without validation
        self._check_logs(logs)
        if self._declared is None:
            # The compiled metrics exist by the first epoch's end.
            self._declared = {}
            for name in (self.monitor, self.train_monitor):
                direction = declared_direction(self.model, name)
                if direction is not None:
                    self._declared[name] = direction
        train_value, val_value = _scalar(logs[self.train_monitor]), _scalar(logs[self.monitor])
        state = self.update(epoch, train_value, val_value)
        if self._new_best and self.action == "rollback":
            self._best_weights = self.model.get_weights()
        if state == OVERFITTING and self.onset_weights is None and self.action == "rollback":
            self.onset_weights = self._best_weights
        logs["generalization_gap"] = val_value - train_value
        logs["overfitting_state"] = STATE_CODES[state]
        if state != LEARNING and state not in self._fired:
            self._fired.add(state)
            self._act(state, epoch)

    def _check_logs(self, logs):
        missing = [key for key in (self.monitor, self.train_monitor) if key not in logs]
        if missing:
            raise ValueError(
                f"OverfittingDetector needs {', '.join(f'`{m}`' for m in missing)} in the "
                f"logs. Available: {', '.join(sorted(logs)) or 'none'}. Validation "
                "metrics need validation data (`validation_data` or `validation_split`)."
            )

    def on_train_end(self, logs=None):
        if self._last_logs is not None and not self.states:
            self._check_logs(self._last_logs)  # no epoch had validation

    def _message(self, state, epoch):
        if state == OVERFITTING:
            return (
                f"Overfitting detected at epoch {epoch + 1}: {self.monitor} has not "
                f"improved in step with {self.train_monitor} since epoch "
                f"{self.onset_epoch + 1}. Consider more regularization (dropout, weight "
                "decay) or early stopping."
            )
        return (
            f"Underfitting detected at epoch {epoch + 1}: {self.train_monitor} has "
            f"stalled (under {self.underfit_tolerance:.0%} better over {self.patience} "
            "epochs) and validation tracks it. Regularization may be too strong, or "
            "capacity or learning rate too low."
        )

    def _act(self, state, epoch):
        message = self._message(state, epoch)
        if callable(self.action):
            self.action(self, epoch)
        elif self.action == "warn":
            warnings.warn(message, stacklevel=2)
        elif self.action == "stop":
            self.model.stop_training = True
            self._say(message + " Stopping training.")
        elif self.action == "rollback":
            if state == OVERFITTING:
                self.model.set_weights(self.onset_weights)
                self.model.stop_training = True
                self._say(message + f" Restored the weights of epoch {self.onset_epoch + 1} and stopped.")
            else:
                warnings.warn(message, stacklevel=2)
        else:
            changed = strengthen_dropout(self.model, self.strengthen_step if state == OVERFITTING else -self.strengthen_step)
            self._say(message + f" Dropout rates now: {changed or 'no adjustable kreg dropout layer'}.")
            # A later overfitting (or underfitting) acts again.
            self._fired.discard(state)
            if state == OVERFITTING:
                self.state, self.onset_epoch = LEARNING, None
                self._reset_window()

    def _reset_window(self):
        """After a change of regularization the curves so far no longer speak for it."""
        self._smooth_train, self._smooth_val = self._smooth_train[-1:], self._smooth_val[-1:]
        self._raw_val, self._epochs = self._raw_val[-1:], self._epochs[-1:]
        self._best_raw = self._raw_val[-1]

    def _say(self, message):
        if self.verbose:
            print_msg(message)

    def get_config(self):
        if callable(self.action):
            raise TypeError("An OverfittingDetector with a callable `action` cannot be serialized.")
        return self._detector_config()

    def _detector_config(self):
        """The constructor's arguments, `action` as it is (subclasses serialize their own)."""
        return {
            "monitor": self.monitor,
            "train_monitor": self.train_monitor,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "min_gap": self.min_gap,
            "smoothing": self.smoothing,
            "underfit_tolerance": self.underfit_tolerance,
            "mode": self.mode,
            "action": self.action,
            "start_from_epoch": self.start_from_epoch,
            "train_mode": self.train_mode,
            "criterion": self.criterion,
            "threshold": self.threshold,
            "strengthen_step": self.strengthen_step,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


MAX_STRENGTHENED_RATE = 0.9


def strengthen_dropout(model, step):
    """Adds `step` to every adjustable kreg dropout rate in `model` (clipped to
    `[0, 0.9]`); returns `{"layer.rate": new value}`."""
    from kreg._keras_compat import all_sublayers
    from kreg.layers.adjustable_rates import AdjustableRates

    changed = {}
    for layer in [model, *all_sublayers(model)]:
        if not isinstance(layer, AdjustableRates):
            continue
        for name in layer.adjustable_rates:
            value = min(max(layer.get_rate(name) + step, 0.0), MAX_STRENGTHENED_RATE)
            layer.set_rate(name, round(value, 6))
            changed[f"{layer.name}.{name}"] = layer.get_rate(name)
    return changed

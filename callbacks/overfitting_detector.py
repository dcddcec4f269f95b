import math
import warnings

import keras

from kreg._validation import check_choice
from kreg._validation import check_at_least
from kreg._validation import check_rate

LEARNING, OVERFITTING, UNDERFITTING = "learning", "overfitting", "underfitting"
# How the state is written into the logs (History and TensorBoard need numbers).
STATE_CODES = {LEARNING: 0.0, OVERFITTING: 1.0, UNDERFITTING: 2.0}


@keras.saving.register_keras_serializable(package="kreg")
class OverfittingDetector(keras.callbacks.Callback):
    """Detects when training starts to overfit, or fails to fit at all.

    Reads the training and validation curves at the end of each epoch, smoothed
    with an exponential moving average, and calls it:

    - **overfitting** when, for `patience` epochs in a row, the smoothed
      validation loss stays above its best by more than `min_delta` while the
      smoothed training loss keeps falling; or when the generalization gap
      (validation minus training) has grown for `patience` epochs in a row, is
      larger than `min_gap`, and validation no longer improves;
    - **underfitting** when the smoothed training loss improved by less than
      `underfit_tolerance` (relative) over the last `patience` epochs while the
      gap stays within `min_gap`: the model fits neither set better, the
      pattern of regularization that is too strong (or too low a capacity or
      learning rate);
    - **learning** otherwise.

    The onset of overfitting (`onset_epoch`, 0-based like Keras's epochs) is the
    epoch with the lowest raw validation loss before the rise was detected: the
    last epoch before the model started to overfit. If validation later beats
    that best after all, the detection was a plateau: the state returns to
    learning, `onset_epoch` to `None`, and a later rise is detected afresh. Each epoch, the callback
    adds `generalization_gap` and `overfitting_state` (0 learning, 1
    overfitting, 2 underfitting) to the logs, so `History` and TensorBoard
    record them. When a state is first reached, `action` runs: `"warn"` issues
    a warning, `"stop"` stops training, a callable is called as
    `action(detector, epoch)`.

    Args:
        monitor: Validation quantity. Defaults to `"val_loss"`.
        train_monitor: Training quantity. Defaults to `"loss"`.
        patience: Epochs (>= 1) a pattern must last to count. Defaults to 5.
        min_delta: Rise of the smoothed validation loss above its best that
            counts as rising (>= 0). Defaults to 0.
        min_gap: Gap (>= 0) between validation and training above which a
            growing gap counts as overfitting, and below which a stall counts
            as underfitting. Defaults to 0.
        smoothing: Factor in `[0, 1)` of the exponential moving average; 0 uses
            the raw curves. Defaults to 0.6. The defaults (patience 5, smoothing
            0.6) raised no alarm before the validation minimum on the runs of
            `bench/overfitting_detector.py`, dropout's noisy curves included;
            patience 3 and smoothing 0.3 detect ~3 epochs sooner but fired early
            on 3 of those 10 runs.
        underfit_tolerance: Relative improvement of the training loss over
            `patience` epochs below which training counts as stalled. Defaults
            to 0.01 (1%).
        mode: `"min"` (losses, default), `"max"` (accuracies) or `"auto"`
            (`"max"` when `monitor` names an accuracy, AUC or precision/recall).
        action: `"warn"` (default), `"stop"` or a callable.
        start_from_epoch: Epochs to ignore at the start (warm-up).

    Example:

    ```python
    detector = kreg.callbacks.OverfittingDetector(action="warn")
    history = model.fit(x, y, validation_split=0.2, epochs=50, callbacks=[detector])
    print(detector.state, detector.onset_epoch, history.history["generalization_gap"])
    ```

    Reference:
        - [Prechelt, 1998](https://doi.org/10.1007/3-540-49430-8_3), Early
          Stopping - But When? (generalization loss and training progress).
    """

    def __init__(
        self,
        monitor="val_loss",
        train_monitor="loss",
        patience=5,
        min_delta=0.0,
        min_gap=0.0,
        smoothing=0.6,
        underfit_tolerance=0.01,
        mode="min",
        action="warn",
        start_from_epoch=0,
    ):
        super().__init__()
        self.monitor = monitor
        self.train_monitor = train_monitor
        self.patience = int(check_at_least("patience", patience, integer=True, minimum=1))
        self.min_delta = check_at_least("min_delta", min_delta)
        self.min_gap = check_at_least("min_gap", min_gap)
        self.smoothing = check_rate("smoothing", smoothing)
        self.underfit_tolerance = check_at_least("underfit_tolerance", underfit_tolerance)
        self.mode = check_choice("mode", mode, ("auto", "min", "max"))
        if not (callable(action) or action in ("warn", "stop")):
            raise ValueError(
                "Invalid value received for argument `action`. Expected 'warn', "
                f"'stop' or a callable. Received: action={action!r}"
            )
        self.action = action
        self.start_from_epoch = check_at_least("start_from_epoch", start_from_epoch, integer=True)
        self.reset()

    def reset(self):
        """Forgets the curves seen so far (done at the start of every `fit`)."""
        self.state = LEARNING
        self.onset_epoch = None
        self.states = []
        self._smooth_train = []
        self._smooth_val = []
        self._raw_val = []
        self._epochs = []
        self._best_smooth_val = math.inf
        self._rise_count = 0
        self._gap_count = 0
        self._fired = set()

    def _sign(self):
        mode = self.mode
        if mode == "auto":
            maximize = ("acc", "auc", "precision", "recall")
            mode = "max" if any(word in self.monitor for word in maximize) else "min"
        return -1.0 if mode == "max" else 1.0

    def _smooth(self, history, value):
        if not history:
            return value
        return self.smoothing * history[-1] + (1 - self.smoothing) * value

    def update(self, epoch, train_value, val_value):
        """Feeds one epoch's values; returns the state. Pure of Keras: testable alone."""
        sign = self._sign()
        train, val = sign * train_value, sign * val_value
        smooth_train = self._smooth(self._smooth_train, train)
        smooth_val = self._smooth(self._smooth_val, val)
        previous_train = self._smooth_train[-1] if self._smooth_train else None
        previous_gap = (self._smooth_val[-1] - self._smooth_train[-1]) if self._smooth_val else None
        self._smooth_train.append(smooth_train)
        self._smooth_val.append(smooth_val)
        self._raw_val.append(val)
        self._epochs.append(epoch)

        improving = smooth_val < self._best_smooth_val - self.min_delta
        self._best_smooth_val = min(self._best_smooth_val, smooth_val)
        rising = smooth_val > self._best_smooth_val + self.min_delta
        train_falling = previous_train is not None and smooth_train < previous_train
        self._rise_count = self._rise_count + 1 if rising and train_falling else 0
        gap = smooth_val - smooth_train
        gap_growing = previous_gap is not None and gap > previous_gap and gap > self.min_gap
        self._gap_count = self._gap_count + 1 if gap_growing and not improving else 0

        if self.state == OVERFITTING and val < self._raw_val[self._epochs.index(self.onset_epoch)] - self.min_delta:
            # Validation found a new best after all: that was a plateau, not the
            # onset. Forget it; a later rise is detected (and acted on) afresh.
            self.state, self.onset_epoch = LEARNING, None
            self._fired.discard(OVERFITTING)
            self._rise_count = self._gap_count = 0
            self._best_smooth_val = smooth_val
        if self.state != OVERFITTING and max(self._rise_count, self._gap_count) >= self.patience:
            self.state = OVERFITTING
            best = min(range(len(self._raw_val)), key=self._raw_val.__getitem__)
            self.onset_epoch = self._epochs[best]
        elif self.state != OVERFITTING:
            self.state = UNDERFITTING if self._stalled(gap) else LEARNING
        self.states.append(self.state)
        return self.state

    def _stalled(self, gap):
        if len(self._smooth_train) <= self.patience or gap > self.min_gap:
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
        missing = [key for key in (self.monitor, self.train_monitor) if key not in logs]
        if missing:
            raise ValueError(
                f"OverfittingDetector needs {', '.join(f'`{m}`' for m in missing)} in the "
                f"logs. Available: {', '.join(sorted(logs)) or 'none'}. Validation "
                "metrics need validation data (`validation_data` or `validation_split`)."
            )
        state = self.update(epoch, float(logs[self.train_monitor]), float(logs[self.monitor]))
        logs["generalization_gap"] = float(logs[self.monitor]) - float(logs[self.train_monitor])
        logs["overfitting_state"] = STATE_CODES[state]
        if state != LEARNING and state not in self._fired:
            self._fired.add(state)
            self._act(state, epoch)

    def _act(self, state, epoch):
        if state == OVERFITTING:
            message = (
                f"Overfitting detected at epoch {epoch + 1}: {self.monitor} has not "
                f"improved since epoch {self.onset_epoch + 1} while {self.train_monitor} "
                "keeps improving. Consider more regularization (dropout, weight decay) "
                "or early stopping."
            )
        else:
            message = (
                f"Underfitting detected at epoch {epoch + 1}: {self.train_monitor} has "
                f"stalled (under {self.underfit_tolerance:.0%} better over {self.patience} "
                "epochs) and validation tracks it. Regularization may be too strong, or "
                "capacity or learning rate too low."
            )
        if callable(self.action):
            self.action(self, epoch)
        elif self.action == "stop":
            self.model.stop_training = True
            print(message + " Stopping training.")
        else:
            warnings.warn(message, stacklevel=2)

    def get_config(self):
        if callable(self.action):
            raise TypeError("An OverfittingDetector with a callable `action` cannot be serialized.")
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
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

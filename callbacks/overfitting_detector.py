import math
import warnings

import keras

from kreg._keras_compat import declared_direction
from kreg._keras_compat import print_msg
from kreg._validation import check_at_least
from kreg._validation import check_choice
from kreg._validation import check_positive
from kreg._validation import check_rate
from kreg.callbacks.dropout_rates import adjustable_dropout_rates
from kreg.callbacks.dropout_rates import rates_built_at_zero
from kreg.callbacks.dropout_rates import update_dropout_rates
from kreg.callbacks.monitoring import check_declared_direction
from kreg.callbacks.monitoring import monitor_direction
from kreg.callbacks.monitoring import monitored_scalar
from kreg.callbacks.monitoring import without_validation
from kreg.callbacks.overfitting_criteria import CONFIRM
from kreg.callbacks.overfitting_criteria import CRITERIA
from kreg.callbacks.overfitting_criteria import DEFAULT_THRESHOLDS
from kreg.callbacks.overfitting_criteria import MIN_RESIDUALS
from kreg.callbacks.overfitting_criteria import TESTS
from kreg.callbacks.overfitting_criteria import WARM_UP_GL
from kreg.callbacks.overfitting_criteria import accuracy_noise
from kreg.callbacks.overfitting_criteria import curve_noise

LEARNING, OVERFITTING, SATURATED, UNDERFITTING = (
    "learning",
    "overfitting",
    "saturated",
    "underfitting",
)
STATES = (OVERFITTING, SATURATED, UNDERFITTING)
# How the state is written into the logs (History and TensorBoard need numbers).
STATE_CODES = {LEARNING: 0.0, OVERFITTING: 1.0, UNDERFITTING: 2.0, SATURATED: 3.0}
ACTIONS = ("warn", "stop", "rollback", "strengthen")
# The states each action acts on unless `act_on` says otherwise.
DEFAULT_ACT_ON = {
    "warn": STATES,
    "stop": (OVERFITTING,),
    "rollback": (OVERFITTING,),
    "strengthen": STATES,
    "callable": STATES,
}


@keras.saving.register_keras_serializable(package="kreg")
class OverfittingDetector(keras.callbacks.Callback):
    """Tells whether training overfits, has saturated or underfits, from the run's own noise.

    Reads the training and validation curves at the end of each epoch that
    ran validation (`fit(validation_freq=...)` skips some). The validation
    curve's noise is estimated from the run itself: the residual of each epoch
    around a parabola fitted to it and its two neighbours on each side (a
    5-point Savitzky-Golay smoothing), as a robust standard deviation (`noise`;
    none before the 7th validated epoch; for an accuracy over a known number
    of validation samples, `validation_samples`, the binomial standard error
    instead, known from the first epoch). Each state is a claim about the
    curves that can be checked:

    - **overfitting**: validation is worse than its best by more than
      `threshold` (1.5) times its noise at each of the last 2 epochs, while
      training improved after that best (the U shape); before the noise
      exists, a loss more than 2 percent above its best at each of the last
      2 epochs (Prechelt's GL), no other state being judged until then;
    - **saturated**: over the last `patience` epochs validation has not
      improved beyond its noise, while training still improved by at least
      `underfit_tolerance` (relative): the model memorizes;
    - **underfitting**: both have stalled, with a high training loss (above
      `underfit_level` times its first epoch's value, or a gap between the
      curves within `min_gap`);
    - **learning** otherwise (still improving, or converged with a low loss).

    `criterion` swaps the overfitting test for Prechelt's `"gl"`, `"pq"` or
    `"up"` or a p-value test (`"p_value"`, after CatBoost's `IncToDec`);
    saturation and underfitting are judged as above whatever the criterion.
    `bench/overfitting_detector.py` measures them all on 72 recorded runs
    (docs/BENCHMARKS.md).

    The onset (`onset_epoch`, 0-based like Keras's epochs) is the epoch of the
    best raw validation value when overfitting or saturation is detected. If
    validation later beats that best by more than its noise, the detection is
    withdrawn (the state returns to learning) and a later one is acted on
    afresh. An epoch whose value is NaN or infinite is skipped with a warning
    (`skipped_epochs` lists them): the state stays as it was and detection goes
    on at the next finite epoch. A run whose last validated epochs are all
    NaN or infinite is reported as diverged, with a warning at the end of
    `fit`.

    What a run cannot tell is said at the end of `fit`, with a warning: a
    noise not yet estimated (fewer than 7 finite validated epochs, nothing
    judged), no more finite validated epochs than `patience` (saturation and
    underfitting not judged), or a `fit` that ended before
    `start_from_epoch`. A `monitor` or `train_monitor` missing from the logs
    is a `ValueError`: at the first epoch that ran validation, or at the end
    of a `fit` that ran none (until then its epochs look like those that
    `validation_freq` skips).

    Each epoch the callback adds `generalization_gap` (validation minus
    training) and `overfitting_state` (0 learning, 1 overfitting,
    2 underfitting, 3 saturated) to the logs, so `History` and TensorBoard
    record them. When a state in `act_on` is first reached, `action` runs:

    - `"warn"` (default; acts on all three states): a `UserWarning`;
    - `"stop"` (overfitting): stop training;
    - `"rollback"` (overfitting): restore the weights of the onset epoch
      exactly (kept in memory, as `EarlyStopping(restore_best_weights=True)`
      keeps them) and stop;
    - `"strengthen"` (all three): raise the rate of every kreg dropout layer
      whose rate is adjustable (`ConsistentDropout`, `WeightDropLSTM`/`GRU`;
      see `kreg.layers.adjustable_rates`) by `strengthen_step` on overfitting
      or saturation, lower it on underfitting; training goes on with the new
      rates at the next step, no retrace. Layers built at rate 0 cannot be
      raised: they are named once. Where no rate can change (none is
      adjustable, or every one is already at 0.9 when raising, at 0 when
      lowering; said once), a state is acted on once, as `"warn"` acts, and
      stays in the logs. On the corpus
      runs where it triggers it did not lower the best validation loss
      (docs/BENCHMARKS.md);
    - a callable (all three), called as `action(detector, epoch)`.

    Each monitor keeps its own direction: `mode` for `monitor`, `train_mode` for
    `train_monitor`. With `"auto"`, the direction the compiled metric
    declares (as Keras's own callbacks read it; `CosineSimilarity` is
    maximized; a loss is minimized). Where the model declares none (or
    `update` is fed without a model), `mode="auto"` on a metric other than a
    loss is a `ValueError` asking for the mode, as Keras's callbacks raise.
    A vector-valued metric (`keras.metrics.F1Score()`, one value per class)
    counts by its mean.

    Args:
        monitor: Validation quantity. Defaults to `"val_loss"`.
        train_monitor: Training quantity. Defaults to `"loss"`.
        patience: Validated epochs (>= 1; `k` epochs apart under
            `fit(validation_freq=k)`) over which validation must not improve
            beyond its noise to be saturated, and training must stall to
            underfit (also the strip length of `"pq"`, `"up"`, `"p_value"`).
            Defaults to 5.
        min_delta: Added to the noise band, and to the warm-up's 2 percent
            band (absolute, >= 0). Defaults to 0.
        min_gap: `None` (default) or a gap (>= 0) between validation and
            training within which stalled training counts as underfitting
            whatever its level.
        smoothing: Factor in `[0, 1)` of the exponential moving average applied
            to the training curve, and to both curves before the `"gl"`,
            `"pq"`, `"up"` and `"p_value"` criteria. Defaults to 0.3.
        underfit_tolerance: Relative improvement of the (smoothed) training
            curve over `patience` epochs below which training counts as
            stalled. Defaults to 0.01 (1%).
        mode: `"auto"` (default), `"min"` or `"max"`: the direction of `monitor`.
        action: `"warn"` (default), `"stop"`, `"rollback"`, `"strengthen"` or
            a callable.
        start_from_epoch: Epochs to ignore at the start (warm-up).
        train_mode: `"auto"` (default), `"min"` or `"max"`: the direction of
            `train_monitor`.
        criterion: One of `"noise"` (default), `"gl"`, `"pq"`, `"up"`,
            `"p_value"`: the overfitting test (see above).
        threshold: The criterion's level; `None` (default) takes its own
            default (noise 1.5 standard deviations, chosen on the tuning half
            of `bench/data/corpus`; gl 5 percent, pq 0.5, up 2
            strips, p_value 0.2). The `"noise"` criterion's warm-up (GL above
            2 percent, before the noise exists) does not read it; `min_delta`
            raises both.
        strengthen_step: Rate added (or removed) per detection by
            `action="strengthen"`. Defaults to 0.1; rates stay in `[0, 0.9]`.
        verbose: 0 or 1 (default): whether `"stop"`, `"rollback"` and
            `"strengthen"` print what they did, where Keras's callbacks print.
        act_on: `None` (default: the action's own states, above) or the states
            among `"overfitting"`, `"saturated"`, `"underfitting"` that the
            action acts on.
        underfit_level: Stalled training counts as underfitting while its loss
            stays above this fraction of its first epoch's value (a minimized
            `train_monitor` only). Defaults to 0.5.
        validation_samples: `None` (default) or the number of validation
            samples (>= 1), for a `monitor` that is a fraction of them, such
            as `"val_accuracy"`: its noise is then the binomial standard error
            `sqrt(p (1 - p) / validation_samples)` at its best value `p` (at
            least one sample's worth, `1 / validation_samples`), known from the
            first epoch, instead of the estimate from the curve that needs 7
            validated epochs. A loss `monitor` (`"val_loss"`, `"<output>_loss"`)
            is a `ValueError` here, and a logged value outside `[0, 1]` (an
            accuracy in percent) one at that epoch.

    Example:

    ```python
    detector = kreg.callbacks.OverfittingDetector(action="rollback")
    history = model.fit(x, y, validation_split=0.2, epochs=50, callbacks=[detector])
    print(detector.state, detector.onset_epoch, history.history["overfitting_state"])
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
        min_gap=None,
        smoothing=0.3,
        underfit_tolerance=0.01,
        mode="auto",
        action="warn",
        start_from_epoch=0,
        train_mode="auto",
        criterion="noise",
        threshold=None,
        strengthen_step=0.1,
        verbose=1,
        act_on=None,
        underfit_level=0.5,
        validation_samples=None,
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
        self.min_gap = None if min_gap is None else check_at_least("min_gap", min_gap)
        self.smoothing = check_rate("smoothing", smoothing)
        self.underfit_tolerance = check_at_least("underfit_tolerance", underfit_tolerance)
        self.underfit_level = check_at_least("underfit_level", underfit_level)
        self.validation_samples = (
            None
            if validation_samples is None
            else check_at_least("validation_samples", validation_samples, integer=True, minimum=1)
        )
        if self.validation_samples is not None and (
            monitor.removeprefix("val_") == "loss" or monitor.endswith("_loss")
        ):
            # A loss below 1 would pass for a fraction in `update`, and its
            # noise would silently become a binomial one.
            raise ValueError(
                "Invalid value received for argument `validation_samples`. Expected None "
                "unless `monitor` is a fraction of the validation samples (an accuracy); "
                f"`{monitor}` is a loss. Received: validation_samples={validation_samples!r}, "
                f"monitor={monitor!r}"
            )
        self.mode = check_choice("mode", mode, ("auto", "min", "max"))
        self.train_mode = check_choice("train_mode", train_mode, ("auto", "min", "max"))
        self.criterion = check_choice("criterion", criterion, CRITERIA)
        check_positive("threshold", threshold, optional=True)
        self.threshold = threshold
        if not (callable(action) or action in ACTIONS):
            raise ValueError(
                "Invalid value received for argument `action`. Expected one of "
                f"{', '.join(map(repr, ACTIONS))} or a callable. Received: action={action!r}"
            )
        self.action = action
        if act_on is not None:
            act_on = (act_on,) if isinstance(act_on, str) else tuple(act_on)
            for state in act_on:
                check_choice("act_on", state, STATES)
        self.act_on = act_on
        self.start_from_epoch = check_at_least("start_from_epoch", start_from_epoch, integer=True)
        self.strengthen_step = check_rate("strengthen_step", strengthen_step)
        if isinstance(verbose, bool) or verbose not in (0, 1):
            raise ValueError(
                "Invalid value received for argument `verbose`. Expected 0 or 1. Received: "
                f"verbose={verbose!r}"
            )
        self.verbose = verbose
        self._rate_zero_reported = False
        self._bounds_reported = set()  # "ceiling (0.9)" / "floor (0)": rates that cannot move
        self.reset()
        self._check_criterion_direction()

    def _check_criterion_direction(self):
        """GL and PQ need errors to minimize; checked once each direction is known
        (a given mode or a loss at construction, the model's metric at the first epoch)."""
        known = [
            self._directions.get(name, mode)
            for name, mode in ((self.monitor, self.mode), (self.train_monitor, self.train_mode))
        ]
        if self.criterion in ("gl", "pq") and "max" in known:
            raise ValueError(
                f"Invalid value received for argument `criterion`: {self.criterion!r} needs "
                "positive errors to minimize (Prechelt's GL is a percentage of the best "
                f"error); {self.monitor!r} / {self.train_monitor!r} are maximized. Use "
                "criterion='noise' or 'p_value'."
            )

    @property
    def acts_on(self):
        """The states `action` acts on: `act_on`, or the action's own."""
        if self.act_on is not None:
            return self.act_on
        return DEFAULT_ACT_ON["callable" if callable(self.action) else self.action]

    def _resolved_direction(self, name, mode):
        """`mode`, or for "auto" the direction the model's metric declares (read
        at the first epoch in `fit`; a loss is minimized without a model)."""
        if name not in self._directions:
            self._directions[name] = monitor_direction(self.model, name, mode)
        return self._directions[name]

    def reset(self):
        """Forgets the curves seen so far (done at the start of every `fit`)."""
        self.state = LEARNING
        self.onset_epoch = None
        self.states = []
        self.onset_weights = None
        self.noise = None
        self._judged = False  # whether any epoch of this fit had a noise to judge by
        self.skipped_epochs = []
        self._smooth_train = []
        self._smooth_val = []
        self._raw_train = []
        self._raw_val = []
        self._epochs = []
        self._best_weights = None
        self._new_best = False
        self._fired = set()
        self._last_logs = None
        self._last_epoch = None  # the last epoch of this fit, read or not (`start_from_epoch`)
        self._metrics_read = False  # the model's metrics, read at the first epoch in fit
        # The direction of each monitor: a given mode, or a loss's, now; the
        # others from the model's metrics at the first epoch.
        self._directions = {}
        for name, mode in ((self.monitor, self.mode), (self.train_monitor, self.train_mode)):
            direction = mode if mode != "auto" else declared_direction(None, name)  # a loss: "min"
            if direction is not None:
                self._directions[name] = direction

    def _smooth(self, history, value):
        if not history:
            return value
        return self.smoothing * history[-1] + (1 - self.smoothing) * value

    def _threshold(self):
        return DEFAULT_THRESHOLDS[self.criterion] if self.threshold is None else self.threshold

    def _overfitting(self):
        test = TESTS[self.criterion]
        val = self._raw_val if self.criterion == "noise" else self._smooth_val
        return test(
            self._smooth_train, val, self.patience, self._threshold(), self.min_delta, self.noise
        )

    def _best_index(self):
        return min(range(len(self._raw_val)), key=self._raw_val.__getitem__)

    def update(self, epoch, train_value, val_value):
        """Feeds one epoch's values; returns the state. Pure of Keras: testable alone."""
        train = (
            -1.0 if self._resolved_direction(self.train_monitor, self.train_mode) == "max" else 1.0
        ) * monitored_scalar(train_value)
        val = (
            -1.0 if self._resolved_direction(self.monitor, self.mode) == "max" else 1.0
        ) * monitored_scalar(val_value)
        if not (math.isfinite(train) and math.isfinite(val)):
            self.skipped_epochs.append(epoch)
            warnings.warn(
                f"OverfittingDetector: epoch {epoch + 1} logged "
                f"{self.train_monitor}={train_value!r}, "
                f"{self.monitor}={val_value!r}; a NaN or infinite epoch is skipped "
                f"({len(self.skipped_epochs)} so far). If every later epoch is too, the run "
                "diverged: lower the learning rate or use keras.callbacks.TerminateOnNaN().",
                stacklevel=2,
            )
            self.states.append(self.state)
            return self.state
        self._new_best = not self._raw_val or val < min(self._raw_val)
        self._raw_train.append(train)
        self._raw_val.append(val)
        self._smooth_train.append(self._smooth(self._smooth_train, train))
        self._smooth_val.append(self._smooth(self._smooth_val, val))
        self._epochs.append(epoch)
        self.noise = self._noise(val_value)
        self._judged = self._judged or self.noise is not None

        if self.state in (OVERFITTING, SATURATED) and self._beats_onset(val):
            # Validation beat the onset's value by more than its noise: that
            # was a plateau, not the onset. A later one is acted on afresh.
            self.state, self.onset_epoch, self.onset_weights = LEARNING, None, None
            self._fired.difference_update((OVERFITTING, SATURATED))
        # Judged afresh every epoch: the logs claim overfitting only while the
        # criterion holds (a rise that falls back within the noise is a plateau).
        self.state = OVERFITTING if self._overfitting() else self._stalled_state()
        self._judged = self._judged or self.state == OVERFITTING  # by the warm-up GL
        if self.state in (OVERFITTING, SATURATED) and self.onset_epoch is None:
            self.onset_epoch = self._epochs[self._best_index()]
        elif self.state not in (OVERFITTING, SATURATED):
            self.onset_epoch = None
        self.states.append(self.state)
        return self.state

    def _noise(self, val_value):
        """The validation curve's noise: from the curve, or for an accuracy over
        `validation_samples` samples its binomial standard error at the best value."""
        if self.validation_samples is None:
            return curve_noise(self._raw_val)
        value = monitored_scalar(val_value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"Invalid value received for argument `validation_samples`: it makes the noise "
                f"of `{self.monitor}` the binomial standard error of a fraction (an accuracy) "
                f"over {self.validation_samples} samples, and `{self.monitor}` logged {value!r}, "
                "not a fraction in [0, 1]. Pass validation_samples=None for other metrics."
            )
        return accuracy_noise(abs(min(self._raw_val)), self.validation_samples)

    def _beats_onset(self, val):
        onset = self._epochs.index(self.onset_epoch)
        return val < self._raw_val[onset] - (self.noise or 0.0) - self.min_delta

    def _stalled_state(self):
        """Saturated, underfitting or learning, from the last `patience` epochs."""
        val, train = self._raw_val, self._smooth_train
        if len(val) <= self.patience or self.noise is None:
            return LEARNING
        if min(val[-self.patience :]) < min(val[: -self.patience]) - self.noise - self.min_delta:
            return LEARNING  # validation still improves beyond its noise
        before = train[-1 - self.patience]
        improvement = (before - train[-1]) / max(abs(before), 1e-12)
        if improvement >= self.underfit_tolerance:
            return SATURATED
        high = (
            self._resolved_direction(self.train_monitor, self.train_mode) == "min"
            and self._raw_train[-1] > self.underfit_level * self._raw_train[0]
        )
        small_gap = self.min_gap is not None and abs(val[-1] - self._raw_train[-1]) <= self.min_gap
        return UNDERFITTING if high or small_gap else LEARNING

    def on_train_begin(self, logs=None):
        self.reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        self._last_epoch = epoch
        if epoch < self.start_from_epoch:
            return
        self._last_logs = logs
        if without_validation(logs, (self.monitor, self.train_monitor)):
            return  # an epoch `fit(validation_freq=...)` ran without validation
        self._check_logs(logs)
        if not self._metrics_read:
            # The compiled metrics exist by the first epoch's end.
            self._metrics_read = True
            for name, mode, argument in (
                (self.monitor, self.mode, "mode"),
                (self.train_monitor, self.train_mode, "train_mode"),
            ):
                direction = check_declared_direction(self.model, name, mode, argument)
                if direction is not None:
                    self._directions[name] = direction
            self._check_criterion_direction()
        train_value, val_value = (
            monitored_scalar(logs[self.train_monitor]),
            monitored_scalar(logs[self.monitor]),
        )
        state = self.update(epoch, train_value, val_value)
        if self._new_best and self.action == "rollback" and epoch not in self.skipped_epochs:
            self._best_weights = self.model.get_weights()
        if (
            state in (OVERFITTING, SATURATED)
            and self.onset_weights is None
            and self.action == "rollback"
        ):
            self.onset_weights = self._best_weights
        logs["generalization_gap"] = val_value - train_value
        logs["overfitting_state"] = STATE_CODES[state]
        # A rise that falls back onto its plateau (overfitting, then saturated,
        # same onset) was acted on as overfitting already.
        repeated = state == SATURATED and OVERFITTING in self._fired
        if state in self.acts_on and state not in self._fired and not repeated:
            self._fired.add(state)
            self._act(state, epoch)

    def _check_logs(self, logs):
        for argument, name in (("monitor", self.monitor), ("train_monitor", self.train_monitor)):
            if name not in logs:
                raise ValueError(
                    f"Invalid value received for argument `{argument}`: `{name}` is not in "
                    f"the logs. Available: {', '.join(sorted(logs)) or 'none'}. Validation "
                    "metrics need validation data (`validation_data` or `validation_split`) "
                    "and a fit that reaches an epoch that validates (`validation_freq`). "
                    f"Received: {argument}={name!r}"
                )

    def on_train_end(self, logs=None):
        if self._last_logs is not None and not self.states:
            self._check_logs(self._last_logs)  # no epoch had validation
        message = self._unjudged()
        if message:
            warnings.warn(message, stacklevel=2)

    def _unjudged(self):
        """What this fit left unjudged, in words, or `None`: the run ended diverged,
        was too short for the noise or for `patience`, or ended before
        `start_from_epoch`."""
        if not self.states:
            if self._last_epoch is None or self._last_epoch >= self.start_from_epoch:
                return None
            return (
                f"OverfittingDetector read no epoch: start_from_epoch={self.start_from_epoch}, "
                f"and this fit ended after epoch {self._last_epoch + 1}. Lower "
                "`start_from_epoch` or train longer."
            )
        last_finite = self._epochs[-1] if self._epochs else -1
        diverged = [epoch for epoch in self.skipped_epochs if epoch > last_finite]
        if diverged:
            epochs = (
                f"validated epoch ({diverged[0] + 1})"
                if len(diverged) == 1
                else f"{len(diverged)} validated epochs ({diverged[0] + 1}-{diverged[-1] + 1})"
            )
            return f"OverfittingDetector: the run ended diverged: its last {epochs} logged NaN " + (
                "or infinite values; no validated epoch was finite, so nothing was judged."
                if last_finite < 0
                else f"or infinite values; its state ({self.state}) is that of epoch "
                f"{last_finite + 1}, the last finite one."
            )
        # Not `self.noise is None`: a window restarted by "strengthen" has no
        # noise again for a few epochs, after states were judged.
        if not self._judged and self.criterion == "noise":
            return (
                f"OverfittingDetector judged nothing: {len(self._raw_val)} finite validated "
                f"epochs, and its noise estimate needs {MIN_RESIDUALS + 4}. Train longer to "
                "get a state other than learning."
            )
        finite = len(self.states) - len(self.skipped_epochs)
        if finite <= self.patience and set(self.states) == {LEARNING}:
            return (
                f"OverfittingDetector: {finite} finite validated epochs, not more than "
                f"patience={self.patience}: saturation and underfitting were not judged. "
                "Train longer or lower `patience`."
            )
        return None

    def _message(self, state, epoch):
        if state == OVERFITTING:
            return (
                f"Overfitting detected at epoch {epoch + 1}: {self.monitor} is "
                f"{self._how_worse()}. Consider more regularization (dropout, weight decay) "
                "or early stopping."
            )
        if state == SATURATED:
            return (
                f"Validation saturated at epoch {epoch + 1}: {self.monitor} has not improved "
                f"beyond its noise ({self.noise or 0.0:.3g}) since epoch {self.onset_epoch + 1} "
                "while "
                f"{self.train_monitor} still improves: the model memorizes. More epochs will "
                "not help; more data or regularization may."
            )
        return (
            f"Underfitting detected at epoch {epoch + 1}: {self.train_monitor} has "
            f"stalled (under {self.underfit_tolerance:.0%} better over {self.patience} "
            "epochs) at a high value, and validation with it. Regularization may be too "
            "strong, or capacity or learning rate too low."
        )

    def _how_worse(self):
        """What the overfitting test measured, in words (the noise is 0 to none of them)."""
        best = f"its best (epoch {self.onset_epoch + 1})"
        if self.criterion != "noise":
            return f"worse than {best} by criterion={self.criterion!r} at {self._threshold():g}"
        if self.noise is None:
            return (
                f"more than {WARM_UP_GL:g}% above {best} at each of the last {CONFIRM} epochs "
                f"(Prechelt's GL, until its noise is estimated from {MIN_RESIDUALS + 4} "
                f"validated epochs) while {self.train_monitor} improves"
            )
        return (
            f"worse than {best} by more than {self._threshold():g} times its noise "
            f"({self.noise:.3g}) while {self.train_monitor} improves"
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
            if state == UNDERFITTING:
                warnings.warn(message, stacklevel=2)
                return
            self.model.set_weights(self.onset_weights)
            self.model.stop_training = True
            self._say(
                message + f" Restored the weights of epoch {self.onset_epoch + 1} and stopped."
            )
        else:
            self._strengthen(state, message)

    def _strengthen(self, state, message):
        step = -self.strengthen_step if state == UNDERFITTING else self.strengthen_step
        changed, at_bound, at_zero = strengthen_dropout(self.model, step)
        self._say(message + f" Dropout rates now: {changed or 'none changed'}.")
        bound = "floor (0)" if step < 0 else f"ceiling ({MAX_STRENGTHENED_RATE:g})"
        if at_bound and not changed and bound not in self._bounds_reported:
            # Adjustable rates that cannot move this way: said once per bound.
            self._bounds_reported.add(bound)
            warnings.warn(
                "OverfittingDetector(action='strengthen'): no dropout rate changed: every "
                f"adjustable rate is at its {bound}: {', '.join(at_bound)}.",
                stacklevel=3,
            )
        if not self._rate_zero_reported and (at_zero or not (changed or at_bound)):
            # Said once per detector: repeated at every detection it helps no one.
            self._rate_zero_reported = True
            warnings.warn(
                "OverfittingDetector(action='strengthen'): "
                + (
                    f"dropout rates built at 0 cannot be raised: {', '.join(at_zero)}. "
                    if at_zero
                    else ""
                )
                + (
                    ""
                    if changed or at_bound
                    else "The model has no adjustable kreg dropout rate to change. "
                )
                + "Build ConsistentDropout / WeightDropLSTM / WeightDropGRU with a rate > 0 to "
                "let it act.",
                stacklevel=3,
            )
        if not changed:
            # The curves still speak for the same model: acted on once, as "warn"
            # acts, not again at every later epoch.
            return
        # A later detection acts again, on the curves after the change.
        self._fired.discard(state)
        self.state, self.onset_epoch = LEARNING, None
        self._reset_window()

    def _reset_window(self):
        """After a change of regularization the curves so far no longer speak for it."""
        for curve in (
            self._smooth_train,
            self._smooth_val,
            self._raw_train,
            self._raw_val,
            self._epochs,
        ):
            del curve[:-1]

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
            "act_on": None if self.act_on is None else list(self.act_on),
            "underfit_level": self.underfit_level,
            "validation_samples": self.validation_samples,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


MAX_STRENGTHENED_RATE = 0.9


def strengthen_dropout(model, step):
    """Adds `step` to every adjustable kreg dropout rate in `model` (clipped to
    `[0, 0.9]`); returns `({"layer.rate": new value} of the rates that moved,
    ["layer.rate" already at the bound `step` pushes against], ["layer.rate"
    built at 0])`."""
    before = {
        f"{layer.name}.{name}": rate
        for (layer, name), rate in adjustable_dropout_rates(model).items()
    }
    rates = update_dropout_rates(
        model, lambda layer, name, rate: min(max(rate + step, 0.0), MAX_STRENGTHENED_RATE)
    )
    # A rate at the bound is set to the value it had: it did not change.
    changed = {key: rate for key, rate in rates.items() if abs(rate - before[key]) > 1e-6}
    at_bound = [key for key in rates if key not in changed]
    return changed, at_bound, rates_built_at_zero(model)

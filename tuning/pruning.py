import copy

import keras_tuner

from kreg._validation import check_choice
from kreg._validation import check_seed
from kreg.tuning.precise_statistics import precise_batch_norm_callback
from kreg.callbacks import OverfittingDetector
from kreg.callbacks.overfitting_detector import OVERFITTING
from kreg.callbacks.overfitting_detector import STATE_CODES
from kreg.callbacks.overfitting_detector import UNDERFITTING

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
        if detector.state not in self.prune_on or detector.model is None:
            return
        detector.model.stop_training = True
        since = "" if detector.onset_epoch is None else f" since epoch {detector.onset_epoch + 1}"
        print(f"kreg: {detector.state}{since}; ending this trial after epoch {epoch + 1}.")


def pruning_detector(prune_on=(OVERFITTING,), **detector_kwargs):
    """An `OverfittingDetector` that ends a trial's training once it overfits.

    Pass it in `callbacks=` to any tuner's `search`: keras-tuner deep-copies it
    for every trial, so each trial starts with a fresh detector. The trial's
    score is unchanged in meaning: keras-tuner scores a trial by its best epoch
    (and checkpoints that epoch), and the detector stops `patience` epochs
    after the validation minimum it reports, so the best epoch has been seen.
    Use `OverfittingPruning` to also count the epochs each trial trained.

    Args:
        prune_on: The detector states that end a trial: `"overfitting"`
            (default) and/or `"underfitting"` (training stalled while validation
            tracks it).
        **detector_kwargs: Arguments of `kreg.callbacks.OverfittingDetector`
            (`patience`, `smoothing`, ...), except `action`.

    Returns:
        A `kreg.callbacks.OverfittingDetector`.

    Example:

    ```python
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=20)
    tuner.search(x, y, validation_split=0.2, epochs=50,
                 callbacks=[kreg.tuning.pruning_detector(patience=5)])
    ```
    """
    if "action" in detector_kwargs:
        raise ValueError(
            "Invalid value received for argument `action`. pruning_detector sets the "
            f"action itself. Received: action={detector_kwargs['action']!r}"
        )
    return OverfittingDetector(action=StopTrial(prune_on), **detector_kwargs)


class OverfittingPruning:
    """Tuner mixin: ends each trial once `OverfittingDetector` sees it overfit.

    keras-tuner has no in-trial pruning of its own: a trial ends early only
    when a callback stops its `fit`. Mixed into a tuner class, this adds a fresh
    pruning `OverfittingDetector` to every trial's callbacks, and a
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
        detector_kwargs: Optional dict of `OverfittingDetector` arguments
            (`patience`, `smoothing`, ...), except `action`.
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
        self.detector = pruning_detector(prune_on, **dict(detector_kwargs or {}))
        self.trial_epochs = {}
        self.pruned_trials = {}
        super().__init__(*args, **kwargs)

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

import enum
import os
import warnings

import keras

from kreg._keras_compat import print_msg
from kreg._keras_compat import set_initial_epoch
from kreg._validation import check_at_least
from kreg._validation import check_bool
from kreg._validation import check_choice
from kreg._validation import check_finite
from kreg.callbacks.best_checkpoints import BestCheckpoints
from kreg.callbacks.checkpoint_path import check_filepath
from kreg.callbacks.checkpoint_path import format_filepath
from kreg.callbacks.checkpoint_path import placeholders
from kreg.callbacks.monitoring import all_finite
from kreg.callbacks.monitoring import monitor_direction
from kreg.callbacks.monitoring import monitored_scalar
from kreg.callbacks.monitoring import without_validation
from kreg.callbacks.run_journal import RunJournal
from kreg.callbacks.training_state import fit_averaging


class StopReason(enum.Enum):
    """Why training with `EarlyStoppingWithCheckpoint` ended.

    The callback's `stop_reason` holds one of these members; each member's
    `value` is its reason in words.

    Attributes:
        RUNNING: Training has not ended yet (or the callback never ran).
        COMPLETED: `fit` ran all its epochs.
        PATIENCE: The monitored value did not improve for `patience` epochs.
        NON_FINITE_LOSS: The loss became NaN or infinite.
        OTHER_CALLBACK: Another callback set `model.stop_training`.

    Example:

    >>> import os, tempfile
    >>> from kreg.callbacks import EarlyStoppingWithCheckpoint
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> x, y = np.zeros((8, 2)), np.zeros((8, 1))
    >>> folder = tempfile.mkdtemp()
    >>> stopper = EarlyStoppingWithCheckpoint(
    ...     os.path.join(folder, "best.keras"), monitor="loss", patience=5
    ... )
    >>> _ = model.fit(x, y, epochs=2, callbacks=[stopper], verbose=0)
    >>> stopper.stop_reason
    <StopReason.COMPLETED: 'completed all epochs'>
    >>> stopper.stop_reason.value
    'completed all epochs'
    """

    RUNNING = "running"
    COMPLETED = "completed all epochs"
    PATIENCE = "no improvement for `patience` epochs"
    NON_FINITE_LOSS = "the loss became NaN or infinite"
    OTHER_CALLBACK = "another callback stopped training"


# A stop that was decided before a kill: the resumed run trains no more epochs.
_DECIDED_STOPS = (StopReason.PATIENCE, StopReason.NON_FINITE_LOSS)


@keras.saving.register_keras_serializable(package="kreg")
class EarlyStoppingWithCheckpoint(keras.callbacks.EarlyStopping):
    """Early stopping that keeps the best model on disk and resumes a killed run exactly.

    Replaces the trio `EarlyStopping(restore_best_weights=True)`,
    `ModelCheckpoint(save_best_only=True)` and `BackupAndRestore`, and closes the
    gaps between them:

    - every time the monitored value improves, the model (or its weights) is saved
      to `filepath` atomically: written to a temporary file in the same folder,
      flushed to disk, then renamed over `filepath`, so the file on disk is always
      a complete, loadable checkpoint, even if the process is killed mid-save;
    - the training thread only takes a host copy of what is saved; a background
      thread writes the files (as `keras.callbacks.OrbaxCheckpoint` saves
      asynchronously), one epoch's at a time, each before the state file that
      names it. `fit` waits for them before it returns; after a `fit` an
      exception stopped, `wait_until_finished()` does (so does the next `fit`
      on the same `filepath`). A write that fails is raised in the training
      thread, at the next epoch's end or when training ends, as a
      `kreg.callbacks.CheckpointWriteError` naming the file; the last write of
      a `fit` an exception stopped is raised by `wait_until_finished()`, or
      else by the next `fit` on the same `filepath` before it trains (it would
      resume from the save before), and is lost if the process ends first;
    - with `keep_best=k` and placeholders in `filepath` (`"best-{epoch:02d}-
      {val_loss:.4f}.keras"`, formatted as `ModelCheckpoint` formats them), the
      k files with the best monitored values are kept and the others deleted,
      kept by epoch: where two epochs format to one name, the better file is
      never overwritten by the worse;
    - with `resume=True` (default), a backup of the weights, the optimizer
      state (its `iterations` included), the state of every seed generator
      (dropout masks: `save_weights` leaves them out) and the average of a
      `WeightAveraging` placed before this callback is written atomically
      after every epoch, with a state file (`filepath + ".state.json"`) holding
      the epoch to continue from, the best value, the best epoch's weights and
      the patience counter, for this epoch and the one before. A `fit`
      restarted after a kill, with the same `filepath`, goes on where the
      killed one was, epochs numbered as in one run (as `BackupAndRestore`
      does): with deterministic ops and `shuffle=False` it ends at the same
      epoch with the same weights as a run never killed. A backup that cannot
      be read falls back to the one before (a warning names it), and to a
      fresh start if neither can. The backups are removed when training ends;
      a run that ended starts fresh;
    - the best weights are restored at the end of training whether or not
      patience ran out (from memory, without reading the file back);
    - training stops, and the best weights come back, at the end of the epoch in
      which the loss or the monitored value becomes NaN or infinite (checked per
      epoch, not per batch: batch hooks would make Keras fetch the logs to the
      host after every batch);
    - with `strict=True` a monitored metric that does not exist is an error, not a
      warning, raised at the end of the first epoch (the first logs that list
      every metric), naming the metrics that do exist. Epochs without
      validation (`fit(validation_freq=...)` skips some) are not monitored,
      as `EarlyStopping` ignores them; a `val_` monitor that no epoch logs
      (no validation data) is the error once training ends;
    - a vector-valued monitor (`keras.metrics.F1Score()` logs one value per
      class) counts by its mean; Keras's `EarlyStopping` fails on it;
    - `stop_reason` (a `StopReason`) says why training ended.

    Every argument of `keras.callbacks.EarlyStopping` keeps its meaning; only
    `restore_best_weights` defaults to `True` here. Messages go where Keras's own
    callbacks print theirs, when `verbose=1`. Under a distribution strategy only
    the chief worker writes; every worker reads the state to resume, so the
    folder must be one they share (as `BackupAndRestore`'s `backup_dir`).

    Args:
        filepath: Where the best checkpoint goes: a `.keras` file (whole model)
            or, with `save_weights_only=True`, a `.weights.h5` file. Not a
            folder. Placeholders (`{epoch}`, `{val_loss:.4f}`, any logged
            metric) only with `keep_best`.
        monitor: Quantity to monitor. Defaults to `"val_loss"`.
        min_delta: Minimum change (>= 0) that counts as an improvement.
        patience: Epochs (>= 0) without improvement before training stops.
        verbose: 0 or 1. With 1, prints when it saves, resumes, stops and restores.
        mode: `"auto"`, `"min"` or `"max"`, as for `EarlyStopping`.
        baseline: `None` or a number the monitored quantity must beat.
        restore_best_weights: Restore the best epoch's weights at the end of
            training. Defaults to `True`.
        start_from_epoch: Epochs to wait before monitoring starts.
        save_weights_only: Save `model.save_weights` instead of `model.save`.
        strict: Raise (`True`, default) or only warn when `monitor` is missing.
        resume: Back up every epoch and continue a killed run (`True`,
            default), or always start fresh and write only the best checkpoint.
        keep_best: `None` (default: one file, `filepath`, rewritten at every
            improvement) or an integer k >= 1: keep the k checkpoints with the
            best monitored values, named by formatting `filepath`.

    Example:

    ```python
    stopper = kreg.callbacks.EarlyStoppingWithCheckpoint(
        "best.keras", monitor="val_loss", patience=5
    )
    model.fit(x, y, validation_split=0.2, epochs=100, callbacks=[stopper])
    print(stopper.stop_reason, stopper.best_epoch)
    ```

    Reference:
        - [Prechelt, 1998](https://doi.org/10.1007/3-540-49430-8_3), Early
          Stopping - But When?
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=True,
        start_from_epoch=0,
        save_weights_only=False,
        strict=True,
        resume=True,
        keep_best=None,
    ):
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                "Invalid value received for argument `monitor`. Expected the name of a "
                f"logged metric, such as 'val_loss'. Received: monitor={monitor!r}"
            )
        check_at_least("min_delta", min_delta)
        check_at_least("patience", patience, integer=True)
        check_at_least("start_from_epoch", start_from_epoch, integer=True)
        check_choice("mode", mode, ("auto", "min", "max"))
        if isinstance(verbose, bool) or verbose not in (0, 1):
            raise ValueError(
                "Invalid value received for argument `verbose`. Expected 0 or 1. Received: "
                f"verbose={verbose!r}"
            )
        check_finite("baseline", baseline, optional=True)
        for name, value in (
            ("restore_best_weights", restore_best_weights),
            ("save_weights_only", save_weights_only),
            ("strict", strict),
            ("resume", resume),
        ):
            check_bool(name, value)
        if keep_best is not None:
            check_at_least("keep_best", keep_best, integer=True, minimum=1)
        filepath = check_filepath(filepath, save_weights_only, keep_best)
        _check_writable_folder(filepath)
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            baseline=baseline,
            restore_best_weights=restore_best_weights,
            start_from_epoch=start_from_epoch,
        )
        self.filepath = filepath
        self.save_weights_only = save_weights_only
        self.strict = strict
        self.resume = resume
        self.keep_best = keep_best
        # The checkpoints, backups and state file, and the order they are written in.
        self._journal = RunJournal(filepath)
        self.stop_reason = StopReason.RUNNING
        self.resumed = False
        self.initial_epoch = 0  # where the last `fit` started (after a resume: where it continued)
        self.kept = []

    # Files.

    @property
    def best_filepath(self):
        """The checkpoint of the best epoch so far (`filepath` itself without placeholders)."""
        if self.keep_best is None or not self.kept:
            return self.filepath
        return self.kept[0]["path"]

    def _is_chief(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        extended = getattr(strategy, "extended", None)
        return getattr(extended, "should_checkpoint", True)

    def wait_until_finished(self):
        """Blocks until the files of the last epoch are written (they are written
        in a background thread); raises the writer's error, naming the file.

        `fit` waits at its end. After a `fit` an exception stopped, call this
        before reading the files (the next `fit` on this filepath waits too).
        """
        self._journal.wait()

    @property
    def state_path(self):
        """The state file beside the checkpoint: `filepath + ".state.json"`."""
        return self._journal.state_path

    def _save_model(self, path):
        # A host copy now; the file is written in the background, before the
        # state that names it (see `RunJournal.commit`), which also flushes the folder.
        self._journal.save_model(self.model, path, self.save_weights_only)

    # Resuming.

    def _resume(self, state):
        restored = self._journal.restore(
            state, self.model, fit_averaging(self), self.restore_best_weights
        )
        if restored is None:
            return
        chosen, best = restored
        if best is not None:
            self.best_weights = best["weights"]
        self.best = chosen["best"]
        self.best_epoch = chosen["best_epoch"]
        self.wait = chosen["wait"]
        self.stopped_epoch = chosen["stopped_epoch"]
        self.kept = chosen["kept"]
        next_epoch = chosen["next_epoch"]
        reason = (
            StopReason[chosen["stop_reason"]]
            if chosen["stop_reason"] in StopReason.__members__
            else None
        )
        if reason in _DECIDED_STOPS:
            # The killed run had already decided to stop: no more epochs.
            self.stop_reason = reason
            next_epoch = max(next_epoch, self.params.get("epochs", next_epoch))
        set_initial_epoch(self.model, next_epoch)
        self.initial_epoch = next_epoch
        self.resumed = True
        if self.verbose > 0:
            print_msg(
                f"Resuming from {self.state_path}: epoch {chosen['next_epoch'] + 1}, best "
                f"{self.monitor} {self.best} at epoch {self.best_epoch + 1}, waited {self.wait} "
                "epoch(s)."
            )

    # Hooks.

    def on_train_begin(self, logs=None):
        # Files a `fit` stopped by an exception left in flight are written
        # before anything here reads or clears the folder.
        self._journal.wait()
        super().on_train_begin(logs)
        self.stop_reason = StopReason.RUNNING
        self.resumed = False
        self.initial_epoch = 0
        self.kept = []
        self._metric_checked = False
        self._last_logs = None
        self._direction = None
        self._collision_warned = False
        self._journal.claim(self)
        state = self._journal.begin(self.monitor, self.mode, self.resume, self._is_chief())
        if state is not None:
            self._resume(state)
        # If the very first epoch already diverges, these are the best weights.
        self._start_weights = self.model.get_weights() if self.restore_best_weights else None

    def _check_sole_writer(self):
        if not self._journal.owned_by(self):
            raise ValueError(
                "Invalid value received for argument `filepath`: another "
                "EarlyStoppingWithCheckpoint began a `fit` on the same file since this one "
                "did, and both would write its checkpoint, backups and state. Give each "
                f"callback its own filepath. Received: filepath={self.filepath!r}"
            )

    def _set_monitor_op(self):
        # `MonitorCallback._set_monitor_op` (keras/src/callbacks/monitor_callback.py),
        # which `EarlyStopping` calls at its first epoch's end, with the direction
        # `monitor_direction` reads: it also knows a multi-output model's
        # per-output losses (`val_out_loss`), which Keras's asks a `mode` for.
        self._direction = monitor_direction(self.model, self.monitor, self.mode)
        self.monitor_op = keras.ops.less if self._direction == "min" else keras.ops.greater
        if self._direction == "min":
            self.min_delta = -abs(self.min_delta)

    def get_monitor_value(self, logs):
        value = super().get_monitor_value(logs)
        return None if value is None else monitored_scalar(value)

    def _check_logs(self, logs):
        if self.strict and self.monitor not in logs:
            raise ValueError(
                f"EarlyStoppingWithCheckpoint monitors `{self.monitor}`, which the "
                f"model does not log. Available: {', '.join(sorted(logs)) or 'none'}. "
                "Pass one of those as `monitor` (validation metrics need validation "
                "data), or strict=False to only warn."
            )
        missing = sorted(placeholders(self.filepath) - {"epoch"} - set(logs))
        if missing:
            raise ValueError(
                f"Invalid value received for argument `filepath`: its placeholder(s) "
                f"{missing} are not logged metrics. Available: {', '.join(sorted(logs))}. "
                f"Received: filepath={self.filepath!r}"
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._check_sole_writer()
        self._last_logs = logs
        if without_validation(logs, {self.monitor} | placeholders(self.filepath)):
            # An epoch `validation_freq` skips: nothing to monitor, but the backup
            # still counts the epoch. Keras's EarlyStopping returns early too.
            self._commit(epoch, back_up=True)
            return
        if not self._metric_checked:
            self._metric_checked = True
            self._check_logs(logs)
        watched = [logs[key] for key in ("loss", self.monitor) if logs.get(key) is not None]
        if not all(all_finite(value) for value in watched):
            self.stop_reason = StopReason.NON_FINITE_LOSS
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self._commit(epoch, back_up=False)
            return
        previous_best = self.best
        already_stopping = self.model.stop_training
        super().on_epoch_end(epoch, logs)
        # EarlyStopping changes `best` exactly when the value improved.
        improved = self.best is not None and self.best != previous_best
        removed = []
        if self.keep_best is None:
            if improved and self._is_chief():
                self._save_model(self.filepath)
                self._announce(epoch, self.filepath)
        else:
            current = self.get_monitor_value(logs)
            if current is not None and epoch >= self.start_from_epoch:
                removed = self._keep_if_among_best(epoch, logs, current)
        if self.model.stop_training and not already_stopping:
            self.stop_reason = StopReason.PATIENCE
        self._commit(epoch, back_up=True, improved=improved, removed=removed)

    def _announce(self, epoch, path):
        if self.verbose > 0:
            print_msg(
                f"\nEpoch {epoch + 1}: {self.monitor} = "
                f"{self.get_monitor_value(self._last_logs):.5f}, saved {path}"
            )

    def _keep_if_among_best(self, epoch, logs, current):
        """Saves this epoch if it ranks among the `keep_best` best; returns files to delete."""
        if self._direction is None:
            self._set_monitor_op()
        keeper = BestCheckpoints(self.keep_best, self._direction, self.kept)
        path = format_filepath(self.filepath, epoch, logs)
        plan = keeper.plan(epoch, current, path)
        if plan is None:
            if keeper.collides(path) and not self._collision_warned:
                self._collision_warned = True
                warnings.warn(
                    f"EarlyStoppingWithCheckpoint: epoch {epoch + 1} formats to {path!r}, the name "
                    "of a better kept checkpoint, which is kept; this epoch is not saved. Put "
                    "{epoch} in `filepath` to keep every epoch apart.",
                    stacklevel=3,
                )
            return []
        if self._is_chief():
            self._save_model(path)
            self._announce(epoch, path)
        self.kept, removed = plan
        return removed

    def _commit(self, epoch, back_up, improved=False, removed=()):
        """Hands this epoch to the journal: its checkpoint (if saved), its
        backup, and the counters of early stopping the state file records."""
        self._journal.commit(
            epoch,
            {
                "best": None if self.best is None else monitored_scalar(self.best),
                "best_epoch": int(self.best_epoch),
                "wait": int(self.wait),
                "stop_reason": self.stop_reason.name,
                "stopped_epoch": int(self.stopped_epoch),
                "kept": [dict(e) for e in self.kept],
            },
            model=self.model,
            averaging=fit_averaging(self),
            chief=self._is_chief(),
            resume=self.resume,
            back_up=back_up,
            best_backup=self.restore_best_weights and improved,
            removed=removed,
        )

    def on_train_end(self, logs=None):
        if self.stop_reason is StopReason.RUNNING:
            stopped = self.model.stop_training
            self.stop_reason = StopReason.OTHER_CALLBACK if stopped else StopReason.COMPLETED
        if self.stop_reason is StopReason.NON_FINITE_LOSS and self.best_weights is None:
            self.best_weights = self._start_weights
        super().on_train_end(logs)
        set_initial_epoch(self.model, None)
        self._journal.release(self)
        # The last epoch's files, before the state that ends the run; a write
        # that failed is raised here, in the training thread.
        self._journal.finish(
            {
                "stop_reason": self.stop_reason.name,
                "stopped_epoch": int(self.stopped_epoch),
                "kept": self.kept,
            },
            chief=self._is_chief(),
        )
        if not self._metric_checked and self._last_logs is not None:
            # No epoch had validation: the first-epoch check never ran.
            if self.strict:
                self._check_logs(self._last_logs)
            warnings.warn(
                f"EarlyStoppingWithCheckpoint monitored `{self.monitor}`, which no epoch "
                f"logged. Available: {', '.join(sorted(self._last_logs)) or 'none'}.",
                stacklevel=2,
            )
        if self.verbose > 0:
            ended = self.stop_reason.value
            if self.stop_reason in _DECIDED_STOPS:
                ended += f" (stopped at epoch {self.stopped_epoch + 1})"
            print_msg(
                f"Training ended: {ended}; best {self.monitor} {self.best} at epoch "
                f"{self.best_epoch + 1}."
            )

    def get_config(self):
        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            # EarlyStopping negates min_delta in place for mode "min" during fit.
            "min_delta": abs(self.min_delta),
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch,
            "save_weights_only": self.save_weights_only,
            "strict": self.strict,
            "resume": self.resume,
            "keep_best": self.keep_best,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_writable_folder(filepath):
    """Whether the checkpoint's folder exists and can be written, or can be
    created: its nearest existing parent is a folder that can be written."""
    folder = os.path.dirname(os.path.abspath(filepath))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            "Invalid value received for argument `filepath`: its folder "
            f"{folder!r} cannot be created ({existing!r} is a file). "
            f"Received: filepath={filepath!r}"
        )
    if not os.access(existing, os.W_OK):
        raise ValueError(
            "Invalid value received for argument `filepath`: its folder "
            f"{folder!r} cannot be written ({existing!r} is not writable). Received: "
            f"filepath={filepath!r}"
        )

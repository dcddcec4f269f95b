import enum
import json
import logging
import math
import os

import keras

from kreg._validation import check_choice
from kreg._validation import check_at_least
from kreg.callbacks.atomic_files import remove_stale_temporaries
from kreg.callbacks.atomic_files import write_atomically
from kreg.callbacks.atomic_files import write_json_atomically

logger = logging.getLogger("kreg")


class StopReason(enum.Enum):
    """Why training with `EarlyStoppingWithCheckpoint` ended."""

    RUNNING = "running"
    COMPLETED = "completed all epochs"
    PATIENCE = "no improvement for `patience` epochs"
    NON_FINITE_LOSS = "the loss became NaN or infinite"
    OTHER_CALLBACK = "another callback stopped training"


@keras.saving.register_keras_serializable(package="kreg")
class EarlyStoppingWithCheckpoint(keras.callbacks.EarlyStopping):
    """Early stopping that also keeps the best model on disk, safely.

    Replaces the usual trio `EarlyStopping(restore_best_weights=True)`,
    `ModelCheckpoint(save_best_only=True)` and `BackupAndRestore`, and closes the
    gaps between them:

    - every time the monitored value improves, the model (or its weights) is saved
      to `filepath` atomically: written to a temporary file in the same folder,
      flushed to disk, then renamed over `filepath`, so the file on disk is always
      a complete, loadable checkpoint, even if the process is killed mid-save;
    - the best weights are restored at the end of training whether or not
      patience ran out (from memory, without reading the file back);
    - training stops, and the best weights come back, at the end of the epoch in
      which the loss or the monitored value becomes NaN or infinite (checked per
      epoch, not per batch: batch hooks would make Keras fetch the logs to the
      host after every batch);
    - the stopping state (best value, best epoch, wait counter) is saved beside
      the checkpoint (`filepath + ".state.json"`): a killed and restarted `fit`
      continues the same patience instead of starting over. A `fit` that ended
      normally marks its state finished, so the next `fit` starts fresh;
    - with `strict=True` a monitored metric that does not exist is an error, not a
      warning, raised at the end of the first epoch (the first logs that list
      every metric, validation ones and keys added by a custom `train_step`
      included), naming the metrics that do exist;
    - `stop_reason` (a `StopReason`) says why training ended; it is also logged.

    Every argument of `keras.callbacks.EarlyStopping` keeps its meaning; only
    `restore_best_weights` defaults to `True` here. Under a distribution strategy
    only the chief worker writes files.

    Args:
        filepath: Where the best checkpoint goes: a `.keras` file (whole model)
            or, with `save_weights_only=True`, a `.weights.h5` file.
        monitor: Quantity to monitor. Defaults to `"val_loss"`.
        min_delta: Minimum change (>= 0) that counts as an improvement.
        patience: Epochs (>= 0) without improvement before training stops.
        verbose: 0 or 1. With 1, prints when it saves, stops and restores.
        mode: `"auto"`, `"min"` or `"max"`, as for `EarlyStopping`.
        baseline: Baseline value the monitored quantity must beat.
        restore_best_weights: Restore the best epoch's weights at the end of
            training. Defaults to `True`.
        start_from_epoch: Epochs to wait before monitoring starts.
        save_weights_only: Save `model.save_weights` instead of `model.save`.
        strict: Raise (`True`, default) or only warn when `monitor` is missing.
        resume: Continue the patience state a killed run left beside
            `filepath` (`True`, default), or always start fresh.

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
    ):
        check_at_least("min_delta", min_delta)
        check_at_least("patience", patience, integer=True)
        check_at_least("start_from_epoch", start_from_epoch, integer=True)
        check_choice("mode", mode, ("auto", "min", "max"))
        filepath = os.fspath(filepath)
        extension = ".weights.h5" if save_weights_only else ".keras"
        if not filepath.endswith(extension):
            saved = "weights only" if save_weights_only else "the whole model"
            raise ValueError(
                f"Invalid value received for argument `filepath`. With "
                f"save_weights_only={save_weights_only} it saves {saved}, so the "
                f"path must end in `{extension}`. Received: filepath={filepath!r}"
            )
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
        self.state_path = filepath + ".state.json"
        self.stop_reason = StopReason.RUNNING
        self.resumed = False

    # State that survives a killed process.

    def _load_unfinished_state(self):
        if not (self.resume and os.path.exists(self.state_path)):
            return None
        with open(self.state_path) as file:
            state = json.load(file)
        if state.get("finished") or state.get("monitor") != self.monitor:
            return None
        return state

    def _save_state(self, finished):
        if not self._is_chief():
            return
        state = {
            "monitor": self.monitor,
            "best": None if self.best is None else float(self.best),
            "best_epoch": int(self.best_epoch),
            "wait": int(self.wait),
            "finished": finished,
            "stop_reason": self.stop_reason.name,
        }
        write_json_atomically(self.state_path, state)

    def _save_checkpoint(self, epoch):
        if not self._is_chief():
            return
        save = self.model.save_weights if self.save_weights_only else self.model.save
        write_atomically(self.filepath, save)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved to {self.best:.5f}, saved {self.filepath}")

    def _read_checkpoint_weights(self):
        """The weights in `filepath`, read through the model (any format, any model)."""
        current = self.model.get_weights()
        self.model.load_weights(self.filepath)
        best = self.model.get_weights()
        self.model.set_weights(current)
        return best

    def _is_chief(self):
        strategy = getattr(self.model, "distribute_strategy", None)
        extended = getattr(strategy, "extended", None)
        return getattr(extended, "should_checkpoint", True)

    # Hooks.

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.stop_reason = StopReason.RUNNING
        self._metric_checked = False
        # If the very first epoch already diverges, these are the best weights.
        self._start_weights = self.model.get_weights() if self.restore_best_weights else None
        remove_stale_temporaries(self.filepath)
        remove_stale_temporaries(self.state_path)
        state = self._load_unfinished_state()
        self.resumed = state is not None
        if self.resumed:
            self.best = state["best"]
            self.best_epoch = state["best_epoch"]
            self.wait = state["wait"]
            if self.restore_best_weights and os.path.exists(self.filepath):
                self.best_weights = self._read_checkpoint_weights()
            logger.info(
                "Resuming early stopping on %s: best %s at epoch %d, waited %d epoch(s)",
                self.monitor, self.best, self.best_epoch + 1, self.wait,
            )

    def _check_monitor_present(self, logs):
        logs = logs or {}
        if self.strict and self.monitor not in logs:
            raise ValueError(
                f"EarlyStoppingWithCheckpoint monitors `{self.monitor}`, which the "
                f"model does not log. Available: {', '.join(sorted(logs)) or 'none'}. "
                "Pass one of those as `monitor` (validation metrics need validation "
                "data), or strict=False to only warn."
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self._metric_checked:
            self._metric_checked = True
            self._check_monitor_present(logs)
        watched = {key: logs.get(key) for key in ("loss", self.monitor)}
        if any(value is not None and not math.isfinite(value) for value in watched.values()):
            self.stop_reason = StopReason.NON_FINITE_LOSS
            self.stopped_epoch = epoch
            self.model.stop_training = True
            self._save_state(finished=False)
            return
        previous_best = self.best
        already_stopping = self.model.stop_training
        super().on_epoch_end(epoch, logs)
        # EarlyStopping changes `best` exactly when the value improved (strictly,
        # and NaN never reaches it).
        if self.best is not None and self.best != previous_best:
            self._save_checkpoint(epoch)
        if self.model.stop_training and not already_stopping:
            self.stop_reason = StopReason.PATIENCE
        self._save_state(finished=False)

    def on_train_end(self, logs=None):
        if self.stop_reason is StopReason.RUNNING:
            stopped = self.model.stop_training
            self.stop_reason = StopReason.OTHER_CALLBACK if stopped else StopReason.COMPLETED
        if self.stop_reason is StopReason.NON_FINITE_LOSS and self.best_weights is None:
            self.best_weights = self._start_weights
        super().on_train_end(logs)
        self._save_state(finished=True)
        ended = self.stop_reason.value
        if self.stop_reason in (StopReason.PATIENCE, StopReason.NON_FINITE_LOSS):
            ended += f" (stopped at epoch {self.stopped_epoch + 1})"
        message = (
            f"Training ended: {ended}; best {self.monitor} {self.best} at epoch "
            f"{self.best_epoch + 1}."
        )
        logger.info(message)
        if self.verbose > 0:
            print(message)

    def get_config(self):
        return {
            "filepath": self.filepath,
            "monitor": self.monitor,
            "min_delta": self.min_delta,
            "patience": self.patience,
            "verbose": self.verbose,
            "mode": self.mode,
            "baseline": self.baseline,
            "restore_best_weights": self.restore_best_weights,
            "start_from_epoch": self.start_from_epoch,
            "save_weights_only": self.save_weights_only,
            "strict": self.strict,
            "resume": self.resume,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _check_writable_folder(filepath):
    folder = os.path.dirname(os.path.abspath(filepath))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(
            "Invalid value received for argument `filepath`: its folder "
            f"{folder!r} does not exist and cannot be created ({error}). "
            f"Received: filepath={filepath!r}"
        ) from None
    if not os.access(folder, os.W_OK):
        raise ValueError(
            "Invalid value received for argument `filepath`: its folder "
            f"{folder!r} cannot be written. Received: filepath={filepath!r}"
        )

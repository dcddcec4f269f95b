"""The run journal of `EarlyStoppingWithCheckpoint`: what it writes beside its
checkpoint, in which order, and how a killed run is read back.

`training_state` holds the formats (the state file, the backups); this module
holds the run that writes them: where the files live and how they are named,
the commit of an epoch (its files first, then the state file naming them and
the generation before, then the deletions that neither generation needs, all
in that order through the background `CheckpointWriter`), the clean-up of
stale temporaries and old backups, and the resume from the newest generation
whose backups can be read.
"""

import copy
import glob
import os
import warnings
import weakref

from kreg._keras_compat import model_snapshot
from kreg._keras_compat import write_model_snapshot
from kreg.callbacks.atomic_files import remove_stale_temporaries
from kreg.callbacks.atomic_files import write_atomically
from kreg.callbacks.atomic_files import write_json_atomically
from kreg.callbacks.checkpoint_path import name_glob
from kreg.callbacks.checkpoint_path import placeholders
from kreg.callbacks.checkpoint_writer import Step
from kreg.callbacks.checkpoint_writer import writer_for
from kreg.callbacks.training_state import BackupUnreadable
from kreg.callbacks.training_state import StateFileError
from kreg.callbacks.training_state import check_averaging_fits
from kreg.callbacks.training_state import check_backup_fits
from kreg.callbacks.training_state import generation
from kreg.callbacks.training_state import host_copy
from kreg.callbacks.training_state import new_state
from kreg.callbacks.training_state import read_backup
from kreg.callbacks.training_state import read_state
from kreg.callbacks.training_state import restore_averaging
from kreg.callbacks.training_state import restore_backup
from kreg.callbacks.training_state import write_backup

# The journal that last began a `fit` on each checkpoint path (absolute) in
# this process, with its owner: two callbacks in one `fit` on one path would
# share its files.
_OWNERS = {}


class RunJournal:
    """The files of one checkpoint path: its checkpoints, backups and state file.

    The owner (`EarlyStoppingWithCheckpoint`) decides what to save and when;
    the journal takes the host copies on the calling thread and has the files
    written by the path's background writer, in the order that keeps a usable
    state on disk whatever moment the process is killed. Folders are created at
    the first write.

    Args:
        filepath: The owner's checkpoint path (placeholders allowed).
    """

    def __init__(self, filepath):
        self.filepath = filepath
        self.state_path = filepath + ".state.json"
        self.folder = os.path.dirname(os.path.abspath(filepath))
        self.backup_prefix = f".{os.path.basename(filepath)}.backup-"
        self.state = None
        self._steps = []
        self._save_layout = None
        self._copies = None  # the host copies of this epoch's checkpoint, by variable

    # Files.

    def _key(self):
        return os.path.abspath(self.filepath)

    def _writer(self):
        return writer_for(self._key())

    def _make_folder(self):
        # At the first write, not at construction: building the callback (or
        # `from_config`) leaves the disk as it is.
        os.makedirs(self.folder, exist_ok=True)

    def wait(self):
        """Blocks until the commit in flight is written; raises its error."""
        self._writer().wait()

    def backup_name(self, epoch):
        return f"{self.backup_prefix}{epoch:06d}.npz"

    def _remove_backups(self, keep=()):
        pattern = os.path.join(self.folder, glob.escape(self.backup_prefix) + "*")
        for path in glob.glob(pattern):
            if os.path.basename(path) not in keep and ".tmp-" not in os.path.basename(path):
                _remove(path)

    def _remove_stale_temporaries(self):
        if not os.path.isdir(self.folder):
            return
        remove_stale_temporaries(self.state_path)
        # The backups are named per epoch: match every epoch's temporary.
        remove_stale_temporaries(
            os.path.join(self.folder, self.backup_prefix),
            name_pattern=glob.escape(self.backup_prefix) + "*",
        )
        if placeholders(self.filepath):
            remove_stale_temporaries(self.filepath, name_pattern=name_glob(self.filepath))
        else:
            remove_stale_temporaries(self.filepath)

    # One writer per path and fit.

    def claim(self, owner):
        """Makes `owner` the one that writes this path's files in this process."""
        _OWNERS[self._key()] = weakref.ref(owner)

    def owned_by(self, owner):
        """Whether `owner` is the last to have claimed this path."""
        holder = _OWNERS.get(self._key())
        return holder is None or holder() is owner

    def release(self, owner):
        holder = _OWNERS.get(self._key())
        if holder is not None and holder() is owner:
            del _OWNERS[self._key()]

    # A fit.

    def begin(self, monitor, mode, resume, chief):
        """Starts a fit (after `wait()`, so that the files a `fit` stopped by an
        exception left in flight are written before the folder is read): clears
        what a killed writer left, and returns the checked state to resume from
        (`None` when the run starts fresh)."""
        self._steps = []
        self._save_layout = None
        self._copies = None
        self.monitor, self.mode = monitor, mode
        self.state = new_state(monitor, mode)
        self._remove_stale_temporaries()
        state = None
        if resume:
            kept_names = (
                name_glob(self.filepath)
                if placeholders(self.filepath)
                else glob.escape(os.path.basename(self.filepath))
            )
            state = read_state(
                self.state_path, self.backup_prefix, os.path.dirname(self.filepath), kept_names
            )
        if state is not None and not state["finished"]:
            return state
        if chief and os.path.isdir(self.folder):
            if not resume and os.path.exists(self.state_path):
                # Starting fresh: a later `resume=True` must not continue the
                # run this one replaces (its backups are deleted below).
                write_json_atomically(
                    self.state_path, dict(new_state(monitor, mode), finished=True)
                )
            self._remove_backups()  # left by a kill after a finished state was written
        return None

    def _read_generation(self, chosen, restore_best_weights):
        """`(arrays, best_arrays)` of a generation's backups; `BackupUnreadable` if one is not."""
        arrays = best = None
        if chosen["backup"] is not None:
            arrays = read_backup(os.path.join(self.folder, chosen["backup"]))
        if restore_best_weights and chosen["best_backup"] is not None:
            best = read_backup(os.path.join(self.folder, chosen["best_backup"]))
        return arrays, best

    def restore(self, state, model, averaging, restore_best_weights):
        """Restores `model` (and `averaging`) from the newest generation of
        `state` whose backups can be read.

        Returns `(generation, best_arrays)`, the generation chosen (its `kept`
        entries whose files exist) and its best epoch's backup (`None` without
        one), or `None` when no generation can be read (training starts fresh).
        """
        for key, ours in (("monitor", self.monitor), ("mode", self.mode)):
            if state[key] != ours:
                raise StateFileError(
                    f"Cannot resume from the state file {self.state_path!r}: it was written "
                    f"for {key}={state[key]!r}, not {ours!r}. To start fresh, "
                    "delete that file or pass `resume=False`."
                )
        generations = [generation(state)] + ([state["previous"]] if state["previous"] else [])
        for chosen in generations:
            try:
                arrays, best = self._read_generation(chosen, restore_best_weights)
                break
            except BackupUnreadable as error:
                warnings.warn(
                    f"EarlyStoppingWithCheckpoint: the backup {error}; trying the one before it.",
                    stacklevel=4,
                )
        else:
            warnings.warn(
                f"EarlyStoppingWithCheckpoint: no backup named by {self.state_path!r} can be read; "
                "training starts fresh from epoch 1.",
                stacklevel=4,
            )
            return None
        for name, loaded in ((chosen["backup"], arrays), (chosen["best_backup"], best)):
            if loaded is not None:
                check_backup_fits(model, loaded, os.path.join(self.folder, name))
        if arrays is not None:
            check_averaging_fits(
                model, averaging, arrays, os.path.join(self.folder, chosen["backup"])
            )
            restore_backup(model, arrays)
            restore_averaging(averaging, arrays)
        # A kept file a later (unreadable) generation deleted is no longer kept.
        kept = [dict(e) for e in chosen["kept"] if os.path.exists(e["path"])]
        self.state.update(chosen, kept=kept)
        self.state["previous"] = None if chosen is state["previous"] else state["previous"]
        return dict(chosen, kept=kept), best

    def save_model(self, model, path, weights_only):
        """Takes a host copy of `model` now, to be written to `path` (atomically)
        by the next `commit`, before the state that names it."""
        self._make_folder()
        snapshot = model_snapshot(model, weights_only=weights_only, layout=self._save_layout)
        self._save_layout = snapshot.layout  # the next save skips Keras's walk of the model
        # The backup of this epoch (`commit`, before the next training step)
        # holds the same weights and optimizer state: it reuses these copies.
        self._copies = snapshot.copies
        self._steps.append(
            Step(
                path,
                lambda: write_atomically(
                    path,
                    lambda temporary: write_model_snapshot(snapshot, temporary),
                    sync_folder=False,
                ),
            )
        )

    def commit(
        self,
        epoch,
        progress,
        *,
        model,
        averaging,
        chief,
        resume,
        back_up,
        best_backup=False,
        removed=(),
    ):
        """Writes this epoch's checkpoint and backup, then the state that names
        them (and the generation before it), then deletes what neither
        generation names: a kill anywhere leaves a usable state.

        `progress` holds the counters of early stopping to record (`best`,
        `best_epoch`, `wait`, `stop_reason`, `stopped_epoch`, `kept`);
        `best_backup` makes this epoch's backup the best epoch's. The host
        copies are taken here; the files are written in that order by the
        path's background writer (`CheckpointWriter`), this epoch's once the
        previous epoch's are.
        """
        state = self.state
        previous = generation(state) if state["next_epoch"] > 0 else None
        steps, self._steps = self._steps, []
        copies, self._copies = self._copies, None
        if resume and back_up and chief:
            name = self.backup_name(epoch)
            arrays = host_copy(model, averaging, copies)
            self._make_folder()
            backup_path = os.path.join(self.folder, name)
            steps.append(
                Step(
                    backup_path,
                    lambda: write_atomically(
                        backup_path, lambda path: write_backup(path, arrays), sync_folder=False
                    ),
                )
            )
            state["backup"] = name
            if best_backup:
                state["best_backup"] = name
        state.update(progress, next_epoch=epoch + 1, previous=previous)
        # Without backups (`resume=False`) there is nothing a state could resume:
        # a run killed now must not leave one naming epochs without weights.
        if resume and chief:
            self._make_folder()
            committed = copy.deepcopy(state)
            steps.append(
                Step(self.state_path, lambda: write_json_atomically(self.state_path, committed))
            )
            named = {g[key] for g in (state, previous) if g for key in ("backup", "best_backup")}
            steps.append(
                Step(
                    self.folder,
                    lambda: self._remove_backups(keep=named),
                    "deleting old backups in",
                )
            )
        if chief:
            # Kept files that dropped out of the best, once the state no longer names them.
            steps += [Step(path, lambda path=path: _remove(path), "deleting") for path in removed]
            self._writer().submit(steps)

    def finish(self, progress, chief):
        """Ends the fit: waits for the last epoch's files (raising a write that
        failed, in this thread), then writes the state that ends the run and
        deletes the backups."""
        self._save_layout = None
        self.wait()
        self.state.update(progress, finished=True, backup=None, best_backup=None, previous=None)
        if chief:
            self._make_folder()
            write_json_atomically(self.state_path, self.state)
            self._remove_backups()


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

"""Writes a run's checkpoint files in a background thread, one commit at a time.

Saving took about a third of a small model's epoch when the training thread
wrote the files itself. As `keras.callbacks.OrbaxCheckpoint` saves
asynchronously, the training thread now only takes host copies of what is to be
written (`training_state.host_copy`, `kreg._keras_compat.model_snapshot`) and
hands this writer a commit: ordered steps, each naming the file it writes or
deletes. The writer runs a commit's steps in order in one thread:

- a step that fails ends its commit; the steps after it (the state file that
  would name the files written before it) do not run, so what is on disk still
  names complete files of an earlier commit;
- one commit is in flight at a time: `submit` waits for the one before (a
  slow disk slows training down rather than queueing host copies in memory);
- `wait` blocks until the commit in flight is written and raises its error,
  if any, in the calling thread as a `CheckpointWriteError` naming the file.

The thread is not a daemon: a script that ends (or dies of an exception) while a
commit is in flight exits once it is written. A process killed outright stops
mid-step, which leaves files the atomic writes of `atomic_files` keep whole.
"""

import collections
import threading


class CheckpointWriteError(RuntimeError):
    """A checkpoint file could not be written or deleted in the background.

    `EarlyStoppingWithCheckpoint` writes its files in a background thread. A
    failure there comes back in the training thread, at the next epoch's save,
    at `wait_until_finished()` or at the end of `fit`, as this error naming the
    file; the original exception is its `__cause__`. The steps after the failed
    one are not run, so the state file on disk still names the last complete
    save.

    Args:
        message: What failed, naming the file.

    Example:

    >>> from kreg.callbacks import CheckpointWriteError
    >>> from kreg.callbacks.checkpoint_writer import CheckpointWriter, Step
    >>> def disk_full():
    ...     raise OSError("No space left on device")
    >>> writer = CheckpointWriter()
    >>> writer.submit([Step("best.keras", disk_full)])
    >>> try:
    ...     writer.wait()
    ... except CheckpointWriteError as error:
    ...     print(type(error.__cause__).__name__, "best.keras" in str(error))
    OSError True
    """


Step = collections.namedtuple("Step", ["path", "action", "verb"], defaults=["writing"])
Step.__doc__ = """One step of a commit: `action()` writes (or deletes) the file `path`.

`verb` says what the step does to it, for the error message: "writing"
(default), "deleting", "deleting old backups in" (a folder)."""


class CheckpointWriter:
    """Runs commits of `Step`s in a background thread, in order, one at a time.

    Example:

    >>> from kreg.callbacks.checkpoint_writer import CheckpointWriter, Step
    >>> writer = CheckpointWriter()
    >>> written = []
    >>> writer.submit([Step("a.keras", lambda: written.append("a.keras"))])
    >>> writer.wait()
    >>> written
    ['a.keras']
    """

    def __init__(self):
        self._thread = None
        self._failure = None  # (step, error) of the last commit, until `wait` raises it

    @property
    def busy(self):
        """Whether a commit is being written now."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, steps):
        """Waits for the commit in flight (raising its error), then starts `steps`."""
        self.wait()
        steps = list(steps)
        if not steps:
            return
        self._thread = threading.Thread(
            target=self._run, args=(steps,), name="kreg-checkpoint-writer", daemon=False
        )
        self._thread.start()

    def _run(self, steps):
        for step in steps:
            try:
                step.action()
            except BaseException as error:  # raised again in the training thread by `wait`
                self._failure = (step, error)
                return

    def wait(self):
        """Blocks until the commit in flight is written; raises its error as a
        `CheckpointWriteError` naming the file (once: the writer is usable again)."""
        if self._thread is not None:
            # Forgotten only once joined: a join a KeyboardInterrupt ends leaves
            # the commit in flight, and the next `wait` must still wait for it.
            self._thread.join()
            self._thread = None
        if self._failure is not None:
            (step, error), self._failure = self._failure, None
            # Deletions come after the state file that commits a save: by then
            # the save is complete, and only the clean-up stopped.
            consequence = (
                "The save was committed before it; the files it left can be deleted by hand."
                if step.verb.startswith("deleting")
                else "The steps after it were not run: the files on disk are those of the "
                "last complete save."
            )
            raise CheckpointWriteError(
                f"{step.verb.capitalize()} {step.path!r} failed in a background checkpoint write"
                f" ({type(error).__name__}: {error}). {consequence}"
            ) from error


# One writer per checkpoint path (absolute) in this process, shared by every
# callback instance on it: a new callback resuming a run that an exception
# stopped waits for the commit that run left in flight before it reads the files.
_WRITERS = {}
_LOCK = threading.Lock()


def writer_for(key):
    """The `CheckpointWriter` of the checkpoint `key` (an absolute path)."""
    with _LOCK:
        return _WRITERS.setdefault(key, CheckpointWriter())

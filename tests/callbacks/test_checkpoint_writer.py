"""The background writer of EarlyStoppingWithCheckpoint's files: steps in order,
one commit at a time, errors raised in the training thread naming the file."""

import json
import os
import threading
import time

import keras
import numpy as np
import pytest
from scripted import Crash
from scripted import CrashAt
from scripted import fit_scripted
from scripted import tiny_data
from scripted import tiny_model

import kreg.callbacks.run_journal as module
from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks.checkpoint_writer import CheckpointWriteError
from kreg.callbacks.checkpoint_writer import CheckpointWriter
from kreg.callbacks.checkpoint_writer import Step
from kreg.callbacks.checkpoint_writer import writer_for


def test_steps_run_in_order_in_another_thread_and_wait_blocks_until_they_ran():
    writer = CheckpointWriter()
    release = threading.Event()
    ran = []

    def first():
        release.wait()
        ran.append(("a", threading.current_thread() is threading.main_thread()))

    writer.submit([Step("a", first), Step("b", lambda: ran.append(("b", None)))])
    # `submit` returned while the first step is still blocked: it runs elsewhere.
    assert ran == [] and writer.busy
    release.set()
    writer.wait()
    assert ran == [("a", False), ("b", None)] and not writer.busy


def test_a_failed_step_ends_its_commit_and_wait_raises_it_naming_the_file_once():
    writer = CheckpointWriter()
    ran = []

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(
        [
            Step("/ckpt/best.keras", lambda: ran.append("model")),
            Step("/ckpt/.best.keras.backup-000003.npz", full_disk),
            Step("/ckpt/best.keras.state.json", lambda: ran.append("state")),
        ]
    )
    with pytest.raises(
        CheckpointWriteError, match=r"Writing '/ckpt/.best.keras.backup-000003.npz'"
    ) as raised:
        writer.wait()
    assert "No space left on device" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    assert ran == ["model"], "the state naming the failed file must not be written"
    writer.wait()  # raised once; the writer is usable again
    writer.submit([Step("x", lambda: ran.append("next"))])
    writer.wait()
    assert ran == ["model", "next"]


def test_a_failed_deletion_says_the_save_was_committed_before_it():
    writer = CheckpointWriter()

    def busy_file():
        raise PermissionError(13, "Permission denied")

    writer.submit(
        [
            Step("/ckpt/best.keras.state.json", lambda: None),
            Step("/ckpt/best-03.keras", busy_file, "deleting"),
        ]
    )
    with pytest.raises(CheckpointWriteError, match=r"Deleting '/ckpt/best-03.keras'") as raised:
        writer.wait()
    assert "save was committed" in str(raised.value)
    assert "last complete save" not in str(raised.value)


def test_a_failed_commit_is_raised_by_the_next_submit_which_starts_nothing():
    writer = CheckpointWriter()
    ran = []
    writer.submit([Step("old", lambda: 1 / 0, "deleting")])
    with pytest.raises(CheckpointWriteError, match=r"Deleting 'old'.*ZeroDivisionError"):
        writer.submit([Step("new", lambda: ran.append("new"))])
    writer.wait()
    assert ran == []


def test_submit_waits_for_the_commit_in_flight():
    writer = CheckpointWriter()
    release = threading.Event()
    order = []
    writer.submit([Step("first", lambda: (release.wait(), order.append("first")))])
    second = threading.Thread(
        target=writer.submit, args=([Step("second", lambda: order.append("second"))],)
    )
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive(), "a second commit must not start while the first is in flight"
    release.set()
    second.join()
    writer.wait()
    assert order == ["first", "second"]


def test_a_wait_interrupted_by_ctrl_c_still_waits_the_next_time():
    # A KeyboardInterrupt while `wait` (or `submit`) blocks on the commit in
    # flight leaves that commit running: the next `wait` (the next `fit`'s
    # `on_train_begin`) must still wait for it before reading the folder.
    writer = CheckpointWriter()
    release = threading.Event()
    ran = []
    writer.submit([Step("slow", lambda: (release.wait(), ran.append("slow")))])
    thread = writer._thread

    def interrupted_join(timeout=None):
        raise KeyboardInterrupt

    thread.join = interrupted_join
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.wait()
        del thread.join
        assert writer.busy, "the commit is still in flight"
        waiter = threading.Thread(target=writer.wait)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and ran == [], "wait must block until the commit is written"
    finally:
        release.set()  # a failing assert must not leave the (non-daemon) writer blocked
    waiter.join()
    assert ran == ["slow"] and not writer.busy


def test_one_writer_per_checkpoint_path():
    assert writer_for("/a/best.keras") is writer_for("/a/best.keras")
    assert writer_for("/a/best.keras") is not writer_for("/b/best.keras")


def _failing_after(calls, error):
    original = module.write_model_snapshot
    count = []

    def write(snapshot, path):
        count.append(path)
        if len(count) > calls:
            raise error
        original(snapshot, path)

    return write


@pytest.mark.parametrize("failing_epoch", [1, 2])
def test_a_failed_write_in_fit_is_raised_in_the_training_thread_and_commits_nothing(
    tmp_path, monkeypatch, failing_epoch
):
    # The model improves every epoch; the save of `failing_epoch` fails. Epoch 1's
    # failure surfaces when epoch 2 hands over its files, epoch 2's (the last)
    # when training ends.
    monkeypatch.setattr(
        module, "write_model_snapshot", _failing_after(failing_epoch, OSError("disk full"))
    )
    path = tmp_path / "best.keras"
    stopper = EarlyStoppingWithCheckpoint(str(path), patience=5)
    model = tiny_model()
    with pytest.raises(CheckpointWriteError, match=r"best.keras'.*OSError: disk full"):
        fit_scripted(model, stopper, 3, val_loss=[1.0, 0.9, 0.8])
    # The state still names the last epoch whose files were all written.
    state = json.loads((tmp_path / "best.keras.state.json").read_text())
    assert state["next_epoch"] == failing_epoch and state["finished"] is False
    assert os.path.exists(tmp_path / state["backup"])
    assert keras.saving.load_model(path).count_params() == model.count_params()
    assert [name for name in os.listdir(tmp_path) if ".tmp-" in name] == []


def test_a_fit_that_an_exception_stopped_is_resumed_after_its_last_write(tmp_path, monkeypatch):
    # The last state write of the crashed fit is slow: the next fit (a new
    # callback, a new model, as after a restart) must wait for it, not resume
    # from the epoch before.
    original = module.write_json_atomically

    def slow_state(path, data):
        time.sleep(0.3)
        original(path, data)

    monkeypatch.setattr(module, "write_json_atomically", slow_state)
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    with pytest.raises(Crash):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=5,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path, patience=5), CrashAt(1)],
        )
    stopper = EarlyStoppingWithCheckpoint(path, patience=5)
    history = tiny_model().fit(
        x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[stopper]
    )
    assert stopper.resumed and stopper.initial_epoch == 2 and history.epoch == [2]


def test_the_files_are_complete_when_fit_returns(tmp_path):
    path = tmp_path / "best.weights.h5"
    stopper = EarlyStoppingWithCheckpoint(str(path), save_weights_only=True, patience=3)
    model = tiny_model()
    script = fit_scripted(model, stopper, 3, val_loss=[1.0, 0.5, 0.7])
    assert not writer_for(os.path.abspath(path)).busy
    fresh = tiny_model()
    fresh.load_weights(path)
    for loaded, expected in zip(fresh.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(loaded, expected)
    assert json.loads((tmp_path / "best.weights.h5.state.json").read_text())["finished"] is True


def test_an_improving_epoch_copies_the_weights_off_the_device_once(tmp_path, monkeypatch):
    snapshots, backups = [], []
    take_snapshot, take_copy = module.model_snapshot, module.host_copy
    monkeypatch.setattr(
        module,
        "model_snapshot",
        lambda *a, **k: snapshots.append(take_snapshot(*a, **k)) or snapshots[-1],
    )
    monkeypatch.setattr(
        module, "host_copy", lambda *a, **k: backups.append(take_copy(*a, **k)) or backups[-1]
    )
    stopper = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=5)
    fit_scripted(tiny_model(), stopper, 3, val_loss=[1.0, 0.9, 0.95])
    assert len(snapshots) == 2 and len(backups) == 3  # epochs 1 and 2 improved
    snapshot_arrays = [{id(a) for _, a in s.copies.values()} for s in snapshots]
    for shared, backup in zip(snapshot_arrays, backups):
        assert all(id(a) in shared for a in backup["weights"] + backup["optimizer"])
    # Epoch 3 saved no checkpoint: its backup has copies of its own.
    assert not {id(a) for a in backups[2]["weights"]} & set().union(*snapshot_arrays)


@pytest.mark.parametrize("setup", ["mixed_float16", "weight_averaging"])
def test_a_backup_from_the_checkpoints_copies_holds_what_a_fresh_copy_holds(
    tmp_path, monkeypatch, setup
):
    # The two set-ups where the pairing could go wrong: a LossScaleOptimizer
    # (its variables, then its inner optimizer's, which Keras also saves as a
    # child), and a WeightAveraging that swaps the average into the model
    # before this callback saves it.
    take_copy, compared = module.host_copy, []

    def compare(model, averaging=None, copies=None):
        reused, fresh = take_copy(model, averaging, copies), take_copy(model, averaging)
        for group in reused:
            assert [a.dtype for a in reused[group]] == [a.dtype for a in fresh[group]], group
            for got, expected in zip(reused[group], fresh[group], strict=True):
                np.testing.assert_array_equal(got, expected, err_msg=group)
        compared.append(bool(copies))
        return reused

    monkeypatch.setattr(module, "host_copy", compare)
    before = []
    if setup == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    finally:
        keras.config.set_dtype_policy("float32")
    if setup == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    else:
        from kreg.callbacks import WeightAveraging

        before = [WeightAveraging(method="ema")]
    stopper = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=5)
    x, y = tiny_data()
    model.fit(
        x, y, validation_data=(x, y), epochs=3, batch_size=16, verbose=0,
        callbacks=[*before, stopper],
    )  # fmt: skip
    assert compared and any(compared), "no epoch saved the best model"

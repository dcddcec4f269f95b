"""Keras's own `BackupAndRestore` tests (keras/src/callbacks/backup_and_restore_test.py
in the installed wheel), adapted to `EarlyStoppingWithCheckpoint`.

The callback backs up at the end of each epoch (Keras's `save_freq="epoch"`);
`test_best_case_step`'s interruption inside an epoch therefore resumes at the
start of that epoch. Keras's `double_checkpoint=True` is always on here.
"""

import os

import keras
import numpy as np
import pytest

from kreg.callbacks import EarlyStoppingWithCheckpoint


class InterruptingCallback(keras.callbacks.Callback):
    """A callback to intentionally interrupt training."""

    def __init__(self, steps_int, epoch_int):
        super().__init__()
        self.batch_count = 0
        self.epoch_count = 0
        self.steps_int = steps_int
        self.epoch_int = epoch_int

    def on_epoch_end(self, epoch, log=None):
        self.epoch_count += 1
        if self.epoch_int is not None and self.epoch_count == self.epoch_int:
            raise RuntimeError("EpochInterruption")

    def on_batch_end(self, batch, logs=None):
        self.batch_count += 1
        if self.steps_int is not None and self.batch_count == self.steps_int:
            raise RuntimeError("StepsInterruption")


class CanaryLayer(keras.layers.Layer):
    def __init__(self):
        super().__init__()
        self.counter = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False
        )

    def call(self, x):
        self.counter.assign_add(1)
        return x


def make_model():
    model = keras.Sequential([keras.layers.Input((3,)), CanaryLayer(), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd", metrics=["mse"])
    return model


def _callback(tmp_path):
    # Patience never runs out: the runs last their `epochs`, as Keras's do.
    return EarlyStoppingWithCheckpoint(
        str(tmp_path / "subdir" / "best.keras"), monitor="loss", patience=100
    )


def _data():
    return np.random.random((10, 3)), np.random.random((10, 1))


def _interrupted_at_epoch_2(model, tmp_path, x_train, y_train):
    """A 6-epoch fit that an exception stops at the end of epoch 2; its callback."""
    cbk = _callback(tmp_path)
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(
            x_train,
            y_train,
            batch_size=4,
            epochs=6,
            verbose=0,
            callbacks=[cbk, InterruptingCallback(steps_int=None, epoch_int=2)],
        )
    return cbk


def test_filepath_empty_or_none_error():
    with pytest.raises(ValueError, match="filepath"):
        EarlyStoppingWithCheckpoint("")
    with pytest.raises(ValueError, match="filepath"):
        EarlyStoppingWithCheckpoint(None)


def test_best_case_step(tmp_path):
    backup_dir = tmp_path / "subdir"
    assert not backup_dir.exists()
    model = make_model()
    cbk = _callback(tmp_path)
    x_train, y_train = _data()
    with pytest.raises(RuntimeError, match="StepsInterruption"):
        model.fit(
            x_train,
            y_train,
            batch_size=4,
            epochs=2,
            verbose=0,
            callbacks=[cbk, InterruptingCallback(steps_int=5, epoch_int=None)],
        )
    # Interrupted in the second epoch (3 steps an epoch): the first epoch's backup.
    assert backup_dir.exists()
    assert int(model.layers[0].counter.value) == 5
    model = make_model()
    hist = model.fit(
        x_train, y_train, batch_size=4, callbacks=[_callback(tmp_path)], epochs=5, verbose=0
    )
    assert hist.epoch[0] == 1 and hist.epoch[-1] == 4
    assert int(model.layers[0].counter.value) == 15


def test_best_case_epoch(tmp_path):
    backup_dir = tmp_path / "subdir"
    assert not backup_dir.exists()
    model = make_model()
    assert int(model.layers[0].counter.value) == 0
    x_train, y_train = _data()
    _interrupted_at_epoch_2(model, tmp_path, x_train, y_train)
    assert backup_dir.exists()
    assert int(model.layers[0].counter.value) == 6
    cbk = _callback(tmp_path)
    hist = model.fit(x_train, y_train, batch_size=4, callbacks=[cbk], epochs=5, verbose=0)
    assert cbk.resumed and cbk.initial_epoch == 2
    assert hist.epoch[-1] == 4
    assert int(model.layers[0].counter.value) == 5 * 3


def test_backup_corrupted(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    x_train, y_train = _data()
    cbk = _interrupted_at_epoch_2(model, tmp_path, x_train, y_train)
    cbk.wait_until_finished()  # the files are written in the background
    backups = sorted(name for name in os.listdir(backup_dir) if ".backup-" in name)
    assert len(backups) == 2, "two generations of backup"
    assert int(model.layers[0].counter.value) == 6
    # Corrupt the latest backup (the second epoch's).
    with open(backup_dir / backups[-1], "w") as f:
        f.write("0")
    cbk = _callback(tmp_path)
    with pytest.warns(UserWarning, match=rf"{backups[-1]}.*not a readable backup.*the one before"):
        hist = model.fit(x_train, y_train, batch_size=4, callbacks=[cbk], epochs=5, verbose=0)
    # Resumed from the first epoch's backup: epochs 2 to 5 run again.
    assert cbk.initial_epoch == 1 and hist.epoch[-1] == 4
    assert int(model.layers[0].counter.value) == 5 * 3


def test_both_backups_corrupted_start_fresh_with_a_warning(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    x_train, y_train = _data()
    cbk = _interrupted_at_epoch_2(model, tmp_path, x_train, y_train)
    cbk.wait_until_finished()  # the files are written in the background
    for name in os.listdir(backup_dir):
        if ".backup-" in name:
            (backup_dir / name).write_bytes(b"PK\x03\x04 truncated")
    model = make_model()
    cbk = _callback(tmp_path)
    with pytest.warns(UserWarning, match=r"best.keras.state.json.*starts fresh"):
        hist = model.fit(x_train, y_train, batch_size=4, callbacks=[cbk], epochs=2, verbose=0)
    assert not cbk.resumed and hist.epoch == [0, 1]
    assert int(model.layers[0].counter.value) == 2 * 3


def test_model_deleted_case_epoch(tmp_path):
    backup_dir = tmp_path / "subdir"
    model = make_model()
    x_train, y_train = _data()
    model.fit(x_train, y_train, batch_size=4, callbacks=[_callback(tmp_path)], epochs=2, verbose=0)
    # Keras removes its backup folder; the folder here holds the best model too,
    # and no backup is left in it.
    assert not [name for name in os.listdir(backup_dir) if ".backup-" in name]

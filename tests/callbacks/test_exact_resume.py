"""A run interrupted any number of times ends as the uninterrupted run does."""

import json
import os

import keras
import numpy as np
import pytest
from scripted import Crash
from scripted import CrashAt

from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks import StopReason
from kreg.layers import ConsistentDropout
from kreg.layers import EmbeddingDropout
from kreg.layers import WeightDropLSTM
from kreg.layers import ZoneoutLSTM

EPOCHS = 30


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8)).astype("float32")
    y = (np.sin(x[:, :1] * 2) + 0.3 * rng.standard_normal((96, 1))).astype("float32")
    return x[:48], y[:48], x[48:], y[48:]


def _model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    return model


def _fit(path, crash_at=None, crash_first=False, epochs_run=None):
    x, y, x_val, y_val = _data()
    model = _model()
    stopper = EarlyStoppingWithCheckpoint(path, patience=3, min_delta=1e-3)
    callbacks = [stopper]
    if crash_at is not None:
        crash = CrashAt(crash_at)
        callbacks = [crash, stopper] if crash_first else [stopper, crash]
    epochs_run = [] if epochs_run is None else epochs_run
    callbacks.insert(
        0, keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_run.append(epoch))
    )
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=EPOCHS,
        batch_size=16,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return model, stopper, epochs_run


@pytest.mark.parametrize("crash_first", [False, True], ids=["after-commit", "before-commit"])
def test_interrupted_run_ends_like_the_uninterrupted_one(tmp_path, crash_first):
    reference, reference_stopper, _ = _fit(str(tmp_path / "reference.keras"))
    assert reference_stopper.stop_reason is StopReason.PATIENCE
    stop = reference_stopper.stopped_epoch
    assert stop >= 6, "the reference run must last long enough to be interrupted"

    path = str(tmp_path / "interrupted.keras")
    seen = []
    for crash_at in (1, 3, stop - 1):
        with pytest.raises(Crash):
            _fit(path, crash_at=crash_at, crash_first=crash_first, epochs_run=seen)
    model, stopper, epochs_run = _fit(path)
    seen.extend(epochs_run)
    assert stopper.resumed
    # Epochs are numbered as in one run; an epoch whose state was not committed runs again.
    assert sorted(set(seen)) == list(range(stop + 1))
    assert (stopper.stopped_epoch, stopper.best_epoch) == (stop, reference_stopper.best_epoch)
    assert stopper.best == pytest.approx(reference_stopper.best, abs=1e-6)
    assert int(model.optimizer.iterations.numpy()) == int(reference.optimizer.iterations.numpy())
    for ours, theirs in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # The backups are gone; the state says finished; the next fit starts at epoch 0.
    assert [name for name in os.listdir(tmp_path) if "backup" in name] == []
    assert json.loads(open(path + ".state.json").read())["finished"] is True
    _, fresh, epochs_run = _fit(path)
    assert not fresh.resumed and epochs_run[0] == 0


def test_a_stop_decided_before_the_kill_trains_no_more_epochs(tmp_path):
    path = str(tmp_path / "best.keras")
    _, reference_stopper, _ = _fit(str(tmp_path / "reference.keras"))
    stop = reference_stopper.stopped_epoch
    with pytest.raises(Crash):
        _fit(path, crash_at=stop)  # after the state recorded the stop
    model, stopper, epochs_run = _fit(path)
    assert epochs_run == [] and stopper.stop_reason is StopReason.PATIENCE
    assert (stopper.stopped_epoch, stopper.best_epoch) == (stop, reference_stopper.best_epoch)


def _random_model():
    """Every kind of seed generator a backup must hold: Keras's Dropout, kreg's
    random layers, and a layer holding its own `keras.random.SeedGenerator`."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((6,), dtype="int32"),
            EmbeddingDropout(20, 8, rate=0.2),
            ConsistentDropout(0.3),
            WeightDropLSTM(8, weight_dropout=0.3, return_sequences=True),
            ZoneoutLSTM(8, cell_zoneout=0.2, hidden_zoneout=0.2),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def _random_fit(path, crash_at=None):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (32, 6)).astype("int32")
    y = (x.mean(axis=1, keepdims=True) / 20).astype("float32")
    model = _random_model()
    callbacks = [EarlyStoppingWithCheckpoint(path, monitor="loss", patience=100)]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    model.fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def test_a_run_with_every_random_layer_resumes_exactly(tmp_path):
    reference = _random_fit(str(tmp_path / "reference.keras"))
    path = str(tmp_path / "interrupted.keras")
    with pytest.raises(Crash):
        _random_fit(path, crash_at=2)
    resumed = _random_fit(path)
    # Without the seed generators' state in the backup the resumed run draws
    # other masks and ends 1e-2 away.
    for ours, theirs in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)

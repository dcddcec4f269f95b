import json
import math
import os

import keras
import numpy as np
import pytest
from scripted import Crash
from scripted import CrashAt
from scripted import ScriptedMetrics
from scripted import fit_scripted
from scripted import tiny_data
from scripted import tiny_model

from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks import StopReason

NAN = math.nan

# (monitored values, EarlyStopping arguments, expected stopped epoch (None: ran
# to the end), expected best epoch). Epochs are 0-based, as in Keras.
TABLE = [
    ([1.0, 0.9, 0.8, 0.7, 0.6], {"patience": 1}, None, 4),
    ([1.0, 0.9, 0.95, 0.97, 0.5], {"patience": 2}, 3, 1),
    ([1.0, 0.9, 0.95, 0.85, 0.99, 0.98], {"patience": 2}, 5, 3),
    ([1.0, 1.0, 1.0, 1.0], {"patience": 0}, 1, 0),
    ([1.0, 0.99, 0.98, 0.97, 0.96], {"patience": 1, "min_delta": 0.05}, 1, 0),
    ([0.5, 0.6, 0.7, 0.8, 0.9], {"patience": 2, "mode": "max", "monitor": "val_accuracy"}, None, 4),
    ([0.9, 0.8, 0.85, 0.7, 0.6], {"patience": 1, "mode": "max", "monitor": "val_accuracy"}, 1, 0),
    # Keras semantics: an improvement never stops training, even short of the baseline.
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], {"patience": 2, "baseline": 0.55}, None, 5),
    ([1.0, 1.1, 1.2, 1.3], {"patience": 2, "baseline": 0.5}, 1, 0),
    ([1.0, 2.0, 3.0, 0.1, 5.0, 6.0], {"patience": 1, "start_from_epoch": 2}, 4, 3),
]


def _run(values, kwargs, callback_cls, tmp_path, epochs=None):
    kwargs = dict(kwargs)
    monitor = kwargs.setdefault("monitor", "val_loss")
    if callback_cls is EarlyStoppingWithCheckpoint:
        callback = callback_cls(str(tmp_path / "best.keras"), **kwargs)
    else:
        callback = callback_cls(restore_best_weights=True, **kwargs)
    model = tiny_model()
    script = fit_scripted(model, callback, epochs or len(values), **{monitor: values})
    return model, callback, script


@pytest.mark.parametrize("values, kwargs, stopped, best", TABLE)
def test_scripted_runs_stop_restore_and_save_the_best_epoch(
    values, kwargs, stopped, best, tmp_path
):
    model, callback, script = _run(values, kwargs, EarlyStoppingWithCheckpoint, tmp_path)
    assert callback.best_epoch == best
    if stopped is None:
        assert callback.stop_reason is StopReason.COMPLETED
        assert len(script.weights) == len(values)
    else:
        assert callback.stop_reason is StopReason.PATIENCE
        assert callback.stopped_epoch == stopped and len(script.weights) == stopped + 1
    for restored, expected in zip(model.get_weights(), script.weights[best]):
        np.testing.assert_array_equal(restored, expected)
    saved = keras.saving.load_model(tmp_path / "best.keras")
    for on_disk, expected in zip(saved.get_weights(), script.weights[best]):
        np.testing.assert_array_equal(on_disk, expected)


@pytest.mark.parametrize("values, kwargs, stopped, best", TABLE)
def test_decisions_match_keras_early_stopping(values, kwargs, stopped, best, tmp_path):
    _, ours, _ = _run(values, kwargs, EarlyStoppingWithCheckpoint, tmp_path)
    _, theirs, _ = _run(values, kwargs, keras.callbacks.EarlyStopping, tmp_path)
    assert (ours.stopped_epoch, ours.best_epoch, ours.wait) == (
        theirs.stopped_epoch,
        theirs.best_epoch,
        theirs.wait,
    )
    assert ours.best == theirs.best


def test_checkpoint_is_only_written_on_improvement(tmp_path, monkeypatch):
    saved_at = []
    original = EarlyStoppingWithCheckpoint._save_model
    monkeypatch.setattr(
        EarlyStoppingWithCheckpoint,
        "_save_model",
        lambda self, path: (
            saved_at.append(len(self._last_logs) and self.best_epoch),
            original(self, path),
        ),
    )
    _run([1.0, 0.8, 0.9, 0.7, 0.75, 0.75], {"patience": 5}, EarlyStoppingWithCheckpoint, tmp_path)
    assert saved_at == [0, 1, 3]


def test_checkpoint_files_get_the_usual_permissions(tmp_path):
    _run([1.0, 0.5], {"patience": 1}, EarlyStoppingWithCheckpoint, tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("best.keras", "best.keras.state.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_weights_only_checkpoint(tmp_path):
    path = tmp_path / "best.weights.h5"
    callback = EarlyStoppingWithCheckpoint(str(path), save_weights_only=True, patience=1)
    model = tiny_model()
    script = fit_scripted(model, callback, 4, val_loss=[1.0, 0.5, 0.7, 0.8])
    fresh = tiny_model()
    fresh.load_weights(path)
    for loaded, expected in zip(fresh.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(loaded, expected)


@pytest.mark.parametrize("bad_key", ["loss", "val_loss"])
@pytest.mark.parametrize("bad_value", [NAN, math.inf])
def test_non_finite_loss_stops_and_restores_the_best_weights(bad_key, bad_value, tmp_path):
    scripts = {"loss": [1.0, 0.9, 0.8, 0.7, 0.6], "val_loss": [1.0, 0.8, 0.9, 0.7, 0.6]}
    scripts[bad_key] = list(scripts[bad_key])
    scripts[bad_key][2] = bad_value
    callback = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=10)
    model = tiny_model()
    script = fit_scripted(model, callback, 5, **scripts)
    assert callback.stop_reason is StopReason.NON_FINITE_LOSS
    assert callback.stopped_epoch == 2 and len(script.weights) == 3
    assert callback.best_epoch == 1
    for restored, expected in zip(model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(restored, expected)


def test_real_nan_loss_stops_at_the_end_of_that_epoch(tmp_path):
    x, y = tiny_data(64)
    callback = EarlyStoppingWithCheckpoint(
        str(tmp_path / "best.keras"), monitor="loss", patience=10
    )
    model = tiny_model()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    good = model.get_weights()
    y_bad = y.copy()
    y_bad[20] = np.nan  # the second batch's loss is NaN
    model.fit(x, y_bad, epochs=5, batch_size=16, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.stop_reason is StopReason.NON_FINITE_LOSS
    assert callback.stopped_epoch == 0
    # No epoch of this fit was finite: the weights it started from come back.
    for restored, expected in zip(model.get_weights(), good):
        np.testing.assert_array_equal(restored, expected)


def test_strict_missing_metric_fails_early_and_lists_the_available_ones(tmp_path):
    x, y = tiny_data()
    model = tiny_model()
    callback = EarlyStoppingWithCheckpoint(str(tmp_path / "m.keras"), monitor="val_acuracy")
    # At the end of the first epoch, before a second one.
    with pytest.raises(
        ValueError, match=r"`val_acuracy`.*Available: accuracy, loss, val_accuracy, val_loss"
    ):
        model.fit(
            x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0, callbacks=[callback]
        )
    assert model.optimizer.iterations.numpy() == len(x) // 8
    # Without validation data no epoch logs `val_loss`: an error once fit ends
    # (an epoch without validation may be one `validation_freq` skips).
    callback = EarlyStoppingWithCheckpoint(str(tmp_path / "m.keras"), monitor="val_loss")
    with pytest.raises(
        ValueError, match=r"`val_loss`.*Available: accuracy, loss\..*validation data"
    ):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    lenient = EarlyStoppingWithCheckpoint(
        str(tmp_path / "m.keras"), monitor="val_loss", strict=False
    )
    with pytest.warns(UserWarning, match="val_loss"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[lenient])


@pytest.mark.parametrize("validation_freq", [2, [2, 3, 6]])
def test_validation_freq_epochs_without_validation_are_not_monitored(tmp_path, validation_freq):
    # Keras's fit skips validation on some epochs; EarlyStopping ignores those.
    x, y = tiny_data()
    val_loss = [2.0, 1.0, 1.5, 0.8, 0.9, 0.95]

    def run(callback):
        model = tiny_model()
        log = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: (
                logs.update(val_loss=val_loss[epoch]) if "val_loss" in logs else None
            )
        )
        model.fit(
            x,
            y,
            validation_data=(x, y),
            validation_freq=validation_freq,
            epochs=6,
            verbose=0,
            callbacks=[log, callback],
        )

    theirs = keras.callbacks.EarlyStopping(patience=1, restore_best_weights=True)
    with pytest.warns(UserWarning, match="val_loss"):  # Keras warns on each skipped epoch
        run(theirs)
    ours = EarlyStoppingWithCheckpoint(
        str(tmp_path / "b-{epoch}-{val_loss:.1f}.keras"), patience=1, keep_best=2
    )
    run(ours)
    assert (ours.stopped_epoch, ours.best_epoch, ours.best) == (
        theirs.stopped_epoch,
        theirs.best_epoch,
        theirs.best,
    )
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(e["path"]) for e in ours.kept
    ) + ["b-{epoch}-{val_loss:.1f}.keras.state.json"]


def test_a_stop_by_another_callback_is_not_called_patience(tmp_path):
    from kreg.callbacks import OverfittingDetector

    x, y = tiny_data()
    detector = OverfittingDetector(patience=2, action="stop")
    callback = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=10)
    script = ScriptedMetrics(
        loss=[2.0, 1.5, 1.2, 1.0, 0.85, 0.75, 0.68, 0.62, 0.58, 0.55, 0.52, 0.50],
        val_loss=[2.1, 1.6, 1.3, 1.15, 1.1, 1.12, 1.18, 1.25, 1.33, 1.4, 1.5, 1.6],
    )
    tiny_model().fit(
        x, y, validation_data=(x, y), epochs=12, verbose=0, callbacks=[script, detector, callback]
    )
    assert callback.stop_reason is StopReason.OTHER_CALLBACK
    assert callback.best_epoch == 4 and len(script.weights) == 7  # the detector stopped at epoch 6


def test_state_resets_between_fit_calls_on_the_same_callback(tmp_path):
    callback = EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"), patience=1)
    values = [1.0, 0.9, 0.95, 0.97, 0.5]
    model = tiny_model()
    fit_scripted(model, callback, 5, val_loss=values)
    first = (callback.stopped_epoch, callback.best_epoch, callback.best)
    fit_scripted(model, callback, 5, val_loss=values)
    assert (callback.stopped_epoch, callback.best_epoch, callback.best) == first
    assert not callback.resumed


def test_a_crashed_run_resumes_its_patience(tmp_path):
    path = str(tmp_path / "best.keras")
    model = tiny_model()
    crashed = EarlyStoppingWithCheckpoint(path, patience=3)
    with pytest.raises(Crash):
        x, y = tiny_data()
        model.fit(
            x,
            y,
            validation_data=(x, y),
            epochs=5,
            verbose=0,
            callbacks=[ScriptedMetrics(val_loss=[1.0, 0.5, 0.6, 0.7, 0.8]), crashed, CrashAt(2)],
        )
    crashed.wait_until_finished()  # the files are written in the background
    state = json.loads(open(path + ".state.json").read())
    assert {
        key: state[key]
        for key in ("monitor", "best", "best_epoch", "wait", "next_epoch", "finished")
    } == {
        "monitor": "val_loss",
        "best": 0.5,
        "best_epoch": 1,
        "wait": 1,
        "next_epoch": 3,
        "finished": False,
    }
    assert state["version"] == 3 and state["backup"].endswith("000002.npz")
    # The restarted run continues at epoch 3 (the crash came after epoch 2's
    # state was written), numbered as one run: 0.9 at epochs 3 and 4 exhausts
    # patience 3 at epoch 4.
    resumed = EarlyStoppingWithCheckpoint(path, patience=3)
    restarted = tiny_model()
    script = fit_scripted(restarted, resumed, 6, val_loss=[9, 9, 9, 0.9, 0.9, 0.9])
    assert resumed.resumed
    assert len(script.weights) == 2  # epochs 3 and 4 only
    assert resumed.stop_reason is StopReason.PATIENCE and resumed.stopped_epoch == 4
    assert resumed.best_epoch == 1
    # The best weights are the first run's, read back from its backup.
    for restored, expected in zip(
        restarted.get_weights(), keras.saving.load_model(path).get_weights()
    ):
        np.testing.assert_array_equal(restored, expected)
    state = json.loads(open(path + ".state.json").read())
    assert state["finished"] is True and state["backup"] is None
    assert [name for name in os.listdir(tmp_path) if "backup" in name] == []
    # A finished run starts fresh.
    again = EarlyStoppingWithCheckpoint(path, patience=3)
    script = fit_scripted(tiny_model(), again, 2, val_loss=[0.9, 0.8])
    assert not again.resumed and len(script.weights) == 2 and again.best_epoch == 1


def test_config_round_trip(tmp_path):
    callback = EarlyStoppingWithCheckpoint(
        str(tmp_path / "b.keras"), patience=4, mode="min", min_delta=0.1
    )
    config = callback.get_config()
    revived = EarlyStoppingWithCheckpoint.from_config(config)
    assert revived.get_config() == config
    assert (
        keras.saving.get_registered_name(EarlyStoppingWithCheckpoint)
        == "kreg>EarlyStoppingWithCheckpoint"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "maximum"}, r"`mode`.*'auto', 'min', 'max'.*'maximum'"),
        ({"patience": -1}, r"`patience`.*>= 0.*patience=-1"),
        ({"patience": 2.5}, r"`patience`.*integer"),
        ({"min_delta": -0.1}, r"`min_delta`.*>= 0.*min_delta=-0.1"),
        ({"filepath": "best.h5"}, r"`filepath`.*must end in `.keras`.*best.h5"),
        ({"filepath": "best.keras", "save_weights_only": True}, r"`filepath`.*`.weights.h5`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, message, tmp_path):
    kwargs = {"filepath": "best.keras", **kwargs}
    kwargs["filepath"] = str(tmp_path / kwargs["filepath"])
    with pytest.raises(ValueError, match=message):
        EarlyStoppingWithCheckpoint(**kwargs)


def test_unwritable_folder_fails_at_construction(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"`filepath`.*cannot be created"):
        EarlyStoppingWithCheckpoint(str(blocker / "best.keras"))

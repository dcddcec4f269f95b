"""EarlyStoppingWithCheckpoint: every monitor Keras logs, bad input, the state file, messages."""

import json
import math
import os

import keras
import numpy as np
import pytest
from scripted import fit_scripted
from scripted import tiny_data
from scripted import tiny_model

from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks import StopReason
from kreg.callbacks.training_state import StateFileError


def _classifier():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", metrics=[keras.metrics.F1Score()])
    return model


def test_a_vector_valued_monitor_counts_by_its_mean(tmp_path):
    x, _ = tiny_data(48)
    y = keras.utils.to_categorical(np.argmax(x, axis=1), 3)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: seen.append(np.mean(logs["val_f1_score"]))
    )
    stopper = EarlyStoppingWithCheckpoint(
        str(tmp_path / "b.keras"), monitor="val_f1_score", patience=10
    )
    _classifier().fit(
        x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=[record, stopper]
    )
    assert stopper.stop_reason is StopReason.COMPLETED
    assert stopper.best == pytest.approx(max(seen)) and stopper.best_epoch == int(np.argmax(seen))
    assert os.path.exists(tmp_path / "b.keras")


def test_non_finite_check_reads_arrays(tmp_path):
    stopper = EarlyStoppingWithCheckpoint(
        str(tmp_path / "b.keras"), monitor="val_f1_score", mode="max", patience=5
    )

    class VectorScript(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_f1_score"] = np.array(
                [0.5, 0.6 + epoch / 10, math.nan if epoch == 2 else 0.1]
            )

    x, y = tiny_data()
    tiny_model().fit(x, y, epochs=5, verbose=0, callbacks=[VectorScript(), stopper])
    assert stopper.stop_reason is StopReason.NON_FINITE_LOSS and stopper.stopped_epoch == 2


class _ConfigProbe(keras.callbacks.Callback):
    def __init__(self, stopper):
        super().__init__()
        self.stopper, self.configs = stopper, []

    def on_epoch_end(self, epoch, logs=None):
        self.configs.append(self.stopper.get_config())


def test_config_round_trips_before_during_and_after_fit(tmp_path):
    stopper = EarlyStoppingWithCheckpoint(
        str(tmp_path / "b-{epoch}.keras"), patience=2, min_delta=0.1, keep_best=2, verbose=0
    )
    before = stopper.get_config()
    probe = _ConfigProbe(stopper)
    x, y = tiny_data()
    tiny_model().fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[stopper, probe])
    for config in [*probe.configs, stopper.get_config()]:
        assert config == before
        assert EarlyStoppingWithCheckpoint.from_config(config).get_config() == before
    assert before["min_delta"] == 0.1 and before["keep_best"] == 2
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(stopper))
    assert revived.get_config() == before


@pytest.mark.parametrize(
    "filepath, kwargs, message",
    [
        (None, {}, r"`filepath`.*a path.*NoneType"),
        (123, {}, r"`filepath`.*a path.*int"),
        ("", {}, r"`filepath`.*folder"),
        ("sub/", {}, r"`filepath`.*folder"),
        ("best-{epoch}.keras", {}, r"`filepath`.*placeholder.*epoch.*keep_best"),
        ("best.keras", {"keep_best": 3}, r"`filepath`.*keep_best=3.*placeholder"),
        ("best-{epoch.keras", {"keep_best": 2}, r"`filepath`.*format"),
        ("best-{val_loss:.4q}.keras", {"keep_best": 2}, r"`filepath`.*formatted"),
        ("{epoch}/best.keras", {"keep_best": 2}, r"`filepath`.*not its folder"),
        ("best.keras", {"keep_best": 0}, r"`keep_best`.*>= 1"),
        ("best.keras", {"verbose": 3}, r"`verbose`.*0 or 1.*3"),
        ("best.keras", {"verbose": True}, r"`verbose`.*True"),
        ("best.keras", {"baseline": "0.5"}, r"`baseline`.*'0.5'"),
        ("best.keras", {"baseline": math.nan}, r"`baseline`.*nan"),
        ("best.keras", {"strict": "no"}, r"`strict`.*True or False.*'no'"),
        ("best.keras", {"resume": 1}, r"`resume`.*True or False"),
        ("best.keras", {"monitor": None}, r"`monitor`.*None"),
        ("best.keras", {"monitor": ""}, r"`monitor`"),
    ],
)
def test_bad_arguments_fail_at_construction(filepath, kwargs, message, tmp_path):
    if isinstance(filepath, str) and filepath:
        filepath = str(tmp_path / filepath) + ("/" if filepath.endswith("/") else "")
    with pytest.raises(ValueError, match=message):
        EarlyStoppingWithCheckpoint(filepath, **kwargs)


def test_an_existing_folder_is_refused(tmp_path):
    (tmp_path / "best.keras").mkdir()
    with pytest.raises(ValueError, match=r"`filepath`.*folder"):
        EarlyStoppingWithCheckpoint(str(tmp_path / "best.keras"))


def test_a_placeholder_naming_no_metric_fails_at_the_first_epoch(tmp_path):
    stopper = EarlyStoppingWithCheckpoint(str(tmp_path / "b-{val_acc:.2f}.keras"), keep_best=1)
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"`filepath`.*\['val_acc'\].*Available"):
        tiny_model().fit(x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[stopper])


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{garbage", r"not readable JSON"),
        ("[]", r"expected a JSON object, found list"),
        ('{"best": "abc", "wait": -5}', r"format"),
    ],
)
def test_an_unusable_state_file_is_a_clear_error(tmp_path, content, problem):
    path = tmp_path / "best.keras"
    (tmp_path / "best.keras.state.json").write_text(content)
    stopper = EarlyStoppingWithCheckpoint(str(path))
    x, y = tiny_data()
    with pytest.raises(StateFileError, match=rf"best.keras.state.json.*{problem}.*resume=False"):
        tiny_model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=[stopper])
    # Starting fresh works as the message says.
    fresh = EarlyStoppingWithCheckpoint(str(path), resume=False)
    tiny_model().fit(x, y, validation_data=(x, y), epochs=1, verbose=0, callbacks=[fresh])


@pytest.mark.parametrize(
    "field, value",
    [
        ("best", "abc"),
        ("wait", -5),
        ("best_epoch", 1.5),
        ("finished", "no"),
        ("kept", [{"value": 1}]),
        ("backup", "../../../../etc/hostname"),
        ("best_backup", "/etc/hostname"),
        ("mode", "up"),
        ("previous", {"backup": None}),
        ("kept", [{"value": 1.0, "epoch": 0, "path": "/elsewhere/best.keras"}]),
        ("version", 2),
    ],
)
def test_each_field_of_the_state_is_checked(tmp_path, field, value):
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    stopper = EarlyStoppingWithCheckpoint(path)
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[
                stopper,
                keras.callbacks.LambdaCallback(
                    on_epoch_end=lambda e, logs: 1 / 0 if e == 1 else None
                ),
            ],
        )
    stopper.wait_until_finished()  # the files are written in the background
    state = json.loads(open(path + ".state.json").read())
    state[field] = value
    open(path + ".state.json", "w").write(json.dumps(state))
    with pytest.raises(StateFileError, match=rf"state.json.*{field}"):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path)],
        )


def test_a_state_of_another_monitor_is_not_taken_over(tmp_path):
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[
                EarlyStoppingWithCheckpoint(path),
                keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: 1 / 0),
            ],
        )
    with pytest.raises(StateFileError, match=r"monitor='val_loss', not 'loss'"):
        tiny_model().fit(
            x, y, epochs=1, verbose=0, callbacks=[EarlyStoppingWithCheckpoint(path, monitor="loss")]
        )


@pytest.mark.parametrize("verbose", [0, 1])
def test_messages_follow_verbose_and_keras_logging(tmp_path, capsys, verbose):
    stopper = EarlyStoppingWithCheckpoint(str(tmp_path / "b.keras"), patience=1, verbose=verbose)
    fit_scripted(tiny_model(), stopper, 4, val_loss=[1.0, 0.5, 0.7, 0.8])
    out = capsys.readouterr().out
    if verbose:
        assert "saved" in out and "Epoch 3: early stopping" in out and "Training ended" in out
    else:
        assert out == ""
    if verbose:
        keras.config.disable_interactive_logging()
        try:
            fit_scripted(tiny_model(), stopper, 4, val_loss=[1.0, 0.5, 0.7, 0.8])
        finally:
            keras.config.enable_interactive_logging()
        assert "Training ended" not in capsys.readouterr().out  # sent to absl logging instead


def test_keep_best_keeps_the_k_best_files_named_as_model_checkpoint_names_them(tmp_path):
    template = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_loss:.3f}.keras")
    values = [1.0, 0.5, 0.7, 0.4, 0.6, 0.45]
    stopper = EarlyStoppingWithCheckpoint(template, patience=10, keep_best=3)
    script = fit_scripted(tiny_model(), stopper, len(values), val_loss=values)
    expected = {template.format(epoch=e + 1, val_loss=values[e]) for e in (3, 5, 1)}
    on_disk = {str(p) for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".keras"}
    assert on_disk == expected
    assert [entry["epoch"] for entry in stopper.kept] == [3, 5, 1]
    assert stopper.best_filepath == template.format(epoch=4, val_loss=0.4)
    state = json.loads(open(template + ".state.json").read())
    assert [entry["path"] for entry in state["kept"]] == [e["path"] for e in stopper.kept]
    for entry in stopper.kept:
        saved = keras.saving.load_model(entry["path"])
        for w, expected_w in zip(saved.get_weights(), script.weights[entry["epoch"]]):
            np.testing.assert_array_equal(w, expected_w)
    leftovers = [
        p.name for p in (tmp_path / "ckpt").iterdir() if ".tmp-" in p.name or "backup" in p.name
    ]
    assert leftovers == []


def test_temporaries_a_killed_run_left_are_removed_when_training_starts(tmp_path):
    # A SIGKILL between a write and its rename leaves a temporary behind, for the
    # checkpoint, the state file or an epoch's backup; the next fit clears them all.
    path = tmp_path / "best.keras"
    stale = [
        tmp_path / ".best.keras.tmp-abc123.keras",
        tmp_path / ".best.keras.state.json.tmp-abc123.json",
        tmp_path / "..best.keras.backup-000003.weights.h5.tmp-abc123.weights.h5",
    ]
    for file in stale:
        file.write_bytes(b"partial")
    fit_scripted(tiny_model(), EarlyStoppingWithCheckpoint(str(path)), 2, val_loss=[0.5, 0.4])
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert path.exists()

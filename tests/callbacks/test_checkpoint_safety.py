"""EarlyStoppingWithCheckpoint never loses the best model: names that collide,
a state of another run, another model or another callback."""

import json
import os

import keras
import pytest
from scripted import fit_scripted
from scripted import tiny_data
from scripted import tiny_model

from kreg.callbacks import EarlyStoppingWithCheckpoint
from kreg.callbacks.best_checkpoints import BestCheckpoints
from kreg.callbacks.training_state import StateFileError


def _crash(epoch):
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: 1 / 0 if e == epoch else None
    )


@pytest.mark.parametrize(
    "values, expected",
    [
        # 0.42 and 0.44 both format to "m-0.4": the better file stays.
        ([0.42, 0.44], [(0.42, 0)]),
        # A better epoch of the same name replaces the worse one, file and entry.
        ([0.44, 0.42], [(0.42, 1)]),
        ([0.9, 0.42, 0.44, 0.35, 0.8], [(0.35, 3), (0.42, 1), (0.8, 4)]),
    ],
)
def test_a_name_two_epochs_share_never_holds_the_worse(tmp_path, values, expected):
    template = str(tmp_path / "m-{val_loss:.1f}.keras")
    stopper = EarlyStoppingWithCheckpoint(template, keep_best=3, patience=10)
    fit_scripted(tiny_model(), stopper, len(values), val_loss=values)
    assert [(round(e["value"], 6), e["epoch"]) for e in stopper.kept] == expected
    # One entry per file, and each file is its entry's epoch's model.
    assert len({e["path"] for e in stopper.kept}) == len(stopper.kept)
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".keras")) == sorted(
        os.path.basename(e["path"]) for e in stopper.kept
    )
    assert stopper.best_filepath == stopper.kept[0]["path"]


def test_the_keeper_is_keyed_by_epoch():
    keeper = BestCheckpoints(2, "max")
    kept, removed = keeper.plan(0, 0.5, "a")
    keeper.kept = kept
    assert keeper.plan(1, 0.4, "a") is None  # worse, same name: not written
    kept, removed = keeper.plan(2, 0.7, "a")  # better, same name: replaces it
    assert kept == [{"value": 0.7, "epoch": 2, "path": "a"}] and removed == []
    keeper.kept = kept
    kept, removed = keeper.plan(3, 0.6, "b")
    keeper.kept = kept
    kept, removed = keeper.plan(4, 0.8, "c")
    assert [e["epoch"] for e in kept] == [4, 2] and removed == ["b"]


def test_the_folder_is_made_at_the_first_save_not_at_construction(tmp_path):
    folder = tmp_path / "a" / "b"
    stopper = EarlyStoppingWithCheckpoint(str(folder / "best.keras"))
    assert not folder.exists()
    keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(stopper))
    assert not folder.exists()
    fit_scripted(tiny_model(), stopper, 1, val_loss=[1.0])
    assert (folder / "best.keras").exists()


def test_a_state_written_for_another_mode_is_refused(tmp_path):
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path, mode="max"), _crash(1)],
        )
    with pytest.raises(StateFileError, match=r"mode='max', not 'min'.*resume=False"):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path, mode="min")],
        )


def test_a_changed_architecture_is_one_line_naming_the_backup_and_resume_false(tmp_path):
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path), _crash(1)],
        )
    wider = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5), keras.layers.Dense(1)])
    wider.compile("sgd", "mse")
    with pytest.raises(StateFileError) as raised:
        wider.fit(
            x,
            y,
            validation_data=(x, y),
            epochs=3,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path)],
        )
    message = str(raised.value)
    assert "\n" not in message and ".best.keras.backup-000001.npz" in message
    assert "architecture changed" in message and "resume=False" in message
    # As the message says: resume=False starts fresh.
    wider.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=1,
        verbose=0,
        callbacks=[EarlyStoppingWithCheckpoint(path, resume=False)],
    )


def test_two_callbacks_on_one_filepath_in_one_fit_are_refused(tmp_path):
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    first, second = (
        EarlyStoppingWithCheckpoint(path),
        EarlyStoppingWithCheckpoint(path, monitor="loss"),
    )
    with pytest.raises(ValueError, match=r"another EarlyStoppingWithCheckpoint.*same file"):
        tiny_model().fit(
            x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[first, second]
        )
    # Nothing was written by either: the refusal comes before the first save.
    assert not os.path.exists(path)
    # One callback on it, in a later fit, is fine.
    tiny_model().fit(
        x,
        y,
        validation_data=(x, y),
        epochs=1,
        verbose=0,
        callbacks=[EarlyStoppingWithCheckpoint(path)],
    )
    assert json.loads(open(path + ".state.json").read())["finished"] is True


def test_a_run_without_resume_leaves_no_state_a_later_resume_would_continue(tmp_path):
    # A killed `resume=False` run wrote states naming epochs and no backup: a
    # later `resume=True` went on at that epoch with fresh, untrained weights.
    path = str(tmp_path / "best.keras")
    x, y = tiny_data()
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=4,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path), _crash(1)],
        )
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=4,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(path, resume=False), _crash(2)],
        )
    stopper = EarlyStoppingWithCheckpoint(path)
    history = tiny_model().fit(
        x, y, validation_data=(x, y), epochs=2, verbose=0, callbacks=[stopper]
    )
    # Neither the replaced run (its backups) nor the unbacked one is resumed.
    assert not stopper.resumed and history.epoch == [0, 1]


def test_a_kept_entry_must_be_a_name_the_filepath_formats_to(tmp_path):
    # A kept file is deleted once it drops out of the best: a state naming any
    # other file of the folder would delete it.
    template = str(tmp_path / "m-{epoch}.keras")
    precious = tmp_path / "notes.keras"
    precious.write_text("mine")
    x, y = tiny_data()
    stopper = EarlyStoppingWithCheckpoint(template, keep_best=1)
    with pytest.raises(ZeroDivisionError):
        tiny_model().fit(
            x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=[stopper, _crash(1)]
        )
    stopper.wait_until_finished()  # the files are written in the background
    state_path = template + ".state.json"
    state = json.loads(open(state_path).read())
    state["kept"] = [{"value": 1e9, "epoch": 0, "path": str(precious)}]
    with open(state_path, "w") as file:
        json.dump(state, file)
    with pytest.raises(StateFileError, match="kept"):
        tiny_model().fit(
            x,
            y,
            validation_data=(x, y),
            epochs=4,
            verbose=0,
            callbacks=[EarlyStoppingWithCheckpoint(template, keep_best=1)],
        )
    assert precious.read_text() == "mine"

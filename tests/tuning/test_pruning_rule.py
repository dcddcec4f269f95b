"""The pruning rule at the edges a search meets: NaN, the last epoch, repeated
executions, Hyperband's rounds, serialization."""

import math

import keras
import keras_tuner
import numpy as np
import pytest
from search_helpers import Memorizer
from search_helpers import PrunedRandomSearch
from search_helpers import noise
from search_helpers import replay

from kreg.tuning import OverfittingPruning
from kreg.tuning import RegularizationSpace
from kreg.tuning import pruning_detector

# The replayed model compiles no metric to read a direction from: the objective says it.
VAL_ACCURACY = keras_tuner.Objective("val_accuracy", "max")


def _flat(epoch):
    return {"loss": 1.0 - 0.01 * epoch, "val_loss": 1.0 - 0.01 * epoch, "val_accuracy": 0.5}


def test_a_diverged_trial_neither_poisons_the_search_best_nor_escapes_pruning():
    def diverged(epoch):
        return {"loss": math.nan, "val_loss": math.nan}

    detector = pruning_detector(
        objective="val_loss", objective_patience=2, patience=2, smoothing=0.0, verbose=0
    )
    # The first trial diverges at once: it sets no search best (NaN would compare
    # false with everything and end pruning for the rest of the search).
    assert replay(detector, diverged, epochs=10) is None
    assert detector.search.value is None
    detector.search.update(math.nan)
    assert detector.search.value is None
    # Behind a finite best, a diverged trial is as hopeless as any.
    assert replay(detector, diverged, epochs=10, search_best=0.5) == 2

    def diverges_after_a_good_start(epoch):
        return {"loss": 1.0, "val_loss": 0.4 if epoch < 3 else math.nan}

    detector = pruning_detector(
        objective="val_loss", objective_patience=2, patience=2, smoothing=0.0, verbose=0
    )
    replay(detector, diverges_after_a_good_start, epochs=10)
    assert detector.search.value == pytest.approx(0.4)


def test_the_last_epoch_ends_nothing():
    # The pace is first measured at the last epoch: nothing is left to save.
    detector = pruning_detector(objective=VAL_ACCURACY, objective_patience=2, patience=2, verbose=0)
    assert replay(detector, _flat, epochs=3, search_best=-0.9) is None
    assert detector.search.ended_after is None
    assert replay(detector, _flat, epochs=4, search_best=-0.9) == 2


def test_the_pace_is_per_epoch_when_validation_runs_every_other_epoch():
    def slow(epoch):  # val_accuracy gains 0.01 an epoch: 0.79 by the last epoch, short of 0.85
        return {
            "loss": 1.0 - 0.01 * epoch,
            "val_loss": 1.0 - 0.01 * epoch,
            "val_accuracy": 0.5 + 0.01 * epoch,
        }

    def every_other(epoch):  # fit(validation_freq=2): validation after epochs 2, 4, 6, ...
        logs = slow(epoch)
        return logs if epoch % 2 == 1 else {"loss": logs["loss"]}

    for curve, first_pace in ((slow, 2), (every_other, 5)):
        detector = pruning_detector(
            objective=VAL_ACCURACY, objective_patience=2, patience=2, verbose=0
        )
        assert replay(detector, curve, epochs=30, search_best=-0.85) == first_pace, curve.__name__


def test_pruning_detector_config_round_trip():
    detector = pruning_detector(
        prune_on=("overfitting", "underfitting"),
        objective=keras_tuner.Objective("val_auc", "max"),
        objective_patience=3,
        patience=2,
        smoothing=0.1,
        verbose=0,
    )
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(detector))
    assert type(restored) is type(detector)
    assert restored.get_config() == detector.get_config()
    assert restored.action.prune_on == ("overfitting", "underfitting")
    assert (restored.objective, restored.objective_mode, restored.objective_patience) == (
        "val_auc",
        "max",
        3,
    )
    assert (restored.patience, restored.smoothing) == (2, 0.1)


SEEN = []


class _Recorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        SEEN.append(0)

    def on_epoch_end(self, epoch, logs=None):
        SEEN[-1] += 1


class PrunedHyperband(OverfittingPruning, keras_tuner.Hyperband):
    pass


@pytest.mark.integration
def test_executions_of_one_trial_are_not_judged_against_each_other(tmp_path):
    # The search's best is that of finished trials (keras-tuner averages a
    # trial's executions): the first trial's second execution has no reference,
    # whatever its first execution scored.
    SEEN.clear()
    x, y = noise(128, 0)
    x_val, y_val = noise(128, 1)
    tuner = PrunedRandomSearch(
        Memorizer(space=RegularizationSpace(dropout_ranges={"dense": (0.0, 0.1)})),
        objective="val_loss",
        max_trials=1,
        executions_per_trial=3,
        directory=tmp_path,
        project_name="executions",
        detector_kwargs={"patience": 1, "smoothing": 0.0, "objective_patience": 1, "verbose": 0},
    )
    tuner.search(
        x, y, validation_data=(x_val, y_val), epochs=12, verbose=0, callbacks=[_Recorder()]
    )
    assert SEEN == [12, 12, 12], SEEN
    assert tuner.pruned_trials == {}


@pytest.mark.integration
def test_hyperband_rounds_that_feed_successive_halving_are_not_pruned(tmp_path):
    tuner = PrunedHyperband(
        Memorizer(),
        objective="val_loss",
        max_epochs=3,
        factor=3,
        directory=tmp_path,
        project_name="hb",
        detector_kwargs={"patience": 1, "objective_patience": 1, "verbose": 0},
    )
    x, y = noise(32, 0)
    tuner.search(x, y, validation_data=(x, y), verbose=0)  # Hyperband sets the epochs
    finished = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(finished) == len(tuner.oracle.trials) >= 3
    # A round whose trials Hyperband ranks for promotion has no reference to be pruned against...
    early = keras_tuner.engine.trial.Trial(tuner.oracle.get_space())
    early.hyperparameters.values.update(
        {"tuner/epochs": 1, "tuner/initial_epoch": 0, "tuner/bracket": 1, "tuner/round": 0}
    )
    assert tuner.reference_for(early) is None
    # ... while a bracket's last round is judged against the search's best.
    last = keras_tuner.engine.trial.Trial(tuner.oracle.get_space())
    last.hyperparameters.values.update(
        {"tuner/epochs": 3, "tuner/initial_epoch": 1, "tuner/bracket": 1, "tuner/round": 1}
    )
    assert tuner.reference_for(last) == pytest.approx(min(t.score for t in finished))


def test_only_completed_trials_are_a_reference(tmp_path):
    tuner = PrunedRandomSearch(
        Memorizer(),
        objective="val_accuracy",
        max_trials=5,
        directory=tmp_path,
        project_name="completed",
    )
    running = tuner.oracle.create_trial("worker")
    assert tuner.reference_for(running) is None, "no finished trial: it leads"
    for score in (math.nan, 0.7):  # keras-tuner fails a trial whose score is NaN
        trial = tuner.oracle.create_trial("worker")
        tuner.oracle.update_trial(trial.trial_id, {"val_accuracy": score})
        trial.status = "COMPLETED"
        tuner.oracle.end_trial(trial)
        expected = None if math.isnan(score) else -score  # signed: lower is better
        assert tuner.reference_for(running) == expected


def test_several_objectives_need_the_judged_one_named(tmp_path):
    objectives = ["val_loss", keras_tuner.Objective("val_accuracy", "max")]
    with pytest.raises(
        ValueError, match=r"name the one whose pace is judged.*\['val_loss', 'val_accuracy'\]"
    ):
        PrunedRandomSearch(
            Memorizer(),
            objective=objectives,
            max_trials=1,
            directory=tmp_path,
            project_name="multi",
        )
    tuner = PrunedRandomSearch(
        Memorizer(),
        objective=objectives,
        max_trials=1,
        directory=tmp_path,
        project_name="multi",
        detector_kwargs={"objective": keras_tuner.Objective("val_accuracy", "max")},
    )
    # Not the oracle's score (a sum of both): the detector keeps its own record.
    assert tuner.detector.objective == "val_accuracy" and not tuner.detector.search.set_by_tuner


def test_an_objective_the_logs_never_hold_is_an_error_listing_the_logged_keys():
    detector = pruning_detector(
        objective="val_accurcy", objective_patience=2, patience=2, verbose=0
    )
    with pytest.raises(
        ValueError, match=r"`val_accurcy` is not in the epoch's logs.*'val_accuracy'"
    ):
        replay(detector, _flat, epochs=4)
    # An epoch without validation (validation_freq) is not held against it.
    detector = pruning_detector(objective=VAL_ACCURACY, objective_patience=2, patience=2, verbose=0)
    assert (
        replay(detector, lambda epoch: {"loss": 1.0} if epoch % 2 == 0 else _flat(epoch), epochs=3)
        is None
    )


def test_the_pruning_detector_keeps_the_band_its_rule_was_chosen_with():
    # 1 noise SD (the detector's own default is 1.5): a wider band calls fewer
    # epochs overfitting and more saturated, which prunes on the short window.
    assert pruning_detector(objective="val_accuracy").threshold == 1.0
    assert pruning_detector(objective="val_accuracy", threshold=2.0).threshold == 2.0
    # Another criterion keeps its own default level.
    assert pruning_detector(objective="val_accuracy", criterion="gl").threshold is None
    detector = pruning_detector(objective="val_accuracy")
    state = [detector.update(epoch, 1.0 - 0.05 * epoch, v) for epoch, v in enumerate(
        [1.0, 0.9, 0.8, 0.75, 0.7, 0.69, 0.71, 0.7, 0.72, 0.715]
    )]  # fmt: skip
    assert state[-1] == "overfitting", "0.72, 0.715 lie above 0.69 + 1 noise SD, not 1.5"


def test_an_objective_direction_against_the_metric_s_declared_one_is_an_error():
    # Accuracy declares itself maximized; an Objective that minimizes it would
    # judge every improving trial as falling behind.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse", metrics=["accuracy"])
    x = np.ones((8, 3), "float32")
    detector = pruning_detector(
        objective=keras_tuner.Objective("val_accuracy", "min"), patience=2, verbose=0
    )
    with pytest.raises(
        ValueError,
        match=r"argument `objective`.*'val_accuracy' declares that it is maximized.*"
        r"direction 'max'.*Received: .*'min'",
    ):
        model.fit(
            x, x[:, :1], validation_data=(x, x[:, :1]), epochs=2, verbose=0, callbacks=[detector]
        )
    # The direction it declares is accepted.
    detector = pruning_detector(
        objective=keras_tuner.Objective("val_accuracy", "max"), patience=2, verbose=0
    )
    model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=2, verbose=0, callbacks=[detector])


def test_bad_input_to_the_detector_ends_a_search_at_its_first_trial(tmp_path):
    # keras-tuner fails a trial on an ordinary ValueError and goes on with the
    # next, which fails alike (3 in a row before it stops): a misspelt monitor,
    # the same in every trial, ends the search at once, with its message.
    x, y = noise(32, 0)
    tuner = keras_tuner.RandomSearch(
        Memorizer(space=RegularizationSpace(dropout_ranges={"dense": (0.0, 0.1)})),
        objective="val_loss",
        max_trials=3,
        directory=tmp_path,
        project_name="bad_input",
    )
    with pytest.raises(
        keras_tuner.errors.FatalValueError, match=r"argument `train_monitor`.*`los` is not in"
    ):
        tuner.search(
            x, y, validation_data=(x, y), epochs=2, verbose=0,
            callbacks=[pruning_detector(train_monitor="los", verbose=0)],
        )  # fmt: skip
    assert len(tuner.oracle.trials) == 1


def test_an_objective_whose_metric_declares_no_direction_asks_for_an_objective_with_one():
    # A custom metric declares no direction: the fix is a keras_tuner.Objective
    # (pruning_detector has no `mode` for its objective; `mode` is the monitor's).
    detector = pruning_detector(objective="val_custom", patience=2, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"argument `objective`.*'val_custom' declares no direction.*"
        r"keras_tuner\.Objective\('val_custom', 'max'\).*Received: objective='val_custom'",
    ):
        replay(detector, lambda epoch: {"loss": 1.0, "val_loss": 1.0, "val_custom": 0.5}, 3)
    # With a direction it runs.
    detector = pruning_detector(
        objective=keras_tuner.Objective("val_custom", "max"), patience=2, verbose=0
    )
    replay(detector, lambda epoch: {"loss": 1.0, "val_loss": 1.0, "val_custom": 0.5}, 3)


def test_a_misspelt_monitor_is_named_as_the_monitor_not_as_the_objective():
    # The objective defaults to the detector's monitor: a misspelt monitor is
    # the argument the user passed, and the error names it.
    detector = pruning_detector(monitor="val_los", patience=2, verbose=0)
    with pytest.raises(
        ValueError, match=r"argument `monitor`.*`val_los` is not in.*Received: monitor='val_los'"
    ):
        replay(detector, _flat, epochs=4)

"""kreg's hypermodels under keras-tuner's searches: tuners, failed trials, pruning, gains."""

import keras
import keras_tuner
import numpy as np
import pytest
from search_helpers import GroupsBreakSomeModels
from search_helpers import Memorizer
from search_helpers import PrunedRandomSearch
from search_helpers import noise
from search_helpers import replay

from kreg.layers import ConsistentDropout
from kreg.tuning import CNNHyperModel
from kreg.tuning import RecurrentHyperModel
from kreg.tuning import RegularizationSpace
from kreg.tuning import pruning_detector

# The replayed model compiles no metric to read a direction from: the objective says it.
VAL_ACCURACY = keras_tuner.Objective("val_accuracy", "max")


def _small(digits, n_train=160, n_val=160):
    (x, y), (x_val, y_val) = digits
    return (x[:n_train], y[:n_train]), (x_val[:n_val], y_val[:n_val])


def test_hypermodels_build_with_defaults_and_train_a_step(digits):
    (x, y), _ = _small(digits, 32)
    for hypermodel, names in [
        (
            CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=16),
            ["norm", "norm_groups", "early_conv_dropout", "late_conv_dropout", "dense_dropout"],
        ),
        (
            RecurrentHyperModel((8, 8), 10, units=(8, 8), dense_units=8),
            ["norm", "norm_groups", "recurrent_dropout", "dense_dropout"],
        ),
    ]:
        hp = keras_tuner.HyperParameters()
        model = hypermodel.build(hp)
        assert [p.name for p in hp.space] == names, [p.name for p in hp.space]
        assert model.output_shape == (None, 10)
        loss = model.train_on_batch(x, y)
        assert np.all(np.isfinite(loss)), loss
    assert hp.get("norm") == "layer", "recurrent models default to layer norm"
    assert sum(isinstance(layer, ConsistentDropout) for layer in model.layers) == 2


def test_hypermodel_default_space_keeps_group_counts_that_divide():
    hypermodel = RecurrentHyperModel((8, 6), 3)
    assert hypermodel.space.groups == (2,)
    hypermodel = RecurrentHyperModel((8, 5), 3)
    assert "group" not in hypermodel.space.norms


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CNNHyperModel((8,), 10), r"input_shape=\(8,\)"),
        (lambda: CNNHyperModel((8, 8), 1), "num_classes=1"),
        (lambda: RecurrentHyperModel((8, 8), 10, cell="rnn"), "cell='rnn'"),
        (lambda: CNNHyperModel((8, 8), 10, space="default"), "space='default'"),
        (lambda: CNNHyperModel((8, 8), 10, learning_rate=0), "learning_rate=0"),
        # The space's group counts are checked against the filters when the tuner starts.
        (
            lambda: CNNHyperModel(
                (8, 8), 10, filters=(6,), space=RegularizationSpace(groups=4)
            ).build(keras_tuner.HyperParameters()),
            "4 does not divide 6",
        ),
    ],
)
def test_hypermodel_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "error", [TypeError("unsupported operand"), KeyError("units"), RuntimeError("out of memory")]
)
def test_any_error_while_building_fails_only_its_trial(error):
    # keras-tuner marks any other error INVALID and retries the same values.
    from kreg.tuning import RegularizedHyperModel

    class Breaks(RegularizedHyperModel):
        def build_model(self, hp):
            raise error

    with pytest.raises(
        keras_tuner.errors.FailedTrialError,
        match=rf"cannot build a model for .*{type(error).__name__}",
    ):
        Breaks().build(keras_tuner.HyperParameters())
    optuna = pytest.importorskip("optuna")
    with pytest.raises(type(error)):  # under Optuna only a ValueError is reworded
        Breaks().build(optuna.trial.FixedTrial({}))


@pytest.mark.integration
def test_trial_whose_model_cannot_be_built_fails_without_crashing(tmp_path):
    # keras-tuner builds each conditional branch once with its default when the
    # tuner starts (2 groups here, which builds); the 4-group trial fails later.
    space = RegularizationSpace(norms=("group", "layer"), groups=(2, 4))
    tuner = keras_tuner.GridSearch(
        GroupsBreakSomeModels(space=space),
        objective="val_loss",
        max_trials=3,
        directory=tmp_path,
        project_name="fail",
    )
    x = np.random.default_rng(0).normal(size=(16, 4, 6)).astype("float32")
    y = np.arange(16) % 3
    tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0)
    trials = {space.describe(t.hyperparameters): t for t in tuner.oracle.trials.values()}
    assert set(trials) == {"group norm (2 groups)", "group norm (4 groups)", "layer norm"}, trials
    failed = trials.pop("group norm (4 groups)")
    assert failed.status == "FAILED", failed.status
    assert "Number of groups (4)" in failed.message, failed.message
    assert "cannot build a model for group norm (4 groups)" in failed.message, failed.message
    assert all(t.status == "COMPLETED" for t in trials.values()), [
        t.status for t in trials.values()
    ]
    assert tuner.get_best_hyperparameters()[0].values.get("norm_groups") != 4


@pytest.mark.integration
@pytest.mark.parametrize("tuner_name", ["RandomSearch", "BayesianOptimization", "Hyperband"])
def test_each_tuner_runs_a_tiny_search(digits, tmp_path, tuner_name):
    (x, y), (x_val, y_val) = _small(digits)
    hypermodel = RecurrentHyperModel((8, 8), 10, units=(16,), dense_units=16, seed=1)
    tuner_class = getattr(keras_tuner, tuner_name)
    budget = {"max_epochs": 3, "factor": 3} if tuner_name == "Hyperband" else {"max_trials": 3}
    if tuner_name == "BayesianOptimization":
        budget["num_initial_points"] = 2
    tuner = tuner_class(
        hypermodel,
        objective="val_accuracy",
        seed=1,
        directory=tmp_path,
        project_name=tuner_name,
        **budget,
    )
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=2, verbose=0)
    trials = list(tuner.oracle.trials.values())
    completed = [t for t in trials if t.status == "COMPLETED"]
    assert len(completed) >= 2 and len(completed) == len(trials), [t.status for t in trials]
    best = tuner.get_best_hyperparameters()[0]
    words = hypermodel.space.describe(best)
    assert "recurrent dropout" in words and "dense dropout" in words and "norm" in words, words
    assert tuner.get_best_models()[0].predict(x_val[:4], verbose=0).shape == (4, 10)


# -- pruning -------------------------------------------------------------------------

SEEN = []  # every epoch's logs of every trial (the recorder is deep-copied per trial)


class _Recorder(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        SEEN.append([])

    def on_epoch_end(self, epoch, logs=None):
        SEEN[-1].append(dict(logs))


@pytest.mark.integration
def test_pruning_ends_trials_behind_the_search_and_keeps_the_best_epoch_score(tmp_path):
    SEEN.clear()
    x, y = noise(128, 0)
    x_val, y_val = noise(128, 1)
    space = RegularizationSpace(dropout_ranges={"dense": (0.0, 0.1)})
    tuner = PrunedRandomSearch(
        Memorizer(space=space, seed=2),
        objective="val_loss",
        max_trials=3,
        seed=2,
        directory=tmp_path,
        project_name="pruned",
        detector_kwargs={"patience": 2, "smoothing": 0.0, "objective_patience": 3},
    )
    epochs = 40
    tuner.search(
        x, y, validation_data=(x_val, y_val), epochs=epochs, verbose=0, callbacks=[_Recorder()]
    )
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    assert len(trials) == 3 and len(SEEN) == 3
    first = trials[0]
    # The first trial leads the search: it is never ended for overfitting.
    assert first.trial_id not in tuner.pruned_trials and len(SEEN[0]) == epochs
    # Memorizing noise, the later trials overfit at once and trail the first.
    assert set(tuner.pruned_trials) == {t.trial_id for t in trials[1:]}, tuner.pruned_trials
    for trial, logs in zip(trials, SEEN):
        assert tuner.trial_epochs[trial.trial_id] == len(logs)
        val_loss = [epoch_logs["val_loss"] for epoch_logs in logs]
        # The score is the best epoch seen, not the epoch it was stopped at.
        assert trial.score == pytest.approx(min(val_loss)), (trial.score, val_loss)
        assert trial.best_step == int(np.argmin(val_loss))
        if trial is not first:
            assert len(logs) < epochs / 2, f"trial {trial.trial_id} ran {len(logs)} epochs"
            assert tuner.pruned_trials[trial.trial_id] == len(logs) - 1
            assert trial.score > first.score, "only a trial behind the search's best is ended"
    assert tuner.total_epochs == sum(len(logs) for logs in SEEN)


@pytest.mark.integration
def test_pruning_detector_callback_works_with_any_tuner(tmp_path):
    SEEN.clear()
    x, y = noise(128, 0)
    x_val, y_val = noise(128, 1)
    tuner = keras_tuner.RandomSearch(
        Memorizer(space=RegularizationSpace(dropout_ranges={"dense": (0.0, 0.1)}), seed=2),
        objective="val_loss",
        max_trials=3,
        seed=2,
        directory=tmp_path,
        project_name="cb",
    )
    detector = pruning_detector(patience=2, smoothing=0.0, objective_patience=3)
    tuner.search(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=40,
        verbose=0,
        callbacks=[detector, _Recorder()],
    )
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    assert [len(logs) for logs in SEEN][0] == 40, "the first trial leads: not ended"
    assert all(0 < len(logs) < 20 for logs in SEEN[1:]), [len(logs) for logs in SEEN]
    assert detector.states == [], "keras-tuner trains a deep copy; the template stays fresh"
    # ... while the copies share one record of the search's best.
    assert detector.search.value == pytest.approx(min(t.score for t in trials))
    for trial, logs in zip(trials, SEEN):
        assert trial.score == pytest.approx(min(epoch_logs["val_loss"] for epoch_logs in logs))


@pytest.mark.integration
def test_pruning_needs_validation_data(tmp_path):
    x, y = noise(32, 0)
    tuner = PrunedRandomSearch(
        Memorizer(),
        objective="loss",
        max_trials=1,
        directory=tmp_path,
        project_name="noval",
    )
    with pytest.raises(ValueError, match="validation_data"):
        tuner.search(x, y, epochs=1, verbose=0)


def test_pruning_bad_arguments():
    with pytest.raises(ValueError, match="prune_on='overfit'"):
        pruning_detector(prune_on="overfit")
    with pytest.raises(ValueError, match="action='warn'"):
        pruning_detector(action="warn")


def _overfits_while_accuracy_creeps(epoch):
    # The loss curves overfit from epoch 3 on, while val_accuracy (the search's
    # objective) keeps improving until epoch 11.
    return {
        "loss": 1.0 * 0.8**epoch,
        "val_loss": 1.0 - 0.1 * min(epoch, 3) + 0.05 * max(epoch - 3, 0),
        "val_accuracy": 0.5 + 0.01 * min(epoch, 11),
    }


def _overfitting_pruner():
    """Prunes on the overfitting state, judging the objective over 4 epochs."""
    return pruning_detector(
        prune_on="overfitting",
        objective=VAL_ACCURACY,
        objective_patience=4,
        patience=2,
        smoothing=0.0,
    )


def test_a_trial_behind_the_search_ends_once_its_objective_stalls_sooner_when_it_overfits():
    # Another trial scored 0.64 (signed: lower is better): this one trails it,
    # and its val_accuracy stalls after epoch 11 at 0.61.
    # Before its 7th validated epoch (its noise estimate) the detector calls a
    # loss overfitting only when it is more than 2% above its best at 2 epochs
    # in a row: the loss curves' U (minimum at 3) is overfitting at epoch 5.
    detector = _overfitting_pruner()
    stopped_after = replay(detector, _overfits_while_accuracy_creeps, search_best=-0.64)
    assert detector.states[4:6] == ["learning", "overfitting"], detector.states
    assert stopped_after == 11 + 2, "overfitting: its pace over `patience` epochs"

    def learning(epoch):  # the same objective, healthy loss curves
        return {
            **_overfits_while_accuracy_creeps(epoch),
            "loss": 1.0 - 0.01 * epoch,
            "val_loss": 1.0 - 0.01 * epoch,
        }

    detector = _overfitting_pruner()
    assert replay(detector, learning, search_best=-0.64) == 11 + 4, (
        "its pace over `objective_patience` epochs"
    )
    assert "overfitting" not in detector.states


def test_the_leading_trial_is_never_ended_for_overfitting():
    for search_best in (None, -0.6):  # the first trial; a trial ahead of the others
        detector = _overfitting_pruner()
        assert replay(detector, _overfits_while_accuracy_creeps, search_best=search_best) is None
        assert detector.state == "overfitting"


def test_a_trial_too_slow_to_reach_the_search_best_ends_while_still_learning():
    detector = pruning_detector(objective=VAL_ACCURACY, objective_patience=5, patience=2)

    def slow(epoch):  # healthy and improving, by 0.001 an epoch
        return {
            "loss": 1.0 - 0.01 * epoch,
            "val_loss": 1.0 - 0.01 * epoch,
            "val_accuracy": 0.5 + 0.001 * epoch,
        }

    # 0.5 + 0.001 * 29 < 0.9: hopeless from the first pace measured (epoch 5).
    assert replay(detector, slow, search_best=-0.9) == 5
    assert detector.search.ended_after == 5
    assert detector.state != "overfitting"
    # Within reach at that pace: trains on.
    assert replay(detector, slow, search_best=-0.52) is None
    # Watching only: nothing ends a trial.
    watcher = pruning_detector(
        prune_on=(), objective=VAL_ACCURACY, objective_patience=5, patience=2
    )
    assert replay(watcher, slow, search_best=-0.9) is None


def test_pruning_objective_defaults_to_the_tuners(tmp_path):
    tuner = PrunedRandomSearch(
        Memorizer(),
        objective="val_accuracy",
        max_trials=1,
        directory=tmp_path,
        project_name="objective",
    )
    assert (tuner.detector.objective, tuner.detector.objective_mode) == ("val_accuracy", "max")
    assert tuner.detector.objective_patience == 2 * tuner.detector.patience
    with pytest.raises(ValueError, match="objective_patience"):
        pruning_detector(objective_patience=0)

"""kreg's space, hypermodels and pruning under Optuna: same names and ranges, pruning, studies."""

import sys

import keras
import keras_tuner
import numpy as np
import pytest
from search_helpers import GroupsBreakSomeModels
from search_helpers import Memorizer
from search_helpers import noise

from kreg.tuning import CNNHyperModel
from kreg.tuning import RecurrentHyperModel
from kreg.tuning import RegularizationSpace
from kreg.tuning import optuna_pruning_callback

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _keras_tuner_ranges(hypermodel):
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    ranges = {}
    for p in hp.space:
        if hasattr(p, "min_value"):
            ranges[p.name] = ("float", p.min_value, p.max_value, p.step, p.sampling == "log")
        elif hasattr(p, "values"):
            ranges[p.name] = ("choice", tuple(p.values))
        else:
            ranges[p.name] = ("choice", (p.value,))
    return ranges


def _optuna_range(distribution):
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return ("float", distribution.low, distribution.high, distribution.step, distribution.log)
    return ("choice", tuple(distribution.choices))


@pytest.mark.parametrize(
    "make",
    [
        lambda space: CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=8, space=space),
        lambda space: RecurrentHyperModel((8, 8), 10, units=(8,), dense_units=8, space=space),
    ],
)
def test_same_names_ranges_and_conditions_as_keras_tuner(make):
    space = RegularizationSpace(groups=(2, 4), weight_decay="adamw", label_smoothing=True)
    hypermodel = make(space)
    expected = _keras_tuner_ranges(hypermodel)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(lambda trial: float(hypermodel.build(trial).count_params() > 0), n_trials=12)
    seen = set()
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial
        # The group count is asked for only when the norm is "group".
        assert ("norm_groups" in trial.params) == (trial.params["norm"] == "group"), trial.params
        for name, distribution in trial.distributions.items():
            assert _optuna_range(distribution) == expected[name], name
        seen |= set(trial.params)
        assert set(trial.params) >= set(expected) - {"norm_groups"}
        assert "weight decay" in space.describe(trial) and "label smoothing" in space.describe(
            trial
        )
    assert seen == set(expected), (
        "12 random trials reach every hyperparameter, norm_groups included"
    )
    assert space.describe(study.best_trial) == space.describe(study.best_params)


def test_fixed_values_are_used_as_is():
    space = RegularizationSpace()
    trial = optuna.trial.FixedTrial({"norm": "group", "norm_groups": 4, "dense_dropout": 0.35})
    assert space.dropout(trial, "dense").rate == pytest.approx(0.35)
    norm = space.norm(trial, channels=8)
    assert isinstance(norm, keras.layers.GroupNormalization) and norm.groups == 4


@pytest.mark.integration
def test_a_study_of_several_trials_with_the_pruning_callback(digits):
    (x, y), (x_val, y_val) = digits
    x_val, y_val = x_val[:160], y_val[:160]
    hypermodel = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=16, seed=1)
    reported = {}

    def objective(trial):
        model = hypermodel.build(trial)
        callback = optuna_pruning_callback(trial, "val_accuracy")
        history = hypermodel.fit(
            trial,
            model,
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=3,
            batch_size=32,
            verbose=0,
            callbacks=[callback],
        )
        reported[trial.number] = history.history["val_accuracy"]
        assert callback.best == pytest.approx(max(history.history["val_accuracy"]))
        return callback.best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(objective, n_trials=3)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:
        # One intermediate value per epoch, the epoch's val_accuracy.
        assert trial.intermediate_values == pytest.approx(dict(enumerate(reported[trial.number])))
    assert 0.1 < study.best_value <= 1.0
    assert "norm" in hypermodel.space.describe(study.best_trial)


@pytest.mark.integration
def test_the_study_pruner_prunes(digits):
    (x, y), (x_val, y_val) = digits
    x_val, y_val = x_val[:160], y_val[:160]

    def objective(trial):
        model = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=16, seed=1).build(trial)
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=5,
            verbose=0,
            callbacks=[optuna_pruning_callback(trial)],
        )
        return 0.0

    # Prunes any trial whose val_loss is above 1e-3 at epoch 2 or later.
    pruner = optuna.pruners.ThresholdPruner(upper=1e-3, n_warmup_steps=1)
    study = optuna.create_study(pruner=pruner)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1], "pruned after the second epoch"


def _learnable_then_hopeless(monitor, on_overfitting, epochs=30, patience=2, **detector_kwargs):
    """An objective whose trial 0 learns (it validates on its training data) and
    whose later trials memorize noise (they validate on other noise): hopeless."""
    x, y = noise(128, 0)
    x_noise, y_noise = noise(128, 1)
    hypermodel = Memorizer(space=RegularizationSpace(dropout_ranges={"dense": (0.0, 0.0)}), seed=2)
    ran = {}

    def objective(trial):
        validation = (x, y) if trial.number == 0 else (x_noise, y_noise)
        callback = optuna_pruning_callback(
            trial,
            monitor,
            on_overfitting=on_overfitting,
            detector_kwargs={
                "patience": patience,
                "objective_patience": 2 * patience,
                "smoothing": 0.0,
                "verbose": 0,
                **detector_kwargs,
            },
        )
        model = hypermodel.build(trial)
        history = model.fit(
            x, y, validation_data=validation, epochs=epochs, verbose=0, callbacks=[callback]
        )
        ran[trial.number] = len(history.epoch)
        assert callback.ended_after == (
            None if len(history.epoch) == epochs else len(history.epoch) - 1
        )
        return callback.best

    return objective, ran


@pytest.mark.integration
@pytest.mark.parametrize(
    "on_overfitting, monitor", [("stop", "val_loss"), ("prune", "val_accuracy")]
)
def test_a_trial_that_cannot_reach_the_study_best_ends_and_the_first_does_not(
    on_overfitting, monitor
):
    objective, ran = _learnable_then_hopeless(monitor, on_overfitting)
    direction = "maximize" if monitor == "val_accuracy" else "minimize"
    study = optuna.create_study(direction=direction)  # no pruner of its own would stop these trials
    study.optimize(objective, n_trials=3)
    first, *later = study.trials
    # The first trial leads the study: never ended, though the detector may see it overfit.
    assert first.state == optuna.trial.TrialState.COMPLETE and ran[0] == 30
    assert "stopped_after_epoch" not in first.user_attrs and len(first.intermediate_values) == 30
    assert study.best_trial.number == 0
    for trial in later:
        stopped = trial.user_attrs["stopped_after_epoch"]
        assert stopped < 15 and max(trial.intermediate_values) == stopped
        assert "would not reach the search's best" in trial.user_attrs["stopped_because"]
        if on_overfitting == "stop":
            # Stopped, not pruned: the trial completes with its best score.
            assert (
                trial.state == optuna.trial.TrialState.COMPLETE and ran[trial.number] == stopped + 1
            )
            assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
        else:
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.number not in ran


def test_the_study_best_comes_from_the_shared_storage(tmp_path):
    # Two workers of one study on SQLite: the trial worker B runs is judged
    # against the trial worker A completed meanwhile.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    worker_a = optuna.create_study(study_name="shared", storage=url, direction="maximize")
    worker_b = optuna.load_study(study_name="shared", storage=url)
    worker_a.tell(worker_a.ask(), 1.0)  # a completed trial with a perfect val_accuracy
    objective, ran = _learnable_then_hopeless("val_accuracy", "stop")
    worker_b.optimize(objective, n_trials=1)
    assert worker_b.trials[1].user_attrs["stopped_after_epoch"] < 15 and ran[1] < 15


def test_prune_on_nothing_only_reports():
    objective, ran = _learnable_then_hopeless("val_accuracy", "stop", epochs=10, prune_on=())
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 1.0)
    study.optimize(objective, n_trials=1)
    assert ran == {1: 10} and "stopped_after_epoch" not in study.trials[1].user_attrs


def test_unbuildable_trial_fails_alone():
    hypermodel = GroupsBreakSomeModels(space=RegularizationSpace(norms=("group",), groups=(2, 4)))
    study = optuna.create_study()
    study.enqueue_trial({"norm_groups": 4})
    study.enqueue_trial({"norm_groups": 2})
    study.optimize(
        lambda trial: float(hypermodel.build(trial).count_params()), n_trials=2, catch=(ValueError,)
    )
    failed, completed = study.trials
    assert (
        failed.state == optuna.trial.TrialState.FAIL
        and completed.state == optuna.trial.TrialState.COMPLETE
    )


def test_bad_arguments():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    with pytest.raises(ValueError, match="on_overfitting='rollback'"):
        optuna_pruning_callback(trial, on_overfitting="rollback")
    with pytest.raises(ValueError, match="mode='up'"):
        optuna_pruning_callback(trial, mode="up")
    with pytest.raises(ValueError, match="action='warn'"):
        optuna_pruning_callback(trial, detector_kwargs={"action": "warn"})
    with pytest.raises(ValueError, match="judges `monitor`.*objective='val_loss'"):
        optuna_pruning_callback(trial, detector_kwargs={"objective": "val_loss"})
    with pytest.raises(ValueError, match="prune_on"):
        optuna_pruning_callback(trial, detector_kwargs={"prune_on": "diverging"})
    with pytest.raises(ValueError, match="objective_patience"):
        optuna_pruning_callback(trial, detector_kwargs={"objective_patience": 0})
    with pytest.raises(TypeError, match="trial=3"):
        optuna_pruning_callback(3)
    # The study maximizes; val_loss is minimized: refused when fit starts.
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = np.zeros((4, 2)), np.zeros((4, 1))
    with pytest.raises(ValueError, match="direction='maximize'.*monitor='val_loss'"):
        model.fit(
            *data,
            validation_data=data,
            epochs=1,
            verbose=0,
            callbacks=[optuna_pruning_callback(trial)],
        )
    with pytest.raises(ValueError, match="val_acc.*not in the epoch's logs"):
        model.fit(
            *data,
            validation_data=data,
            epochs=1,
            verbose=0,
            callbacks=[optuna_pruning_callback(trial, "val_acc")],
        )


def test_missing_optuna_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "kreg\[optuna\]"'):
        optuna_pruning_callback(object())


def test_a_fit_without_validation_is_refused_not_left_unpruned():
    # Without validation data `val_loss` never reaches Optuna: no pruning and no
    # overfitting check would ever run, so the fit ends with an error saying why.
    study = optuna.create_study()
    trial = study.ask()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = np.zeros((4, 2)), np.zeros((4, 1))
    with pytest.warns(UserWarning, match="no validation logs"):
        with pytest.raises(ValueError, match="`val_loss` was in no epoch's logs"):
            model.fit(*data, epochs=2, verbose=0, callbacks=[optuna_pruning_callback(trial)])
    # validation_freq=2: the first epoch has no validation, the second reports.
    model.fit(
        *data,
        validation_data=data,
        validation_freq=2,
        epochs=2,
        verbose=0,
        callbacks=[optuna_pruning_callback(trial)],
    )
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == [1]


def test_auto_mode_never_guesses_a_direction_from_the_name():
    # "val_r2_score" would be maximized by its name; here another callback logs
    # it and no compiled metric declares its direction, so mode="auto" asks for
    # `mode` before anything is reported.
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    data = np.ones((4, 2)), np.ones((4, 2))
    logger = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logs.update(val_r2_score=0.5)
    )
    with pytest.raises(ValueError, match="Pass mode='min' or mode='max'"):
        model.fit(
            *data,
            validation_data=data,
            epochs=1,
            verbose=0,
            callbacks=[logger, optuna_pruning_callback(trial, "val_r2_score")],
        )
    assert not study.trials[0].intermediate_values
    callback = optuna_pruning_callback(study.ask(), "val_loss", mode="max")
    assert callback.direction == "maximize"


def test_auto_mode_takes_the_direction_the_compiled_metric_declares():
    # CosineSimilarity is maximized (its name says nothing): a maximizing study that
    # monitors it is not refused, as Keras's own callbacks read it.
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse", metrics=[keras.metrics.CosineSimilarity(name="cosine_similarity")])
    data = np.ones((4, 2)), np.ones((4, 2))
    callback = optuna_pruning_callback(trial, "val_cosine_similarity")
    model.fit(*data, validation_data=data, epochs=2, verbose=0, callbacks=[callback])
    assert callback.direction == "maximize"
    assert sorted(study.trials[0].intermediate_values) == [0, 1]


def test_a_multi_objective_study_is_refused_when_the_callback_is_built():
    trial = optuna.create_study(directions=["minimize", "maximize"]).ask()
    with pytest.raises(ValueError, match=r"`trial`.*2 objectives.*\['minimize', 'maximize'\]"):
        optuna_pruning_callback(trial)


def test_a_mode_against_the_declared_direction_is_an_error_naming_mode():
    # Accuracy declares itself maximized: mode="min" (and a minimizing study
    # to match) would report and judge it upside down.
    study = optuna.create_study(direction="minimize")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse", metrics=["accuracy"])
    data = np.ones((8, 3)), np.ones((8, 2))
    callback = optuna_pruning_callback(study.ask(), "val_accuracy", mode="min")
    with pytest.raises(
        ValueError,
        match=r"argument `mode`.*'val_accuracy' declares that it is maximized.*"
        r"Received: mode='min'",
    ):
        model.fit(*data, validation_data=data, epochs=2, verbose=0, callbacks=[callback])
    assert not study.trials[0].intermediate_values


def test_a_vector_valued_monitor_is_reported_by_its_mean():
    # F1Score logs one value per class; Optuna takes one number: their mean,
    # as OverfittingDetector and the keras-tuner pruning read it.
    study = optuna.create_study(direction="maximize")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
    model.compile("sgd", "mse", metrics=[keras.metrics.F1Score(threshold=0.5)])
    data = np.ones((8, 3)), np.ones((8, 2))
    per_class = []
    recorder = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: per_class.append(np.asarray(logs["val_f1_score"]))
    )
    callback = optuna_pruning_callback(study.ask(), "val_f1_score")
    model.fit(*data, validation_data=data, epochs=2, verbose=0, callbacks=[recorder, callback])
    reported = study.trials[0].intermediate_values
    assert per_class[0].shape == (2,)
    assert [reported[epoch] for epoch in (0, 1)] == pytest.approx(
        [float(np.mean(values)) for values in per_class]
    )


def test_a_detector_monitor_missing_from_the_logs_is_an_error_naming_it():
    # The overfitting rule reads detector_kwargs' monitor and train_monitor: a
    # misspelt one never ran it, silently (the trial could not be ended).
    study = optuna.create_study(direction="minimize")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    data = np.ones((8, 3)), np.ones((8, 1))
    for argument in ("monitor", "train_monitor"):
        callback = optuna_pruning_callback(
            study.ask(), "val_loss", detector_kwargs={argument: "val_los"}
        )
        with pytest.raises(
            ValueError,
            match=rf"argument `detector_kwargs`.*{argument} `val_los` is not in the epoch's "
            rf"logs.*'val_loss'.*Received: detector_kwargs=\{{'{argument}': 'val_los'\}}",
        ):
            model.fit(*data, validation_data=data, epochs=2, verbose=0, callbacks=[callback])
    # Without validation data the rule waits for validation logs, as before:
    # a study of the training loss runs.
    callback = optuna_pruning_callback(study.ask(), "loss")
    model.fit(*data, epochs=2, verbose=0, callbacks=[callback])
    assert callback.detector.states == []

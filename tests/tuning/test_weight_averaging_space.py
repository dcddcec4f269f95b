"""RegularizationSpace.weight_averaging: none, EMA or SWA, in keras-tuner and Optuna."""

import keras_tuner
import numpy as np
import pytest

from kreg.callbacks import WeightAveraging
from kreg.tuning import RegularizationSpace


def test_default_is_none_and_a_fixed_choice_gives_the_callback():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    assert space.weight_averaging(hp) == []
    assert hp.get("weight_averaging") == "none"
    assert [p.values for p in hp.space if p.name == "weight_averaging"] == [["none", "ema", "swa"]]
    x = np.zeros((4, 3), "float32")
    fixed = keras_tuner.HyperParameters()
    fixed.Fixed("weight_averaging", "swa")
    (callback,) = space.weight_averaging(fixed, bn_data=x, start_epoch=2)
    assert (
        isinstance(callback, WeightAveraging)
        and callback.method == "swa"
        and callback.start_epoch == 2
    )
    assert callback.bn_data is x
    # One method's own arguments reach the callback only when that method is chosen.
    (callback,) = space.weight_averaging(fixed, bn_data=x, start_epoch=2, momentum=0.9)
    assert callback.start_epoch == 2 and callback.momentum is None
    ema = keras_tuner.HyperParameters()
    ema.Fixed("weight_averaging", "ema")
    (callback,) = space.weight_averaging(ema, bn_data=x, start_epoch=2, momentum=0.9)
    assert callback.momentum == 0.9 and callback.start_epoch is None


def test_describe_in_words():
    space = RegularizationSpace()
    assert (
        space.describe({"dense_dropout": 0.4, "weight_averaging": "ema"})
        == "dense dropout 0.40, EMA weight averaging"
    )
    assert (
        space.describe({"dense_dropout": 0.4, "weight_averaging": "none"}) == "dense dropout 0.40"
    )


def test_optuna_asks_the_same_choice():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = RegularizationSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    chosen = []
    study.optimize(lambda trial: chosen.append(space.weight_averaging(trial)) or 0.0, n_trials=12)
    assert {trial.params["weight_averaging"] for trial in study.trials} == {"none", "ema", "swa"}
    distribution = study.trials[0].distributions["weight_averaging"]
    assert tuple(distribution.choices) == ("none", "ema", "swa")
    for trial, callbacks in zip(study.trials, chosen):
        assert [c.method for c in callbacks] == (
            [] if trial.params["weight_averaging"] == "none" else [trial.params["weight_averaging"]]
        )
    assert space.describe(study.trials[0]) in ("", "EMA weight averaging", "SWA weight averaging")

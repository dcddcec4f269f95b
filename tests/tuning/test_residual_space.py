"""`space.stochastic_depth`, `space.dropblock` and `CNNHyperModel(residual=True)`."""

import keras
import keras_tuner
import numpy as np
import optuna
import pytest

import kreg
from kreg.layers import DropBlock2D
from kreg.layers import StochasticDepth
from kreg.tuning import CNNHyperModel
from kreg.tuning import RegularizationSpace


def test_defaults_ranges_and_describe():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    assert space.stochastic_depth(hp) == pytest.approx(0.15)
    rate, block_size = space.dropblock(hp)
    assert rate == pytest.approx(0.15) and block_size == 5
    assert hp.get("stochastic_depth_rate") == pytest.approx(0.15)
    hp.values["dropblock_block_size"] = 3
    assert space.dropblock(hp)[1] == 3
    text = space.describe(hp)
    assert "stochastic depth up to 0.15" in text and "DropBlock 0.15 (block 3)" in text


def test_same_names_in_optuna():
    space = RegularizationSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    max_rate = space.stochastic_depth(trial)
    rate, block_size = space.dropblock(trial)
    assert set(trial.params) == {"stochastic_depth_rate", "dropblock_rate", "dropblock_block_size"}
    assert 0.0 <= max_rate <= 0.3 and 0.05 <= rate <= 0.25 and block_size in (3, 5, 7)
    assert "stochastic depth up to" in space.describe(trial.params)


def test_residual_cnn_uses_the_schedule_and_dropblock_clipped_to_the_map():
    hypermodel = CNNHyperModel((16, 16, 1), 3, filters=(4, 8, 8), dense_units=8, residual=True)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    depth = [layer for layer in model.layers if isinstance(layer, StochasticDepth)]
    np.testing.assert_allclose(
        [layer.rate for layer in depth], kreg.stochastic_depth_rates(3, 0.15)
    )
    blocks = [layer for layer in model.layers if isinstance(layer, DropBlock2D)]
    assert [layer.block_size for layer in blocks] == [
        (4, 4),
        (2, 2),
    ]  # maps of 4x4 and 2x2: block 5 clipped
    assert not [
        layer
        for layer in model.layers
        if type(layer) is keras.layers.Dropout and "conv" in layer.name
    ]
    assert {"stochastic_depth_rate", "dropblock_rate", "dropblock_block_size"} <= set(hp.values)
    x = np.random.default_rng(0).standard_normal((8, 16, 16, 1)).astype("float32")
    model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    assert [finding.rule for finding in kreg.diagnose(model) if finding.severity != "info"] == []


def test_residual_must_be_a_bool():
    with pytest.raises(ValueError, match=r"`residual`.*True or False.*'yes'"):
        CNNHyperModel((8, 8, 1), 3, residual="yes")

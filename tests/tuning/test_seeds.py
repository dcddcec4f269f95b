"""keras-tuner reads seed=0 as "no seed": kreg refuses 0 wherever it takes a seed."""

import keras_tuner
import pytest

from kreg.tuning import CNNHyperModel
from kreg.tuning import OverfittingPruning
from kreg.tuning import RecurrentHyperModel


class PrunedRandomSearch(OverfittingPruning, keras_tuner.RandomSearch):
    pass


def test_keras_tuner_really_reads_zero_as_no_seed(tmp_path):
    # The pitfall itself: two oracles "seeded" with 0 get different random seeds.
    seeds = {
        keras_tuner.RandomSearch(
            lambda hp: None,
            objective="loss",
            max_trials=1,
            seed=0,
            directory=tmp_path,
            project_name=f"p{i}",
        ).oracle.seed
        for i in range(4)
    }
    assert len(seeds) > 1, seeds


@pytest.mark.parametrize(
    "make",
    [
        lambda: CNNHyperModel((8, 8), 10, seed=0),
        lambda: RecurrentHyperModel((8, 8), 10, seed=0),
    ],
)
def test_hypermodels_refuse_seed_zero_with_the_reason(make):
    with pytest.raises(ValueError, match=r"seed=0.*keras-tuner reads seed=0 as 'no seed'"):
        make()


def test_pruning_tuner_refuses_seed_zero(tmp_path):
    with pytest.raises(ValueError, match=r"seed=0.*pass 1 or more"):
        PrunedRandomSearch(
            lambda hp: None,
            objective="val_loss",
            max_trials=1,
            seed=0,
            directory=tmp_path,
            project_name="zero",
        )


@pytest.mark.parametrize("seed", [-1, 1.5, True, "1"])
def test_other_bad_seeds(seed):
    with pytest.raises(ValueError, match="Expected an integer >= 1 or None"):
        CNNHyperModel((8, 8), 10, seed=seed)


def test_good_seeds():
    assert CNNHyperModel((8, 8), 10, seed=1).seed == 1
    assert CNNHyperModel((8, 8), 10).seed is None

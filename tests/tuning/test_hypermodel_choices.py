"""Every model a ready-made hypermodel can build passes kreg.diagnose without a warning."""

import keras_tuner
import pytest

import kreg
from kreg.tuning import CNNHyperModel
from kreg.tuning import RecurrentHyperModel
from kreg.tuning import RegularizationSpace
from kreg.tuning.regularization_space import NORMS


def _every_choice(hypermodel):
    """Fixed values that reach every choice of the space: each hyperparameter at each
    of its values (floats at both ends) with the others at their defaults, and every
    float at its top at once (the most dropout the search can pick)."""
    hp = keras_tuner.HyperParameters()
    hypermodel.build(hp)
    tops = {}
    for parameter in hp.space:
        if isinstance(parameter, keras_tuner.engine.hyperparameters.Choice):
            values = parameter.values
        elif isinstance(parameter, keras_tuner.engine.hyperparameters.Float):
            values = [parameter.min_value, parameter.max_value]
            tops[parameter.name] = parameter.max_value
        else:
            values = [parameter.value]
        parents = {c.name: c.values[0] for c in parameter.conditions}
        for value in values:
            yield {**parents, parameter.name: value}
    yield tops


def _findings(hypermodel, fixed):
    hp = keras_tuner.HyperParameters()
    for name, value in fixed.items():
        hp.Fixed(name, value)
    model = hypermodel.build(hp)
    return [f for f in kreg.diagnose(model) if f.severity != "info"]


HYPERMODELS = {
    "cnn": lambda space: CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=16, space=space),
    "cnn_rgb_deep": lambda space: CNNHyperModel(
        (16, 16, 3), 10, filters=(8, 8, 16, 16), dense_units=16, space=space
    ),
    "lstm": lambda space: RecurrentHyperModel((8, 8), 10, units=(8, 8), dense_units=8, space=space),
    "gru": lambda space: RecurrentHyperModel(
        (8, 6), 3, units=(8,), cell="gru", dense_units=8, space=space
    ),
}


@pytest.mark.parametrize("kind", sorted(HYPERMODELS))
def test_every_choice_of_the_default_space_passes_diagnose(kind):
    hypermodel = HYPERMODELS[kind](None)
    seen = 0
    for fixed in _every_choice(hypermodel):
        assert _findings(hypermodel, fixed) == [], (kind, fixed)
        seen += 1
    assert seen >= 8, seen


@pytest.mark.parametrize("weight_decay", ["adamw", "l2"])
@pytest.mark.parametrize("kind", ["cnn", "cnn_rgb_deep"])
def test_every_norm_and_the_whole_toolbox_pass_diagnose(kind, weight_decay):
    # A deep stack without any norm is what missing-normalization warns about:
    # the default space leaves "none" out there (test below), this one does too.
    norms = tuple(n for n in NORMS if n != "none") if kind == "cnn_rgb_deep" else NORMS
    space = RegularizationSpace(
        norms=norms, groups=(2, 4), weight_decay=weight_decay, label_smoothing=True
    )
    hypermodel = HYPERMODELS[kind](space)
    for fixed in _every_choice(hypermodel):
        assert _findings(hypermodel, fixed) == [], (kind, fixed)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_norm_of_recurrent_models_passes_diagnose(kind):
    hypermodel = HYPERMODELS[kind](RegularizationSpace(norms=NORMS, groups=(2,), weight_decay="l2"))
    for fixed in _every_choice(hypermodel):
        assert _findings(hypermodel, fixed) == [], (kind, fixed)


def test_no_bias_before_a_norm_that_cancels_it():
    hypermodel = HYPERMODELS["cnn"](RegularizationSpace(norms=NORMS))
    for norm, bias in [
        ("batch", False),
        ("adaptive_batch", False),
        ("instance", False),
        ("layer", True),
        ("group", True),
        ("none", True),
    ]:
        hp = keras_tuner.HyperParameters()
        hp.Fixed("norm", norm)
        convs = [layer for layer in hypermodel.build(hp).layers if type(layer).__name__ == "Conv2D"]
        assert len(convs) == 2 and all(conv.use_bias == bias for conv in convs), (norm, bias)


def test_deep_cnn_default_space_never_drops_the_norm():
    assert "none" not in CNNHyperModel((16, 16, 3), 10, filters=(8, 8, 16, 16)).space.norms
    assert "none" in CNNHyperModel((8, 8), 10, filters=(8, 16)).space.norms

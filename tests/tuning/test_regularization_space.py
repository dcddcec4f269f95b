"""RegularizationSpace: hyperparameter names, defaults, overrides, conditions, layers, errors."""

import keras
import keras_tuner
import numpy as np
import pytest

from kreg.layers import ConsistentDropout
from kreg.tuning import RegularizationSpace
from kreg.tuning import make_norm
from kreg.tuning.regularization_space import NORMS


def _norm_model(space, hp, channels=8):
    inputs = keras.Input((4, 4, channels))
    x = space.norm(hp, channels=channels)(inputs)
    x = space.dropout(hp, "late_conv")(x)
    x = keras.layers.Flatten()(x)
    x = space.dropout(hp, "dense")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_defaults_read_back_with_hp_get():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    for role in ("early_conv", "late_conv", "dense", "recurrent"):
        space.dropout(hp, role)
    space.norm(hp, channels=8)
    expected = {
        "early_conv_dropout": 0.05,
        "late_conv_dropout": 0.2,
        "dense_dropout": 0.4,
        "recurrent_dropout": 0.3,
    }
    for name, value in expected.items():
        assert hp.get(name) == pytest.approx(value), f"{name}: {hp.get(name)} != {value}"
    assert hp.get("norm") == "batch"
    ranges = {p.name: (p.min_value, p.max_value) for p in hp.space if hasattr(p, "min_value")}
    assert ranges == {
        "early_conv_dropout": (0.0, 0.1),
        "late_conv_dropout": (0.1, 0.3),
        "dense_dropout": (0.3, 0.5),
        "recurrent_dropout": (0.1, 0.5),
    }
    norm_choices = [p for p in hp.space if p.name == "norm"][0].values
    assert norm_choices == ["batch", "layer", "group", "instance", "none"]


def test_overrides_with_hp_fixed_and_custom_ranges():
    space = RegularizationSpace(dropout_ranges={"dense": (0.2, 0.6)}, default_norm="layer")
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dense_dropout", 0.55)
    hp.Fixed("norm", "group")
    hp.Fixed("norm_groups", 8)
    layer = space.dropout(hp, "dense")
    norm = space.norm(hp, channels=16)
    assert layer.rate == pytest.approx(0.55)
    assert isinstance(norm, keras.layers.GroupNormalization) and norm.groups == 8
    # The range override took effect, and a fresh hp gets its midpoint and the new default norm.
    fresh = keras_tuner.HyperParameters()
    assert space.dropout_rate(fresh, "dense") == pytest.approx(0.4)
    assert [p for p in fresh.space][0].min_value == 0.2
    assert space.norm_choice(fresh)[0] == "layer"
    # A range with low == high fixes the rate.
    fixed = RegularizationSpace(dropout_ranges={"early_conv": (0.0, 0.0)})
    assert fixed.dropout_rate(keras_tuner.HyperParameters(), "early_conv") == 0.0


def test_names_are_predictable_and_shared():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    space.dropout(hp, "dense", name="head")
    space.dropout(hp, "dense", name="head")  # same name: one shared hyperparameter
    space.norm(hp, name="block1", channels=8)
    space.norm(hp, name="block1", channels=8)
    assert [p.name for p in hp.space] == ["head_dropout", "block1_norm", "block1_norm_groups"]


def test_recurrent_role_gives_consistent_dropout():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    layer = space.dropout(hp, "recurrent")
    assert isinstance(layer, ConsistentDropout), type(layer)
    assert layer.rate == pytest.approx(0.3)
    assert type(space.dropout(hp, "dense")) is keras.layers.Dropout


def test_group_count_is_conditional_on_group_norm():
    space = RegularizationSpace(groups=(2, 4))
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", "layer")
    space.norm(hp, channels=8)
    assert "norm_groups" in [p.name for p in hp.space], "declared, so oracles know it"
    assert not hp.is_active("norm_groups")
    assert "norm_groups" not in hp.values, hp.values
    assert space.describe(hp) == "layer norm"

    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", "group")
    norm = space.norm(hp, channels=8)
    assert hp.is_active("norm_groups") and hp.values["norm_groups"] == 2
    assert norm.groups == 2
    # Without "group" among the choices there is no group count at all.
    hp = keras_tuner.HyperParameters()
    RegularizationSpace(norms=("batch", "layer")).norm(hp, channels=8)
    assert [p.name for p in hp.space] == ["norm"]


class _BuildOnly(keras_tuner.RandomSearch):
    """A search that builds each trial's model and scores it without training."""

    def run_trial(self, trial, *args, **kwargs):
        self.hypermodel.build(trial.hyperparameters)
        return float(len(self.oracle.trials))


@pytest.mark.integration
def test_oracle_only_varies_active_hyperparameters(tmp_path):
    space = RegularizationSpace(groups=(2, 4))
    tuner = _BuildOnly(
        lambda hp: _norm_model(space, hp),
        objective="loss",
        max_trials=25,
        seed=3,
        directory=tmp_path,
        project_name="space",
    )
    tuner.search(verbose=0)
    trials = list(tuner.oracle.trials.values())
    assert len(trials) >= 10, "the oracle ran out of distinct trials too early"
    seen_groups = set()
    for trial in trials:
        values = trial.hyperparameters.values
        if values["norm"] == "group":
            seen_groups.add(values["norm_groups"])
        else:
            assert "norm_groups" not in values, values
    assert seen_groups, "no random trial chose group norm"


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_choice_builds_and_trains_a_step(norm):
    if norm == "adaptive_batch":
        import kreg.layers

        if not hasattr(kreg.layers, "AdaptiveBatchNormalization"):
            pytest.skip("kreg.layers.AdaptiveBatchNormalization is not there yet")
    space = RegularizationSpace(norms=NORMS)
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", norm)
    model = _norm_model(space, hp)
    expected = {
        "batch": "BatchNormalization",
        "adaptive_batch": "AdaptiveBatchNormalization",
        "layer": "LayerNormalization",
        "group": "GroupNormalization",
        "instance": "GroupNormalization",
        "none": "Identity",
    }[norm]
    layer = model.layers[1]
    assert type(layer).__name__ == expected, type(layer).__name__
    if norm == "instance":
        assert layer.groups == -1 or layer.groups == 8, layer.groups
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    y = np.arange(16) % 3
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss), loss
    changed = [not np.allclose(a, b) for a, b in zip(before, model.get_weights())]
    assert any(changed), "a training step changed no weight"
    assert model.predict(x, verbose=0).shape == (16, 3)


def test_instance_norm_normalizes_each_channel_alone():
    layer = make_norm("instance")
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 5, 5, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert np.allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-4), "each (sample, channel) has mean 0"
    assert np.allclose(y.std(axis=(1, 2)), 1.0, atol=1e-2), "each (sample, channel) has std 1"


def test_describe_in_words():
    space = RegularizationSpace()
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dense_dropout", 0.42)
    hp.Fixed("norm", "group")
    hp.Fixed("norm_groups", 4)
    space.dropout(hp, "dense")
    space.norm(hp, channels=8)
    assert space.describe(hp) == "dense dropout 0.42, group norm (4 groups)"
    assert (
        space.describe({"late_conv_dropout": 0.2, "norm": "none"})
        == "late conv dropout 0.20, no norm"
    )


def test_config_round_trip():
    space = RegularizationSpace(
        dropout_ranges={"dense": (0.2, 0.6)}, norms=("layer", "group"), groups=4
    )
    again = RegularizationSpace.from_config(space.get_config())
    assert again.get_config() == space.get_config()
    assert again.groups == (4,) and again.dropout_ranges["dense"] == (0.2, 0.6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dropout_ranges": {"denes": (0.1, 0.2)}}, "'denes'"),
        ({"dropout_ranges": {"dense": (0.3, 1.0)}}, r"\(0\.3, 1\.0\)"),
        ({"dropout_ranges": {"dense": (-0.1, 0.2)}}, r"\(-0\.1, 0\.2\)"),
        ({"dropout_ranges": {"dense": (0.5, 0.3)}}, r"inverted.*\(0\.5, 0\.3\)"),
        ({"dropout_ranges": {"dense": 0.3}}, "dense'.*0.3"),
        ({"dropout_ranges": {"dense": (0.1, float("nan"))}}, "nan"),
        ({"dropout_ranges": {"dense": (True, 0.2)}}, "True"),
        ({"norms": ("batch", "weight")}, "'weight'"),
        ({"norms": ()}, "norms=()"),
        ({"norms": ("layer",), "default_norm": "batch"}, "default_norm='batch'"),
        ({"groups": (2, 0)}, r"groups=\(2, 0\)"),
        ({"step": 0.0}, "step=0.0"),
        ({"step": 1.0}, "step=1.0"),
        ({"weight_decay": "l1"}, "weight_decay='l1'"),
        ({"weight_decay_range": (1e-4, 1e-2)}, "weight_decay=None"),
        (
            {"weight_decay": "adamw", "weight_decay_range": (0.0, 1e-2)},
            r"weight_decay_range=\(0\.0",
        ),
        ({"weight_decay": "l2", "weight_decay_range": (1e-2, 1e-4)}, "inverted"),
        ({"label_smoothing": (0.1, 1.0)}, r"label_smoothing=\(0\.1, 1\.0\)"),
        ({"label_smoothing": 0.1}, "label_smoothing=0.1"),
    ],
)
def test_bad_construction_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegularizationSpace(**kwargs)


def test_bad_role_and_group_count_at_declaration():
    space = RegularizationSpace(groups=(2, 3))
    hp = keras_tuner.HyperParameters()
    with pytest.raises(ValueError, match="role='conv'"):
        space.dropout(hp, "conv")
    with pytest.raises(ValueError, match="3 does not divide 8"):
        space.norm(hp, channels=8)
    with pytest.raises(ValueError, match="channels=0"):
        space.norm(hp, channels=0)
    # Errors that would fail every trial end a search at once.
    with pytest.raises(keras_tuner.errors.FatalError):
        space.dropout(hp, "conv")
    with pytest.raises(ValueError, match="norm='batchnorm'"):
        make_norm("batchnorm")


def test_batch_norm_arguments_checked_against_keras_and_passed_on():
    space = RegularizationSpace(
        norms=NORMS,
        batch_norm_kwargs={"momentum": 0.9, "renorm": True},
        adaptive_batch_kwargs={"test_time_mode": "batch", "epsilon": 0.01},
    )
    for norm in ("batch", "adaptive_batch"):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("norm", norm)
        layer = space.norm(hp, channels=8, axis=1)
        assert (layer.axis, layer.momentum, layer.renorm) == (1, 0.9, True), norm
    assert layer.test_time_mode == "batch" and layer.epsilon == 0.01
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", "layer")
    assert isinstance(space.norm(hp), keras.layers.LayerNormalization), (
        "BN arguments only for batch norms"
    )
    assert RegularizationSpace.from_config(space.get_config()).get_config() == space.get_config()
    with pytest.raises(ValueError, match="batch_norm_kwargs=.*'momentun'"):
        RegularizationSpace(batch_norm_kwargs={"momentun": 0.9})
    with pytest.raises(ValueError, match="batch_norm_kwargs=.*'axis'"):
        RegularizationSpace(batch_norm_kwargs={"axis": 1})
    with pytest.raises(ValueError, match="adaptive_batch_kwargs=.*'mode'"):
        RegularizationSpace(adaptive_batch_kwargs={"mode": "batch"})


@pytest.mark.parametrize("hp", [None, {"dense_dropout": 0.3}])
def test_an_hp_that_is_neither_keras_tuner_nor_optuna_is_refused(hp):
    with pytest.raises(
        TypeError, match=r"argument `hp`.*keras_tuner.HyperParameters or an optuna.Trial"
    ):
        RegularizationSpace().dropout(hp, "dense")

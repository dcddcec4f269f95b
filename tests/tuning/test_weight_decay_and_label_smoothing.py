"""The rest of the toolbox: weight decay (AdamW or L2) and label smoothing in the space and the hypermodels."""

import keras
import keras_tuner
import numpy as np
import pytest

from kreg.tuning import CNNHyperModel
from kreg.tuning import RegularizationSpace
from kreg.tuning import RegularizedHyperModel
from kreg.tuning import SparseCategoricalCrossentropy


def _plain_adam(optimizer):
    """Adam, not AdamW (its subclass); on PyTorch Keras builds a torch subclass of each."""
    return isinstance(optimizer, keras.optimizers.Adam) and not isinstance(
        optimizer, keras.optimizers.AdamW
    )


def _parameters(hp):
    return {p.name: p for p in hp.space}


def test_weight_decay_is_log_uniform_with_a_predictable_name():
    for method, (low, high) in [("adamw", (1e-4, 1e-1)), ("l2", (1e-5, 1e-2))]:
        space = RegularizationSpace(weight_decay=method)
        hp = keras_tuner.HyperParameters()
        value = space.weight_decay(hp)
        parameter = _parameters(hp)["weight_decay"]
        assert (parameter.min_value, parameter.max_value, parameter.sampling) == (low, high, "log")
        assert low < value < high and value == pytest.approx(np.sqrt(low * high), rel=0.01)
    custom = RegularizationSpace(weight_decay="l2", weight_decay_range=(1e-6, 1e-6))
    assert custom.weight_decay(keras_tuner.HyperParameters()) == 1e-6


def test_optimizer_and_regularizer_follow_the_method():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("weight_decay", 0.02)
    adamw = RegularizationSpace(weight_decay="adamw")
    optimizer = adamw.optimizer(hp, learning_rate=3e-3)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(0.02)
    assert float(optimizer.learning_rate) == pytest.approx(3e-3)
    assert adamw.kernel_regularizer(hp) is None
    l2 = RegularizationSpace(weight_decay="l2")
    assert _plain_adam(l2.optimizer(hp))
    assert l2.kernel_regularizer(hp).l2 == pytest.approx(0.02)
    plain = RegularizationSpace()
    assert _plain_adam(plain.optimizer(hp)) and plain.kernel_regularizer(hp) is None
    with pytest.raises(ValueError, match="weight_decay='adamw'"):
        plain.weight_decay(hp)


def test_label_smoothing_name_range_and_loss():
    space = RegularizationSpace(label_smoothing=True)
    hp = keras_tuner.HyperParameters()
    assert space.label_smoothing(hp) == pytest.approx(0.1)
    parameter = _parameters(hp)["label_smoothing"]
    assert (parameter.min_value, parameter.max_value, parameter.step) == (0.0, 0.2, 0.05)
    loss = space.loss(hp)
    assert isinstance(
        loss, SparseCategoricalCrossentropy
    ) and loss.label_smoothing == pytest.approx(0.1)
    assert isinstance(space.loss(hp, sparse=False), keras.losses.CategoricalCrossentropy)
    # Not searched: no hyperparameter, Keras's own loss.
    hp = keras_tuner.HyperParameters()
    assert RegularizationSpace().loss(hp) == "sparse_categorical_crossentropy" and not hp.space


def test_sparse_loss_with_label_smoothing_matches_the_one_hot_loss():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    labels = np.array([0, 1, 2, 3, 1, 0])
    one_hot = np.eye(4, dtype="float32")[labels]
    for smoothing in (0.0, 0.1, 0.3):
        expected = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(
            one_hot, probabilities
        )
        ours = SparseCategoricalCrossentropy(label_smoothing=smoothing)(labels, probabilities)
        assert float(ours) == pytest.approx(float(expected), rel=1e-5)
        # (batch, 1) labels and logits work too.
        from_logits = SparseCategoricalCrossentropy(label_smoothing=smoothing, from_logits=True)
        assert float(from_logits(labels[:, None], logits)) == pytest.approx(
            float(expected), rel=1e-4
        )
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(SparseCategoricalCrossentropy()(labels, probabilities)) == pytest.approx(
        float(plain), rel=1e-5
    )
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        SparseCategoricalCrossentropy(label_smoothing=1.0)


def test_hypermodel_uses_the_toolbox_and_saves(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 8, 8)).astype("float32")
    y = np.arange(16) % 10
    for method in ("adamw", "l2"):
        space = RegularizationSpace(weight_decay=method, label_smoothing=True)
        hypermodel = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=8, space=space, seed=1)
        hp = keras_tuner.HyperParameters()
        model = hypermodel.build(hp)
        assert {"weight_decay", "label_smoothing"} <= set(hp.values)
        assert isinstance(model.loss, SparseCategoricalCrossentropy)
        if method == "adamw":
            assert isinstance(model.optimizer, keras.optimizers.AdamW) and not model.losses
        else:
            # Two convolutions and two dense kernels carry the L2 penalty.
            assert len(model.losses) == 4
        words = space.describe(hp)
        assert (
            "AdamW weight decay" if method == "adamw" else "L2"
        ) in words and "label smoothing 0.10" in words
        model.fit(x, y, epochs=1, verbose=0)
        path = tmp_path / f"{method}.keras"
        model.save(path)
        again = keras.saving.load_model(path)
        np.testing.assert_allclose(
            again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
        )
        assert isinstance(again.loss, SparseCategoricalCrossentropy)


class _ForgetsTheRegularizer(RegularizedHyperModel):
    def build_model(self, hp):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        return self.compile_model(model, hp)


class _ForgetsHp(RegularizedHyperModel):
    def build_model(self, hp):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        return self.compile_model(model)


def test_searched_decay_never_silently_ignored():
    hp = keras_tuner.HyperParameters()
    with pytest.raises(keras_tuner.errors.FatalError, match="kernel_regularizer"):
        _ForgetsTheRegularizer(space=RegularizationSpace(weight_decay="l2")).build(hp)
    with pytest.raises(keras_tuner.errors.FatalError, match="compile_model\\(model, hp\\)"):
        _ForgetsHp(space=RegularizationSpace(label_smoothing=True)).build(hp)
    # Without weight decay or label smoothing, compile_model(model) is Adam + Keras's loss.
    model = _ForgetsHp().build(hp)
    assert _plain_adam(model.optimizer) and model.loss == "sparse_categorical_crossentropy"


def test_config_round_trip_with_the_toolbox():
    space = RegularizationSpace(
        weight_decay="l2", weight_decay_range=(1e-5, 1e-3), label_smoothing=(0.05, 0.15)
    )
    again = RegularizationSpace.from_config(space.get_config())
    assert again.get_config() == space.get_config()
    assert again.weight_decay_range == (1e-5, 1e-3) and again.label_smoothing_range == (0.05, 0.15)

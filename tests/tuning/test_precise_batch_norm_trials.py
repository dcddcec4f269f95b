"""Batch-norm trials are validated with precise statistics, so they are judged (and pruned) fairly."""

import keras
import keras_tuner
import numpy as np
import pytest

import kreg
from kreg.callbacks import PreciseBatchNorm
from kreg.tuning import CNNHyperModel
from kreg.tuning import OverfittingPruning
from kreg.tuning import RegularizationSpace
from kreg.tuning.precise_statistics import precise_batch_norm_callback


def _fit_callbacks(hypermodel, hp, **fit_kwargs):
    """The callbacks `hypermodel.fit` hands to `model.fit`."""
    model = hypermodel.build(hp)
    handed = {}
    model.fit = lambda *args, **kwargs: handed.update(kwargs) or "history"
    assert hypermodel.fit(hp, model, *fit_kwargs.pop("args"), **fit_kwargs) == "history"
    return model, handed["callbacks"]


def _hp(norm):
    hp = keras_tuner.HyperParameters()
    hp.Fixed("norm", norm)
    return hp


def test_fit_adds_precise_batch_norm_only_for_batch_norms(digits):
    (x, y), _ = digits
    hypermodel = CNNHyperModel(
        (8, 8),
        10,
        filters=(8, 16),
        dense_units=8,
        space=RegularizationSpace(norms=("batch", "adaptive_batch", "layer")),
    )
    for norm, expected in [("batch", True), ("adaptive_batch", True), ("layer", False)]:
        _, callbacks = _fit_callbacks(hypermodel, _hp(norm), args=(x, y), epochs=1)
        assert any(isinstance(c, PreciseBatchNorm) for c in callbacks) == expected, norm
    # One given by the user is kept and not doubled.
    mine = PreciseBatchNorm(x[:10])
    _, callbacks = _fit_callbacks(hypermodel, _hp("batch"), args=(x, y), callbacks=[mine])
    assert callbacks == [mine]
    # Turned off.
    off = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=8, precise_batch_norm=False)
    _, callbacks = _fit_callbacks(off, _hp("batch"), args=(x, y))
    assert callbacks == []
    with pytest.raises(ValueError, match="precise_batch_norm='yes'"):
        CNNHyperModel((8, 8), 10, precise_batch_norm="yes")


def test_statistics_come_from_the_training_part_only(digits):
    (x, y), _ = digits
    hypermodel = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=8)
    _, callbacks = _fit_callbacks(hypermodel, _hp("batch"), args=(x, y), validation_split=0.25)
    assert callbacks[0].data.shape[0] == 120 and np.array_equal(callbacks[0].data, x[:120])
    _, callbacks = _fit_callbacks(hypermodel, _hp("batch"), args=(), x=x, y=y)
    assert callbacks[0].data is x
    generator = ((x[i : i + 16], y[i : i + 16]) for i in range(0, 160, 16))
    with pytest.warns(UserWarning, match="cannot be read twice"):
        _, callbacks = _fit_callbacks(hypermodel, _hp("batch"), args=(generator,))
    assert callbacks == []


def test_a_dataset_that_repeats_forever_is_read_for_one_epoch_of_steps(digits):
    # `dataset.repeat()` with `steps_per_epoch` is the usual tf.data training input:
    # the batch-norm trial must train, with statistics over an epoch's batches.
    import tensorflow as tf

    (x, y), (x_val, y_val) = digits
    hypermodel = CNNHyperModel((8, 8), 10, filters=(8, 16), dense_units=8)
    hp = _hp("batch")
    model = hypermodel.build(hp)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    _, callbacks = _fit_callbacks(hypermodel, hp, args=(dataset,), steps_per_epoch=5)
    assert isinstance(callbacks[0], PreciseBatchNorm) and callbacks[0].steps == 5
    history = hypermodel.fit(
        hp, model, dataset, steps_per_epoch=5, epochs=1, verbose=0, validation_data=(x_val, y_val)
    )
    assert len(history.history["val_accuracy"]) == 1


def test_dict_inputs_with_validation_split_use_the_training_part(digits):
    (x, y), _ = digits
    inputs = keras.Input((8, 8), name="image")
    outputs = keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(keras.layers.BatchNormalization()(inputs))
    )
    model = keras.Model({"image": inputs}, outputs)
    hypermodel = CNNHyperModel((8, 8), 10)
    handed = {}
    model.fit = lambda *args, **kwargs: handed.update(kwargs)
    hypermodel.fit(
        _hp("batch"), model, {"image": x}, y, validation_split=0.25, sample_weight=np.ones(len(x))
    )
    (precise,) = handed["callbacks"]
    assert set(precise.data) == {"image"} and np.array_equal(precise.data["image"], x[:120])


def test_batch_norm_trial_validates_with_its_real_statistics(digits):
    # Ten steps an epoch: the moving statistics lag far behind the weights.
    (x, y), (x_val, y_val) = digits
    scores = {}
    for precise in (False, True):
        hypermodel = CNNHyperModel(
            (8, 8), 10, filters=(8, 16), dense_units=32, seed=1, precise_batch_norm=precise
        )
        hp = _hp("batch")
        model = hypermodel.build(hp)
        history = hypermodel.fit(
            hp, model, x, y, validation_data=(x_val, y_val), epochs=8, batch_size=16, verbose=0
        )
        scores[precise] = history.history["val_accuracy"][-1]
        if precise:
            # The model leaves fit with the statistics of its final weights.
            again = keras.models.clone_model(model)
            again.set_weights(model.get_weights())
            kreg.adapt_batchnorm(again, x, verbose=0)
            first = [
                layer
                for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)
            ][0]
            first_again = [
                layer
                for layer in again.layers
                if isinstance(layer, keras.layers.BatchNormalization)
            ][0]
            np.testing.assert_allclose(
                first.moving_mean, first_again.moving_mean, rtol=1e-4, atol=1e-5
            )
    assert scores[True] > scores[False] + 0.2, scores


class PrunedRandomSearch(OverfittingPruning, keras_tuner.RandomSearch):
    pass


@pytest.mark.integration
def test_pruning_tuner_adds_precise_statistics_for_any_hypermodel(digits, tmp_path):
    (x, y), (x_val, y_val) = digits
    best_models = {}

    def build(hp):  # a plain build function, not a kreg hypermodel
        model = keras.Sequential(
            [
                keras.Input((8, 8)),
                keras.layers.Flatten(),
                keras.layers.Dense(16, use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        best_models["model"] = model
        return model

    tuner = PrunedRandomSearch(
        build,
        objective="val_accuracy",
        max_trials=1,
        seed=1,
        directory=tmp_path,
        project_name="precise",
    )
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=2, verbose=0)
    model = best_models["model"]
    again = keras.models.clone_model(model)
    again.set_weights(model.get_weights())
    kreg.adapt_batchnorm(again, x, verbose=0)
    np.testing.assert_allclose(
        model.layers[2].moving_variance, again.layers[2].moving_variance, rtol=1e-4
    )


def test_a_trial_without_batch_norm_is_not_warned_about(digits, recwarn):
    (x, y), (x_val, y_val) = digits
    hypermodel = CNNHyperModel(
        (8, 8), 10, filters=(8, 16), dense_units=8, space=RegularizationSpace(norms=("layer",))
    )
    model = hypermodel.build(_hp("layer"))
    assert not kreg.model_graph.batch_norm_layers(model)
    precise = precise_batch_norm_callback((x, y), {}, [])  # as the pruning tuner adds it
    model.fit(x, y, validation_data=(x_val, y_val), epochs=1, verbose=0, callbacks=[precise])
    assert not [w for w in recwarn if "no batch norm" in str(w.message)]
    with pytest.warns(UserWarning, match="no batch norm"):  # given by hand, it still warns
        model.fit(x, y, epochs=1, verbose=0, callbacks=[PreciseBatchNorm(x)])

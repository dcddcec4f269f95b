"""kreg under `tf.distribute.MultiWorkerMirroredStrategy`: two worker processes on
loopback, one cluster (tests/multi_worker.py), as on two machines.

Each test runs its worker function in both processes and compares what they
return. The functions are at module level because each worker loads this file.

Keras 3.15's `model.fit` fails under this strategy for any model, kreg or not:
`TensorFlowTrainer._maybe_symbolic_build` hands a tuple of per-replica batches to
`strategy.reduce`, which only the single-worker strategies accept, and the logs'
reduction fails after it (keras/src/backend/tensorflow/trainer.py). Training
here is therefore the custom loop of TensorFlow's multi-worker guide
(`strategy.run` of one step, the optimizer all-reducing the gradients), which is
what `fit` runs per step; `test_keras_fit_still_fails_under_multi_worker` says
when a Keras release fixes `fit`.
"""

import numpy as np
import pytest

import multi_worker

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.integration]


def _strategy():
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    return strategy


def _train(strategy, model, x, y, batch_size, epochs, learning_rate=0.05):
    """`epochs` passes over this worker's `(x, y)`, each step one synchronous
    update from both workers' gradients: the README's multi-worker recipe.
    TensorFlow shards each worker's dataset (batched by the global batch size)
    between the workers, so each worker trains on part of its own data."""
    import keras
    import tensorflow as tf

    with strategy.scope():
        optimizer = keras.optimizers.SGD(learning_rate)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        batch_size * strategy.num_replicas_in_sync
    )

    @tf.function
    def step(batch):
        def replica_step(inputs, targets):
            with tf.GradientTape() as tape:
                predictions = model(inputs, training=True)
                # Each replica's share of the global mean: the optimizer sums them.
                loss = (
                    keras.ops.mean(keras.ops.square(predictions - targets))
                    / strategy.num_replicas_in_sync
                )
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=batch), axis=None)

    losses = []
    for _ in range(epochs):
        for batch in strategy.experimental_distribute_dataset(dataset):
            losses.append(float(step(batch)))
    return losses


def train_every_layer(folder):
    import keras

    from layer_examples import EXAMPLES

    strategy = _strategy()
    results = {}
    for name, example in sorted(EXAMPLES.items()):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = example.model()
        x = example.inputs(32, seed=multi_worker.worker_index())  # each worker its own data
        y = np.ones((32, 1), dtype="float32")
        before = [w.copy() for w in model.get_weights()]
        losses = _train(strategy, model, x, y, batch_size=16, epochs=2)
        path = f"{folder}/{name}-{multi_worker.worker_index()}.keras"
        model.save(path)
        probe = example.inputs(4, seed=9)
        reloaded = keras.saving.load_model(path)
        results[name] = {
            "loss": losses,
            "before": before,
            "after": model.get_weights(),
            "trainable": [keras.ops.convert_to_numpy(w) for w in model.trainable_weights],
            "prediction": keras.ops.convert_to_numpy(model(probe, training=False)),
            "reloaded": keras.ops.convert_to_numpy(reloaded(probe, training=False)),
        }
    return results


def fit_a_dense_model(strategy):
    import keras

    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
    try:
        model.fit(np.ones((8, 3), "float32"), np.ones((8, 1), "float32"), batch_size=4, verbose=0)
    except ValueError as error:
        return str(error)[:300]
    return None


def test_keras_fit_still_fails_under_multi_worker(model_tools_results):
    errors = [result["fit"] for result in model_tools_results]
    assert all(errors), (
        "model.fit works under MultiWorkerMirroredStrategy in this Keras: train with "
        "fit in this module and update the README's multi-worker recipe."
    )
    assert "PerReplica" in errors[0]


def test_every_layer_trains_in_step_on_two_workers(tmp_path):
    from layer_examples import EXAMPLES

    first, second = multi_worker.run_workers(
        train_every_layer, kwargs={"folder": str(tmp_path)}, timeout=600
    )
    assert sorted(first) == sorted(EXAMPLES)
    for name in sorted(EXAMPLES):
        a, b = first[name], second[name]
        assert np.all(np.isfinite(a["loss"] + b["loss"])), name
        moved = [not np.array_equal(u, v) for u, v in zip(a["before"], a["after"])]
        assert any(moved), f"{name}: training changed no weight"
        # One model: the workers' gradients are all-reduced, so every trainable
        # weight is the same on both. (Batch norms' moving statistics are each
        # worker's own unless synchronized=True, as in Keras: tested below.)
        assert len(a["trainable"]) == len(b["trainable"]) > 0
        for u, v in zip(a["trainable"], b["trainable"]):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=name)
        for result in (a, b):
            np.testing.assert_allclose(
                result["reloaded"], result["prediction"], rtol=1e-6, atol=1e-6, err_msg=name
            )


def batch_norm_statistics(strategy):
    import keras

    import kreg

    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((3,))
        synchronized = kreg.AdaptiveBatchNormalization(synchronized=True, momentum=0.5)
        local = kreg.AdaptiveBatchNormalization(momentum=0.5)
        outputs = keras.layers.Dense(1)(
            keras.layers.Concatenate()([synchronized(inputs), local(inputs)])
        )
        model = keras.Model(inputs, outputs)
    # The workers' data differ: worker 1's features are shifted and scaled.
    index = multi_worker.worker_index()
    x = np.random.default_rng(index).normal(3.0 * index, 1.0 + index, (32, 3)).astype("float32")
    _train(
        strategy,
        model,
        x,
        np.zeros((32, 1), "float32"),
        batch_size=16,
        epochs=2,
        learning_rate=0.01,
    )
    return {
        "synchronized": [
            np.asarray(synchronized.moving_mean),
            np.asarray(synchronized.moving_variance),
        ],
        "local": [np.asarray(local.moving_mean), np.asarray(local.moving_variance)],
    }


def test_synchronized_adaptive_batch_norm_has_the_same_statistics_on_both_workers(
    model_tools_results,
):
    first, second = (result["batch_norm"] for result in model_tools_results)
    for a, b in zip(first["synchronized"], second["synchronized"]):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    # The control: without synchronized=True each worker keeps its own data's.
    assert not np.allclose(first["local"][0], second["local"][0], atol=0.5)


def adapt_on_shared_data(strategy):
    import keras

    import kreg

    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((3,))
        outputs = kreg.AdaptiveBatchNormalization()(keras.layers.BatchNormalization()(inputs))
        model = keras.Model(inputs, outputs)
    # Both workers pass the same data, as with a dataset on shared storage;
    # TensorFlow shards it, so each worker runs the model on its half.
    x = (
        np.random.default_rng(0)
        .normal([0.0, 3.0, -2.0], [1.0, 2.0, 0.5], (32, 3))
        .astype("float32")
    )
    report = kreg.adapt_batchnorm(model, x, batch_size=8, verbose=0)
    first_norm = model.layers[1]
    return {
        "data": x,
        "samples": report.samples,
        "mean": np.asarray(first_norm.moving_mean),
        "variance": np.asarray(first_norm.moving_variance),
    }


def test_adapt_batchnorm_takes_the_statistics_of_both_workers_data(model_tools_results):
    first, second = (result["adapt"] for result in model_tools_results)
    both = first["data"]
    for result in (first, second):
        # Every sample once: not each worker's half, not the data twice.
        assert result["samples"] == len(both)
        np.testing.assert_allclose(result["mean"], both.mean(axis=0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(result["variance"], both.var(axis=0), rtol=1e-4, atol=1e-4)


def fold_after_training(strategy):
    import keras

    import kreg

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                keras.layers.Conv2D(4, 3),
                keras.layers.BatchNormalization(synchronized=True),
                keras.layers.ReLU(),
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )
    x = (
        np.random.default_rng(multi_worker.worker_index())
        .standard_normal((32, 6, 6, 2))
        .astype("float32")
    )
    _train(strategy, model, x, np.ones((32, 1), "float32"), batch_size=16, epochs=2)
    folded, report = kreg.fold_batch_norms(model, return_report=True)
    probe = np.random.default_rng(9).standard_normal((4, 6, 6, 2)).astype("float32")
    return {
        "folded": len(report.folded),
        "original": np.asarray(model.predict(probe, verbose=0)),
        "prediction": np.asarray(folded.predict(probe, verbose=0)),
        "layers": [type(layer).__name__ for layer in folded.layers],
    }


def test_fold_batch_norms_of_a_model_trained_on_two_workers(model_tools_results):
    first, second = (result["fold"] for result in model_tools_results)
    for result in (first, second):
        assert result["folded"] == 1
        assert "BatchNormalization" not in result["layers"]
        np.testing.assert_allclose(result["prediction"], result["original"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first["prediction"], second["prediction"], rtol=1e-5, atol=1e-6)


def model_tools():
    """The checks below in one cluster: each start costs two TensorFlow imports
    and a handshake, and one process can create only one such strategy."""
    strategy = _strategy()
    return {
        "batch_norm": batch_norm_statistics(strategy),
        "adapt": adapt_on_shared_data(strategy),
        "fold": fold_after_training(strategy),
        "fit": fit_a_dense_model(strategy),  # last: a failed fit may leave a collective open
    }


@pytest.fixture(scope="module")
def model_tools_results():
    return multi_worker.run_workers(model_tools, timeout=600)

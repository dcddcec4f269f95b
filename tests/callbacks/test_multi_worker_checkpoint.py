"""EarlyStoppingWithCheckpoint under MultiWorkerMirroredStrategy: two worker
processes on loopback (tests/multi_worker.py). Only the chief writes, both stop
at the same epoch, and a restart of both resumes where they were.

Keras 3.15's `fit` itself fails under MultiWorkerMirroredStrategy with one CPU
per worker (its TensorFlow trainer reduces the first data batch, then each
scalar log, with `strategy.reduce(..., axis=0)`, which this strategy refuses:
`keras/src/backend/tensorflow/trainer.py`, `_maybe_symbolic_build` and
`reduce_per_replica`). So each worker drives the callback as `fit` does, with
the model built in the strategy's scope and the same logs on both workers (in
`fit` the logs are all-reduced, hence identical): `on_train_begin`, then per
epoch a deterministic weight update and `on_epoch_end`, until it stops.
"""

import os

import pytest

import multi_worker

pytestmark = [pytest.mark.tensorflow_only, pytest.mark.integration]

VAL_LOSS = [1.0, 0.8, 0.7, 0.72, 0.69, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1]


def _train(folder, interrupt_at=None):
    """Runs on each worker; returns what it saw and how many files it wrote."""
    import keras
    import numpy as np
    import tensorflow as tf

    import kreg.callbacks.run_journal as module
    from kreg.callbacks import EarlyStoppingWithCheckpoint

    writes = []
    write = module.write_atomically

    def counted_write(path, writer, **options):
        writes.append(os.path.basename(path))
        write(path, writer, **options)

    module.write_atomically = counted_write
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        model.optimizer.build(model.trainable_variables)
    stopper = EarlyStoppingWithCheckpoint(f"{folder}/best.keras", patience=3)
    stopper.set_model(model)
    stopper.set_params({"epochs": len(VAL_LOSS), "verbose": 0})
    model.stop_training = False
    stopper.on_train_begin()
    start = stopper.initial_epoch  # where fit would continue
    epochs = []
    for epoch in range(start, len(VAL_LOSS)):
        # The same deterministic step on every worker, numbered as one run.
        model.set_weights([w + 0.01 * (epoch + 1) for w in model.get_weights()])
        stopper.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": VAL_LOSS[epoch]})
        epochs.append(epoch)
        if epoch == interrupt_at:
            break  # the process dies here: no on_train_end
        if model.stop_training:
            break
    # The files are written in a background thread, which a process that ends
    # waits for (it is not a daemon): the count below must include them.
    stopper.wait_until_finished()
    if epochs and epochs[-1] != interrupt_at:
        stopper.on_train_end()
    return {
        "index": multi_worker.worker_index(),
        "resumed": stopper.resumed,
        "epochs": epochs,
        "best_epoch": int(stopper.best_epoch),
        "stopped_epoch": int(stopper.stopped_epoch),
        "stop_reason": stopper.stop_reason.name,
        "writes": writes,
        "weights": [np.asarray(w) for w in model.get_weights()],
    }


def test_only_the_chief_writes_both_stop_together_and_a_restart_resumes(tmp_path):
    import numpy as np

    folder = str(tmp_path)
    chief, worker = multi_worker.run_workers(
        _train, kwargs={"folder": folder, "interrupt_at": 2}, timeout=300
    )
    assert chief["epochs"] == worker["epochs"] == [0, 1, 2]
    assert "best.keras" in chief["writes"] and ".best.keras.backup-000002.npz" in chief["writes"]
    assert worker["writes"] == []
    assert os.path.exists(os.path.join(folder, "best.keras.state.json"))

    chief, worker = multi_worker.run_workers(_train, kwargs={"folder": folder}, timeout=300)
    assert chief["resumed"] and worker["resumed"]
    # Epoch 4 (0.69) is the best; patience 3 runs out at epoch 7, on both.
    assert chief["epochs"] == worker["epochs"] == [3, 4, 5, 6, 7]
    for result in (chief, worker):
        assert (result["stop_reason"], result["stopped_epoch"], result["best_epoch"]) == (
            "PATIENCE",
            7,
            4,
        )
    assert worker["writes"] == [] and len(chief["writes"]) > 0
    for ours, theirs in zip(chief["weights"], worker["weights"]):
        np.testing.assert_array_equal(ours, theirs)  # both restored epoch 4's weights
    assert not any("backup" in name for name in os.listdir(folder))

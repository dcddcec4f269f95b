"""A training process for test_kill_during_training.py to kill with SIGKILL.

usage: python kill_target.py CHECKPOINT [slow-save]

Trains a small regression model (Adam, `shuffle=False`, deterministic ops) with
`EarlyStoppingWithCheckpoint(patience=5)` until patience runs out. Prints one
line per event, flushed, so the killer can aim: `resumed {...}` at the start,
`saving` when a file write begins, `epoch N` after each epoch, and at the end
`finished {...}` (stop reason, stopped and best epochs, optimizer steps), with
the final weights written to CHECKPOINT + ".final.npz". With `slow-save`, each
write pauses for 0.3 s between writing the temporary file and renaming it, so
that a kill lands inside the save.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kreg.callbacks import EarlyStoppingWithCheckpoint  # noqa: E402
from kreg.callbacks import atomic_files  # noqa: E402

path = sys.argv[1]
slow = "slow-save" in sys.argv[2:]

write = atomic_files.write_atomically


def announced_write(target, writer, **options):
    def slow_writer(temporary):
        writer(temporary)
        if slow:
            time.sleep(0.3)  # the temporary file is complete, the rename not done

    print("saving", flush=True)
    write(target, slow_writer, **options)


import kreg.callbacks.run_journal as module  # noqa: E402

module.write_atomically = announced_write


class Report(keras.callbacks.Callback):
    def __init__(self, stopper):
        super().__init__()
        self.stopper = stopper

    def on_train_begin(self, logs=None):
        s = self.stopper
        print(
            "resumed",
            json.dumps({"resumed": s.resumed, "best": s.best, "wait": s.wait}),
            flush=True,
        )

    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.01)  # epochs long enough for a kill to land between them
        print(f"epoch {epoch}", flush=True)


if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 16)).astype("float32")
y = (np.tanh(x[:, :4]).sum(axis=1, keepdims=True) + 0.5 * rng.standard_normal((256, 1))).astype(
    "float32"
)
model = keras.Sequential(
    [keras.Input((16,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(1)]
)
model.compile(keras.optimizers.Adam(5e-4), "mse")
stopper = EarlyStoppingWithCheckpoint(path, patience=5, min_delta=1e-4)
model.fit(
    x[:128],
    y[:128],
    validation_data=(x[128:], y[128:]),
    epochs=1000,
    batch_size=32,
    shuffle=False,
    verbose=0,
    callbacks=[stopper, Report(stopper)],
)
np.savez(path + ".final.npz", *model.get_weights())
summary = {
    "stop_reason": stopper.stop_reason.name,
    "stopped_epoch": stopper.stopped_epoch,
    "best_epoch": stopper.best_epoch,
    "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
}
print("finished", json.dumps(summary), flush=True)

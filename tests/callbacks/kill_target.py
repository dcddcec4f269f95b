"""A training process for test_kill_during_training.py to kill with SIGKILL.

usage: python kill_target.py CHECKPOINT EPOCHS [slow-save]

Prints one line per event, flushed, so the killer can aim: `resumed ...` at the
start, `saving` when a checkpoint write begins, `epoch N` after each epoch. With
`slow-save`, each write pauses for 0.3 s between writing the temporary file and
renaming it, so that a kill lands inside the save.
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

path, epochs = sys.argv[1], int(sys.argv[2])
slow = "slow-save" in sys.argv[3:]

write = atomic_files.write_atomically


def announced_write(target, writer):
    def slow_writer(temporary):
        writer(temporary)
        if slow:
            time.sleep(0.3)  # the temporary file is complete, the rename not done

    print("saving", flush=True)
    write(target, slow_writer)


atomic_files.write_atomically = announced_write
import kreg.callbacks.early_stopping_with_checkpoint as module  # noqa: E402

module.write_atomically = announced_write


class Report(keras.callbacks.Callback):
    def __init__(self, stopper):
        super().__init__()
        self.stopper = stopper

    def on_train_begin(self, logs=None):
        s = self.stopper
        print("resumed", json.dumps({"resumed": s.resumed, "best": s.best, "wait": s.wait}), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        print(f"epoch {epoch}", flush=True)


rng = np.random.default_rng(0)
x = rng.standard_normal((256, 32)).astype("float32")
y = (x @ rng.standard_normal((32, 1))).astype("float32")
model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(1)])
model.compile(keras.optimizers.SGD(1e-3), "mse")
stopper = EarlyStoppingWithCheckpoint(path, monitor="loss", patience=1000)
model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=[stopper, Report(stopper)])
print("finished", stopper.stop_reason.name, flush=True)

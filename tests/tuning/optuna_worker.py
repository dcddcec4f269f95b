"""One worker of an Optuna study shared through RDB storage, for test_optuna_distributed.py.

Optuna spreads a study over processes and machines by pointing every worker at
the same storage; each worker asks it for trials and writes results back.
Usage: python optuna_worker.py STORAGE_URL STUDY_NAME WORKER_NAME DIRECTORY N_TRIALS
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optuna  # noqa: E402
from search_helpers import wait_for_each_other  # noqa: E402

from kreg.datasets import load_digit_sequences  # noqa: E402
from kreg.tuning import RecurrentHyperModel  # noqa: E402
from kreg.tuning import optuna_pruning_callback  # noqa: E402


def main():
    url, study_name, worker, directory, n_trials = sys.argv[1:6]
    # SQLite serializes writers: wait for the lock rather than fail at once.
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name=study_name, storage=storage)
    hypermodel = RecurrentHyperModel((8, 8), 10, units=(16,), dense_units=16, seed=3)
    (x, y), (x_val, y_val) = load_digit_sequences(train_size=160, seed=0)

    def objective(trial):
        trial.set_user_attr("worker", worker)
        model = hypermodel.build(trial)
        callback = optuna_pruning_callback(trial, "val_accuracy")
        hypermodel.fit(
            trial,
            model,
            x,
            y,
            validation_data=(x_val[:200], y_val[:200]),
            epochs=2,
            verbose=0,
            callbacks=[callback],
        )
        return callback.best

    wait_for_each_other(directory, worker, count=2)
    study.optimize(objective, n_trials=int(n_trials))


if __name__ == "__main__":
    main()

"""One process of a distributed keras-tuner search (chief or worker), for test_distributed_search.py.

keras-tuner reads its role from the environment: KERASTUNER_TUNER_ID ("chief"
serves the oracle, anything else is a worker), KERASTUNER_ORACLE_IP and
KERASTUNER_ORACLE_PORT. Usage: python distributed_tuner.py DIRECTORY RESULT_JSON
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_tuner  # noqa: E402
from search_helpers import wait_for_each_other  # noqa: E402

from kreg.datasets import load_digit_sequences  # noqa: E402
from kreg.tuning import OverfittingPruning  # noqa: E402
from kreg.tuning import RecurrentHyperModel  # noqa: E402

MAX_TRIALS = 4


class Search(OverfittingPruning, keras_tuner.RandomSearch):
    """The tuner every process runs; workers note the trials they trained."""

    def __init__(self, *args, **kwargs):
        self.ran = []
        super().__init__(*args, **kwargs)

    def on_trial_end(self, trial):
        self.ran.append(trial.trial_id)
        super().on_trial_end(trial)


def main():
    directory, result_path = sys.argv[1], sys.argv[2]
    tuner_id = os.environ["KERASTUNER_TUNER_ID"]
    hypermodel = RecurrentHyperModel((8, 8), 10, units=(16,), dense_units=16, seed=3)
    tuner = Search(
        hypermodel,
        objective="val_accuracy",
        max_trials=MAX_TRIALS,
        seed=3,
        directory=directory,
        project_name="distributed",
    )
    (x, y), (x_val, y_val) = load_digit_sequences(train_size=160, seed=0)
    if tuner_id != "chief":
        wait_for_each_other(directory, tuner_id, count=2)
    tuner.search(x, y, validation_data=(x_val[:200], y_val[:200]), epochs=3, verbose=0)
    result = {"tuner_id": tuner_id, "ran": tuner.ran}
    if tuner_id == "chief":
        trials = tuner.oracle.trials.values()
        result["trials"] = {t.trial_id: t.status for t in trials}
        best = tuner.oracle.get_best_trials(1)[0]
        result["best"] = hypermodel.space.describe(best.hyperparameters)
        result["best_score"] = best.score
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

"""Two worker processes share one Optuna study through RDB storage on a SQLite file."""

import os
import sys

import pytest
from search_helpers import run_processes

pytestmark = pytest.mark.integration

optuna = pytest.importorskip("optuna")

SCRIPT = os.path.join(os.path.dirname(__file__), "optuna_worker.py")


def test_two_workers_share_a_study_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(
        study_name="kreg",
        storage=url,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=3),
    )
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    commands = {
        worker: ([sys.executable, SCRIPT, url, "kreg", worker, str(tmp_path), "2"], env)
        for worker in ("worker0", "worker1")
    }
    run_processes(commands, tmp_path)

    trials = optuna.load_study(study_name="kreg", storage=url).trials
    assert len(trials) == 4 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}, (
        trials
    )
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    workers = [t.user_attrs["worker"] for t in trials]
    assert workers.count("worker0") == 2 and workers.count("worker1") == 2, workers
    for trial in trials:
        assert len(trial.intermediate_values) == 2, "each epoch reported to the shared storage"
        assert {"norm", "recurrent_dropout", "dense_dropout"} <= set(trial.params)
    assert 0 < study.best_value <= 1

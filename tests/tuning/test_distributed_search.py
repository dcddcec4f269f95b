"""keras-tuner's chief/worker mode runs a kreg hypermodel: a chief and two workers on loopback."""

import json
import os
import socket
import sys

import pytest
from search_helpers import run_processes

pytestmark = pytest.mark.integration

pytest.importorskip("grpc", reason="keras-tuner's distributed mode needs grpcio")

SCRIPT = os.path.join(os.path.dirname(__file__), "distributed_tuner.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_on_loopback(tmp_path):
    port = _free_port()
    commands = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = dict(
            os.environ,
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=str(port),
            # Three processes share the machine: one thread each.
            TF_NUM_INTRAOP_THREADS="1",
            TF_NUM_INTEROP_THREADS="1",
        )
        commands[tuner_id] = (
            [sys.executable, SCRIPT, str(tmp_path), str(tmp_path / f"{tuner_id}.json")],
            env,
        )
    # Three processes that each trace their own models: on JAX and PyTorch, with the
    # machine shared, more than run_processes's default 240 s (245 s measured on JAX).
    run_processes(commands, tmp_path, timeout=600)

    results = {t: json.loads((tmp_path / f"{t}.json").read_text()) for t in commands}
    chief = results["chief"]
    assert len(chief["trials"]) == 4, chief["trials"]
    assert set(chief["trials"].values()) == {"COMPLETED"}, chief["trials"]
    ran = results["tuner0"]["ran"] + results["tuner1"]["ran"]
    assert sorted(ran) == sorted(chief["trials"]), f"workers ran {ran}, chief has {chief['trials']}"
    assert results["tuner0"]["ran"] and results["tuner1"]["ran"], "one worker got every trial"
    assert chief["ran"] == [], "the chief only serves the oracle"
    assert "recurrent dropout" in chief["best"] and 0 < chief["best_score"] <= 1, chief

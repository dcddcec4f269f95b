"""SIGKILL a training process at random moments, saves included: the checkpoint on
disk always loads, and the run, restarted after each kill, ends exactly as a run
that was never killed (same stop epoch, best epoch, optimizer steps and weights)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.integration

TARGET = os.path.join(os.path.dirname(__file__), "kill_target.py")
KILLS = 4


def _start(path, *flags):
    return subprocess.Popen(
        [sys.executable, TARGET, str(path), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _read_until(process, prefix, timeout=180):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return line, lines
    raise AssertionError(f"no line starting with {prefix!r}; got {lines[-5:]}")


def _finish(process):
    line, _ = _read_until(process, "finished")
    assert process.wait(timeout=60) == 0
    return json.loads(line.split(" ", 1)[1])


def _final_weights(path):
    with np.load(str(path) + ".final.npz") as saved:
        return [saved[key] for key in sorted(saved.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_runs_always_leave_a_loadable_checkpoint_and_end_as_the_uninterrupted_run(tmp_path):
    reference_path = tmp_path / "reference" / "best.keras"
    reference = _finish(_start(reference_path))
    assert reference["stop_reason"] == "PATIENCE"

    path = tmp_path / "killed" / "best.keras"
    state_path = tmp_path / "killed" / "best.keras.state.json"
    chance = random.Random(20261125)
    for kill in range(KILLS):
        during_save = kill % 2 == 1
        had_state = state_path.exists()
        process = _start(path, *(["slow-save"] if during_save else []))
        try:
            line, _ = _read_until(process, "resumed")
            assert json.loads(line.split(" ", 1)[1])["resumed"] is had_state
            if during_save:
                # Some saves in, then inside the 0.3 s between write and rename.
                for _ in range(chance.randint(1, 3)):
                    _read_until(process, "saving")
                time.sleep(chance.uniform(0.0, 0.25))
            else:
                _read_until(process, "epoch")
                time.sleep(chance.uniform(0.0, 0.5))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()

        assert path.exists(), f"kill {kill}: no checkpoint"
        model = keras.saving.load_model(path)  # complete and loadable, every time
        assert model.count_params() > 0
        state = json.loads(state_path.read_text())
        assert state["finished"] is False, f"kill {kill} came after the run ended; lengthen the run"
        assert os.path.exists(path.parent / state["backup"])

    resumed = _finish(_start(path))
    assert resumed == reference
    for ours, theirs in zip(_final_weights(path), _final_weights(reference_path)):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert json.loads(state_path.read_text())["finished"] is True
    leftovers = [name for name in os.listdir(path.parent) if ".tmp-" in name or "backup" in name]
    assert leftovers == [], f"files left behind: {leftovers}"

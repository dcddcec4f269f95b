"""SIGKILL a training process at random moments, saves included: the checkpoint on
disk always loads, and a restarted process resumes the saved patience state."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import pytest

TARGET = os.path.join(os.path.dirname(__file__), "kill_target.py")
KILLS = 8


def _start(path, epochs, *flags):
    return subprocess.Popen(
        [sys.executable, TARGET, str(path), str(epochs), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def _read_until(process, prefix, timeout=120):
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


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_checkpoint_always_loads_and_patience_resumes_after_sigkill(tmp_path):
    path = tmp_path / "best.keras"
    state_path = tmp_path / "best.keras.state.json"
    chance = random.Random(20261123)
    for kill in range(KILLS):
        during_save = kill % 2 == 1
        process = _start(path, 10_000, *(["slow-save"] if during_save else []))
        try:
            _read_until(process, "resumed")
            if during_save:
                # Some saves in, then inside the 0.3 s between write and rename.
                for _ in range(chance.randint(1, 3)):
                    _read_until(process, "saving")
                time.sleep(chance.uniform(0.0, 0.25))
            else:
                _read_until(process, "epoch")
                time.sleep(chance.uniform(0.0, 1.0))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()

        assert path.exists(), f"kill {kill}: no checkpoint"
        model = keras.saving.load_model(path)  # complete and loadable, every time
        assert model.count_params() > 0
        state = json.loads(state_path.read_text())
        assert state["finished"] is False and state["best"] is not None

    # A restart continues the patience state the last kill left.
    before = json.loads(state_path.read_text())
    process = _start(path, 2)
    line, _ = _read_until(process, "resumed")
    resumed = json.loads(line.split(" ", 1)[1])
    assert resumed == {"resumed": True, "best": before["best"], "wait": before["wait"]}
    finished, _ = _read_until(process, "finished")
    assert process.wait(timeout=60) == 0
    assert json.loads(state_path.read_text())["finished"] is True
    leftovers = [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert leftovers == [], f"temporary files left behind: {leftovers}"

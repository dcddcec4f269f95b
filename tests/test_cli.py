"""The installed `kreg` command, end to end in a subprocess."""

import os
import shutil
import subprocess
import sys


def _kreg(*args, cwd):
    executable = shutil.which("kreg", path=os.path.dirname(sys.executable))
    assert executable, "the `kreg` entry point is not installed next to this Python"
    return subprocess.run(
        [executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_demo_quick_trains_all_variants_and_writes_its_report(tmp_path):
    result = _kreg("demo", "--quick", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for variant in ("no dropout", "recurrent_dropout=0.25", "WeightDropLSTM(weight_dropout=0.25)"):
        assert variant in result.stdout
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# kreg demo") and "| kreg WeightDropLSTM" in report
    assert "| stop reason |" in report
    png = (tmp_path / "out" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    checkpoint = tmp_path / "out" / "best_mlp.keras"
    import keras

    assert keras.saving.load_model(checkpoint).count_params() > 0


def test_unknown_command_fails_with_usage(tmp_path):
    result = _kreg("unfold", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr

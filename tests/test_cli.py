"""The installed `kreg` command, end to end in a subprocess."""

import os
import shutil
import subprocess
import sys

import pytest


def _kreg(*args, cwd):
    executable = shutil.which("kreg", path=os.path.dirname(sys.executable))
    assert executable, "the `kreg` entry point is not installed next to this Python"
    return subprocess.run([executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_demo_quick_runs_every_section_and_writes_what_it_claims(tmp_path):
    out = tmp_path / "out"
    result = _kreg("demo", "--quick", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for progress in ("[1/6]", "[6/6]", "kreg recipe (weight drop 0.25", "Summary"):
        assert progress in result.stdout
    report = (out / "report.md").read_text()
    assert report.startswith("# kreg demo")
    for section in (
        "## Summary",
        "## Training",
        "## Covariate shift",
        "## Folded batch norm",
        "## Linting",
        "## Tuning",
        "## Recurrent regularization",
    ):
        assert section in report, section
    assert "dropout-on-output" in report  # the flawed model's error was found
    for picture in ("training_curves.png", "accuracy_under_shift.png"):
        assert f"]({picture})" in report
        assert (out / picture).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), picture
    import keras

    import kreg  # noqa: F401  (registers the adaptive layers of the checkpoint)

    best = keras.saving.load_model(out / "best_cnn.keras")
    assert "with kreg's callbacks and weight averaging" in report
    assert len(keras.saving.load_model(out / "best_cnn_averaged.keras").get_weights()) == len(
        best.get_weights()
    )
    folded = keras.saving.load_model(out / "folded_cnn.keras")
    batch_norms = [layer for layer in best.layers if "batch_normalization" in layer.name]
    assert batch_norms and not [
        layer for layer in folded.layers if "batch_normalization" in layer.name
    ]


@pytest.mark.integration
def test_unknown_command_fails_with_usage(tmp_path):
    result = _kreg("unfold", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# `kreg diagnose` and `kreg fold`. Each subprocess imports TensorFlow (seconds), so
# the runs start together once per module and the tests read their results.

import json  # noqa: E402
import zipfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from batch_norm_testing import randomize_batch_norm  # noqa: E402
from kreg import cli  # noqa: E402

L = keras.layers


@keras.saving.register_keras_serializable(package="kreg_test_unimportable")
class _Unimportable(L.Layer):
    """Registered only in this test process: the `kreg` subprocess cannot load it."""

    def call(self, inputs):
        return inputs


def _save_models(folder):
    flawed = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3, activation="relu"), L.BatchNormalization(), L.Dropout(0.4),
        L.Flatten(), L.Dense(3, activation="softmax"), L.Dropout(0.3),
    ])  # fmt: skip
    clean = keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(4, 3, use_bias=False), L.BatchNormalization(), L.ReLU(),
        L.Flatten(), L.Dense(3, activation="softmax"),
    ])  # fmt: skip
    randomize_batch_norm(clean.layers[1])
    custom = keras.Sequential([keras.Input((4,)), _Unimportable(), L.Dense(2)])
    for name, model in (("flawed", flawed), ("clean", clean), ("custom", custom)):
        model.save(folder / f"{name}.keras")
    return clean


RUNS = {
    "flawed": ("diagnose", "flawed.keras"),
    "flawed_json": ("diagnose", "flawed.keras", "--json"),
    "clean": ("diagnose", "clean.keras", "--batch-size", "64"),
    "fold": ("fold", "clean.keras", "folded.keras", "--batch-size", "8"),
    "custom": ("diagnose", "custom.keras"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    clean = _save_models(folder)
    executable = shutil.which("kreg", path=os.path.dirname(sys.executable))
    assert executable, "the `kreg` entry point is not installed next to this Python"
    processes = {
        name: subprocess.Popen(
            [executable, *args],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in RUNS.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=600)
        results[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return folder, clean, results


@pytest.mark.integration
def test_diagnose_prints_a_table_and_fails_on_errors(runs):
    _, _, results = runs
    result = results["flawed"]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 error, 2 warnings" in result.stdout
    for rule in ("dropout-on-output", "early-conv-dropout", "activation-before-batch-norm"):
        assert rule in result.stdout
    assert "kreg.layers.Conv2DBatchNorm" in result.stdout  # the fix names the layer


@pytest.mark.integration
def test_diagnose_json(runs):
    _, _, results = runs
    result = results["flawed_json"]
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["counts"] == {"error": 1, "warning": 2, "info": 1}
    [output_dropout] = [f for f in report["findings"] if f["rule"] == "dropout-on-output"]
    assert output_dropout["severity"] == "error" and output_dropout["layers"] == ["dropout_1"]
    assert set(output_dropout) == {"rule", "severity", "layers", "message", "fix"}


@pytest.mark.integration
def test_diagnose_clean_model_exits_zero(runs):
    _, _, results = runs
    result = results["clean"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 errors, 0 warnings, 1 info" in result.stdout
    assert "foldable-batch-norm" in result.stdout


@pytest.mark.integration
def test_fold_writes_a_loadable_model_with_the_same_outputs(runs):
    folder, clean, results = runs
    result = results["fold"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "folded 1 batch norm(s)" in result.stdout
    assert "speed-up" in result.stdout and "per batch of 8" in result.stdout
    folded = keras.saving.load_model(folder / "folded.keras")
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict_on_batch(x), clean.predict_on_batch(x), atol=1e-5)


@pytest.mark.integration
def test_custom_objects_that_cannot_be_imported(runs):
    _, _, results = runs
    result = results["custom"]
    assert result.returncode == 2
    assert "needs the custom class '_Unimportable'" in result.stderr and "--import" in result.stderr
    assert "Traceback" not in result.stderr


# Input checked before any model is loaded: in-process, the same `main`.


@pytest.mark.parametrize(
    "args,message",
    [
        (["diagnose", "missing.keras"], "missing.keras: no such file"),
        (["diagnose", "notes.keras"], "not a Keras model"),
        (["diagnose", "model.h5"], "expected a .keras file"),
        (["diagnose", "folder.keras"], "folder.keras: is a folder"),
        (["fold", "folder.keras", "out.keras"], "folder.keras: is a folder"),
        (["fold", "notes.keras", "out.txt"], "out.txt: expected a .keras file"),
        (["fold", "missing.keras", "out.keras"], "missing.keras: no such file"),
        (["diagnose", "empty.keras", "--import", "kreg_no_such_module"], "No module named"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.keras").write_text("not a zip archive")
    (tmp_path / "model.h5").write_text("")
    zipfile.ZipFile(tmp_path / "empty.keras", "w").close()
    (tmp_path / "folder.keras").mkdir()
    assert cli.main(args) == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and len(stderr.splitlines()) == 1, stderr


@keras.saving.register_keras_serializable(package="kreg_test_cli")
class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(3)
        self.dropout = L.Dropout(0.5)

    def call(self, inputs, training=False):
        return self.dropout(self.dense(inputs), training=training)


def test_diagnose_of_a_subclassed_model_says_what_it_reads(tmp_path, capsys):
    model = _Subclassed()
    model(np.ones((2, 4)))
    model.save(tmp_path / "subclassed.keras")
    assert cli.main(["diagnose", str(tmp_path / "subclassed.keras")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert "reads the layer graph of Sequential and functional models" in stderr
    assert "`_Subclassed` is a subclassed model" in stderr


def test_lambda_layers_load_only_when_trusted(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), L.Lambda(lambda x: x * 2), L.Dense(2)])
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    assert cli.main(["diagnose", path]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.endswith("pass --trust-lambda"), stderr
    assert "safe_mode" not in stderr
    assert cli.main(["diagnose", path, "--trust-lambda"]) == 0


def test_any_code_keras_refuses_to_load_gets_the_trust_advice(tmp_path, capsys):
    # Keras's safe mode refuses a Python lambda anywhere in the file (here the
    # loss), not only in a Lambda layer; its message suggests `safe_mode`, which
    # the CLI cannot pass.
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    model.compile("sgd", loss=lambda y, p: keras.ops.mean((y - p) ** 2))
    path = str(tmp_path / "lambda_loss.keras")
    with pytest.warns(UserWarning, match="lambda"):
        model.save(path)
    assert cli.main(["diagnose", path]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.endswith("pass --trust-lambda"), stderr
    assert "a Python lambda" in stderr and "safe_mode" not in stderr, stderr
    assert cli.main(["diagnose", path, "--trust-lambda"]) == 0


def test_the_trust_flag_says_it_turns_off_every_safe_mode_check(capsys):
    with pytest.raises(SystemExit):
        cli.main(["diagnose", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "safe mode" in help_text and "TFSMLayer" in help_text and "torch" in help_text, help_text


@pytest.mark.parametrize(
    "args,message",
    [
        (["diagnose", "model.keras", "--bogus"], "unrecognized arguments: --bogus"),
        (["diagnose"], "the following arguments are required: model"),
        ([], "the following arguments are required: command"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_code_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and len(stderr.splitlines()) == 1, stderr
    assert "--help" in stderr


def test_long_messages_end_at_a_word(tmp_path, capsys, monkeypatch):
    import kreg

    words = " ".join(f"word{i}" for i in range(200))

    def unreadable(*args, **kwargs):
        raise ValueError(words)

    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    model.save(tmp_path / "model.keras")
    monkeypatch.setattr(kreg, "diagnose", unreadable)
    assert cli.main(["diagnose", str(tmp_path / "model.keras")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.endswith(" ..."), stderr
    assert stderr.split()[-2] in words.split(), "cut inside a word"


def test_a_path_longer_than_the_line_is_kept_whole(tmp_path, capsys, monkeypatch):
    # A CI checkout's paths run long: the message must still say which file and why.
    folder = tmp_path.joinpath(*[f"a_rather_long_folder_name_{i:02d}" for i in range(12)])
    path = folder / "model.keras"
    assert len(str(path)) > cli._MESSAGE_WIDTH
    assert cli.main(["diagnose", str(path)]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr == f"kreg diagnose: error: {path}: no such file", stderr


def test_a_word_longer_than_the_line_is_not_dropped():
    word = "x" * (cli._MESSAGE_WIDTH + 50)
    assert cli._shortened(f"cannot load: {word}") == f"cannot load: {word}"
    many = " ".join(f"word{i}" for i in range(200))
    shortened = cli._shortened(f"{word} {many}")
    assert shortened.startswith(f"{word} word0 ") and shortened.endswith(" ...")


def test_an_unexpected_error_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    import kreg

    def broken(*args, **kwargs):
        raise RuntimeError("something kreg did not expect")

    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    model.save(tmp_path / "model.keras")
    monkeypatch.setattr(kreg, "diagnose", broken)
    assert cli.main(["diagnose", str(tmp_path / "model.keras")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr == "kreg diagnose: error: RuntimeError: something kreg did not expect"


def test_bad_batch_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["diagnose", "model.keras", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: expected an integer >= 1" in capsys.readouterr().err


# `kreg fold`'s output: checked before any work, I/O failures in one line.


@pytest.fixture
def saved_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((6, 6, 3)), L.Conv2D(2, 3), L.BatchNormalization()])
    model.save(tmp_path / "model.keras")
    return tmp_path / "model.keras"


def _fold_must_not_run(monkeypatch):
    import kreg

    def fail(*args, **kwargs):
        raise AssertionError("folded before the output was checked")

    monkeypatch.setattr(kreg, "fold_batch_norms", fail)


def _one_line_error(capsys, message):
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize("output", ["model.keras", "./model.keras", "link.keras"])
def test_fold_refuses_to_overwrite_its_input(output, saved_model, capsys, monkeypatch):
    (saved_model.parent / "link.keras").symlink_to(saved_model)
    before = saved_model.read_bytes()
    _fold_must_not_run(monkeypatch)
    assert cli.main(["fold", "model.keras", output]) == 2
    _one_line_error(capsys, "is the input model; write the folded model elsewhere, or pass --force")
    assert saved_model.read_bytes() == before


def test_fold_force_replaces_the_input(saved_model, capsys):
    assert cli.main(["fold", "model.keras", "model.keras", "--force", "--batch-size", "2"]) == 0
    folded = keras.saving.load_model(saved_model)
    assert [type(layer).__name__ for layer in folded.layers] == ["Conv2D"]
    assert not list(saved_model.parent.glob(".kreg-*")), "a temporary file was left behind"


def test_fold_output_that_is_a_folder(saved_model, capsys, monkeypatch):
    (saved_model.parent / "out.keras").mkdir()
    _fold_must_not_run(monkeypatch)
    assert cli.main(["fold", "model.keras", "out.keras"]) == 2
    _one_line_error(capsys, "out.keras: is a folder")


def test_fold_output_in_a_read_only_folder(saved_model, capsys, monkeypatch):
    folder = saved_model.parent / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip(
                "running as root: permissions do not stop writes (the save failure test covers this path)"
            )
        _fold_must_not_run(monkeypatch)
        assert cli.main(["fold", "model.keras", "read_only/out.keras"]) == 2
        _one_line_error(capsys, "cannot write to folder")
    finally:
        folder.chmod(0o755)


def test_fold_save_failure_is_one_line_and_leaves_nothing(saved_model, capsys, monkeypatch):
    def disk_full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"PK half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", disk_full)
    assert cli.main(["fold", "model.keras", "out.keras"]) == 2
    _one_line_error(capsys, "No space left on device")
    assert not (saved_model.parent / "out.keras").exists()
    assert not list(saved_model.parent.glob(".kreg-*"))


@pytest.mark.integration
@pytest.mark.parametrize("user_level", [None, "1"])
def test_the_command_sets_tensorflow_log_level_unless_the_user_did(user_level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if user_level:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_level
    script = "import os, sys; sys.argv = ['/bin/kreg']; import kreg; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip() == (user_level or "3"), result.stderr[-2000:]


@pytest.mark.integration
def test_library_import_leaves_the_log_level_alone():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = (
        "import os; import keras; plain = os.environ.get('TF_CPP_MIN_LOG_LEVEL'); import kreg; "
        "print(plain == os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    )  # TensorFlow sets its own default on import
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.integration
def test_the_command_prints_one_line_and_no_tensorflow_start_up_lines(tmp_path):
    # TensorFlow 2.21 writes its start-up notices (oneDNN, CUDA drivers) through
    # absl before it reads TF_CPP_MIN_LOG_LEVEL: the level alone does not stop them.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    script = (
        "import sys; sys.argv = ['/bin/kreg', 'diagnose', 'missing.keras']; "
        "from kreg.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kreg diagnose: error: missing.keras: no such file"
    ], result.stderr

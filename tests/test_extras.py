"""Features whose dependencies are extras say which extra to install when one is missing."""

import ast
import importlib
import pathlib
import sys

import keras
import pytest

from kreg._extras import MissingExtraError
from kreg._extras import require

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def _declared_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPOSITORY / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def _require_calls():
    """(file, extra) for every `require(..., extra=...)` in kreg's sources."""
    for folder in ("kreg", "callbacks", "tuning"):
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                    extra = next(k.value for k in node.keywords if k.arg == "extra")
                    yield path.relative_to(REPOSITORY), extra.value


def test_every_required_extra_is_declared_in_pyproject():
    calls = list(_require_calls())
    assert len(calls) >= 4  # tuning, plotting, datasets, demo
    declared = _declared_extras()
    for path, extra in calls:
        assert extra in declared, (
            f"{path} names extra {extra!r}, not in pyproject.toml: {sorted(declared)}"
        )


def test_missing_module_names_the_extra_to_install():
    with pytest.raises(
        MissingExtraError,
        match=r'some feature needs .*kreg_absent_module.*pip install "kreg\[plot\]"',
    ):
        require("kreg_absent_module.sub", extra="plot", feature="some feature")


def test_a_module_that_fails_inside_keeps_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "kreg_broken_module.py").write_text("import kreg_its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as raised:
        require("kreg_broken_module", extra="plot", feature="some feature")
    assert not isinstance(raised.value, MissingExtraError)
    assert raised.value.name == "kreg_its_missing_dependency"


def _forget(monkeypatch, module):
    """Drops `module` and its submodules from sys.modules (restored after the test)."""
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    # A re-import registers new class objects under the same names; restore the
    # registered ones, or later tests deserialize into classes no module holds.
    registry = keras.saving.get_custom_objects()
    for key, value in list(registry.items()):
        monkeypatch.setitem(registry, key, value)


def _hide(monkeypatch, module):
    """Makes `import module` fail as if it were not installed (None in sys.modules)."""
    _forget(monkeypatch, module)
    monkeypatch.setitem(sys.modules, module, None)


def test_kreg_tuning_without_keras_tuner(monkeypatch):
    # The space and the Optuna callback import; a keras-tuner class names the extra.
    _forget(monkeypatch, "kreg.tuning")
    _hide(monkeypatch, "keras_tuner")
    tuning = importlib.import_module("kreg.tuning")
    assert callable(tuning.optuna_pruning_callback) and tuning.RegularizationSpace().dropout_name(
        "dense"
    )
    with pytest.raises(
        MissingExtraError,
        match=r'kreg.tuning.CNNHyperModel needs .keras_tuner.*pip install "kreg\[tuning\]"',
    ):
        tuning.CNNHyperModel  # noqa: B018


_OPTUNA_ONLY = """
import sys
sys.modules["keras_tuner"] = None  # as if not installed
sys.modules["tensorboard"] = None
import keras, numpy as np, optuna
from kreg.tuning import RegularizationSpace, optuna_pruning_callback
space = RegularizationSpace()
trial = optuna.trial.FixedTrial({"norm": "group", "norm_groups": 4, "dense_dropout": 0.35})
assert abs(space.dropout(trial, "dense").rate - 0.35) < 1e-9
assert space.norm(trial, channels=8).groups == 4
study = optuna.create_study()
def objective(trial):
    model = keras.Sequential([keras.Input((2,)), space.dropout(trial, "dense"), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 2), "float32")
    history = model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=2, verbose=0,
                        callbacks=[optuna_pruning_callback(trial, "val_loss")])
    return history.history["val_loss"][-1]
study.optimize(objective, n_trials=1)
assert "keras_tuner" not in sys.modules or sys.modules["keras_tuner"] is None
print("ok", study.best_trial.state)
"""


@pytest.mark.integration
def test_the_optuna_extra_alone_runs_a_study_without_keras_tuner():
    import subprocess

    pytest.importorskip("optuna")
    result = subprocess.run(
        [sys.executable, "-c", _OPTUNA_ONLY], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok TrialState.COMPLETE" in result.stdout


def test_plot_training_curves_without_matplotlib(monkeypatch, tmp_path):
    from kreg.callbacks import plot_training_curves

    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError, match=r'pip install "kreg\[plot\]"'):
        plot_training_curves({"loss": [1.0], "val_loss": [1.0]}, tmp_path / "curves.png")


def test_digits_without_scikit_learn(monkeypatch):
    from kreg.datasets import load_digit_images

    _hide(monkeypatch, "sklearn")
    with pytest.raises(MissingExtraError, match=r'pip install "kreg\[demo\]"'):
        load_digit_images()


def test_keras_on_a_missing_tensorflow_names_the_extra_and_the_other_backends(monkeypatch):
    import kreg._extras

    def import_module(name):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(kreg._extras.importlib, "import_module", import_module)
    with pytest.raises(
        MissingExtraError, match=r'pip install "kreg\[tensorflow\]".*KERAS_BACKEND=jax'
    ):
        kreg._extras.import_keras()


def test_keras_failing_for_another_reason_keeps_its_error(monkeypatch):
    import kreg._extras

    def import_module(name):
        raise ModuleNotFoundError("No module named 'optree'", name="optree")

    monkeypatch.setattr(kreg._extras.importlib, "import_module", import_module)
    with pytest.raises(ModuleNotFoundError) as raised:
        kreg._extras.import_keras()
    assert not isinstance(raised.value, MissingExtraError)


def test_optuna_pruning_callback_without_optuna(monkeypatch):
    # kreg.tuning itself imports without Optuna (only keras-tuner is its extra);
    # the one function that needs Optuna names the optuna extra when it is called.
    import kreg.tuning

    _hide(monkeypatch, "optuna")
    with pytest.raises(
        MissingExtraError,
        match=r'optuna_pruning_callback needs .optuna.*pip install "kreg\[optuna\]"',
    ):
        kreg.tuning.optuna_pruning_callback(object(), "val_loss")


@pytest.mark.parametrize("module", ["keras_tuner", "matplotlib", "sklearn"])
def test_the_demo_names_its_extra_before_any_section_runs(monkeypatch, tmp_path, module):
    from kreg import demo

    _hide(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=r'kreg demo needs .*pip install "kreg\[demo\]"'):
        demo.run(quick=True, out=tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists(), "the demo started before checking its extra"


@pytest.mark.tensorflow_only
def test_kreg_tuning_on_tensorflow_without_tensorboard(monkeypatch):
    _forget(monkeypatch, "kreg.tuning")
    _hide(monkeypatch, "tensorboard")
    tuning = importlib.import_module("kreg.tuning")
    with pytest.raises(
        MissingExtraError,
        match=r'TensorFlow backend needs .tensorboard.*pip install "kreg\[tuning\]"',
    ):
        tuning.RegularizedHyperModel  # noqa: B018

"""The wheel as a user installs it, in fresh virtual environments (slow: `make
test-packaging`, which `make test` runs; the main test run leaves this folder out).

- no extras: Keras and NumPy only; a layer runs on JAX, TensorFlow is not
  installed, and the features behind extras name the extra to install;
- `[tensorflow]`: the README's first example runs as written.
"""

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import zipfile

import pytest
import tomllib

pytestmark = pytest.mark.integration

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, (
        f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(folder), str(REPOSITORY)])
    (wheel,) = folder.glob("kreg-*.whl")
    return wheel


def test_the_wheel_holds_every_package_and_the_typing_marker(wheel):
    # setuptools installs only the packages pyproject.toml lists, with no error
    # for one left out; package-dir maps callbacks/ and tuning/ into kreg.
    with open(REPOSITORY / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in packages:
        assert package.replace(".", "/") + "/__init__.py" in names, f"{package} is not in the wheel"
    assert "kreg/py.typed" in names
    assert "kreg/callbacks/early_stopping_with_checkpoint.py" in names
    assert not [name for name in names if name.startswith(("callbacks/", "tuning/", "tests/"))]


def _fresh_venv(folder):
    _run([sys.executable, "-m", "venv", str(folder)])
    return folder / "bin" / "python"


def _pip_install(python, *requirements):
    # The pip cache (and any local index pip is configured with) makes this minutes, not more.
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements])


def _installed(python):
    listing = _run(
        [str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"]
    )
    return {line.split("==")[0].lower() for line in listing.splitlines()}


def _clean_env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KERAS_", "PYTHONPATH", "TF_CONFIG"))
    }
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def test_core_install_runs_a_layer_on_jax_without_tensorflow(wheel, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, str(wheel), "jax")  # jax: the user's backend, not a kreg dependency
    installed = _installed(python)
    for heavy in (
        "tensorflow",
        "keras-tuner",
        "tensorboard",
        "matplotlib",
        "scikit-learn",
        "optuna",
    ):
        assert heavy not in installed, f"the core install brought {heavy}"
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import keras
        import kreg
        from kreg._extras import MissingExtraError

        layer = kreg.ConsistentDropout(0.5, seed=1)
        y = keras.ops.convert_to_numpy(layer(np.ones((2, 4, 3), "float32"), training=True))
        assert set(np.unique(y)) <= {0.0, 2.0}, np.unique(y)
        assert "tensorflow" not in sys.modules
        # The search space and the Optuna callback need no keras-tuner, so
        # kreg.tuning imports; a keras-tuner class names the extra at first use.
        import kreg.tuning
        assert "keras_tuner" not in sys.modules
        try:
            kreg.tuning.CNNHyperModel
        except MissingExtraError as error:
            assert 'pip install "kreg[tuning]"' in str(error), error
        else:
            raise AssertionError("kreg.tuning.CNNHyperModel loaded without keras-tuner")
        print("ok", keras.backend.backend(), kreg.__version__)
        """
    )
    output = _run([str(python), "-c", script], cwd=tmp_path, env=_clean_env(KERAS_BACKEND="jax"))
    assert output.split()[:2] == ["ok", "jax"]

    # Keras's default backend is TensorFlow, which the core does not install.
    default = subprocess.run(
        [str(python), "-c", "import kreg"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
    )
    assert default.returncode != 0
    last_line = default.stderr.strip().splitlines()[-1]
    assert 'pip install "kreg[tensorflow]"' in last_line, default.stderr[-2000:]


def _first_python_example(readme):
    return re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)


def test_tensorflow_extra_runs_the_readme_first_example(wheel, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, f"{wheel}[tensorflow]")
    example = _first_python_example((REPOSITORY / "README.md").read_text())
    script = example + textwrap.dedent(
        """
        import numpy as np
        prediction = model.predict(np.zeros((2, 5, 32), "float32"), verbose=0)
        assert prediction.shape == (2, 10), prediction.shape
        print("ok", keras.backend.backend())
        """
    )
    # No KERAS_BACKEND: Keras's default, TensorFlow, which the extra installs.
    output = _run([str(python), "-c", script], cwd=tmp_path, env=_clean_env())
    assert output.split()[-2:] == ["ok", "tensorflow"]

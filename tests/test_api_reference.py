"""The API reference builds strict and has an entry for every public name."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
PAGES = {"kreg": "api/kreg", "kreg.layers": "api/layers", "kreg.callbacks": "api/callbacks", "kreg.tuning": "api/tuning"}


def _hook():
    spec = importlib.util.spec_from_file_location("api_pages", REPOSITORY / "docs/hooks/api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    mkdocs = pathlib.Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(folder)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    yield folder
    shutil.rmtree(REPOSITORY / ".api-source", ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("module", sorted(PAGES))
def test_every_public_name_has_an_entry(site, module):
    html = (site / PAGES[module] / "index.html").read_text()
    hook = _hook()
    documented_elsewhere = set(hook.public_names("kreg.layers")) if module == "kreg" else set()
    missing = [
        name
        for name in hook.public_names(module)
        if name not in documented_elsewhere
        and f'id="{module}.{name}"' not in html
        and f'id="{module}.{name}.{name}"' not in html
    ]
    assert not missing, f"no entry in the {module} reference for {missing}"


def test_the_hook_reads_the_same_names_python_exports():
    import kreg
    import kreg.callbacks
    import kreg.layers

    hook = _hook()
    assert hook.public_names("kreg") == kreg.__all__
    assert hook.public_names("kreg.layers") == kreg.layers.__all__
    assert hook.public_names("kreg.callbacks") == kreg.callbacks.__all__


@pytest.mark.integration
def test_a_broken_reference_fails_the_build(tmp_path):
    mkdocs = pathlib.Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed")
    config = (REPOSITORY / "mkdocs.yml").read_text()
    docs = tmp_path / "docs"
    shutil.copytree(REPOSITORY / "docs", docs, ignore=shutil.ignore_patterns("images"))
    (docs / "api" / "layers.md").write_text("# broken\n\n::: kreg.layers.NoSuchLayer\n")
    (tmp_path / "mkdocs.yml").write_text(config)
    for source in ("kreg", "callbacks", "tuning"):
        (tmp_path / source).symlink_to(REPOSITORY / source)
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site"), "-f", str(tmp_path / "mkdocs.yml")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "NoSuchLayer" in result.stderr

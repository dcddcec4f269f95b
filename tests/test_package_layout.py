"""pyproject.toml lists every package of the source tree (setuptools installs only
the listed ones: a package left out is missing from the wheel, not an error)."""

import pathlib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def _setuptools_table():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPOSITORY / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_every_package_in_the_tree_is_installed():
    table = _setuptools_table()
    folders = {"kreg": "kreg", **table["package-dir"]}
    in_tree = set()
    for package, folder in folders.items():
        for init in (REPOSITORY / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPOSITORY / folder).parts
            if "__pycache__" not in parts:
                in_tree.add(".".join((package, *parts)))
    assert set(table["packages"]) == in_tree


def test_the_typing_marker_ships():
    assert "py.typed" in _setuptools_table()["package-data"]["kreg"]
    assert (REPOSITORY / "kreg" / "py.typed").exists()

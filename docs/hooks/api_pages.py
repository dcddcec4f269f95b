"""MkDocs hook: writes one reference entry per public name into the API pages.

A page holds a line `<!-- public names of kreg.layers -->`; this hook replaces it
with a `::: kreg.layers.Name` block (mkdocstrings) for every name in that
module's `__all__`, read from the source without importing it (no backend to
load). A name added to `__all__` gets its entry with no edit here, and
tests/test_api_reference.py checks that every one is in the built site.
"""

import ast
import pathlib
import re
import shutil

from mkdocs.plugins import event_priority

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
# Where each public module's `__init__.py` lives in the repository
# (callbacks/ and tuning/ install as kreg.callbacks and kreg.tuning).
SOURCES = {
    "kreg": "kreg/__init__.py",
    "kreg.layers": "kreg/layers/__init__.py",
    "kreg.callbacks": "callbacks/__init__.py",
    "kreg.tuning": "tuning/__init__.py",
}
# Where the hook lays out kreg as it installs (mkdocs.yml's `paths`).
INSTALLED_LAYOUT = REPOSITORY / ".api-source"
PLACEHOLDER = re.compile(r"<!-- public names of ([\w.]+)(?: except ([\w.]+))? -->")


def _tree(module):
    return ast.parse((REPOSITORY / SOURCES[module]).read_text())


def public_names(module):
    """The names in `module`'s `__all__`, in order: its literal list, then each
    `__all__ += submodule.__all__` (kreg re-exports `kreg.layers.__all__` so)."""
    names = None
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "__all__" for t in node.targets
        ):
            names = [element.value for element in node.value.elts]
        elif (
            isinstance(node, ast.AugAssign)
            and getattr(node.target, "id", None) == "__all__"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "__all__"
            and names is not None
        ):
            names += public_names(f"{module}.{node.value.value.id}")
    if names is None:
        raise ValueError(f"{SOURCES[module]} defines no __all__")
    return names


def _entry(module, name):
    """The mkdocstrings block of `module.name`. A function named like its own
    submodule (`kreg.diagnose`, from kreg/diagnose.py) is reached through the
    submodule: the dotted name alone would document the module."""
    package = (REPOSITORY / SOURCES[module]).parent
    if (package / f"{name}.py").exists() or (package / name / "__init__.py").exists():
        return f"::: {module}.{name}.{name}\n    options:\n      show_root_full_path: false"
    return f"::: {module}.{name}"


def _entries(match):
    module, excluded = match.group(1), match.group(2)
    skip = set(public_names(excluded)) if excluded else set()
    return "\n\n".join(_entry(module, name) for name in public_names(module) if name not in skip)


# First: mkdocstrings keeps only the search paths that exist when it reads its
# configuration, in its own `on_config`.
@event_priority(100)
def on_config(config):
    """Lays out `.api-source/kreg` as pip installs it: a copy of kreg/ with
    callbacks/ and tuning/ inside it as kreg/callbacks and kreg/tuning. (Links
    would not do: griffe follows them back to the repository's layout.) Runs
    before every build, and `make docs` rebuilds when a source changes
    (mkdocs.yml's `watch`)."""
    if INSTALLED_LAYOUT.exists():
        shutil.rmtree(INSTALLED_LAYOUT)
    ignore = shutil.ignore_patterns("__pycache__")
    for module, source in SOURCES.items():
        if module == "kreg" or not source.startswith("kreg/"):
            target = INSTALLED_LAYOUT.joinpath(*module.split("."))
            shutil.copytree(
                REPOSITORY / pathlib.Path(source).parent, target, ignore=ignore, dirs_exist_ok=True
            )
    return config


def on_page_markdown(markdown, page, config, files):
    return PLACEHOLDER.sub(_entries, markdown)

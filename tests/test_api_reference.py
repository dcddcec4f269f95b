"""The API reference builds strict, and every public name has an entry with text.

mkdocstrings reads docstrings statically, with griffe: a docstring assembled at
run time (`__doc__ = ... .format(...)`) is an empty entry while
`mkdocs build --strict` still passes. So the docstrings are checked as griffe
reads them, and the built pages entry by entry.
"""

import html
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
PAGES = {
    "kreg": "api/kreg",
    "kreg.layers": "api/layers",
    "kreg.callbacks": "api/callbacks",
    "kreg.tuning": "api/tuning",
}


def _hook():
    spec = importlib.util.spec_from_file_location(
        "api_pages", REPOSITORY / "docs/hooks/api_pages.py"
    )
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


# --- every public name as griffe reads it -----------------------------------


@pytest.fixture(scope="module")
def package():
    griffe = pytest.importorskip("griffe", reason="griffe comes with mkdocstrings (the docs extra)")
    hook = _hook()
    hook.on_config(None)  # lays out kreg as it installs, as a build does
    extensions = _keras_docstrings_extension(griffe)
    loaded = griffe.load(
        "kreg",
        search_paths=[str(hook.INSTALLED_LAYOUT)],
        try_relative_path=False,
        extensions=extensions,
        docstring_parser="google",
    )
    yield loaded
    shutil.rmtree(hook.INSTALLED_LAYOUT, ignore_errors=True)


def _keras_docstrings_extension(griffe):
    spec = importlib.util.spec_from_file_location(
        "keras_docstrings", REPOSITORY / "docs/hooks/keras_docstrings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return griffe.load_extensions(module.KerasDocstrings)


def _public_objects(package):
    """(dotted name, griffe object) of every name the reference documents."""
    hook = _hook()
    for module in PAGES:
        owner = package if module == "kreg" else package[module.split(".", 1)[1]]
        for name in hook.public_names(module):
            entry = owner[name]
            if entry.is_alias:
                entry = entry.final_target
            if entry.is_module:  # `kreg.diagnose`, the function in kreg/diagnose.py
                entry = entry[name]
            yield f"{module}.{name}", entry


def _problems(entry):
    """What the reference would lack for `entry`: an empty list when nothing."""
    docstring = entry.docstring
    if docstring is None or not docstring.value.strip():
        return ["no docstring"]
    if entry.is_attribute:  # a constant: its docstring is all there is to show
        return []
    problems = []
    kinds = {section.kind.value for section in docstring.parsed}
    # A dataclass or an enum is read, not built: its fields are its `Attributes`.
    readable = entry.is_class and (
        "dataclass" in entry.labels
        or any(str(base) in ("Enum", "enum.Enum") for base in entry.bases)
    )
    wanted = "attributes" if readable else "parameters"
    if wanted not in kinds:
        problems.append("no Attributes section" if wanted == "attributes" else "no Args section")
    # Keras writes its examples as doctest lines or as a ```python block.
    if not re.search(
        r"^Examples?:\n(?:\s*\n)*\s*(?:>>> |```python)", docstring.value, re.MULTILINE
    ):
        problems.append("no Example")
    return problems


def test_every_public_name_has_a_docstring_with_args_and_an_example(package):
    problems = {
        name: found for name, entry in _public_objects(package) if (found := _problems(entry))
    }
    assert not problems, "\n".join(
        f"{name}: {', '.join(found)}" for name, found in sorted(problems.items())
    )


def test_a_docstring_assembled_at_run_time_is_found(package, tmp_path):
    griffe = pytest.importorskip("griffe")
    source = tmp_path / "assembled.py"
    source.write_text(
        '_DOC = """Args:\n    units: Width.\n\nExample:\n\n>>> 1\n1\n"""\n\n\n'
        "class Layer:\n    __doc__ = 'A layer.\\n' + _DOC.format()\n"
    )
    module = griffe.load("assembled", search_paths=[str(tmp_path)], try_relative_path=False)
    assert _problems(module["Layer"]) == ["no docstring"]


# --- every entry of the built pages ------------------------------------------

_ENTRY = re.compile(r'<div class="doc doc-object doc-(\w+)">\s*<h\d id="([\w.]+)"')
_CONTENTS = re.compile(r'<div class="doc doc-contents[^"]*">')
_NOT_TEXT = re.compile(
    r'<p class="doc doc-class-bases">.*?</p>|<div class="doc-signature.*?</div>|<[^>]+>', re.DOTALL
)


def _entries_without_text(page):
    """The ids of the entries of an HTML page whose contents hold no text."""
    empty = []
    starts = list(_ENTRY.finditer(page))
    for match, following in zip(starts, starts[1:] + [None]):
        body = page[match.end() : following.start() if following else len(page)]
        contents = _CONTENTS.split(body, maxsplit=1)[-1]
        own = contents.split('<div class="doc doc-children">', 1)[0]
        if not html.unescape(_NOT_TEXT.sub(" ", own)).split():
            empty.append(match.group(2))
    return empty


@pytest.mark.integration
@pytest.mark.parametrize("module", sorted(PAGES))
def test_every_entry_of_the_built_reference_holds_text(site, module):
    page = (site / PAGES[module] / "index.html").read_text()
    assert _ENTRY.search(page), f"no entries found in the {module} page"
    assert not _entries_without_text(page), f"empty entries in the {module} reference"


def test_an_entry_with_only_a_heading_is_empty():
    page = (
        '<div class="doc doc-object doc-class">\n<h2 id="kreg.layers.Full">x</h2>'
        '<div class="doc doc-contents first"><p class="doc doc-class-bases">Bases: B</p>'
        "<p>Some text.</p></div>"
        '<div class="doc doc-object doc-class">\n<h2 id="kreg.layers.Empty">y</h2>'
        '<div class="doc doc-contents first"><p class="doc doc-class-bases">Bases: B</p>'
        '<div class="doc doc-children"></div></div>'
    )
    assert _entries_without_text(page) == ["kreg.layers.Empty"]

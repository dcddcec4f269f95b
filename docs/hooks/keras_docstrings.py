"""Griffe extension: reads kreg's Keras-style docstrings as the reference shows them.

Keras writes `Example:` (singular) followed by doctest lines at the docstring's
own indentation; Google style, which griffe parses, wants `Examples:` with the
block indented under it. Read as-is, the doctest output would be Markdown text
(and `['Conv2D', 'ReLU']` a broken link). Keras also documents several
arguments in one entry (`axis, momentum, ...: As in BatchNormalization`), written
over several lines; the entry's names are joined onto one line so griffe reads
one entry instead of warning about each line.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^Example:\n((?:\n|(?!\S+:\n).*\n?)*)", re.MULTILINE)
_SECTION_TITLE = re.compile(
    r"^(Args|Call arguments|Returns|Raises|Reference|References|Example|Examples|Attributes):$"
)


def _indent_example(match):
    body = match.group(1)
    lines = body.split("\n")
    # The block ends at the next section title (a line like `Reference:`).
    kept = []
    for line in lines:
        if _SECTION_TITLE.match(line):
            break
        kept.append(line)
    rest = "\n".join(lines[len(kept) :])
    indented = "\n".join(("    " + line) if line.strip() else line for line in kept)
    return "Examples:\n" + indented + ("\n" + rest if rest else "")


def _join_argument_lists(text):
    """`a, b,\\n    c: description` -> `a, b, c: description` inside Args."""
    return re.sub(
        r"^(\s+)((?:\w+, )+\w*,?)\n\1((?:\w+, |\w+,\n\1)*\w+:)", _joined, text, flags=re.MULTILINE
    )


def _joined(match):
    indent, head, tail = match.groups()
    return indent + head.rstrip() + " " + re.sub(r"\n\s*", " ", tail)


class KerasDocstrings(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is None:
            return
        text = obj.docstring.value
        text = _join_argument_lists(text)
        text = _EXAMPLE.sub(_indent_example, text)
        obj.docstring.value = text

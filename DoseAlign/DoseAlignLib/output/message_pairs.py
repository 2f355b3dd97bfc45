"""The word pairs of DoseAlign's own messages, read from the engine's source: in the prose of another input's case
that ``--append`` keeps, a word that forms such a pair with its neighbour (``bytes long``) is DoseAlign's wording,
not a patient's name.

Taking every word of the messages as DoseAlign's own let a surname ``Long`` stand in clear where the prose quotes an
ROI ``Long`` (seventy-ninth hostile trial CA1, CA4); without them, a patient ``Long`` beside another input's row "the
file is 100 bytes long" refused every ``--append`` (seventy-seventh BY2). A pair is read only within one string
constant of the source (a value put into a message by ``{...}`` forms no pair with the words around it), and no word
inside quotes is taken: there the prose quotes the input.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

#: A run of letters (of any script).
_WORD = re.compile(r"[^\W\d_]+")
#: A quoted part of a message: ``'PTV_Long'``, ``"Long"`` (Python's repr and DoseAlign's quotes).
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|\u2018[^\u2019\n]*\u2019|\u201c[^\u201d\n]*\u201d")
#: At most this many characters between the two words of a pair (``long: it``, ``is 100 bytes``).
_GAP = 3


@functools.lru_cache(maxsize=1)
def message_pairs() -> frozenset:
    """Each pair of neighbouring words (case-folded) of a string constant of the engine's modules, docstrings left
    out; empty where the source cannot be read (an installation without it)."""
    pairs = set()
    for path in sorted(Path(__file__).resolve().parent.parent.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        docstrings = {id(node.body[0].value) for node in ast.walk(tree) if _has_docstring(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words = _WORD.findall(node.value.casefold())
                pairs.update(zip(words, words[1:]))
    return frozenset(pairs)


def _has_docstring(node: ast.AST) -> bool:
    body = getattr(node, "body", None)
    return (
        isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and bool(body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )


def without_message_words(text: str) -> str:
    """``text`` with the words that form a pair of :func:`message_pairs` with a neighbour made blanks, except inside
    quotes."""
    pairs = message_pairs()
    if not pairs:
        return text
    quoted = [m.span() for m in _QUOTED.finditer(text)]
    words = [m for m in _WORD.finditer(text) if not any(start <= m.start() < end for start, end in quoted)]
    blank = set()
    for first, second in zip(words, words[1:]):
        if second.start() - first.end() <= _GAP and (first.group(0).casefold(), second.group(0).casefold()) in pairs:
            blank.update((first.span(), second.span()))
    if not blank:
        return text
    pieces, kept_from = [], 0
    for start, end in sorted(blank):
        pieces += [text[kept_from:start], " " * (end - start)]
        kept_from = end
    return "".join(pieces) + text[kept_from:]

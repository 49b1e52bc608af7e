"""A small SQL tokenizer: enough to rewrite statements without touching quoted text.

Tokens keep their exact source text, so ``"".join(tokens)`` is the original statement. Quoted
identifiers, string literals and dollar-quoted strings are single tokens; a rewrite that works on
tokens can never change what is inside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*)
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<string>'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<param>\$\d+)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else self.text


def tokenize(sql: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        assert m is not None
        kind = m.lastgroup or "punct"
        if kind == "tag":
            kind = "dollar"
        if kind == "dollar":
            delimiter = m.group(0)
            end = sql.find(delimiter, m.end())
            end = len(sql) if end < 0 else end + len(delimiter)
            tokens.append(Token("string", sql[pos:end]))
            pos = end
            continue
        tokens.append(Token(kind, m.group(0)))
        pos = m.end()
    return tokens


def significant(tokens: list[Token]) -> list[int]:
    """Indexes of the tokens that are not whitespace or comments."""
    return [i for i, t in enumerate(tokens) if t.kind not in ("space", "comment")]


def unquote_identifier(text: str) -> str:
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text.lower()


def unquote_string(text: str) -> str:
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    raise ValueError(f"not a string literal: {text!r}")

"""Pointing a row-filter syntax error at its exact place in the YAML file.

A syntax error knows its column inside the expression; the YAML loader knows where the value
starts. When the value is written on one line exactly as it is read (a plain scalar, or a quoted
one without escapes), the error's absolute position is the value's start plus that column.
Otherwise (folded or multi-line blocks, escapes, ``${env:...}`` references) the issue keeps the
value's position and the message's "at column N" locates the problem inside the expression.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from zetl.errors import ConfigIssue
from zetl.filters.expr import ExpressionError

__all__ = ["at_expression_column"]


def at_expression_column(issue: ConfigIssue, error: ExpressionError, expression: object) -> ConfigIssue:
    """``issue`` moved to the file position of ``error.column`` when the file shows
    ``expression`` verbatim at the issue's position; ``issue`` unchanged otherwise."""
    if not isinstance(expression, str) or "\n" in expression or issue.line < 1 or issue.column < 1:
        return issue
    try:
        lines = Path(issue.file).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return issue
    if issue.line > len(lines):
        return issue
    text = lines[issue.line - 1]
    start = issue.column - 1
    if text.startswith(expression, start):
        offset = 0  # plain scalar
    elif text[start : start + 1] in ("'", '"') and text.startswith(expression + text[start], start + 1):
        offset = 1  # quoted scalar without escapes
    else:
        return issue
    return replace(issue, column=issue.column + offset + error.column - 1)

"""Table selection: which source tables an integration replicates.

Patterns match ``namespace.name``: a plain name (``shop.orders``), a glob (``shop.*``,
``*.audit_*``), or a regular expression prefixed with ``re:`` (``re:shop\\.order(s|_items)``),
matched against the whole name. A table is selected if it matches an include pattern (all
tables when there are none) and no exclude pattern.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from zetl.events import TableId

__all__ = ["TablePattern", "TableSelection", "compile_pattern"]


@dataclass(frozen=True)
class TablePattern:
    text: str
    regex: re.Pattern[str]

    def matches(self, table: TableId | str | object) -> bool:
        """Whether the pattern matches ``str(table)`` or, for a ``TableId`` whose parts hold a
        dot or a quote, its unquoted form (``public.t.x`` still selects table ``t.x``)."""
        if self.regex.fullmatch(str(table)) is not None:
            return True
        return isinstance(table, TableId) and self.regex.fullmatch(table.unquoted) is not None


def compile_pattern(text: str) -> TablePattern:
    """Compile one pattern; raises ValueError with the position of a regex error."""
    if not text or not text.strip():
        raise ValueError("empty table pattern")
    if text.startswith("re:"):
        body = text[3:]
        try:
            return TablePattern(text, re.compile(body))
        except re.error as exc:
            raise ValueError(f"invalid regular expression {body!r}: {exc.msg} at position {exc.pos}") from None
    return TablePattern(text, re.compile(fnmatch.translate(text)))


@dataclass(frozen=True)
class TableSelection:
    include: tuple[TablePattern, ...] = ()
    exclude: tuple[TablePattern, ...] = ()

    @classmethod
    def of(cls, include: list[str] | tuple[str, ...] = (), exclude: list[str] | tuple[str, ...] = ()) -> TableSelection:
        return cls(tuple(compile_pattern(p) for p in include), tuple(compile_pattern(p) for p in exclude))

    def matches(self, table: TableId | str) -> bool:
        if self.include and not any(p.matches(table) for p in self.include):
            return False
        return not any(p.matches(table) for p in self.exclude)

    @property
    def explicit_tables(self) -> list[TableId] | None:
        """The included tables when every include pattern is a plain name, else None."""
        if not self.include or any(p.text.startswith("re:") or any(ch in p.text for ch in "*?[") for p in self.include):
            return None
        return [TableId.parse(p.text) for p in self.include]

"""Redshift identifiers: quoting, case folding and the length limit, in one place.

Rules (deterministic: the same source name always gives the same target name):
    * Every identifier is written double-quoted, with embedded quotes doubled; no name is ever
      pasted unquoted, so reserved words, spaces, semicolons and unicode are safe.
    * Without ``case_sensitive_identifiers`` Redshift folds ASCII letters of every identifier
      (quoted or not) to lowercase; zetl folds first, so the name it stores is the one Redshift
      reports. With it, names keep their case (the sink runs
      ``SET enable_case_sensitive_identifier TO true`` on each connection).
    * A name longer than ``max_bytes`` UTF-8 bytes (127 on Redshift) is cut at a character
      boundary to ``max_bytes - 9`` bytes and ends with ``_`` plus the first 8 hex digits of the
      SHA-256 of the original name; a warning names both.
    * Source names first go through ``zetl.names.safe_name`` with the printable rules: path
      separators, ``..`` and control characters (NUL, newlines, ...) become ``_`` and the name
      gets a digest suffix; every other character is kept (it is quoted), so names without
      those characters map exactly as before.
"""

from __future__ import annotations

import hashlib
import logging

from zetl.names import PRINTABLE_NAMES, safe_name

__all__ = ["IdentifierRules", "quote", "quote_literal"]

REDSHIFT_MAX_IDENTIFIER_BYTES = 127


def quote(name: str) -> str:
    """``name`` as a delimited identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal for the few statements that take no parameters (COPY options).

    Only used for values zetl validated or generated itself; refuses quotes, backslashes and
    control characters rather than trusting an escaping rule.
    """
    if any(ch in text for ch in ("'", "\\")) or any(ord(ch) < 32 for ch in text):
        raise ValueError(f"refusing to embed {text!r} in SQL: quotes, backslashes and control characters are not allowed")
    return f"'{text}'"


def _fold(name: str) -> str:
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


class IdentifierRules:
    """Maps source names to target names (see the module docstring)."""

    def __init__(self, *, case_sensitive: bool = False, max_bytes: int = REDSHIFT_MAX_IDENTIFIER_BYTES, logger: logging.Logger | None = None) -> None:
        if max_bytes < 16:
            raise ValueError("max_bytes must be at least 16")
        self.case_sensitive = case_sensitive
        self.max_bytes = max_bytes
        self.log = logger or logging.getLogger("zetl.sink.redshift")
        self._warned: set[str] = set()

    def name(self, source_name: str) -> str:
        """The target identifier (unquoted) for ``source_name``."""
        name = safe_name(source_name, PRINTABLE_NAMES)
        if not self.case_sensitive:
            name = _fold(name)
        encoded = name.encode("utf-8")
        if len(encoded) <= self.max_bytes:
            return name
        digest = hashlib.sha256(source_name.encode("utf-8")).hexdigest()[:8]
        head = encoded[: self.max_bytes - 9].decode("utf-8", errors="ignore")
        short = f"{head}_{digest}"
        if source_name not in self._warned:
            self._warned.add(source_name)
            self.log.warning(
                "identifier %r is %d bytes, longer than the target's %d-byte limit: using %r",
                source_name, len(encoded), self.max_bytes, short,
            )
        return short

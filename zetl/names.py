"""Target names made from source names: the one mapping every sink uses.

Anyone who can create a table in the source chooses its name (no replication privilege needed),
and sinks turn that name into a file path (Iceberg's table location), a SQL identifier or a key.
``safe_name`` maps one source-supplied name (a schema, table or column name) to a target name
that cannot leave its place:

* no path separator (``/``, ``\\``), no run of two or more dots (``..``), no name made only of
  dots, and no control, format or line-separator character (Unicode categories Cc, Cf, Cs, Zl,
  Zp: NUL, newlines, escape sequences, bidi overrides);
* plus the characters one target cannot take (``NameRules.forbidden``: per sink, as data).

The mapping is:

* **Identity for safe names.** A name with nothing to replace maps to itself, so existing target
  tables keep their names (letters, digits, spaces, quotes, single dots, unicode: all kept).
* **Deterministic and collision-free.** Otherwise every unsafe character becomes ``_`` and the
  name gets the suffix ``_`` + the first 10 hex digits of the SHA-256 of the original name
  (UTF-8): ``x/../escaped`` -> ``x____escaped_<digest>``. Two different names that needed
  replacing differ in their digest, and differ from every safe name that was not chosen to look
  like a replaced one. (Such a name could be chosen on purpose: each sink records which source
  table a target table holds and refuses a second one with an error naming both.)
* The empty name maps to ``_<digest>``.

Sinks apply it to every part a source supplies before putting the parts into their
``table_name`` template; the template's own text is configuration and is checked once
(``check_template_text``), and the finished name is checked again (``unsafe_reason``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["NameRules", "PRINTABLE_NAMES", "URI_PATH_NAMES", "check_template_text", "is_safe", "safe_name", "unsafe_reason"]

DIGEST_HEX_DIGITS = 10
"""Hex digits of the SHA-256 suffix added to a name whose characters were replaced (40 bits)."""

PATH_SEPARATORS = frozenset("/\\")
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories never kept: controls, format characters (bidi overrides, zero-width),
surrogates, line and paragraph separators."""


@dataclass(frozen=True)
class NameRules:
    """One target's rules for names (data: the mapping itself is ``safe_name``)."""

    target: str
    """What the names become (for messages and docs)."""
    forbidden: frozenset[str] = frozenset()
    """Characters this target cannot take, beyond the ones no target takes."""

    def allows(self, ch: str) -> bool:
        return ch not in PATH_SEPARATORS and ch not in self.forbidden and unicodedata.category(ch) not in UNSAFE_CATEGORIES


PRINTABLE_NAMES = NameRules("quoted SQL identifiers and keys (Redshift, the test sinks)")
URI_PATH_NAMES = NameRules("components of a storage URI (Iceberg table locations)", frozenset("%?#"))
"""``%`` (a reader may decode ``%2e%2e%2f`` into ``../``), ``?`` and ``#`` (they end a URI's
path: pyiceberg would write the files of ``a#b`` under ``a``) are replaced too."""


def _unsafe_positions(name: str, rules: NameRules) -> list[bool]:
    if name and all(ch == "." for ch in name):
        return [True] * len(name)  # "." and ".." are the directory itself and its parent
    unsafe = [not rules.allows(ch) for ch in name]
    for i, ch in enumerate(name):
        if ch == "." and ((i > 0 and name[i - 1] == ".") or (i + 1 < len(name) and name[i + 1] == ".")):
            unsafe[i] = True
    return unsafe


def is_safe(name: str, rules: NameRules) -> bool:
    """True when ``safe_name`` returns ``name`` itself."""
    return bool(name) and not any(_unsafe_positions(name, rules))


def safe_name(name: str, rules: NameRules) -> str:
    """The target name for the source-supplied ``name`` (see the module docstring)."""
    unsafe = _unsafe_positions(name, rules)
    if name and not any(unsafe):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_HEX_DIGITS]
    kept = "".join("_" if bad else ch for ch, bad in zip(name, unsafe))
    return f"{kept}_{digest}"


def unsafe_reason(text: str, rules: NameRules = PRINTABLE_NAMES) -> str | None:
    """Why ``text`` (a finished target name, or a template's literal text) could leave its place,
    or None: a path separator, a ``..``, a name of dots only, a control character, or a
    character ``rules`` forbid."""
    if any(ch in PATH_SEPARATORS for ch in text):
        return "it contains a path separator ('/' or '\\')"
    if ".." in text or (text and set(text) == {"."}):
        return "it contains '..' or is made only of dots"
    bad = next((ch for ch in text if unicodedata.category(ch) in UNSAFE_CATEGORIES), None)
    if bad is not None:
        return f"it contains the control character U+{ord(bad):04X}"
    bad = next((ch for ch in text if ch in rules.forbidden), None)
    if bad is not None:
        return f"it contains {bad!r}, which {rules.target} cannot hold"
    return None


def check_template_text(template: str, rules: NameRules = PRINTABLE_NAMES) -> str:
    """Validate the literal text of a ``table_name`` template (placeholders removed): it is
    configuration, but it must not bring back what ``safe_name`` keeps out. Returns ``template``;
    raises ValueError saying what to change."""
    literal = re.sub(r"{[^{}]*}", "", template)
    reason = unsafe_reason(literal, rules)
    if reason is not None:
        raise ValueError(f"table name template {template!r} cannot be used: {reason}; use letters, digits and '_' between the placeholders")
    return template

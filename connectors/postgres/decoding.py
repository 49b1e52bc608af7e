"""Postgres text-format values -> canonical Python values.

The same text form reaches zetl from both paths: pgoutput sends column values in the type's text
output format, and the snapshot reads ``COPY ... (FORMAT csv)`` whose fields are that same text.
The session settings that shape this text are fixed by ``SESSION_SETTINGS`` on every connection.

A decoder takes ``str`` and returns the canonical Python value (see ``zetl.schema.types``); NULL
never reaches a decoder.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, Callable

from zetl.jsonvalue import JsonText
from zetl.schema.types import DataType, TypeKind

__all__ = ["SESSION_SETTINGS", "Decoder", "decoder_for", "parse_array", "to_pg_text"]

Decoder = Callable[[str], Any]

SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
}
"""Server settings every zetl connection uses, so that the text form of values is fixed."""

_UTC = dt.timezone.utc


def _bool(text: str) -> bool:
    return text == "t"


def _bytea(text: str) -> bytes:
    # bytea_output = hex: "\x0a0b..."
    return bytes.fromhex(text[2:])


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        if text == "infinity":
            return dt.date.max
        if text == "-infinity":
            return dt.date.min
        raise ValueError(f"date {text!r} is outside the range zetl carries (years 1-9999)") from None


def _time(text: str) -> dt.time:
    if text.startswith("24:"):  # Postgres allows 24:00:00
        return dt.time.max
    return dt.time.fromisoformat(text)


def _timestamp(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        if text == "infinity":
            return dt.datetime.max
        if text == "-infinity":
            return dt.datetime.min
        raise ValueError(f"timestamp {text!r} is outside the range zetl carries (years 1-9999)") from None


def _timestamptz(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        if text == "infinity":
            return dt.datetime.max.replace(tzinfo=_UTC)
        if text == "-infinity":
            return dt.datetime.min.replace(tzinfo=_UTC)
        raise ValueError(f"timestamptz {text!r} is outside the range zetl carries (years 1-9999)") from None
    if value.utcoffset() == dt.timedelta(0):
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


def _float(text: str) -> float:
    return float(text)  # accepts NaN, Infinity, -Infinity as Postgres prints them


def _text(text: str) -> str:
    return text


_SCALAR: dict[TypeKind, Decoder] = {
    TypeKind.BOOLEAN: _bool,
    TypeKind.INT16: int,
    TypeKind.INT32: int,
    TypeKind.INT64: int,
    TypeKind.FLOAT32: _float,
    TypeKind.FLOAT64: _float,
    TypeKind.DECIMAL: Decimal,
    TypeKind.STRING: _text,
    TypeKind.BINARY: _bytea,
    TypeKind.DATE: _date,
    TypeKind.TIME: _time,
    TypeKind.TIMESTAMP: _timestamp,
    TypeKind.TIMESTAMPTZ: _timestamptz,
    TypeKind.UUID: uuid.UUID,
    TypeKind.JSON: JsonText,  # the text as Postgres prints it: never parsed on the way
}


def decoder_for(data_type: DataType) -> Decoder:
    """The text decoder for a column of canonical type ``data_type``."""
    if data_type.kind is TypeKind.LIST:
        element = decoder_for(data_type.element) if data_type.element is not None else _text
        return lambda text: parse_array(text, element)
    return _SCALAR.get(data_type.kind, _text)


def parse_array(text: str, element: Decoder) -> list[Any]:
    """Parse a Postgres array literal (``{1,2,NULL}``, ``{{a,b},{c,"d,e"}}``) into nested lists.

    An optional dimension decoration (``[0:1]={1,2}``) is ignored; unquoted ``NULL`` is None.
    """
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    pos = 0
    n = len(text)

    def parse_level() -> list[Any]:
        nonlocal pos
        if text[pos] != "{":
            raise ValueError(f"malformed array literal {text!r} at {pos}")
        pos += 1
        items: list[Any] = []
        if pos < n and text[pos] == "}":
            pos += 1
            return items
        while pos < n:
            ch = text[pos]
            if ch == "{":
                items.append(parse_level())
            elif ch == '"':
                pos += 1
                buf: list[str] = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    buf.append(text[pos])
                    pos += 1
                pos += 1
                items.append(element("".join(buf)))
            else:
                start = pos
                while text[pos] not in ",}":
                    pos += 1
                raw = text[start:pos].strip()
                items.append(None if raw == "NULL" else element(raw))
            if text[pos] == ",":
                pos += 1
            elif text[pos] == "}":
                pos += 1
                return items
        raise ValueError(f"malformed array literal {text!r}: missing closing brace")

    try:
        return parse_level()
    except IndexError:
        raise ValueError(f"malformed array literal {text!r}: unexpected end") from None


def to_pg_text(value: Any) -> str:
    """A canonical Python value back to a Postgres input literal (for primary-key bounds)."""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.isoformat()
    return str(value)

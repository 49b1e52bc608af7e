"""Values from the server -> canonical Python values, one converter per column.

Two producers: PyMySQL's text protocol (snapshot) and pymysqlreplication's binlog decoder
(stream). They disagree on a few types (bit, set, time, json, timestamps); the converters make
both give the same canonical value for the same stored value, as the snapshot/stream tests check.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from zetl_connectors.mysql.typemap import parse_column_type

from zetl.errors import SourceError, exclude_advice
from zetl.jsonvalue import JsonText
from zetl.schema.types import Field, TypeKind

__all__ = ["UTF8_BYTES_SHORTCUTS", "Converter", "mysql_json_text", "not_read", "set_labels", "snapshot_converter", "stream_converter", "zetl_row_converter"]

Converter = Callable[[Any], Any]
_UTC = dt.UTC
_DAY = dt.timedelta(days=1)
_LABELS = re.compile(r"'((?:[^']|'')*)'")


def set_labels(source_type: str | None) -> list[str]:
    """The labels of ``enum('a','b')``/``set('a','b')`` in definition order."""
    if not source_type or "(" not in source_type:
        return []
    return [m.group(1).replace("''", "'") for m in _LABELS.finditer(source_type[source_type.index("(") :])]


def _base(field: Field) -> str:
    try:
        return parse_column_type(field.source_type or "")[0]
    except ValueError:
        return ""


def _time_from_delta(where: str, column: str) -> Converter:
    # where: "table <table>, column <column>"
    table = where.removeprefix("table ").rsplit(", column ", 1)[0]

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, dt.time):
            return value
        if isinstance(value, dt.timedelta):
            if not (dt.timedelta(0) <= value < _DAY):
                raise SourceError(
                    f"{where}: TIME value {value} is outside 00:00:00..23:59:59, which the canonical time type cannot hold. {exclude_advice(table, column)}",
                    retryable=False,
                )
            seconds, micro = divmod(value // dt.timedelta(microseconds=1), 1_000_000)
            return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, micro)
        raise SourceError(f"{where}: unexpected TIME value {value!r}", retryable=False)

    return convert


def _bits(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big")
    if isinstance(value, str):  # pymysqlreplication gives the bits as '0101'
        return int(value, 2) if value else 0
    return int(value)


def _json_text(value: Any) -> Any:
    """A json value as ``JsonText``: the text the server sent (MariaDB's JSON is longtext, kept
    byte for byte on both paths; MySQL's snapshot text is its normal form), or, for a document
    pymysqlreplication decoded from MySQL's binary JSON (the stream), that normal form rebuilt."""
    if value is None or isinstance(value, JsonText):
        return value
    if isinstance(value, str):
        return JsonText(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return JsonText(bytes(value).decode("utf-8"))
    return JsonText(mysql_json_text(value))


def _json_bytes(value: bytes) -> JsonText:
    return JsonText(value.decode("utf-8"))


# Converters whose result, for the text of a utf-8 column, is also what the function here gives
# for the column's raw bytes (the stream's row decoder then makes no str first).
UTF8_BYTES_SHORTCUTS: dict[Converter, Converter] = {_json_text: _json_bytes}


def _mysql_string(text: str) -> str:
    # MySQL escapes '"', '\\' and control characters; other characters are written as they are
    return orjson.dumps(text).decode()


def _mysql_double(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    text = repr(value)
    if "e" in text:  # MySQL writes 1e300, 1.5e-7 (no '+', no leading zeros in the exponent)
        mantissa, exponent = text.split("e")
        text = f"{mantissa.removesuffix('.0')}e{int(exponent)}"
    return text


def mysql_json_text(value: Any) -> str:
    """A document decoded from MySQL's binary JSON, as the text MySQL prints for it (its normal
    form: ``{"k": v, "k2": [1, 2]}``, keys in stored order, ``", "`` and ``": "`` separators),
    so that the stream gives the same text as the snapshot. Integers and decimals keep all
    their digits; keys and strings arrive as bytes from the binlog decoder."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _mysql_string(bytes(value).decode("utf-8"))
    if isinstance(value, str):
        return _mysql_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _mysql_double(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{mysql_json_text(k)}: {mysql_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(mysql_json_text(v) for v in value) + "]"
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return _mysql_string(str(value))  # MySQL prints temporal scalars as quoted strings
    raise ValueError(f"unexpected value {value!r} in a MySQL JSON document")


def _zero_date_to_none(value: Any) -> Any:
    # PyMySQL returns '0000-00-00' (and other invalid dates) as str; the binlog decoder gives None.
    return None if isinstance(value, str) else value


def _utc_aware(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return None
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def _to_bytes(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin-1")  # binary columns decoded byte-for-byte by the binlog reader
    return value


def _uuid(value: Any) -> Any:
    if value is None or isinstance(value, uuid.UUID):
        return value
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(value if isinstance(value, str) else value.decode())


def _set_joiner(labels: list[str]) -> Converter:
    order = {label: i for i, label in enumerate(labels)}

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        return ",".join(sorted(value, key=lambda v: order.get(v, len(order))))

    return convert


def _year(value: Any) -> Any:
    # pymysqlreplication adds 1900 to the stored byte; the stored 0 means the year 0000.
    return 0 if value == 1900 else value


def _decimal_from_int(value: Any) -> Any:
    return decimal.Decimal(value) if isinstance(value, int) else value


def _common(field: Field, where: str) -> Converter | None:
    kind = field.type.kind
    base = _base(field)
    if base == "bit":
        return (lambda v: None if v is None else bool(_bits(v))) if kind is TypeKind.BOOLEAN else (
            _bits if kind is TypeKind.INT64 else lambda v: None if v is None else decimal.Decimal(_bits(v))
        )
    if kind is TypeKind.JSON:
        return _json_text
    if kind is TypeKind.TIME:
        return _time_from_delta(where, field.name)
    if kind is TypeKind.TIMESTAMPTZ:
        return _utc_aware
    if kind in (TypeKind.DATE, TypeKind.TIMESTAMP):
        return _zero_date_to_none
    if kind is TypeKind.BINARY:
        return _to_bytes
    if kind is TypeKind.UUID:
        return _uuid
    if base == "set":
        return _set_joiner(set_labels(field.source_type))
    if kind is TypeKind.DECIMAL and base == "bigint":
        return _decimal_from_int
    return None


def not_read(value: Any) -> None:
    """The converter of a column the integration does not use: its value is never decoded."""
    return None


def snapshot_converter(field: Field, where: str) -> Converter | None:
    """For a value as PyMySQL returns it (session time zone UTC); None when no change is needed."""
    return _common(field, where)


def stream_converter(field: Field, where: str) -> Converter | None:
    """For a value as pymysqlreplication decodes it from a row event; None when no change is needed."""
    if _base(field) == "year":
        return _year
    return _common(field, where)


def zetl_row_converter(field: Field, where: str) -> Converter | None:
    """For a value as ``rowdecode`` decodes it: dates, timestamps (UTC-aware), binary, set and
    year values are canonical already."""
    kind = field.type.kind
    if kind in (TypeKind.DATE, TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ, TypeKind.BINARY) or _base(field) in ("set", "year"):
        return None
    return _common(field, where)

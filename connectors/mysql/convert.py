"""Values from the server -> canonical Python values, one converter per column.

Two producers: PyMySQL's text protocol (snapshot) and pymysqlreplication's binlog decoder
(stream). They disagree on a few types (bit, set, time, json, timestamps); the converters make
both give the same canonical value for the same stored value, as the snapshot/stream tests check.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from zetl_connectors.mysql.typemap import parse_column_type

from zetl.errors import SourceError
from zetl.schema.types import Field, TypeKind

__all__ = ["UTF8_BYTES_SHORTCUTS", "Converter", "set_labels", "snapshot_converter", "stream_converter", "zetl_row_converter"]

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


def _time_from_delta(where: str) -> Converter:
    def convert(value: Any) -> Any:
        if value is None or isinstance(value, dt.time):
            return value
        if isinstance(value, dt.timedelta):
            if not (dt.timedelta(0) <= value < _DAY):
                raise SourceError(
                    f"{where}: TIME value {value} is outside 00:00:00..23:59:59, which the canonical time type cannot hold;"
                    " exclude the column's table or change the column to a type such as varchar",
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


def _json_text_to_python(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, str)):
        return orjson.loads(value)
    return _json_binary_to_python(value)


# Converters whose result, for the text of a utf-8 column, is also what the function here gives
# for the column's raw bytes (the stream's row decoder then makes no str first).
UTF8_BYTES_SHORTCUTS: dict[Converter, Converter] = {_json_text_to_python: orjson.loads}


def _json_binary_to_python(value: Any) -> Any:
    # MySQL's binary JSON decoder hands out bytes for keys and strings.
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {_json_binary_to_python(k): _json_binary_to_python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_binary_to_python(v) for v in value]
    return value


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
        return _json_text_to_python
    if kind is TypeKind.TIME:
        return _time_from_delta(where)
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

"""Python values of canonical types -> what Redshift loads: INSERT parameters or COPY JSON.

Both encoders check what Redshift would refuse (oversize strings and binaries, NaN decimals) and
raise ``SinkError`` naming the table, the column and the value, so a rejected row is never a
mystery and never silently altered (except oversize strings under ``oversize_strings: truncate``,
which are logged).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import logging
import math
import uuid
from typing import Any, Callable

import orjson

from zetl.errors import SinkError
from zetl.jsonvalue import JsonText, dump_json
from zetl.schema.types import TypeKind

from .layout import ColumnLayout, TableLayout
from .typemap import MAX_BINARY_BYTES, MAX_VARCHAR_BYTES

__all__ = ["DocumentTooLargeForInsert", "ValueEncoder", "json_document"]


class DocumentTooLargeForInsert(SinkError):
    """A SUPER value whose JSON text exceeds what JSON_PARSE accepts (a VARCHAR, 65535 bytes);
    such rows load only through S3 and COPY."""


def _json_default(value: Any) -> Any:
    if isinstance(value, JsonText):  # a json value inside a list or struct: the JSON it holds
        return orjson.Fragment(str(value))
    if isinstance(value, decimal.Decimal):  # exact: SUPER parses the number from its text
        return orjson.Fragment(str(value)) if value.is_finite() else str(value)
    if isinstance(value, int) and not isinstance(value, bool):  # an int subclass
        return int(value)
    if isinstance(value, str):  # a str subclass other than JsonText
        return str(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot represent {type(value).__name__} in JSON")


def json_document(value: Any) -> str:
    """A SUPER value as JSON text: a json value (``JsonText``) as the source's text; other values
    with dates as ISO text, decimals as exact numbers, bytes as base64."""
    if isinstance(value, JsonText):
        return str(value)
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS).decode()
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return dump_json(value)  # an integer beyond 64 bits in a decoded document


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ValueEncoder:
    """Encodes one table's values; ``param`` for INSERT parameters, ``json`` for COPY files."""

    def __init__(self, layout: TableLayout, oversize_strings: str, logger: logging.Logger) -> None:
        self.layout = layout
        self.truncate = oversize_strings == "truncate"
        self.log = logger

    def _fail(self, column: ColumnLayout, value: Any, why: str) -> SinkError:
        return SinkError(
            f"Redshift cannot store the value {_preview(value)} of {self.layout.table}.{column.source} "
            f"(target {self.layout.target_schema}.{self.layout.target_table}.{column.target}, {column.redshift_type}): {why}",
            retryable=False,
        )

    def _string(self, column: ColumnLayout, value: str) -> str:
        encoded = value.encode("utf-8")
        if len(encoded) <= MAX_VARCHAR_BYTES:
            return value
        if not self.truncate:
            raise self._fail(column, value, f"{len(encoded)} bytes exceed VARCHAR's {MAX_VARCHAR_BYTES}; set oversize_strings: truncate to cut such values")
        self.log.warning("truncated a %d-byte value of %s.%s to %d bytes", len(encoded), self.layout.table, column.source, MAX_VARCHAR_BYTES)
        return encoded[:MAX_VARCHAR_BYTES].decode("utf-8", errors="ignore")

    def param(self, column: ColumnLayout, value: Any) -> Any:
        """The INSERT parameter for ``value`` (None stays None)."""
        if value is None:
            return None
        kind = column.type.kind
        try:
            if kind in (TypeKind.JSON, TypeKind.LIST, TypeKind.STRUCT):
                text = json_document(value)
                if len(text) > MAX_VARCHAR_BYTES // 4 and len(text.encode("utf-8")) > MAX_VARCHAR_BYTES:
                    raise DocumentTooLargeForInsert(
                        f"the JSON document in {self.layout.table}.{column.source} is {len(text.encode('utf-8'))} bytes; "
                        f"JSON_PARSE takes at most {MAX_VARCHAR_BYTES}: configure sink.s3 with load: auto or s3_copy, "
                        "which loads such documents with COPY",
                        retryable=False,
                    )
                return text
            if kind is TypeKind.STRING:
                return self._string(column, str(value))
            if kind is TypeKind.BINARY:
                data = bytes(value)
                if len(data) > MAX_BINARY_BYTES:
                    raise self._fail(column, f"<{len(data)} bytes>", f"binary values are staged as hex text, at most {MAX_BINARY_BYTES} bytes")
                return data.hex()
            if kind is TypeKind.UUID:
                return str(value)
            if kind is TypeKind.DECIMAL:
                d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
                if not d.is_finite():
                    raise self._fail(column, value, "DECIMAL has no NaN or infinity")
                if column.redshift_type.startswith("VARCHAR"):
                    return str(d)
                return d
            if kind is TypeKind.FLOAT32 or kind is TypeKind.FLOAT64:
                return float(value)
            if kind is TypeKind.TIMESTAMPTZ and isinstance(value, dt.datetime) and value.tzinfo is None:
                return value.replace(tzinfo=dt.timezone.utc)
            return value
        except SinkError:
            raise
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise self._fail(column, value, str(exc)) from exc

    def json(self, column: ColumnLayout, value: Any) -> Any:
        """The JSON value COPY loads into the column (a ``RawNumber`` for exact decimals)."""
        if value is None:
            return None
        kind = column.type.kind
        if kind in (TypeKind.JSON, TypeKind.LIST, TypeKind.STRUCT):
            return orjson.Fragment(json_document(value))
        p = self.param(column, value)
        if isinstance(p, decimal.Decimal):
            return orjson.Fragment(str(p))
        if isinstance(p, float) and not math.isfinite(p):
            return "NaN" if math.isnan(p) else ("Infinity" if p > 0 else "-Infinity")
        if isinstance(p, dt.datetime):
            return p.isoformat(sep=" ")
        if isinstance(p, (dt.date, dt.time)):
            return p.isoformat()
        return p


ParamFn = Callable[[ColumnLayout, Any], Any]

"""The canonical types in Arrow: how ``RowChunk`` rows are laid out.

Every source that emits ``RowChunk`` builds its Arrow schema with ``arrow_schema`` and every sink
may rely on this layout:

============  =====================================================================
canonical     Arrow
============  =====================================================================
boolean       bool
int16/32/64   int16 / int32 / int64
float32/64    float32 / float64
decimal(p,s)  decimal128(p, s) (decimal256 above 38 digits)
string        string
binary        binary
date          date32
time          time64[us]
timestamp     timestamp[us]
timestamptz   timestamp[us, tz=UTC]
uuid          string (canonical 36-character text)
json          string (the JSON text)
list<T>       list<T in Arrow>
struct<...>   struct<...>
============  =====================================================================

Each field carries metadata ``zetl.type`` = the canonical type's ``str()``, so that json and uuid
columns (both Arrow strings) can be told apart and converted back (``RowChunk.events()`` does).
pyarrow is imported when this module is imported: the core imports it lazily.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pyarrow as pa

from zetl.jsonvalue import JsonText
from zetl.schema.types import DataType, Field, Schema, TypeKind

__all__ = ["TYPE_KEY", "arrow_field", "arrow_schema", "arrow_type", "python_converters"]

TYPE_KEY = b"zetl.type"

_SIMPLE: dict[TypeKind, pa.DataType] = {
    TypeKind.BOOLEAN: pa.bool_(),
    TypeKind.INT16: pa.int16(),
    TypeKind.INT32: pa.int32(),
    TypeKind.INT64: pa.int64(),
    TypeKind.FLOAT32: pa.float32(),
    TypeKind.FLOAT64: pa.float64(),
    TypeKind.STRING: pa.string(),
    TypeKind.BINARY: pa.binary(),
    TypeKind.DATE: pa.date32(),
    TypeKind.TIME: pa.time64("us"),
    TypeKind.TIMESTAMP: pa.timestamp("us"),
    TypeKind.TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
    TypeKind.UUID: pa.string(),
    TypeKind.JSON: pa.string(),
}


def arrow_type(dtype: DataType) -> pa.DataType:
    """The Arrow type of a canonical type (see the table above)."""
    if dtype.kind in _SIMPLE:
        return _SIMPLE[dtype.kind]
    if dtype.kind is TypeKind.DECIMAL:
        p, s = dtype.precision or 38, dtype.scale or 0
        return pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
    if dtype.kind is TypeKind.LIST:
        assert dtype.element is not None
        return pa.list_(arrow_type(dtype.element))
    if dtype.kind is TypeKind.STRUCT:
        return pa.struct([arrow_field(f) for f in dtype.fields])
    raise ValueError(f"no Arrow type for {dtype}")


def arrow_field(field: Field) -> pa.Field:
    return pa.field(field.name, arrow_type(field.type), nullable=field.nullable, metadata={TYPE_KEY: str(field.type).encode()})


def arrow_schema(schema: Schema) -> pa.Schema:
    """The Arrow schema of a table's rows, fields in schema order."""
    return pa.schema([arrow_field(f) for f in schema.fields])


def _json_text(value: Any) -> Any:
    return None if value is None else JsonText(value)


def _uuid(value: Any) -> Any:
    return None if value is None else uuid.UUID(value)


def python_converters(arrow: pa.Schema) -> dict[str, Callable[[Any], Any]]:
    """Per column, the function that turns ``to_pylist()`` values into canonical Python values
    (only json, as ``JsonText``, and uuid need one)."""
    out: dict[str, Callable[[Any], Any]] = {}
    for f in arrow:
        kind = (f.metadata or {}).get(TYPE_KEY, b"").decode()
        if kind == "json":
            out[f.name] = _json_text
        elif kind == "uuid":
            out[f.name] = _uuid
    return out

"""Rows (Python values or canonical Arrow chunks) -> Arrow tables shaped like an Iceberg table.

Every function here works on whole columns; values are converted only where Iceberg stores them
differently from the canonical layout (uuid as 16 bytes, json and very wide decimals as text).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from zetl.errors import SinkError
from zetl.events import UNCHANGED
from zetl.jsonvalue import as_json_text
from zetl.schema.types import DataType, TypeKind

from zetl_sinks.iceberg.typemap import stored_as_text

__all__ = ["KEY_SEPARATOR", "chunk_to_arrow", "key_strings", "python_converter", "rows_to_arrow"]

KEY_SEPARATOR = "\x1f"

Converter = Callable[[Any], Any]


def _uuid_bytes(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return value.bytes
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    return uuid.UUID(str(value)).bytes


def _json_text(value: Any) -> Any:
    # JsonText is stored as it is: the source's text; a decoded document as compact exact JSON
    return as_json_text(value)


def _decimal_text(value: Any) -> Any:
    return None if value is None else str(value)


def python_converter(dtype: DataType) -> Converter | None:
    """How a canonical Python value becomes the value pyarrow needs for the Iceberg column
    (None: no conversion). Recurses into lists and structs."""
    kind = dtype.kind
    if kind is TypeKind.UUID:
        return _uuid_bytes
    if kind is TypeKind.JSON:
        return _json_text
    if kind is TypeKind.DECIMAL:
        # NaN and infinities make pyarrow raise, which _column reports with the column's name.
        return _decimal_text if stored_as_text(dtype) else None
    if kind is TypeKind.LIST and dtype.element is not None:
        inner = python_converter(dtype.element)
        if inner is None:
            return None
        return lambda v: None if v is None else [inner(x) for x in v]
    if kind is TypeKind.STRUCT:
        inner_by_name = {f.name: python_converter(f.type) for f in dtype.fields}
        if not any(inner_by_name.values()):
            return None
        return lambda v: None if v is None else {k: (inner_by_name[k](x) if inner_by_name.get(k) else x) for k, x in v.items()}
    return None


def _column(values: list[Any], field: pa.Field, convert: Converter | None, table: str) -> pa.Array:
    try:
        if convert is not None:
            values = [convert(v) for v in values]
        return pa.array(values, type=field.type)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        raise SinkError(f"cannot write column {field.name!r} of Iceberg table {table}: {exc}", retryable=False) from exc


def rows_to_arrow(
    rows: Sequence[Mapping[str, Any]], schema: pa.Schema, types: Mapping[str, DataType], table: str, *, may_be_unchanged: bool = True
) -> tuple[pa.Table, dict[str, pa.Array]]:
    """An Arrow table of ``rows`` in ``schema``; columns missing from a row are NULL.

    Returns the table and, for each column where some row holds ``UNCHANGED``, a boolean mask of
    those rows (their value in the table is NULL until the caller fills it from the target).
    """
    unchanged: dict[str, pa.Array] = {}
    converters = {f.name: python_converter(types[f.name]) if f.name in types else None for f in schema}
    if may_be_unchanged:
        rows, unchanged = _split_unchanged(rows, schema)
    nullable = _nullable(schema)
    # Columns that need no conversion go through one C++ struct conversion (much faster than
    # a Python list per column); the others are converted value by value.
    direct = [f for f in nullable if converters.get(f.name) is None]
    columns: dict[str, pa.Array] = {}
    if direct:
        try:
            struct = pa.array(rows, type=pa.struct(direct))
            columns = {f.name: struct.field(i) for i, f in enumerate(direct)}
        except (ValueError, TypeError, pa.ArrowException):
            columns = {}  # find the failing column below, for a precise error
    arrays = []
    for field in schema:
        name = field.name
        column = columns.get(name)
        if column is None:
            column = _column([r.get(name) for r in rows], field, converters.get(name), table)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=nullable), unchanged


def _split_unchanged(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> tuple[Sequence[Mapping[str, Any]], dict[str, pa.Array]]:
    """Rows with ``UNCHANGED`` replaced by None, and per affected column the mask of those rows."""
    masks: dict[str, list[bool]] = {}
    out: list[Mapping[str, Any]] = []
    for i, row in enumerate(rows):
        if UNCHANGED in row.values():
            clean = dict(row)
            for name, value in row.items():
                if value is UNCHANGED:
                    masks.setdefault(name, [False] * len(rows))[i] = True
                    clean[name] = None
            out.append(clean)
        else:
            out.append(row)
    return out, {name: pa.array(mask, type=pa.bool_()) for name, mask in masks.items()}


def _nullable(schema: pa.Schema) -> pa.Schema:
    # Required Iceberg columns are checked by the writer; building the table must not fail first
    # on a NULL that an unchanged value will replace.
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def chunk_to_arrow(rows: pa.Table | pa.RecordBatch, schema: pa.Schema, types: Mapping[str, DataType], table: str) -> pa.Table:
    """A canonical Arrow chunk (``zetl.arrow`` layout) reshaped to the Iceberg table's ``schema``.

    Columns absent from the chunk are NULL; a chunk column the Iceberg table lacks is an error.
    """
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    extra = [n for n in rows.schema.names if schema.get_field_index(n) < 0]
    if extra:
        raise SinkError(f"rows for Iceberg table {table} have column(s) {', '.join(extra)} that the table does not have", retryable=False)
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for field in schema:
        name = field.name
        if name not in rows.schema.names:
            arrays.append(pa.nulls(rows.num_rows, type=field.type))
            continue
        column = rows.column(name)
        dtype = types.get(name)
        if column.type == field.type:
            arrays.append(column)
            continue
        # uuid arrives as text and wide decimals must become text: value by value. Everything else
        # (string -> large_string, int16 -> int32, list -> large_list, ...) is an Arrow cast.
        if dtype is not None and (dtype.kind is TypeKind.UUID or (dtype.kind is TypeKind.DECIMAL and stored_as_text(dtype))):
            arrays.append(_column(column.to_pylist(), field, python_converter(dtype), table))
            continue
        try:
            arrays.append(column.cast(field.type))
        except (pa.ArrowException, ValueError) as exc:
            raise SinkError(f"cannot write column {name!r} of Iceberg table {table}: {column.type} does not convert to {field.type} ({exc})", retryable=False) from exc
    return pa.Table.from_arrays(arrays, schema=_nullable(schema))


def _key_part(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    ctype = column.type
    if isinstance(ctype, pa.BaseExtensionType):
        column = column.cast(ctype.storage_type) if not isinstance(column, pa.ChunkedArray) else pa.chunked_array([c.storage for c in column.chunks], type=ctype.storage_type)
        ctype = ctype.storage_type
    if pa.types.is_fixed_size_binary(ctype) or pa.types.is_binary(ctype) or pa.types.is_large_binary(ctype):
        return pc.cast(pc.cast(column, pa.large_binary()), pa.large_binary())
    return pc.cast(pc.cast(column, pa.large_string()), pa.large_binary())


def key_strings(table: pa.Table, primary_key: Sequence[str]) -> pa.Array:
    """One comparable binary value per row made of its primary-key columns (same for the same key
    whatever Arrow layout the table came in, as long as the columns have the Iceberg types)."""
    parts = [_key_part(table.column(c)) for c in primary_key]
    if len(parts) == 1:
        result = parts[0]
    else:
        result = pc.binary_join_element_wise(*parts, pa.scalar(KEY_SEPARATOR.encode(), type=pa.large_binary()))
    if isinstance(result, pa.ChunkedArray):
        result = result.combine_chunks() if result.num_chunks != 1 else result.chunk(0)
    return result


def last_occurrences(keys: Iterable[Any]) -> list[int]:
    """Indices of the last row of each key, in row order."""
    last: dict[Any, int] = {}
    for i, k in enumerate(keys):
        last[k] = i
    return sorted(last.values())

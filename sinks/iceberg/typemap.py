"""Canonical types <-> Iceberg types, as data.

``CANONICAL_TO_ICEBERG`` is the mapping used when a table or column is created; its golden file
(``tests/golden/iceberg_typemap.txt``) shows it for every canonical kind. Types with parameters
(decimal precision/scale, list element, struct fields) are mapped recursively by ``to_iceberg``.

Choices, measured with DuckDB's ``iceberg_scan`` as the independent reader:

* ``int16`` -> ``int``: Iceberg has no 16-bit integer; the canonical type is kept in the table
  property ``zetl.column-types`` so that ``current_schema`` reports ``int16`` again.
* ``decimal(p,s)`` keeps precision and scale up to 38 digits (Iceberg's limit); wider decimals
  are stored as their exact decimal text in a ``string`` column.
* ``timestamptz`` -> ``timestamptz`` (stored as UTC microseconds), ``timestamp`` -> ``timestamp``.
* ``uuid`` -> ``uuid``: DuckDB reads it back as UUID.
* ``json`` -> ``string`` holding the JSON text (Iceberg has no JSON type); the canonical type is
  kept in ``zetl.column-types``.
* ``list<T>`` / ``struct<...>`` are kept nested.

Iceberg -> canonical (``from_iceberg``) is the inverse for tables zetl did not create or for
columns the property does not describe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from zetl.schema.types import DataType, Field, T, TypeKind

if TYPE_CHECKING:
    from pyiceberg.types import IcebergType

__all__ = ["CANONICAL_TO_ICEBERG", "MAX_DECIMAL_PRECISION", "describe", "from_iceberg", "same_storage", "stored_as_text", "to_iceberg"]

MAX_DECIMAL_PRECISION = 38

CANONICAL_TO_ICEBERG: dict[TypeKind, str] = {
    TypeKind.BOOLEAN: "boolean",
    TypeKind.INT16: "int",
    TypeKind.INT32: "int",
    TypeKind.INT64: "long",
    TypeKind.FLOAT32: "float",
    TypeKind.FLOAT64: "double",
    TypeKind.DECIMAL: "decimal(p, s); string when p > 38",
    TypeKind.STRING: "string",
    TypeKind.BINARY: "binary",
    TypeKind.DATE: "date",
    TypeKind.TIME: "time",
    TypeKind.TIMESTAMP: "timestamp",
    TypeKind.TIMESTAMPTZ: "timestamptz",
    TypeKind.UUID: "uuid",
    TypeKind.JSON: "string (JSON text)",
    TypeKind.LIST: "list<element>",
    TypeKind.STRUCT: "struct<fields>",
}
"""What each canonical kind becomes in Iceberg (documentation and golden test of ``to_iceberg``)."""


def _primitive(name: str) -> "IcebergType":
    from pyiceberg import types as it

    return {
        "boolean": it.BooleanType(),
        "int": it.IntegerType(),
        "long": it.LongType(),
        "float": it.FloatType(),
        "double": it.DoubleType(),
        "string": it.StringType(),
        "binary": it.BinaryType(),
        "date": it.DateType(),
        "time": it.TimeType(),
        "timestamp": it.TimestampType(),
        "timestamptz": it.TimestamptzType(),
        "uuid": it.UUIDType(),
    }[name]


def stored_as_text(dtype: DataType) -> bool:
    """Whether values of ``dtype`` are written as text (json, and decimals wider than Iceberg's)."""
    return dtype.kind is TypeKind.JSON or (dtype.kind is TypeKind.DECIMAL and (dtype.precision or 0) > MAX_DECIMAL_PRECISION)


def to_iceberg(dtype: DataType, next_id: Callable[[], int]) -> "IcebergType":
    """The Iceberg type of a canonical type; ``next_id`` numbers the nested fields."""
    from pyiceberg import types as it

    kind = dtype.kind
    if kind is TypeKind.DECIMAL:
        if stored_as_text(dtype):
            return it.StringType()
        return it.DecimalType(dtype.precision or MAX_DECIMAL_PRECISION, dtype.scale or 0)
    if kind is TypeKind.JSON:
        return it.StringType()
    if kind is TypeKind.LIST:
        assert dtype.element is not None
        element_id = next_id()
        return it.ListType(element_id, to_iceberg(dtype.element, next_id), element_required=False)
    if kind is TypeKind.STRUCT:
        fields = []
        for f in dtype.fields:
            field_id = next_id()
            fields.append(it.NestedField(field_id, f.name, to_iceberg(f.type, next_id), required=False))
        return it.StructType(*fields)
    return _primitive(CANONICAL_TO_ICEBERG[kind])


def from_iceberg(itype: "IcebergType") -> DataType:
    """The canonical type of an Iceberg type (fixed -> binary; nested kept)."""
    from pyiceberg import types as it

    simple: dict[type, DataType] = {
        it.BooleanType: T.boolean,
        it.IntegerType: T.int32,
        it.LongType: T.int64,
        it.FloatType: T.float32,
        it.DoubleType: T.float64,
        it.StringType: T.string(),
        it.BinaryType: T.binary,
        it.FixedType: T.binary,
        it.DateType: T.date,
        it.TimeType: T.time,
        it.TimestampType: T.timestamp,
        it.TimestamptzType: T.timestamptz,
        it.UUIDType: T.uuid,
    }
    for cls, dtype in simple.items():
        if isinstance(itype, cls):
            return dtype
    if isinstance(itype, it.DecimalType):
        return T.decimal(itype.precision, itype.scale)
    if isinstance(itype, it.ListType):
        return T.list_(from_iceberg(itype.element_type))
    if isinstance(itype, it.StructType):
        return T.struct(Field(f.name, from_iceberg(f.field_type), nullable=not f.required) for f in itype.fields)
    raise ValueError(f"Iceberg type {itype} has no canonical equivalent")


def same_storage(canonical: DataType, itype: "IcebergType") -> bool:
    """Whether a column of Iceberg type ``itype`` is how zetl stores ``canonical`` (so that the
    recorded canonical type can be trusted for it)."""
    ids = iter(range(1_000_000, 2_000_000))
    return _shape(to_iceberg(canonical, lambda: next(ids))) == _shape(itype)


def _shape(itype: Any) -> str:
    from pyiceberg import types as it

    if isinstance(itype, it.ListType):
        return f"list<{_shape(itype.element_type)}>"
    if isinstance(itype, it.StructType):
        return "struct<" + ",".join(f"{f.name}:{_shape(f.field_type)}" for f in itype.fields) + ">"
    return str(itype)


def describe(dtype: DataType) -> tuple[str, str]:
    """``(iceberg type, canonical type read back from it)`` for the golden test."""
    counter = iter(range(100, 10_000))
    itype = to_iceberg(dtype, lambda: next(counter))
    return _shape(itype), str(from_iceberg(itype))

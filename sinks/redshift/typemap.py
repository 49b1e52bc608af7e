"""Canonical types -> Redshift column types, as data.

``TYPE_MAP`` is the whole mapping for types without parameters; the parameterised kinds
(decimal, string) follow the rules in ``redshift_type``. The golden test
``tests/golden/redshift/typemap.txt`` pins every row, so a change here is a reviewed change.

Rules:
    * decimal(p,s) with p <= 38 is DECIMAL(p,s); wider decimals (Redshift's limit is 38 digits)
      are VARCHAR(p + 2) holding the exact decimal text.
    * string(n) is VARCHAR(4n) bytes (a character takes up to 4 bytes in UTF-8), capped at
      65535; unbounded strings are VARCHAR(65535). A value longer than 65535 bytes fails the
      batch naming table and column, unless ``oversize_strings: truncate`` is set, which cuts it
      at a character boundary and logs a warning.
    * json, list and struct are SUPER, loaded with JSON_PARSE (insert) or from JSON (COPY).
    * binary is VARBYTE, staged as hexadecimal text (at most 32767 bytes per value).
    * uuid is CHAR(36) in the canonical text form.
"""

from __future__ import annotations

import re

from zetl.schema.types import DataType, T, TypeKind

__all__ = ["MAX_BINARY_BYTES", "MAX_DECIMAL_PRECISION", "MAX_VARCHAR_BYTES", "TYPE_MAP", "canonical_type", "redshift_type"]

MAX_VARCHAR_BYTES = 65535
MAX_DECIMAL_PRECISION = 38
MAX_BINARY_BYTES = 32767
"""Largest binary value zetl stages: it travels as hex text in a VARCHAR(65535) staging column."""

TYPE_MAP: dict[TypeKind, str] = {
    TypeKind.BOOLEAN: "BOOLEAN",
    TypeKind.INT16: "SMALLINT",
    TypeKind.INT32: "INTEGER",
    TypeKind.INT64: "BIGINT",
    TypeKind.FLOAT32: "REAL",
    TypeKind.FLOAT64: "DOUBLE PRECISION",
    TypeKind.BINARY: "VARBYTE(65535)",
    TypeKind.DATE: "DATE",
    TypeKind.TIME: "TIME",
    TypeKind.TIMESTAMP: "TIMESTAMP",
    TypeKind.TIMESTAMPTZ: "TIMESTAMPTZ",
    TypeKind.UUID: "CHAR(36)",
    TypeKind.JSON: "SUPER",
    TypeKind.LIST: "SUPER",
    TypeKind.STRUCT: "SUPER",
}
"""Canonical kind -> Redshift type for every kind without parameters."""


def redshift_type(t: DataType) -> str:
    """The Redshift column type that holds every value of ``t``."""
    if t.kind is TypeKind.DECIMAL:
        p, s = t.precision or MAX_DECIMAL_PRECISION, t.scale or 0
        if p <= MAX_DECIMAL_PRECISION:
            return f"DECIMAL({p},{s})"
        return f"VARCHAR({p + 2})"
    if t.kind is TypeKind.STRING:
        if t.length is None:
            return f"VARCHAR({MAX_VARCHAR_BYTES})"
        return f"VARCHAR({min(max(t.length, 1) * 4, MAX_VARCHAR_BYTES)})"
    return TYPE_MAP[t.kind]


_REVERSE: dict[str, DataType] = {
    "boolean": T.boolean,
    "smallint": T.int16,
    "integer": T.int32,
    "bigint": T.int64,
    "real": T.float32,
    "double precision": T.float64,
    "date": T.date,
    "time without time zone": T.time,
    "time": T.time,
    "timestamp without time zone": T.timestamp,
    "timestamp": T.timestamp,
    "timestamp with time zone": T.timestamptz,
    "timestamptz": T.timestamptz,
    "super": T.json,
    "jsonb": T.json,
    "varbyte": T.binary,
    "bytea": T.binary,
    "binary varying": T.binary,
}


def canonical_type(data_type: str, char_length: int | None = None, precision: int | None = None, scale: int | None = None) -> DataType:
    """Best canonical type for a Redshift catalog type (tables zetl did not create itself).

    Raises:
        ValueError: a type zetl cannot write (names it).
    """
    name = re.sub(r"\(.*\)", "", data_type.strip().lower()).strip()
    if name in _REVERSE:
        return _REVERSE[name]
    if name in ("numeric", "decimal"):
        return T.decimal(precision or MAX_DECIMAL_PRECISION, scale or 0)
    if name in ("character varying", "varchar", "character", "char", "text", "bpchar"):
        return T.string()
    raise ValueError(f"Redshift type {data_type!r} has no canonical type")

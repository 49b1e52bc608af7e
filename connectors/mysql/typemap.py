"""MySQL/MariaDB column types -> canonical types, as data.

``TYPE_MAP`` is the whole mapping: the key is the base type name (lower case) and whether it is
``unsigned``; the value is the canonical type, where ``{p}``/``{s}`` are the declared precision and
scale and ``{n}`` the declared length. ``tests/golden/mysql_typemap.txt`` pins it.

Choices worth knowing:
    * unsigned integers widen to the next signed type (``bigint unsigned`` -> ``decimal(20,0)``).
    * ``tinyint(1)`` stays ``int16``: MySQL stores -128..127 in it, not only 0/1.
    * ``bit(1)`` -> boolean, wider ``bit(n)`` -> int64 (the bits as an unsigned number, n <= 63;
      ``bit(64)`` -> decimal(20,0)).
    * ``timestamp`` -> timestamptz (UTC); ``datetime`` -> timestamp (no zone, as stored).
    * ``enum`` -> string (the label); ``set`` -> string (labels joined by ``,``, as MySQL prints it).
    * ``json`` (MySQL) and MariaDB's ``longtext ... CHECK (json_valid(col))`` -> json.
    * zero dates (``0000-00-00``) arrive as NULL.
"""

from __future__ import annotations

import re

from zetl.schema.types import DataType

__all__ = ["TYPE_MAP", "UnknownTypeError", "canonical_type", "parse_column_type"]

TYPE_MAP: dict[tuple[str, bool], str] = {
    ("tinyint", False): "int16",
    ("tinyint", True): "int16",
    ("bool", False): "int16",
    ("boolean", False): "int16",
    ("smallint", False): "int16",
    ("smallint", True): "int32",
    ("mediumint", False): "int32",
    ("mediumint", True): "int32",
    ("int", False): "int32",
    ("integer", False): "int32",
    ("int", True): "int64",
    ("integer", True): "int64",
    ("bigint", False): "int64",
    ("bigint", True): "decimal(20,0)",
    ("decimal", False): "decimal({p},{s})",
    ("decimal", True): "decimal({p},{s})",
    ("numeric", False): "decimal({p},{s})",
    ("numeric", True): "decimal({p},{s})",
    ("float", False): "float32",
    ("float", True): "float32",
    ("double", False): "float64",
    ("double", True): "float64",
    ("real", False): "float64",
    ("double precision", False): "float64",
    ("char", False): "string({n})",
    ("varchar", False): "string({n})",
    ("tinytext", False): "string",
    ("text", False): "string",
    ("mediumtext", False): "string",
    ("longtext", False): "string",
    ("binary", False): "binary",
    ("varbinary", False): "binary",
    ("tinyblob", False): "binary",
    ("blob", False): "binary",
    ("mediumblob", False): "binary",
    ("longblob", False): "binary",
    ("date", False): "date",
    ("datetime", False): "timestamp",
    ("timestamp", False): "timestamptz",
    ("time", False): "time",
    ("year", False): "int16",
    ("json", False): "json",
    ("enum", False): "string",
    ("set", False): "string",
    ("bit", False): "int64",
    ("uuid", False): "uuid",
    ("inet4", False): "string",
    ("inet6", False): "string",
    ("geometry", False): "binary",
    ("point", False): "binary",
    ("linestring", False): "binary",
    ("polygon", False): "binary",
    ("multipoint", False): "binary",
    ("multilinestring", False): "binary",
    ("multipolygon", False): "binary",
    ("geometrycollection", False): "binary",
}

_DEFAULT_DECIMAL = (10, 0)
_TYPE_TEXT = re.compile(r"^\s*([a-z][a-z0-9_]*(?:\s+precision)?)\s*(?:\(([^)]*)\))?\s*((?:unsigned|signed|zerofill|\s)*)", re.IGNORECASE)


class UnknownTypeError(ValueError):
    """A column type with no canonical mapping."""


def parse_column_type(text: str) -> tuple[str, tuple[str, ...], bool]:
    """``"int(10) unsigned zerofill"`` -> ``("int", ("10",), True)``; enum/set labels are kept raw."""
    m = _TYPE_TEXT.match(text)
    if not m:
        raise UnknownTypeError(f"cannot read column type {text!r}")
    base = m.group(1).lower().strip()
    args = tuple(a.strip() for a in m.group(2).split(",")) if m.group(2) and base not in ("enum", "set") else ()
    unsigned = "unsigned" in (m.group(3) or "").lower()
    return base, args, unsigned


def canonical_type(column_type: str, *, is_json: bool = False) -> DataType:
    """The canonical type of a MySQL column type as ``information_schema.COLUMNS.COLUMN_TYPE``
    (or ``SHOW CREATE TABLE``) writes it.

    Raises:
        UnknownTypeError: the type has no mapping (the message lists what to do).
    """
    if is_json:
        return DataType.parse("json")
    base, args, unsigned = parse_column_type(column_type)
    if base == "bit":
        bits = int(args[0]) if args else 1
        return DataType.parse("boolean" if bits == 1 else ("int64" if bits <= 63 else "decimal(20,0)"))
    spec = TYPE_MAP.get((base, unsigned)) or TYPE_MAP.get((base, False))
    if spec is None:
        raise UnknownTypeError(
            f"MySQL type {column_type!r} has no canonical mapping; exclude the table or cast the column to a supported type"
        )
    if "{p}" in spec:
        p, s = (int(args[0]), int(args[1]) if len(args) > 1 else 0) if args else _DEFAULT_DECIMAL
        spec = spec.format(p=p, s=s)
    elif "{n}" in spec:
        spec = f"string({int(args[0])})" if args else "string"
    return DataType.parse(spec)

"""Postgres types -> canonical types, as data.

``BUILTIN_TYPES`` maps a built-in type OID to its name and the rule that gives its canonical type;
``ARRAY_ELEMENTS`` maps built-in array OIDs to their element OID. User-defined types (enums,
domains, arrays of them) are resolved from ``pg_type`` by the catalog and then follow the same
rules (enum -> string, domain -> its base type, array -> list of the element).

Documented choices (the golden test ``tests/golden/postgres_typemap.txt`` pins every row):

* ``numeric(p,s)`` -> ``decimal(p,s)``. Postgres 15 allows a negative scale (``numeric(5,-2)``)
  and a scale above the precision (``numeric(3,5)``); both map to the smallest decimal that holds
  every value (``decimal(7,0)``, ``decimal(5,5)``).
* Unconstrained ``numeric`` (no precision) and ``numeric`` with a precision above 76 map to
  ``string``: such a column can hold up to 131072 digits and NaN, no fixed decimal holds every
  value, and zetl never rounds silently. The value is the exact text Postgres prints
  (``"3.14159265358979323846"``). Declare ``numeric(p,s)`` to replicate it as a decimal.
* ``interval`` -> ``string`` in ISO 8601 form (``P1Y2M3DT4H5M6S``; the replication session sets
  ``IntervalStyle = iso_8601``): canonical types have no interval, and the ISO text is exact and
  portable.
* ``timetz`` -> ``string`` (``10:11:12+02``): a time with an offset has no canonical type.
* ``timestamptz`` -> ``timestamptz``, values are UTC-aware datetimes.
* ``date``/``timestamp`` ``infinity`` and ``-infinity`` become the largest/smallest Python value.
* ``json``/``jsonb`` -> ``json``: the text as Postgres prints it (``json``: as written;
  ``jsonb``: Postgres' normal form), never parsed: change events carry it as
  ``zetl.jsonvalue.JsonText``, snapshot Arrow chunks as a string (``zetl.arrow``).
* ``inet``, ``cidr``, ``macaddr``, ``money``, ``bit``, ``xml``, ranges, geometric types,
  ``tsvector`` and every other type without a canonical peer -> ``string`` (Postgres' text form).
* ``oid``/``xid`` -> ``int64``; ``"char"`` and ``name`` -> ``string``.
"""

from __future__ import annotations

from dataclasses import dataclass

from zetl.schema.types import DataType, T

__all__ = ["ARRAY_ELEMENTS", "BUILTIN_TYPES", "PgType", "canonical_type", "numeric_type"]


@dataclass(frozen=True, slots=True)
class PgType:
    """What zetl needs to know about one Postgres type.

    ``kind``: ``base`` (built-in scalar), ``enum``, ``domain``, ``array`` or ``other``.
    ``element``: the element type OID of an array, the base type OID of a domain.
    Values are decoded according to the canonical type (``decoding.decoder_for``), so the
    decoding of a type follows from this map alone.
    """

    oid: int
    name: str
    kind: str = "base"
    element: int | None = None


def _b(oid: int, name: str) -> tuple[int, PgType]:
    return oid, PgType(oid, name, "base")


BUILTIN_TYPES: dict[int, PgType] = dict(
    [
        _b(16, "boolean"),
        _b(17, "bytea"),
        _b(18, '"char"'),
        _b(19, "name"),
        _b(20, "bigint"),
        _b(21, "smallint"),
        _b(23, "integer"),
        _b(25, "text"),
        _b(26, "oid"),
        _b(28, "xid"),
        _b(114, "json"),
        _b(142, "xml"),
        _b(650, "cidr"),
        _b(700, "real"),
        _b(701, "double precision"),
        _b(774, "macaddr8"),
        _b(790, "money"),
        _b(829, "macaddr"),
        _b(869, "inet"),
        _b(1042, "character"),
        _b(1043, "character varying"),
        _b(1082, "date"),
        _b(1083, "time without time zone"),
        _b(1114, "timestamp without time zone"),
        _b(1184, "timestamp with time zone"),
        _b(1186, "interval"),
        _b(1266, "time with time zone"),
        _b(1560, "bit"),
        _b(1562, "bit varying"),
        _b(1700, "numeric"),
        _b(2950, "uuid"),
        _b(3614, "tsvector"),
        _b(3802, "jsonb"),
    ]
)
"""Built-in scalar types by OID."""

CANONICAL_BY_NAME: dict[str, DataType | None] = {
    "boolean": T.boolean,
    "bytea": T.binary,
    '"char"': T.string(),
    "name": T.string(),
    "bigint": T.int64,
    "smallint": T.int16,
    "integer": T.int32,
    "text": T.string(),
    "oid": T.int64,
    "xid": T.int64,
    "json": T.json,
    "jsonb": T.json,
    "real": T.float32,
    "double precision": T.float64,
    "date": T.date,
    "time without time zone": T.time,
    "timestamp without time zone": T.timestamp,
    "timestamp with time zone": T.timestamptz,
    "uuid": T.uuid,
    # None: computed from the type modifier (lengths, numeric precision).
    "character": None,
    "character varying": None,
    "numeric": None,
}
"""Canonical type of each built-in type name; every name not listed maps to ``string``."""

ARRAY_ELEMENTS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25, 1028: 26,
    199: 114, 143: 142, 651: 650, 1021: 700, 1022: 701, 775: 774, 791: 790, 1040: 829, 1041: 869,
    1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186,
    1270: 1266, 1561: 1560, 1563: 1562, 1231: 1700, 2951: 2950, 3643: 3614, 3807: 3802,
}  # fmt: skip
"""Built-in array type OID -> element type OID."""

MAX_DECIMAL_PRECISION = 76
"""Largest precision replicated as a decimal (Arrow decimal256); larger ones become strings."""


def numeric_type(typmod: int) -> DataType:
    """``numeric`` with its type modifier -> canonical type (see the module notes)."""
    if typmod < 4:
        return T.string()
    packed = typmod - 4
    precision = (packed >> 16) & 0xFFFF
    scale = packed & 0x7FF
    if scale & 0x400:  # Postgres 15 stores the scale as a signed 11-bit number
        scale -= 0x800
    if scale < 0:
        precision, scale = precision - scale, 0
    elif scale > precision:
        precision = scale
    if precision > MAX_DECIMAL_PRECISION:
        return T.string()
    return T.decimal(precision, scale)


def canonical_type(pg: PgType, typmod: int, element: DataType | None = None) -> DataType:
    """The canonical type of a column of type ``pg`` with modifier ``typmod``.

    ``element`` is the canonical type of an array's element (or of a domain's base type).
    """
    if pg.kind == "array":
        return T.list_(element or T.string())
    if pg.kind == "domain":
        return element or T.string()
    if pg.kind != "base":
        return T.string()
    if pg.name in ("character", "character varying"):
        return T.string(typmod - 4) if typmod >= 4 else T.string()
    if pg.name == "numeric":
        return numeric_type(typmod)
    known = CANONICAL_BY_NAME.get(pg.name)
    return known if known is not None else T.string()

"""The canonical type system: the one set of types every source maps into and every sink maps from.

The set is closed (``TypeKind``). Parameters: ``decimal(p,s)``, ``string(n)`` (optional maximum
length in characters), ``list<element>`` and ``struct<name: type, ...>``. Every type has a readable
``str()`` form that ``DataType.parse`` reads back, so golden files and reports can use it.

Python values carried in ``ChangeEvent.before``/``after`` for each kind:

=============  ===========================================================
boolean        ``bool``
int16/32/64    ``int``
float32/64     ``float``
decimal        ``decimal.Decimal`` (NaN and infinities are kept as ``Decimal``)
string         ``str``
binary         ``bytes``
date           ``datetime.date``
time           ``datetime.time`` (no time zone)
timestamp      ``datetime.datetime`` without tzinfo
timestamptz    ``datetime.datetime`` with tzinfo (UTC)
uuid           ``uuid.UUID``
json           ``zetl.jsonvalue.JsonText``: the JSON text as the source sent it (never parsed
               on the way; sinks also accept a decoded document and write it as compact JSON)
list           ``list`` of the element's Python type
struct         ``dict`` keyed by field name
=============  ===========================================================

``None`` is SQL NULL for every kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable, Iterator

__all__ = ["DataType", "Field", "Schema", "TypeKind", "T"]


class TypeKind(str, Enum):
    BOOLEAN = "boolean"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    DECIMAL = "decimal"
    STRING = "string"
    BINARY = "binary"
    DATE = "date"
    TIME = "time"
    TIMESTAMP = "timestamp"
    TIMESTAMPTZ = "timestamptz"
    UUID = "uuid"
    JSON = "json"
    LIST = "list"
    STRUCT = "struct"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DataType:
    """A canonical type. Compare with ``==``; hashable; ``str()`` is its spec form.

    ``precision``/``scale`` are set only for decimal, ``length`` optionally for string (None means
    unbounded), ``element`` only for list, ``fields`` only for struct.
    """

    kind: TypeKind
    precision: int | None = None
    scale: int | None = None
    length: int | None = None
    element: DataType | None = None
    fields: tuple[Field, ...] = ()

    def __str__(self) -> str:
        k = self.kind
        if k is TypeKind.DECIMAL:
            return f"decimal({self.precision},{self.scale})"
        if k is TypeKind.STRING and self.length is not None:
            return f"string({self.length})"
        if k is TypeKind.LIST:
            return f"list<{self.element}>"
        if k is TypeKind.STRUCT:
            inner = ", ".join(f"{f.name}: {f.type}" for f in self.fields)
            return f"struct<{inner}>"
        return k.value

    def __repr__(self) -> str:
        return f"DataType({self})"

    @property
    def is_integer(self) -> bool:
        return self.kind in (TypeKind.INT16, TypeKind.INT32, TypeKind.INT64)

    @property
    def is_nested(self) -> bool:
        return self.kind in (TypeKind.LIST, TypeKind.STRUCT, TypeKind.JSON)

    @staticmethod
    def parse(text: str) -> DataType:
        """Read the ``str()`` form back (``"decimal(10,2)"``, ``"list<int32>"``, ...).

        Raises:
            ValueError: the text is not a canonical type, with the list of kinds.
        """
        parser = _TypeParser(text)
        result = parser.parse_type()
        parser.expect_end()
        return result


class _TypeParser:
    _token = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|\d+|[<>(),:])")

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = self._token.match(text, pos)
            if not m:
                raise ValueError(f"cannot parse type {text!r} at column {pos + 1}")
            self.tokens.append(m.group(1))
            pos = m.end()
        self.i = 0

    def _next(self) -> str:
        if self.i >= len(self.tokens):
            raise ValueError(f"cannot parse type {self.text!r}: unexpected end")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _eat(self, tok: str) -> None:
        got = self._next()
        if got != tok:
            raise ValueError(f"cannot parse type {self.text!r}: expected {tok!r}, got {got!r}")

    def expect_end(self) -> None:
        if self.i != len(self.tokens):
            raise ValueError(f"cannot parse type {self.text!r}: unexpected {self.tokens[self.i]!r}")

    def parse_type(self) -> DataType:
        name = self._next().lower()
        try:
            kind = TypeKind(name)
        except ValueError:
            kinds = ", ".join(k.value for k in TypeKind)
            raise ValueError(f"unknown type {name!r}; canonical types are: {kinds}") from None
        if kind is TypeKind.DECIMAL:
            self._eat("(")
            p = int(self._next())
            self._eat(",")
            s = int(self._next())
            self._eat(")")
            return T.decimal(p, s)
        if kind is TypeKind.STRING and self._peek() == "(":
            self._eat("(")
            n = int(self._next())
            self._eat(")")
            return T.string(n)
        if kind is TypeKind.LIST:
            self._eat("<")
            el = self.parse_type()
            self._eat(">")
            return T.list_(el)
        if kind is TypeKind.STRUCT:
            self._eat("<")
            fields: list[Field] = []
            while self._peek() != ">":
                fname = self._next()
                self._eat(":")
                fields.append(Field(fname, self.parse_type()))
                if self._peek() == ",":
                    self._next()
            self._eat(">")
            return T.struct(fields)
        return DataType(kind)


@dataclass(frozen=True, slots=True)
class Field:
    """A column.

    Args:
        name: the column name exactly as in the source (never normalised here; sinks apply their
            own identifier rules).
        type: canonical type.
        nullable: whether NULL may occur.
        primary_key: part of the table's primary key (order is ``Schema.primary_key``).
        source_type: the source's native type as text (``numeric(12,2)``, ``varchar(32)``), kept
            for reports; never interpreted by the core.
        doc: optional description.
    """

    name: str
    type: DataType
    nullable: bool = True
    primary_key: bool = False
    source_type: str | None = None
    doc: str | None = None

    def __str__(self) -> str:
        text = f"{self.name}: {self.type}"
        if not self.nullable:
            text += " not null"
        if self.source_type:
            text += f"  -- {self.source_type}"
        return text

    def with_type(self, new_type: DataType) -> Field:
        return replace(self, type=new_type)


@dataclass(frozen=True, slots=True)
class Schema:
    """The shape of one table: ordered fields and the primary key.

    Guarantees: field names are unique; every primary-key column is a field. ``version`` grows by
    one with each change applied by zetl (0 for a freshly discovered schema).
    """

    table: "TableId"
    fields: tuple[Field, ...]
    primary_key: tuple[str, ...] = ()
    version: int = 0
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for i, f in enumerate(self.fields):
            if f.name in index:
                raise ValueError(f"duplicate column {f.name!r} in table {self.table}")
            index[f.name] = i
        missing = [c for c in self.primary_key if c not in index]
        if missing:
            raise ValueError(f"primary key column(s) {missing} are not columns of {self.table}")
        object.__setattr__(self, "_index", index)

    @classmethod
    def of(cls, table: "TableId", fields: Iterable[Field], primary_key: Iterable[str] = (), version: int = 0) -> Schema:
        """Build a schema; the ``primary_key`` flag of each field is set from ``primary_key``."""
        pk = tuple(primary_key) or tuple(f.name for f in fields if f.primary_key)  # type: ignore[union-attr]
        fields = tuple(replace(f, primary_key=f.name in pk, nullable=f.nullable and f.name not in pk) for f in fields)
        return cls(table=table, fields=fields, primary_key=pk, version=version)

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        """The field called ``name``; raises KeyError naming the table and the known columns."""
        try:
            return self.fields[self._index[name]]
        except KeyError:
            raise KeyError(f"no column {name!r} in {self.table}; columns: {', '.join(self.names)}") from None

    def get(self, name: str) -> Field | None:
        i = self._index.get(name)
        return None if i is None else self.fields[i]

    def replace_fields(self, fields: Iterable[Field], *, bump: bool = True) -> Schema:
        fields = tuple(fields)
        pk = tuple(c for c in self.primary_key if any(f.name == c for f in fields))
        return Schema(self.table, fields, pk, self.version + (1 if bump else 0))

    def __str__(self) -> str:
        lines = [f"table {self.table}" + (f" (primary key: {', '.join(self.primary_key)})" if self.primary_key else " (no primary key)")]
        lines += [f"  {f}" for f in self.fields]
        return "\n".join(lines)


class T:
    """Constructors for canonical types: ``T.int32``, ``T.decimal(12, 2)``, ``T.list_(T.string())``."""

    boolean = DataType(TypeKind.BOOLEAN)
    int16 = DataType(TypeKind.INT16)
    int32 = DataType(TypeKind.INT32)
    int64 = DataType(TypeKind.INT64)
    float32 = DataType(TypeKind.FLOAT32)
    float64 = DataType(TypeKind.FLOAT64)
    binary = DataType(TypeKind.BINARY)
    date = DataType(TypeKind.DATE)
    time = DataType(TypeKind.TIME)
    timestamp = DataType(TypeKind.TIMESTAMP)
    timestamptz = DataType(TypeKind.TIMESTAMPTZ)
    uuid = DataType(TypeKind.UUID)
    json = DataType(TypeKind.JSON)

    @staticmethod
    def string(length: int | None = None) -> DataType:
        return DataType(TypeKind.STRING, length=length)

    @staticmethod
    def decimal(precision: int, scale: int = 0) -> DataType:
        if not (1 <= precision) or not (0 <= scale <= precision):
            raise ValueError(f"invalid decimal({precision},{scale}): need 1 <= precision and 0 <= scale <= precision")
        return DataType(TypeKind.DECIMAL, precision=precision, scale=scale)

    @staticmethod
    def list_(element: DataType) -> DataType:
        return DataType(TypeKind.LIST, element=element)

    @staticmethod
    def struct(fields: Iterable[Field]) -> DataType:
        return DataType(TypeKind.STRUCT, fields=tuple(fields))


from zetl.events import TableId  # noqa: E402  (cycle-free: events does not import schema)

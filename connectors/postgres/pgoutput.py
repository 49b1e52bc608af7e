"""Decoding of pgoutput (logical replication protocol version 1) messages into change events.

Hot path: one ``RelationDecoder`` per relation holds the column names and per-column text decoders,
computed once per Relation message, so decoding a row is a tight loop over the tuple bytes.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal
from dataclasses import dataclass
from typing import Any, Callable

from zetl.errors import SourceError, exclude_advice
from zetl.events import UNCHANGED, TableId
from zetl.jsonvalue import JsonText
from zetl.plugin import ColumnSelector
from zetl.schema.changes import AddColumn, AlterColumnType, DropColumn, SchemaChange
from zetl.schema.types import DataType, Field, Schema, TypeKind

from .decoding import Decoder, decoder_for

__all__ = ["PG_EPOCH", "RelationColumn", "RelationDecoder", "decode_relation", "diff_schema", "pg_time"]

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_US = int(PG_EPOCH.timestamp()) * 1_000_000

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from


_FROM_BYTES: dict[TypeKind, Callable[[bytes], Any]] = {
    TypeKind.INT16: int,
    TypeKind.INT32: int,
    TypeKind.INT64: int,
    TypeKind.FLOAT32: float,
    TypeKind.FLOAT64: float,
    TypeKind.BOOLEAN: lambda raw: raw == b"t",
    TypeKind.JSON: lambda raw: JsonText(raw.decode()),  # the text as sent, byte for byte
}
_FAST_TEXT: dict[TypeKind, Callable[[str], Any]] = {
    TypeKind.DECIMAL: Decimal,
    TypeKind.TIMESTAMP: dt.datetime.fromisoformat,
    TypeKind.DATE: dt.date.fromisoformat,
    TypeKind.UUID: uuid.UUID,
}


def _naming(table: TableId, column: str, fn: Decoder) -> Decoder:
    """``fn`` raising a SourceError that names the table and column (used on the slow path only)."""

    def decode(text: str) -> Any:
        try:
            return fn(text)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise SourceError(f"cannot read value {text[:60]!r} of column {column!r} in table {table}: {exc}. {exclude_advice(table, column)}", retryable=False) from None

    return decode


def pg_time(micros: int) -> dt.datetime:
    """Postgres protocol timestamp (microseconds since 2000-01-01 UTC) -> aware datetime."""
    return PG_EPOCH + dt.timedelta(microseconds=micros)


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(0, pos)
    return buf[pos:end].decode(), end + 1


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    is_key: bool


def decode_relation(buf: bytes) -> tuple[int, TableId, str, list[RelationColumn]]:
    """A Relation ('R') message -> (relation OID, table, replica identity, columns)."""
    (oid,) = _U32(buf, 1)
    namespace, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    identity = chr(buf[pos])
    (ncols,) = _I16(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(ncols):
        flags = buf[pos]
        col, pos = _cstring(buf, pos + 1)
        (type_oid,) = _U32(buf, pos)
        (typmod,) = _I32(buf, pos + 4)
        pos += 8
        columns.append(RelationColumn(col, type_oid, typmod, bool(flags & 1)))
    return oid, TableId(namespace or "public", name), identity, columns


class RelationDecoder:
    """Decodes the TupleData of one relation into ``{column: value}`` dicts.

    ``decode(buf, pos)`` returns ``(row, next_pos)``. Values: canonical Python values, None for
    NULL, ``UNCHANGED`` for an unchanged TOASTed value the server did not send.
    """

    __slots__ = ("table", "schema", "names", "decoders", "plan", "safe_plan", "key", "selected")

    def __init__(self, table: TableId, schema: Schema, selected: bool = True, columns: ColumnSelector | None = None) -> None:
        """``columns``: a column it does not read (``ColumnSelector.reads``) is skipped, never
        decoded, and absent from the rows (key columns are always read)."""
        self.table = table
        self.schema = schema
        self.names: tuple[str, ...] = schema.names
        self.decoders: tuple[Decoder, ...] = tuple(decoder_for(f.type) for f in schema.fields)
        # per column: (name, mode, function); mode 0 = text kept as is, 1 = function of the raw
        # bytes (int() and float() parse ASCII bytes directly), 2 = function of the decoded text,
        # 3 = skipped (a column the integration does not use: never decoded, left out of the row)
        # The fast functions are the C parsers themselves; a value they reject (infinity dates...)
        # makes ``decode`` redo the row with the complete decoders of ``decoding``.
        plan = []
        safe = []
        for f, decoder in zip(schema.fields, self.decoders):
            kind = f.type.kind
            if columns is not None and f.name not in schema.primary_key and not columns.reads(table, f.name):
                plan.append((f.name, 3, decoder))
                safe.append((f.name, 3, decoder))
                continue
            if kind is TypeKind.STRING:
                plan.append((f.name, 0, decoder))
            elif kind in _FROM_BYTES:
                plan.append((f.name, 1, _FROM_BYTES[kind]))
            else:
                plan.append((f.name, 2, _FAST_TEXT.get(kind, decoder)))
            safe.append((f.name, 0 if kind is TypeKind.STRING else 2, decoder))
        self.plan: tuple[tuple[str, int, Decoder], ...] = tuple(plan)
        self.safe_plan: tuple[tuple[str, int, Decoder], ...] = tuple(safe)
        self.key: tuple[str, ...] = schema.primary_key
        self.selected = selected

    def decode(self, buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        try:
            return self._decode(buf, pos, self.plan)
        except (ValueError, TypeError, ArithmeticError):
            return self._decode(buf, pos, tuple((name, mode, _naming(self.table, name, fn)) for name, mode, fn in self.safe_plan))

    def _decode(self, buf: bytes, pos: int, plan: tuple[tuple[str, int, Decoder], ...]) -> tuple[dict[str, Any], int]:
        (ncols,) = _I16(buf, pos)
        if ncols != len(plan):
            raise RuntimeError(f"tuple of {self.table} has {ncols} columns, its Relation message announced {len(plan)}")
        pos += 2
        row: dict[str, Any] = {}
        i32 = _I32
        for name, mode, fn in plan:
            kind = buf[pos]
            if mode == 3:  # not read: skip the value whatever its kind
                if kind == 116 or kind == 98:
                    (n,) = i32(buf, pos + 1)
                    pos += 5 + n
                else:
                    pos += 1
                continue
            if kind == 116:  # 't' text value
                (n,) = i32(buf, pos + 1)
                start = pos + 5
                pos = start + n
                if mode == 0:
                    row[name] = buf[start:pos].decode()
                elif mode == 1:
                    row[name] = fn(buf[start:pos])
                else:
                    row[name] = fn(buf[start:pos].decode())
            elif kind == 110:  # 'n' NULL
                pos += 1
                row[name] = None
            elif kind == 117:  # 'u' unchanged TOAST value
                pos += 1
                row[name] = UNCHANGED
            elif kind == 98:  # 'b' binary (never requested; protocol allows it)
                raise RuntimeError(f"binary tuple value in column {name!r} of {self.table}: zetl requests the text format")
            else:
                raise RuntimeError(f"unknown tuple value kind {kind!r} in column {name!r} of {self.table}")
        return row, pos

    def key_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """The primary-key columns of ``row`` (the whole row when there is no key)."""
        if not self.key:
            return row
        return {k: row[k] for k in self.key}


def diff_schema(old: Schema | None, new: Schema) -> list[SchemaChange]:
    """Canonical changes that turn ``old`` into ``new``: drops, then type changes, then adds in column order."""
    if old is None:
        return []
    changes: list[SchemaChange] = []
    for f in old.fields:
        if f.name not in new:
            changes.append(DropColumn(new.table, f.name))
    for f in new.fields:
        before = old.get(f.name)
        if before is not None and before.type != f.type:
            changes.append(AlterColumnType(new.table, f.name, f.type, before.type))
    previous: str | None = None
    for f in new.fields:
        if f.name not in old:
            changes.append(AddColumn(new.table, Field(f.name, f.type, nullable=True, source_type=f.source_type), after=previous))
        previous = f.name
    return changes


def relation_schema(
    table: TableId, columns: list[RelationColumn], data_type: Callable[[int, int], DataType], known: Schema | None
) -> Schema:
    """The schema a Relation message describes; nullability and source types come from ``known``
    for columns that kept their type (the message carries neither)."""
    fields = []
    for c in columns:
        t = data_type(c.type_oid, c.typmod)
        prev = known.get(c.name) if known is not None else None
        if prev is not None and prev.type == t:
            fields.append(Field(c.name, t, nullable=prev.nullable, source_type=prev.source_type))
        else:
            fields.append(Field(c.name, t, nullable=True))
    if known is not None and known.primary_key and all(k in {c.name for c in columns} for k in known.primary_key):
        key: tuple[str, ...] = known.primary_key
    else:
        key = tuple(c.name for c in columns if c.is_key)
    return Schema.of(table, fields, key, version=known.version if known is not None else 0)

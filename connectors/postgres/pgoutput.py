"""Decoding of pgoutput (logical replication protocol version 1) messages into change events.

Hot path: one ``RelationDecoder`` per relation holds the column names and per-column text decoders,
computed once per Relation message, so decoding a row is a tight loop over the tuple bytes.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from typing import Any, Callable

from zetl.events import UNCHANGED, TableId
from zetl.schema.changes import AddColumn, AlterColumnType, DropColumn, SchemaChange
from zetl.schema.types import DataType, Field, Schema

from .decoding import Decoder, decoder_for

__all__ = ["PG_EPOCH", "RelationColumn", "RelationDecoder", "decode_relation", "diff_schema", "pg_time"]

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_US = int(PG_EPOCH.timestamp()) * 1_000_000

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_U32 = struct.Struct(">I").unpack_from


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

    __slots__ = ("table", "schema", "names", "decoders", "key", "selected")

    def __init__(self, table: TableId, schema: Schema, selected: bool = True) -> None:
        self.table = table
        self.schema = schema
        self.names: tuple[str, ...] = schema.names
        self.decoders: tuple[Decoder, ...] = tuple(decoder_for(f.type) for f in schema.fields)
        self.key: tuple[str, ...] = schema.primary_key
        self.selected = selected

    def decode(self, buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        (ncols,) = _I16(buf, pos)
        pos += 2
        names = self.names
        decoders = self.decoders
        row: dict[str, Any] = {}
        i32 = _I32
        for i in range(ncols):
            kind = buf[pos]
            if kind == 116:  # 't' text value
                (n,) = i32(buf, pos + 1)
                start = pos + 5
                pos = start + n
                row[names[i]] = decoders[i](buf[start:pos].decode())
            elif kind == 110:  # 'n' NULL
                pos += 1
                row[names[i]] = None
            elif kind == 117:  # 'u' unchanged TOAST value
                pos += 1
                row[names[i]] = UNCHANGED
            elif kind == 98:  # 'b' binary (never requested; protocol allows it)
                (n,) = i32(buf, pos + 1)
                raise ValueError(f"binary tuple value in column {names[i]!r} of {self.table}: zetl requests the text format")
            else:
                raise ValueError(f"unknown tuple value kind {kind!r} in column {names[i]!r} of {self.table}")
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

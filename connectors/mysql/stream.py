"""Binlog events -> batches of whole transactions.

``BinlogAssembler`` is the pure part of streaming: it is fed pymysqlreplication events (or any
objects with the same class names and attributes, as the unit tests do) and gives batches.

Guarantees:
    * A batch holds whole transactions; its ``end_position`` is the coordinate right after its
      last transaction (and the GTID state including it), so resuming there neither repeats nor
      skips a transaction.
    * Schema changes lead a batch of their own transaction; rows of a table are always in the
      shape of the schema in force when they were written (row events carry their own column
      names, ``binlog_row_metadata=FULL``).
    * Rows of tables the selection rejects are never decoded.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from zetl_connectors.mysql.catalog import is_system_schema
from zetl_connectors.mysql.convert import Converter, not_read, stream_converter, zetl_row_converter
from zetl_connectors.mysql.ddl import interpret
from zetl_connectors.mysql.gtid import MariaDBGtidState, MySQLGtidSet
from zetl_connectors.mysql.position import MySQLPosition
from zetl_connectors.mysql.rowdecode import RowDecoder
from zetl_connectors.mysql.tablemap import name_columns_from_schema

from zetl.errors import NeedsAttentionError, SourceConnectionError
from zetl.events import Batch, ChangeEvent, Op, TableId
from zetl.plugin import ColumnSelector, TableSelector
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    SchemaChange,
)
from zetl.schema.planner import apply_change
from zetl.schema.types import Field, Schema

__all__ = ["BinlogAssembler", "diff_schemas", "event_builder"]

_UTC = dt.UTC
_ROW_OPS = {"WriteRowsEvent": Op.INSERT, "UpdateRowsEvent": Op.UPDATE, "DeleteRowsEvent": Op.DELETE}


_EVENT_FIELDS = ("table", "op", "before", "after", "position", "commit_ts", "txid")
EventBuilder = Callable[[TableId, Op, Any, Any, Any, Any, Any], ChangeEvent]


def event_builder() -> EventBuilder:
    """A function with ``ChangeEvent``'s positional signature (all seven fields) that builds the
    same event in about half the time: the dataclass ``__init__`` of a frozen class goes through
    ``object.__setattr__`` once per field, this writes the slots directly. The result is an
    ordinary ``ChangeEvent`` (equal, hashable, replaceable as any other). Falls back to the
    constructor itself should ``ChangeEvent`` ever have other fields or checks of its own."""
    import dataclasses

    names = tuple(f.name for f in dataclasses.fields(ChangeEvent))
    if names != _EVENT_FIELDS or hasattr(ChangeEvent, "__post_init__") or "__slots__" not in ChangeEvent.__dict__:
        return ChangeEvent
    setters = [ChangeEvent.__dict__[name].__set__ for name in names]
    set_table, set_op, set_before, set_after, set_position, set_commit_ts, set_txid = setters
    new = object.__new__

    def build(table: TableId, op: Op, before: Any, after: Any, position: Any, commit_ts: Any, txid: Any) -> ChangeEvent:
        event = new(ChangeEvent)
        set_table(event, table)
        set_op(event, op)
        set_before(event, before)
        set_after(event, after)
        set_position(event, position)
        set_commit_ts(event, commit_ts)
        set_txid(event, txid)
        return event  # type: ignore[no-any-return]

    return build


_build_event = event_builder()


def diff_schemas(old: Schema | None, new: Schema | None, table: TableId) -> list[SchemaChange]:
    """Canonical changes that turn ``old`` into ``new`` (used when a DDL statement is not understood)."""
    if old is None and new is None:
        return []
    if new is None:
        return [DropTable(table)]
    if old is None:
        return [CreateTable(table, new)]
    changes: list[SchemaChange] = []
    new_names = set(new.names)
    for f in old.fields:
        if f.name not in new_names:
            changes.append(DropColumn(table, f.name))
    previous: str | None = None
    for f in new.fields:
        have = old.get(f.name)
        if have is None:
            changes.append(AddColumn(table, f, previous))
        else:
            if have.type != f.type:
                changes.append(AlterColumnType(table, f.name, f.type, have.type))
            if f.nullable and not have.nullable:
                changes.append(MakeColumnNullable(table, f.name))
        previous = f.name
    if not changes and list(old.primary_key) != list(new.primary_key):
        # a key change alone: report the table anew so that the target learns the key
        changes = [DropTable(table), CreateTable(table, new)]
    return changes


class _TableDecoder:
    """Turns one table's row dicts into canonical rows of its current schema."""

    __slots__ = ("converters", "name_set", "names", "needed", "needed_zetl", "schema", "warned", "zetl_converters")

    def __init__(self, schema: Schema, columns: ColumnSelector | None = None) -> None:
        """``columns``: a column the integration does not use (``ColumnSelector.reads``) is
        never converted: it is NULL in the rows (key columns are always read)."""
        self.schema = schema
        self.names = schema.names
        self.name_set = set(self.names)
        unread = {f.name for f in schema.fields if columns is not None and f.name not in schema.primary_key and not columns.reads(schema.table, f.name)}

        def converter(f: Field, make: Callable[[Field, str], Converter | None]) -> Converter | None:
            return not_read if f.name in unread else make(f, f"table {schema.table}, column {f.name}")

        self.converters: list[tuple[str, Converter | None]] = [(f.name, converter(f, stream_converter)) for f in schema.fields]
        self.needed = [(n, c) for n, c in self.converters if c is not None]
        zetl_converters = [(f.name, converter(f, zetl_row_converter)) for f in schema.fields]
        self.needed_zetl = [(n, c) for n, c in zetl_converters if c is not None]
        self.zetl_converters: dict[str, Converter] = dict(self.needed_zetl)
        self.warned = False

    def zetl_row(self, values: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
        """Like ``row`` for a dict decoded by ``rowdecode`` (fewer values need converting)."""
        if values.keys() == self.name_set:
            for name, conv in self.needed_zetl:
                v = values[name]
                if v is not None:
                    values[name] = conv(v)
            return values
        return self.row(values, log)

    def row(self, values: dict[str, Any], log: logging.Logger) -> dict[str, Any]:
        """The row in the schema's columns with canonical values. ``values`` is the decoder's own
        fresh dict: when it has exactly the schema's columns it is converted in place."""
        if values.keys() == self.name_set:
            for name, conv in self.needed:
                v = values[name]
                if v is not None:
                    values[name] = conv(v)
            return values
        out = {}
        for name, conv in self.converters:
            v = values.get(name)
            out[name] = v if conv is None or v is None else conv(v)
        if len(values) != len(out) and not self.warned:
            extra = sorted(set(values) - set(self.names))
            missing = sorted(set(self.names) - set(values))
            if extra or missing:
                # Only when resuming across a DDL statement: the rows were written before it.
                log.warning(
                    "rows of %s written before a later schema change: columns %s are not in the current schema%s",
                    self.schema.table, extra, f", columns {missing} are NULL in them" if missing else "",
                )
                self.warned = True
        return out


class BinlogAssembler:
    """Feeds on binlog events, gives batches (see the module doc).

    Args:
        mariadb: the server is MariaDB (GTIDs are domain-server-seq).
        start: where reading starts (between two transactions).
        schemas: the tracked schema of every selected table (updated as DDL arrives).
        selector: the integration's table selection.
        reread: reads one table's schema from ``information_schema`` now (None: no such table).
        max_batch_rows: whole transactions are grouped until a batch holds this many rows.
    """

    def __init__(
        self,
        *,
        mariadb: bool,
        start: MySQLPosition,
        schemas: dict[TableId, Schema],
        selector: TableSelector,
        reread: Callable[[TableId], Schema | None],
        max_batch_rows: int = 10_000,
        max_batch_delay: float = 0.5,
        logger: logging.Logger | None = None,
        announced: Iterable[TableId] = (),
        row_decoder: RowDecoder | None = None,
        on_schema_change: Callable[[MySQLPosition, dict[TableId, Schema | None]], None] | None = None,
        columns: ColumnSelector | None = None,
    ) -> None:
        self.mariadb = mariadb
        self.file = start.file
        self.position = start.streaming()
        self.gtids: MariaDBGtidState | MySQLGtidSet = MariaDBGtidState(start.gtid) if mariadb else MySQLGtidSet(start.gtid)
        self.schemas = dict(schemas)
        self.selector = selector
        self.columns = columns
        self.reread = reread
        self.max_batch_rows = max_batch_rows
        self.max_batch_delay = max_batch_delay
        self.log = logger or logging.getLogger("zetl.mysql")
        self._decoders: dict[TableId, _TableDecoder] = {}
        # Tables whose CreateTable this read has handed out (the first batch about a table starts with one).
        self._announced: set[TableId] = set(announced)
        self.on_schema_change = on_schema_change
        self.row_decoder = row_decoder
        self._selected: dict[tuple[str, str], TableId | None] = {}
        self._seen_fake_rotate = False
        self._next_file: str | None = None
        self._ddl_tables: set[TableId] = set()
        self.table_maps_dirty = False
        # the transaction being read
        self._in_txn = False
        self._txn_gtid: str | None = None
        # (table, op, rows, commit time) per row event: rows are after-images (INSERT),
        # before-images (DELETE), (before, after) pairs (UPDATE), None (TRUNCATE: one event)
        self._txn_rows: list[tuple[TableId, Op, list[Any] | None, int]] = []
        self._txn_changes: list[SchemaChange] = []
        # whole transactions not yet handed out
        self._pending_changes: list[SchemaChange] = []
        self._pending_events: list[ChangeEvent] = []
        self._pending_end: MySQLPosition | None = None
        self._pending_since = 0.0
        self._last_yielded: MySQLPosition | None = None
        self.events_seen = 0
        self.last_event_ts: float | None = None

    # -- tables ---------------------------------------------------------------------------
    def _table(self, db: Any, name: Any) -> TableId | None:
        key = (db, name)
        if key in self._selected:
            return self._selected[key]
        db_s = db.decode() if isinstance(db, bytes) else str(db)
        name_s = name.decode() if isinstance(name, bytes) else str(name)
        tid = TableId(db_s, name_s)
        chosen = tid if not is_system_schema(db_s) and self.selector.matches(tid) else None
        self._selected[key] = chosen
        return chosen

    def _decoder(self, table: TableId) -> _TableDecoder | None:
        dec = self._decoders.get(table)
        if dec is None:
            schema = self.schemas.get(table)
            if schema is None:
                schema = self.reread(table)
                if schema is None:
                    raise NeedsAttentionError(
                        f"rows of {table} arrived at {self.file}:{self.position.pos} but the table is unknown and gone from"
                        " information_schema; copy the tables again with `zetl reset <integration>` and a new run"
                    )
                self._apply([CreateTable(table, schema)])
                self._ddl_tables.add(table)
            self._announce(table)
            dec = self._decoders[table] = _TableDecoder(self.schemas[table], self.columns)
        return dec

    def _announce(self, table: TableId) -> None:
        if table not in self._announced and table in self.schemas:
            self._announced.add(table)
            self._txn_changes.append(CreateTable(table, self.schemas[table]))

    def _apply(self, changes: Iterable[SchemaChange]) -> None:
        """Apply changes to the tracked schemas; they lead the current transaction's batch."""
        for change in changes:
            new = apply_change(self.schemas.get(change.table), change)
            if new is None:
                self.schemas.pop(change.table, None)
            else:
                self.schemas[change.table] = new
            self._decoders.pop(change.table, None)
            self._announced.add(change.table)
            self._txn_changes.append(change)

    # -- events ---------------------------------------------------------------------------
    def feed(self, event: Any) -> list[Batch]:
        """Take one event; return the batches that are complete now (often none)."""
        self.events_seen += 1
        kind = type(event).__name__
        if kind in _ROW_OPS:
            self._rows(event, _ROW_OPS[kind])
            return []
        if kind == "XidEvent":
            return self._commit(event)
        if kind in ("GtidEvent", "MariadbGtidEvent"):
            self._in_txn = True
            self._txn_gtid = event.gtid
            return []
        if kind == "QueryEvent":
            return self._query(event)
        if kind == "RotateEvent":
            return self._rotate(event)
        if kind == "HeartbeatLogEvent":
            return self.tick()
        return []

    def _rotate(self, event: Any) -> list[Batch]:
        if event.timestamp == 0:
            # The server sends a rotate with timestamp 0 when a binlog connection starts and when
            # it moves on to the next file (right after the real rotate event that ends the old
            # one). Any other means the reader reconnected by itself, possibly in the middle of a
            # transaction or from an older GTID: start again from the last durable position.
            if self._seen_fake_rotate and event.next_binlog != self._next_file:
                raise SourceConnectionError(
                    f"the binlog connection was re-established at {event.next_binlog}:{event.position}; restarting from the last checkpoint"
                )
            self._seen_fake_rotate = True
            self._next_file = None
            self.file = event.next_binlog
            return []
        self._next_file = event.next_binlog
        self.file = event.next_binlog
        self.table_maps_dirty = True
        if not self._in_txn:
            self.position = MySQLPosition(event.next_binlog, event.position, self.position.gtid)
        return []

    def _rows(self, event: Any, op: Op) -> None:
        table = self._table(event.schema, event.table)
        if table is None:
            return
        self._in_txn = True
        dec = self._decoder(table)
        assert dec is not None
        ts = event.timestamp
        log = self.log
        update = op is Op.UPDATE
        if self.row_decoder is not None:
            # Values converted while decoding, when the event has the schema's columns.
            fast = self.row_decoder.converted_rows(event, update, dec.name_set, dec.zetl_converters)
            if fast is None:
                fast = self.row_decoder.rows(event, update)
                if fast is not None:
                    row = dec.zetl_row
                    fast = [(row(b, log), row(a, log)) for b, a in fast] if update else [row(v, log) for v in fast]
            if fast is not None:
                self._txn_rows.append((table, op, fast, ts))
                return
        name_columns_from_schema(event, dec.schema)  # binlogs logged without column names
        row = dec.row
        if op is Op.INSERT or op is Op.DELETE:
            self._txn_rows.append((table, op, [row(r["values"], log) for r in event.rows], ts))
        else:
            self._txn_rows.append((table, op, [(row(r["before_values"], log), row(r["after_values"], log)) for r in event.rows], ts))

    def _query(self, event: Any) -> list[Batch]:
        query = event.query if isinstance(event.query, str) else event.query.decode("utf-8", "replace")
        head = query.lstrip()[:16].upper()
        if head.startswith(("BEGIN", "XA START", "XA END", "XA PREPARE")):
            self._in_txn = True
            return []
        if head.startswith(("COMMIT", "XA COMMIT")):
            return self._commit(event)
        if head.startswith("ROLLBACK"):
            # Only non-transactional changes are ever logged before a ROLLBACK, and they happened.
            return self._commit(event)
        if head.startswith("SAVEPOINT"):
            return []
        # A DDL statement: its own transaction. Table maps cached by table id are stale now.
        self.table_maps_dirty = True
        db = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
        before = dict(self.schemas)
        result = interpret(query, db, self.schemas, self.selector)
        for change in result.changes:
            if change.table not in self._announced and change.table in before and not isinstance(change, CreateTable):
                self._announced.add(change.table)
                self._txn_changes.append(CreateTable(change.table, before[change.table]))
        changes = list(result.changes)
        self.schemas = dict(result.schemas)
        for table, schema in self.schemas.items():
            if before.get(table) is not schema:  # also reshaped without a canonical change (column order, native type)
                self._decoders.pop(table, None)
                self._ddl_tables.add(table)
        for table in result.created:
            schema = self.reread(table) or result.created_from_statement.get(table)
            if schema is None:
                raise NeedsAttentionError(
                    f"table {table} was created by {query!r} but its columns cannot be read (it is gone from information_schema);"
                    " copy the tables again with `zetl reset <integration>` and a new run"
                )
            if table not in self.schemas:
                changes.append(CreateTable(table, schema))
                self.schemas[table] = schema
        for table in dict.fromkeys(result.reread):
            if table not in self._announced and table in self.schemas:
                self._announced.add(table)
                self._txn_changes.append(CreateTable(table, self.schemas[table]))
            new = self.reread(table)
            diff = diff_schemas(self.schemas.get(table), new, table)
            self.log.warning("schema of %s re-read from information_schema after %r: %s", table, query, ", ".join(map(str, diff)) or "no change")
            for change in diff:
                s = apply_change(self.schemas.get(table), change)
                if s is None:
                    self.schemas.pop(table, None)
                else:
                    self.schemas[table] = s
            changes.extend(diff)
        for change in changes:
            self._decoders.pop(change.table, None)
            self._announced.add(change.table)
        self._txn_changes.extend(changes)
        self._ddl_tables.update(c.table for c in changes)
        for table in result.truncated:
            self._txn_rows.append((table, Op.TRUNCATE, None, event.timestamp))
        self._selected.clear()
        return self._commit(event)

    def _commit(self, event: Any) -> list[Batch]:
        if self._txn_gtid:
            self.gtids.add(self._txn_gtid)
        gtid = str(self.gtids) or None
        self.position = MySQLPosition(self.file, event.packet.log_pos, gtid)
        if self._ddl_tables:
            if self.on_schema_change is not None:
                self.on_schema_change(self.position, {t: self.schemas.get(t) for t in sorted(self._ddl_tables)})
            self._ddl_tables = set()
        out: list[Batch] = []
        if self._txn_changes and (self._pending_events or self._pending_changes):
            out.extend(self._flush())
        position = self.position
        txid = self._txn_gtid or f"{position.file}:{position.pos}"
        if self._pending_end is None:
            self._pending_since = time.monotonic()
        if self._txn_rows:
            events = self._pending_events
            event_of = _build_event
            last_ts, commit_ts = None, None
            for table, op, rows, ts in self._txn_rows:
                if ts != last_ts:
                    last_ts, commit_ts = ts, dt.datetime.fromtimestamp(ts, _UTC)
                # one list display per row event: the per-row work is the event alone
                if op is Op.INSERT:
                    events += [event_of(table, op, None, r, position, commit_ts, txid) for r in rows]  # type: ignore[union-attr]
                elif op is Op.DELETE:
                    events += [event_of(table, op, r, None, position, commit_ts, txid) for r in rows]  # type: ignore[union-attr]
                elif op is Op.UPDATE:
                    events += [event_of(table, op, b, a, position, commit_ts, txid) for b, a in rows]  # type: ignore[union-attr]
                else:
                    events.append(event_of(table, op, None, None, position, commit_ts, txid))
        self._pending_changes.extend(self._txn_changes)
        self._pending_end = position
        self._txn_rows = []
        self._txn_changes = []
        self._txn_gtid = None
        self._in_txn = False
        if self._pending_changes or len(self._pending_events) >= self.max_batch_rows or time.monotonic() - self._pending_since >= self.max_batch_delay:
            out.extend(self._flush())
        return out

    def _flush(self) -> list[Batch]:
        if self._pending_end is None:
            return []
        batch = Batch(events=tuple(self._pending_events), schema_changes=tuple(self._pending_changes), end_position=self._pending_end)
        self._last_yielded = self._pending_end
        self._pending_events, self._pending_changes, self._pending_end = [], [], None
        return [batch]

    def tick(self) -> list[Batch]:
        """Nothing arrived for a while: hand out what is complete, or an empty batch that carries
        the position forward (past transactions of other tables)."""
        if self._pending_end is not None:
            return self._flush()
        if not self._in_txn and self.position != self._last_yielded and self._last_yielded is not None:
            self._last_yielded = self.position
            return [Batch(end_position=self.position)]
        if self._last_yielded is None:
            self._last_yielded = self.position
        return [Batch()]

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

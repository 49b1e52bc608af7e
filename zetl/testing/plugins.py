"""Test plugins shipped with zetl: a deterministic source and two sinks.

* ``memory`` source (``MemorySource``): a generated table ``demo.items`` with a snapshot and a
  stream of inserts, updates and deletes that is the same on every run, so a restarted run can be
  checked against ``expected_rows``. Resumes from any position it yielded.
* ``memory`` sink (``MemorySink``): keeps the tables in process memory; accepts every schema change.
* ``file`` sink (``FileSink``): keeps the tables in a SQLite file, idempotent by primary key and
  position, plus a log of every event applied (one row per source position), so that tests can
  check that each event arrived exactly once across crashes.
* ``ListSource``: a source over batches given in Python (library use and unit tests).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Mapping

import orjson
from pydantic import Field as PydField

from zetl.config.types import Duration
from zetl.errors import SinkError, SourceConnectionError
from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, Position, RowChunk, SequencePosition, TableId
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CHANGE_KINDS,
    CreateTable,
    DropColumn,
    MakeColumnNullable,
    RenameColumn,
    SchemaChange,
)
from zetl.schema.planner import apply_change
from zetl.jsonvalue import JsonText, as_json_text, dump_json
from zetl.schema.types import DataType, Field, Schema, T, TypeKind
from zetl.sink import Sink, SinkCapabilities, SinkConfig
from zetl.source import Source, SourceConfig

__all__ = ["FileSink", "ListSource", "MemorySink", "MemorySource", "MemorySourceConfig", "expected_rows"]

_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


class MemorySourceConfig(SourceConfig):
    table: str = "demo.items"
    """Name of the generated table."""
    snapshot_rows: int = PydField(100, ge=0)
    """Rows present before streaming starts (read as the snapshot)."""
    stream_events: int = PydField(0, ge=0)
    """Changes generated after the snapshot: 7 of 10 inserts, 2 updates, 1 delete."""
    chunk_rows: int = PydField(50, ge=1)
    """Snapshot rows per chunk (one Arrow chunk per batch)."""
    events_per_batch: int = PydField(10, ge=1)
    """Stream changes per batch (one batch = one source transaction)."""
    interval: Duration = 0.0
    """Pause between stream batches (simulates a live source)."""
    follow: bool = False
    """Keep running (yielding idle batches) after the last change instead of ending."""
    fail_once_after: int | None = None
    """Raise a retryable error once, after this many stream changes (tests retries)."""


def _schema(table: TableId) -> Schema:
    return Schema.of(
        table,
        [
            Field("id", T.int64, nullable=False),
            Field("name", T.string()),
            Field("amount", T.decimal(12, 2)),
            Field("updated_at", T.timestamptz),
            Field("doc", T.json),
        ],
        ["id"],
    )


def _row(i: int, version: int) -> dict[str, Any]:
    return {
        "id": i,
        "name": f"item-{i}-v{version}",
        "amount": Decimal(i * 100 + version) / 100,
        "updated_at": _EPOCH + dt.timedelta(seconds=i * 10 + version),
        "doc": JsonText(dump_json({"tags": [f"t{i % 3}"], "v": version})),
    }


def _stream(config: MemorySourceConfig, table: TableId) -> Iterator[ChangeEvent]:
    """Stream change number n (1-based) is the same on every run."""
    next_id = config.snapshot_rows + 1
    live: list[int] = []
    for n in range(1, config.stream_events + 1):
        pos = SequencePosition("stream", n)
        ts = _EPOCH + dt.timedelta(seconds=n)
        kind = n % 10
        if kind == 8 and config.snapshot_rows:
            i = 1 + (n * 7) % config.snapshot_rows
            yield ChangeEvent.update(table, {"id": i}, _row(i, n), pos, commit_ts=ts, txid=n)
        elif kind == 9 and live:
            i = live.pop()
            yield ChangeEvent.delete(table, {"id": i}, pos, commit_ts=ts, txid=n)
        elif kind == 7 and live:
            i = live[-1]
            yield ChangeEvent.update(table, {"id": i}, _row(i, n), pos, commit_ts=ts, txid=n)
        else:
            i = next_id
            next_id += 1
            live.append(i)
            yield ChangeEvent.insert(table, _row(i, 0), pos, commit_ts=ts, txid=n)


def expected_rows(config: MemorySourceConfig) -> dict[int, dict[str, Any]]:
    """The table's final state by id, after the snapshot and every stream change."""
    table = TableId.parse(config.table)
    rows = {i: _row(i, 0) for i in range(1, config.snapshot_rows + 1)}
    for e in _stream(config, table):
        if e.op is Op.DELETE:
            rows.pop(e.before["id"], None)  # type: ignore[index]
        else:
            rows[e.after["id"]] = dict(e.after)  # type: ignore[index]
    return rows


_FAILED_ONCE: set[str] = set()


class MemorySource(Source[MemorySourceConfig]):
    """A deterministic generated source (type ``memory``); see the module docstring."""

    name = "memory"
    config_class = MemorySourceConfig

    def __init__(self, config: MemorySourceConfig, context: Any = None) -> None:
        super().__init__(config, context)
        self.table = TableId.parse(config.table)
        self._closed = threading.Event()
        self._phase = "snapshot"
        self._acked: Position | None = None

    def discover(self) -> list[Schema]:
        return [_schema(self.table)] if self.context.tables.matches(self.table) else []

    def status(self) -> dict[str, Any]:
        return {"phase": self._phase, "acked": str(self._acked) if self._acked else None}

    def ack(self, position: Position) -> None:
        self._acked = position

    def close(self) -> None:
        self._closed.set()

    def read(self, start: Position | None) -> Iterator[Batch]:
        import pyarrow as pa

        from zetl.arrow import arrow_schema

        if not self.context.tables.matches(self.table):
            return
        schema = _schema(self.table)
        if start is not None and not isinstance(start, SequencePosition):
            raise ValueError(f"memory source cannot resume from a {start.kind} position")
        first = True
        if start is None or start.phase == "snapshot":
            self._phase = "snapshot"
            done = start.offset if start is not None else 0
            arrow = arrow_schema(schema)
            total = self.config.snapshot_rows
            while done < total and not self._closed.is_set():
                upto = min(total, done + self.config.chunk_rows)
                rows = [_row(i, 0) for i in range(done + 1, upto + 1)]
                chunk = pa.Table.from_pylist(rows, schema=arrow)
                end = SequencePosition("snapshot", upto) if upto < total else SequencePosition("stream", 0)
                yield Batch(
                    chunks=(RowChunk(self.table, Op.READ, chunk, end),),
                    schema_changes=(CreateTable(self.table, schema),) if first else (),
                    end_position=end,
                )
                first = False
                done = upto
                self.context.progress(self.table, done, total)
            if total == 0:
                yield Batch(schema_changes=(CreateTable(self.table, schema),), end_position=SequencePosition("stream", 0))
                first = False
            start = SequencePosition("stream", 0)
        self._phase = "stream"
        batch: list[ChangeEvent] = []
        key = f"{self.context.integration}:{self.config.table}"
        for event in _stream(self.config, self.table):
            assert isinstance(event.position, SequencePosition)
            if event.position.offset <= start.offset:
                continue
            if self._closed.is_set():
                return
            if self.config.fail_once_after is not None and event.position.offset > self.config.fail_once_after and key not in _FAILED_ONCE:
                _FAILED_ONCE.add(key)
                raise SourceConnectionError("simulated connection loss (fail_once_after)")
            batch.append(event)
            if len(batch) >= self.config.events_per_batch:
                yield Batch(events=tuple(batch), end_position=event.position, schema_changes=(CreateTable(self.table, schema),) if first else ())
                first = False
                batch = []
                if self.config.interval:
                    self._closed.wait(self.config.interval)
        if batch:
            yield Batch(events=tuple(batch), end_position=batch[-1].position, schema_changes=(CreateTable(self.table, schema),) if first else ())
        while self.config.follow and not self._closed.is_set():
            self._closed.wait(0.2)
            yield Batch()


class ListSource(Source[SourceConfig]):
    """A source over batches given in Python; ``read(start)`` skips batches up to ``start``."""

    name = "list"
    config_class = SourceConfig

    def __init__(self, schemas: list[Schema], batches: list[Batch], context: Any = None) -> None:
        super().__init__(SourceConfig(), context)
        self.schemas = schemas
        self.batches = batches

    def discover(self) -> list[Schema]:
        return list(self.schemas)

    def read(self, start: Position | None) -> Iterator[Batch]:
        for b in self.batches:
            if start is not None and b.end_position is not None and b.end_position <= start:
                continue
            yield b


class _MemoryConfig(SinkConfig):
    pass


class _TableStore:
    """Rows of one table keyed by primary key, in source terms."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.rows: dict[tuple[Any, ...], dict[str, Any]] = {}

    @property
    def schema(self) -> Schema:
        return self._schema

    @schema.setter
    def schema(self, schema: Schema) -> None:
        self._schema = schema
        self.json_columns = frozenset(f.name for f in schema.fields if f.type.kind is TypeKind.JSON)

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        pk = self.schema.primary_key or self.schema.names
        return tuple(row.get(c) for c in pk)

    def apply(self, event: ChangeEvent) -> None:
        if event.op is Op.TRUNCATE:
            self.rows.clear()
        elif event.op is Op.DELETE:
            self.rows.pop(self.key(event.before or {}), None)
        else:
            after = dict(event.after or {})
            key = self.key(after)
            old = self.rows.get(key, {})
            row = {f.name: None for f in self.schema.fields}
            for name, value in after.items():
                # json is kept as text (JsonText), as a sink stores it, whatever form it came in
                row[name] = old.get(name) if value is UNCHANGED else as_json_text(value) if name in self.json_columns else value
            if event.op is Op.UPDATE and event.before is not None:
                old_key = self.key(event.before)
                if old_key != key:
                    self.rows.pop(old_key, None)
            self.rows[key] = row


_ALL_KINDS = frozenset(CHANGE_KINDS)


class MemorySink(Sink[_MemoryConfig]):
    """Tables in process memory (type ``memory``). ``MemorySink.instances`` holds every sink made,
    so a test can inspect what a daemon run in the same process wrote."""

    name = "memory"
    config_class = _MemoryConfig
    capabilities = SinkCapabilities(schema_changes=_ALL_KINDS, nested_types=True)
    instances: list[MemorySink] = []

    def __init__(self, config: _MemoryConfig | None = None, context: Any = None) -> None:
        super().__init__(config or _MemoryConfig(), context)
        self.tables: dict[TableId, _TableStore] = {}
        self.applied: list[SchemaChange] = []
        self.batches: list[Batch] = []
        MemorySink.instances.append(self)

    def current_schema(self, table: TableId) -> Schema | None:
        store = self.tables.get(table)
        return store.schema if store else None

    def managed_tables(self) -> list[TableId] | None:
        """Every table this sink holds (all were created through ``apply``), sorted."""
        return sorted(self.tables)

    def apply(self, change: SchemaChange) -> None:
        self.applied.append(change)
        store = self.tables.get(change.table)
        new = apply_change(store.schema if store else None, change)
        if new is None:
            self.tables.pop(change.table, None)
            return
        if store is None:
            self.tables[change.table] = _TableStore(new)
            return
        if isinstance(change, RenameColumn):
            for row in store.rows.values():
                row[change.new_name] = row.pop(change.old_name, None)
        elif isinstance(change, DropColumn):
            for row in store.rows.values():
                row.pop(change.column, None)
        elif isinstance(change, AddColumn):
            for row in store.rows.values():
                row.setdefault(change.field.name, None)
        store.schema = new

    def write(self, batch: Batch) -> Position | None:
        self.batches.append(batch)
        for event in batch.iter_events():
            store = self.tables.get(event.table)
            if store is None:
                raise SinkError(f"table {event.table} does not exist in the memory sink; was CreateTable applied?")
            store.apply(event)
        return batch.end_position

    def rows(self, table: TableId | str) -> list[dict[str, Any]]:
        table = TableId.parse(table) if isinstance(table, str) else table
        store = self.tables.get(table)
        return [dict(r) for r in store.rows.values()] if store else []


class FileSinkConfig(SinkConfig):
    path: str
    """The SQLite file holding the tables (relative to the YAML file)."""
    fail_after_writes: int | None = None
    """Raise a fatal error on this write (1-based), for tests of checkpoint ordering."""
    write_delay: Duration = 0.0
    """Sleep this long in every write (simulates a slow sink)."""


def _encode(value: Any) -> Any:
    return orjson.dumps(value, default=str).decode()


class FileSink(Sink[FileSinkConfig]):
    """Tables in a SQLite file (type ``file``); see the module docstring.

    Idempotent: rows are upserted by primary key, and the event log is keyed by (table, source
    position, primary key), so writing a batch twice leaves both unchanged. Every write is one SQLite transaction.
    """

    name = "file"
    config_class = FileSinkConfig
    capabilities = SinkCapabilities(schema_changes=frozenset({CreateTable.kind, AddColumn.kind, AlterColumnType.kind, MakeColumnNullable.kind}))

    def __init__(self, config: FileSinkConfig, context: Any = None) -> None:
        super().__init__(config, context)
        path = Path(config.path)
        if not path.is_absolute() and self.context.config_file is not None:
            path = self.context.config_file.parent / path
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.writes = 0

    def open(self) -> None:
        if self.context.read_only:
            # inspection (zetl drift) changes nothing: an existing file read-only, else an empty target
            if self.path.exists():
                self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=30)
                return
            self.conn = sqlite3.connect(":memory:", isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS schemas (tbl TEXT PRIMARY KEY, schema TEXT NOT NULL)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS rows (tbl TEXT, pk TEXT, row TEXT NOT NULL, PRIMARY KEY (tbl, pk))")
        # One log row per (table, position, key): snapshot rows are logged under "snapshot".
        self.conn.execute("CREATE TABLE IF NOT EXISTS log (tbl TEXT, position TEXT, op TEXT, pk TEXT, PRIMARY KEY (tbl, position, pk))")

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise SinkError("file sink used before open()")
        return self.conn

    def current_schema(self, table: TableId) -> Schema | None:
        row = self._db().execute("SELECT schema FROM schemas WHERE tbl = ?", (str(table),)).fetchone()
        if row is None:
            return None
        data = orjson.loads(row[0])
        fields = [Field(f["name"], DataType.parse(f["type"]), f["nullable"]) for f in data["fields"]]
        return Schema.of(table, fields, data["primary_key"])

    def managed_tables(self) -> list[TableId] | None:
        """Every table whose schema the file holds, sorted."""
        return sorted(TableId.parse(row[0]) for row in self._db().execute("SELECT tbl FROM schemas"))

    def _save_schema(self, schema: Schema) -> None:
        data = {"fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema.fields], "primary_key": list(schema.primary_key)}
        self._db().execute(
            "INSERT INTO schemas (tbl, schema) VALUES (?, ?) ON CONFLICT (tbl) DO UPDATE SET schema = excluded.schema",
            (str(schema.table), orjson.dumps(data).decode()),
        )

    def apply(self, change: SchemaChange) -> None:
        if not self.can_apply(change):
            raise SinkError(f"the file sink cannot apply {change}")
        new = apply_change(self.current_schema(change.table), change)
        if new is not None:
            self._save_schema(new)

    def write(self, batch: Batch) -> Position | None:
        self.writes += 1
        if self.config.fail_after_writes is not None and self.writes >= self.config.fail_after_writes:
            raise SinkError(f"simulated failure on write {self.writes}")
        if self.config.write_delay:
            time.sleep(self.config.write_delay)
        db = self._db()
        schemas: dict[TableId, Schema | None] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for event in batch.iter_events():
                schema = schemas.get(event.table) or self.current_schema(event.table)
                if schema is None:
                    raise SinkError(f"table {event.table} does not exist in the file sink")
                schemas[event.table] = schema
                pk_cols = schema.primary_key or schema.names
                row = event.row or {}
                pk = _encode([row.get(c) for c in pk_cols]) if event.op is not Op.TRUNCATE else ""
                if event.op is Op.READ:
                    position = "snapshot"
                else:
                    position = _encode(event.position.to_json()) if event.position is not None else ""
                db.execute("INSERT OR IGNORE INTO log (tbl, position, op, pk) VALUES (?, ?, ?, ?)", (str(event.table), position, event.op.name, pk))
                if event.op is Op.TRUNCATE:
                    db.execute("DELETE FROM rows WHERE tbl = ?", (str(event.table),))
                elif event.op is Op.DELETE:
                    db.execute("DELETE FROM rows WHERE tbl = ? AND pk = ?", (str(event.table), pk))
                else:
                    after = dict(event.after or {})
                    for f in schema.fields:  # json is stored as its text (a JSON string in the row)
                        if f.type.kind is TypeKind.JSON and f.name in after and after[f.name] is not UNCHANGED:
                            after[f.name] = as_json_text(after[f.name])
                    if any(v is UNCHANGED for v in after.values()):
                        old = db.execute("SELECT row FROM rows WHERE tbl = ? AND pk = ?", (str(event.table), pk)).fetchone()
                        previous = orjson.loads(old[0]) if old else {}
                        after = {k: previous.get(k) if v is UNCHANGED else v for k, v in after.items()}
                    db.execute(
                        "INSERT INTO rows (tbl, pk, row) VALUES (?, ?, ?) ON CONFLICT (tbl, pk) DO UPDATE SET row = excluded.row",
                        (str(event.table), pk, _encode(after)),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return batch.end_position

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- reading back, for tests ------------------------------------------------------------
    @staticmethod
    def read_rows(path: str | Path, table: TableId | str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT row FROM rows WHERE tbl = ?", (str(table),)).fetchall()
            return [orjson.loads(r[0]) for r in rows]
        finally:
            conn.close()

    @staticmethod
    def read_log(path: str | Path, table: TableId | str) -> list[tuple[str, str, str]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT position, op, pk FROM log WHERE tbl = ? ORDER BY rowid", (str(table),)).fetchall()
        finally:
            conn.close()

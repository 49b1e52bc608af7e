"""The Postgres source: a consistent snapshot, then the pgoutput change stream of a logical slot."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

from zetl.errors import NeedsAttentionError, SourceConnectionError, SourceError
from zetl.events import Batch, Op, Position, RowChunk, TableId
from zetl.schema.changes import CreateTable
from zetl.schema.types import Schema
from zetl.source import Source

from .catalog import Catalog, TableInfo, connect, driver_error
from .config import PostgresConfig, default_slot_name
from .position import PostgresPosition, format_lsn
from .snapshot import ChunkReader
from .stream import ReplicationStream

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresSource"]


class PostgresSource(Source[PostgresConfig]):
    """Replicates the selected tables of one Postgres database.

    Snapshot consistency: for ``snapshot: initial`` the slot is created with an exported snapshot
    and the tables are read in that snapshot, so the stream starts exactly where the copy ends.

    Resuming a snapshot after a crash: the exported snapshot died with its connection, but the
    slot did not, and it has not advanced (nothing is confirmed during the snapshot). The
    remaining chunks are read in a new snapshot taken now, and streaming then starts at the
    slot's consistent point, so every change made since the original snapshot is replayed on top
    of the rows read. Rows changed in between are thus read (newer) and then replayed in commit
    order, ending in the current state: no gap; the overlap is absorbed because sinks apply rows
    by primary key (upsert/delete are idempotent).

    Streaming positions are commit LSNs; a restart skips transactions at or below the checkpoint.
    """

    name: ClassVar[str] = "postgres"
    config_class: ClassVar[type[PostgresConfig]] = PostgresConfig
    requires: ClassVar[tuple[str, ...]] = ("psycopg",)
    extra: ClassVar[str | None] = "postgres"

    def __init__(self, config: PostgresConfig, context: Any = None) -> None:
        super().__init__(config, context)
        self.slot_name = config.slot_name or default_slot_name(self.context.integration)
        self.publication_name = config.publication_name or self.slot_name
        self.log = self.context.logger
        self._conn: psycopg.Connection[Any] | None = None
        self._snapshot_conn: psycopg.Connection[Any] | None = None
        self._catalog: Catalog | None = None
        self._tables: list[TableInfo] = []
        self._stream: ReplicationStream | None = None
        self._closed = threading.Event()
        self._catalog_lock = threading.Lock()  # the catalog connection: reader thread vs close()
        self._phase = "starting"
        self._progress: dict[str, dict[str, Any]] = {}
        self._lag_bytes: int | None = None
        self._last_heartbeat = 0.0
        self._heartbeats = 0
        self._position: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def _replicates(self) -> bool:
        return self.config.snapshot != "initial_only"

    def open(self) -> None:
        self._closed.clear()
        self._conn = connect(self.config, application=f"zetl:{self.context.integration}")
        self._catalog = Catalog(self._conn, self.config)
        self._catalog.check_server(need_replication=self._replicates)
        self._tables = self._catalog.tables(self.context.tables)
        if not self._tables:
            raise SourceError(
                f"no table of database {self.config.database!r} is selected: check the integration's `tables:` patterns "
                "(they match schema.table, e.g. public.orders or public.*)",
                retryable=False,
            )
        if self._replicates:
            self._catalog.check_identities(self._tables)
            if not self.context.read_only:  # inspection (zetl drift) creates nothing
                self._catalog.ensure_publication(self.publication_name, self._tables)

    def discover(self) -> list[Schema]:
        return [t.schema for t in self._tables]

    def close(self) -> None:
        """Stop reading and release connections; safe from another thread than ``read``.

        The snapshot connection may be in use by the chunk prefetch thread: its query is
        cancelled here and the snapshot generator closes the connection itself.
        """
        self._closed.set()
        if self._stream is not None:
            self._stream.close()
        snapshot = self._snapshot_conn
        if snapshot is not None:
            try:
                snapshot.cancel_safe(timeout=2)
            except Exception:  # best effort: the connection may already be gone
                pass
        acquired = self._catalog_lock.acquire(timeout=5)
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        finally:
            if acquired:
                self._catalog_lock.release()

    # -- reading ---------------------------------------------------------------------------
    def read(self, start: Position | None) -> Iterator[Batch]:
        if self._catalog is None:
            raise SourceError("PostgresSource.read called before open()", retryable=False)
        if start is not None and not isinstance(start, PostgresPosition):
            raise SourceError(f"the checkpoint {start} is not a Postgres position (kind {start.kind!r}); was the source type changed?", retryable=False)
        if self.config.snapshot == "initial_only":
            yield from self._initial_only(start)
            return
        announced: set[TableId] = set()
        catalog = self._catalog
        if start is None:
            existing = catalog.slot(self.slot_name)
            if existing is not None:
                if existing["active"]:
                    raise SourceConnectionError(f"replication slot {self.slot_name!r} is in use by server process {existing['active_pid']}; retrying")
                if self.config.snapshot == "never" and existing["confirmed_flush_lsn"]:
                    self.log.info("reusing replication slot %s", self.slot_name)
                    yield from self._stream_from(None, announced)
                    return
                self.log.warning("dropping replication slot %s left by an earlier run that never checkpointed; starting over", self.slot_name)
                catalog.drop_slot(self.slot_name)
            stream = self._open_stream()
            if self.config.snapshot == "never":
                lsn, _ = stream.create_slot(export_snapshot=False)
                yield Batch(end_position=PostgresPosition.stream(lsn))
                yield from self._stream_from(lsn, announced)
                return
            lsn, snapshot_name = stream.create_slot(export_snapshot=True)
            yield from self._snapshot(PostgresPosition("snapshot", lsn), snapshot_name, announced)
            yield from self._stream_from(lsn, announced)
            return
        slot = catalog.slot(self.slot_name)
        if slot is None or slot["wal_status"] == "lost":
            what = "no longer exists" if slot is None else "has lost WAL it needed (max_slot_wal_keep_size was exceeded)"
            raise NeedsAttentionError(
                f"replication slot {self.slot_name!r} {what}, so the changes since {start} cannot be read. "
                f"To copy the tables again, drop the slot if it is still there, delete this integration's checkpoint "
                f"(zetl reset {self.context.integration}) and restart; set `slot_name` if the slot was renamed."
            )
        if start.in_snapshot:
            self.log.info("resuming the snapshot at %s with a new transaction snapshot; the stream then replays from %s", start, format_lsn(start.lsn))
            yield from self._snapshot(start, None, announced)
        yield from self._stream_from(start.lsn, announced)

    def _open_stream(self) -> ReplicationStream:
        assert self._catalog is not None
        if self._stream is not None:
            self._stream.close()
        conn = connect(self.config, replication=True, application=f"zetl:{self.context.integration}")
        self._stream = ReplicationStream(
            conn,
            self.config,
            self.slot_name,
            self.publication_name,
            self.context.tables,
            {t.table: t.schema for t in self._tables},
            self._catalog.data_type,
            self.log,
            spill_dir=self.context.state_dir,
        )
        return self._stream

    def _stream_from(self, lsn: int | None, announced: set[TableId]) -> Iterator[Batch]:
        """Stream changes after ``lsn`` (None: from the slot's confirmed position)."""
        stream = self._stream if self._stream is not None and not self._stream.closed else self._open_stream()
        assert self._catalog is not None
        start = lsn or 0
        self._wait_for_slot_release()
        stream.start(start)
        self._phase = "stream"
        for batch in stream.batches(start, announced, self._closed.is_set):
            if batch.end_position is not None:
                self._position = str(batch.end_position)
            yield batch
            self._maintenance()

    def _wait_for_slot_release(self, timeout: float = 10.0) -> None:
        """A restart can come before the server has noticed that the previous connection is gone."""
        assert self._catalog is not None
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            info = self._catalog.slot(self.slot_name)
            if info is None or not info["active"]:
                return
            if time.monotonic() > deadline:
                raise SourceConnectionError(f"replication slot {self.slot_name!r} is still in use by server process {info['active_pid']}")
            time.sleep(0.1)

    def _maintenance(self) -> None:
        """Heartbeat and slot lag, at most every ``heartbeat_interval`` (lag every 5 s)."""
        now = time.monotonic()
        interval = self.config.heartbeat_interval
        due = interval > 0 and now - self._last_heartbeat >= interval
        if not due and now - self._last_heartbeat < 5.0:
            return
        self._last_heartbeat = now
        assert self._catalog is not None
        try:
            with self._catalog_lock:
                if self._closed.is_set():
                    return
                if due:
                    self._catalog.emit_heartbeat()
                    self._heartbeats += 1
                self._lag_bytes = self._catalog.slot_lag_bytes(self.slot_name)
        except SourceError as exc:
            if self._closed.is_set():
                return
            if not exc.retryable:
                raise
            raise SourceConnectionError(f"lost the Postgres connection used for heartbeats: {exc.message}") from None

    # -- snapshot --------------------------------------------------------------------------
    def _begin_table(self, snapshot_name: str | None) -> "psycopg.Connection[Any]":
        """A REPEATABLE READ transaction for one table, in the exported snapshot when there is one.

        One transaction per table: the table's ACCESS SHARE lock is released as soon as it is
        copied, so DDL on copied tables does not wait for the whole snapshot. The exported
        snapshot stays importable while the replication connection that made it stays idle.
        """
        from psycopg import Error, sql

        conn = self._snapshot_conn
        if conn is None or conn.closed:
            conn = connect(self.config, application=f"zetl:{self.context.integration}:snapshot")
            self._snapshot_conn = conn
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot_name:
                # SET TRANSACTION SNAPSHOT takes no bind parameter; the id is an escaped literal
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_name)))
        except Error as exc:
            raise driver_error(exc, "starting the snapshot transaction", self.config) from None
        return conn

    def _snapshot(self, start: PostgresPosition, snapshot_name: str | None, announced: set[TableId]) -> Iterator[Batch]:
        """Read every selected table not done in ``start``, chunk by chunk, as READ row chunks."""
        from psycopg import Error

        self._phase = "snapshot"
        try:
            yield from self._snapshot_tables(start, snapshot_name, announced)
        finally:
            conn, self._snapshot_conn = self._snapshot_conn, None
            if conn is not None:
                try:
                    conn.close()
                except Error:
                    pass

    def _snapshot_tables(self, start: PostgresPosition, snapshot_name: str | None, announced: set[TableId]) -> Iterator[Batch]:
        from psycopg import Error

        done = list(start.tables_done)
        step = start.step
        for info in self._tables:
            name = str(info.table)
            if name in done:
                self._progress[name] = {"done": info.estimated_rows, "total": info.estimated_rows, "finished": True}
                continue
            after = start.last_key if start.table == name else None
            conn = self._begin_table(snapshot_name)
            reader = ChunkReader(conn, info.schema, self.config.snapshot_chunk_rows)
            rows = 0
            total = info.estimated_rows or None
            lead: tuple[Any, ...] = () if info.table in announced else (CreateTable(info.table, info.schema),)
            announced.add(info.table)
            self.context.progress(info.table, 0, total)
            try:
                for arrow_rows, last_key in reader.chunks(after):
                    if self._closed.is_set():
                        return
                    step += 1
                    rows += arrow_rows.num_rows
                    position = PostgresPosition("snapshot", start.lsn, tables_done=tuple(done), table=name, last_key=last_key, step=step)
                    self._progress[name] = {"done": rows, "total": total}
                    self.context.progress(info.table, rows, max(total or 0, rows) or None)
                    yield Batch(schema_changes=lead, chunks=(RowChunk(info.table, Op.READ, arrow_rows, position),), end_position=position)
                    lead = ()
                conn.execute("COMMIT")
            except Error as exc:
                raise driver_error(exc, f"reading table {name} for the snapshot", self.config) from None
            done.append(name)
            step += 1
            self._progress[name] = {"done": rows, "total": rows, "finished": True}
            self.context.progress(info.table, rows, rows)
            yield Batch(schema_changes=lead, end_position=PostgresPosition("snapshot", start.lsn, tables_done=tuple(done), step=step))

    def _initial_only(self, start: PostgresPosition | None) -> Iterator[Batch]:
        """Copy the tables once, without a slot; a resumed copy continues in a new snapshot."""
        if start is not None and not start.in_snapshot:
            return
        begin = start or PostgresPosition("snapshot", 0)
        if len(begin.tables_done) == len(self._tables) and begin.table is None and start is not None:
            return
        yield from self._snapshot(begin, None, set())
        self._phase = "done"

    # -- acknowledgements and status -------------------------------------------------------
    def ack(self, position: Position) -> None:
        if isinstance(position, PostgresPosition) and not position.in_snapshot and self._stream is not None:
            self._stream.ack(position.lsn)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = {"phase": self._phase, "slot": self.slot_name, "publication": self.publication_name}
        if self._heartbeats:
            data["heartbeats"] = self._heartbeats
        if self._lag_bytes is not None:
            data["slot_lag_bytes"] = self._lag_bytes
        if self._progress:
            data["snapshot"] = {k: dict(v) for k, v in self._progress.items()}
        if self._position is not None:
            data["position"] = self._position
        return data

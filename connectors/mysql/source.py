"""``MySQLSource``: consistent snapshot + binlog streaming for MySQL 8 and MariaDB >= 10.5."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from zetl_connectors.mysql.catalog import read_schemas
from zetl_connectors.mysql.config import MySQLConfig, default_server_id
from zetl_connectors.mysql.connection import (
    connect,
    connection_settings,
    map_error,
    pymysql,
)
from zetl_connectors.mysql.history import SchemaHistoryFile
from zetl_connectors.mysql.position import MySQLPosition, SnapshotProgress, binlog_index
from zetl_connectors.mysql.prefetch import prefetching_connection_class
from zetl_connectors.mysql.preflight import ServerInfo, check_settings, server_info
from zetl_connectors.mysql.rowdecode import RowDecoder
from zetl_connectors.mysql.snapshot import (
    begin_consistent_snapshot,
    current_position,
    estimate_rows,
    read_table,
)
from zetl_connectors.mysql.stream import BinlogAssembler

from zetl.errors import (
    NeedsAttentionError,
    SourceConnectionError,
    SourceError,
    ZetlError,
)
from zetl.events import Batch, Op, Position, RowChunk, TableId
from zetl.plugin import PluginContext, require
from zetl.schema.changes import CreateTable
from zetl.schema.types import Schema
from zetl.source import Source

__all__ = ["MySQLSource"]

# Server errors of a binlog dump that mean "the position asked for is gone".
_PURGED_CODES = frozenset({1236})


class _BinlogGone(NeedsAttentionError):
    """The server no longer has the binlog of the position asked for."""


class MySQLSource(Source[MySQLConfig]):
    """Reads a MySQL 8 / MariaDB server: a consistent snapshot of the selected tables, then the
    binlog (ROW format, full images, full metadata).

    Guarantees: see ``Source.read``; in addition positions are ``MySQLPosition`` (binlog
    coordinate + GTID state), and a resumed read starts at the first transaction after the
    checkpoint (by GTID where the server has one, else by file and offset).
    """

    name: ClassVar[str] = "mysql"
    config_class: ClassVar[type[MySQLConfig]] = MySQLConfig
    requires: ClassVar[tuple[str, ...]] = ("pymysql", "pymysqlreplication", "sqlglot")
    extra: ClassVar[str | None] = "mysql"

    def __init__(self, config: MySQLConfig, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        self.log = self.context.logger
        self._conn: Any = None
        self._info: ServerInfo | None = None
        self._closed = threading.Event()
        self._reading = threading.Lock()
        self._phase = "idle"
        self._snapshot_tables: dict[str, dict[str, Any]] = {}
        self._last_position: MySQLPosition | None = None
        self._acked: Position | None = None
        self._assembler: BinlogAssembler | None = None
        self._stream: Any = None
        self._driver: Any = None
        self._announced: set[TableId] = set()
        self._generator: Any = None
        self._fast_rows = True  # tests turn it off to compare with the library's own decoding
        self._cache_table_maps = True  # the bench turns it off to measure what the cache saves
        self._prefetch = True  # read the binlog socket ahead in a thread (tests and the bench compare)

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def server_id(self) -> int:
        return self.config.server_id or default_server_id(self.context.integration)

    @property
    def mariadb(self) -> bool:
        if self.config.flavor != "auto":
            return self.config.flavor == "mariadb"
        assert self._info is not None, "open() first"
        return self._info.mariadb

    def open(self) -> None:
        self._driver = pymysql()
        require("pymysqlreplication", extra="mysql", what="the MySQL source (mysql-replication)")
        self._closed.clear()
        self._conn = connect(self.config, "connecting")
        try:
            self._info = server_info(self._conn)
        except pymysql().err.MySQLError as exc:
            raise map_error(exc, self.config, "reading server settings") from exc
        problems = check_settings(self._info, self.config.min_binlog_retention)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            if getattr(self.context, "read_only", False):
                # inspection only reads schemas: say what change capture would need, and go on
                self.log.warning("MySQL %s:%d is not ready for change capture:\n%s", self.config.host, self.config.port, lines)
                return
            raise SourceError(
                f"MySQL {self.config.host}:{self.config.port} is not ready for change capture:\n{lines}", retryable=False
            )

    def close(self) -> None:
        self._closed.set()
        gen = self._generator
        if gen is not None:
            try:
                gen.close()  # a suspended read(): its cleanup runs now, here
            except ValueError:
                pass  # read() is running in another thread: it sees the flag within a heartbeat and cleans up
        if self._reading.acquire(blocking=False):
            try:
                self._close_connections()
            finally:
                self._reading.release()

    def _close_connections(self) -> None:
        for attr in ("_stream", "_conn"):
            obj = getattr(self, attr)
            setattr(self, attr, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception as exc:  # closing a broken connection: nothing left to release
                    self.log.debug("closing %s: %s", attr, exc)

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # a broken binlog connection: nothing left to release
                self.log.debug("closing the binlog stream: %s", exc)

    def _ctl(self) -> Any:
        if self._conn is None or not self._conn.open:
            self._conn = connect(self.config, "reconnecting")
        return self._conn

    # -- schemas --------------------------------------------------------------------------
    def discover(self) -> list[Schema]:
        try:
            return read_schemas(self._ctl(), self.context.tables, mariadb=self.mariadb)
        except pymysql().err.MySQLError as exc:
            raise map_error(exc, self.config, "reading information_schema") from exc

    def _reread(self, table: TableId) -> Schema | None:
        conn = connect(self.config, f"re-reading the schema of {table}")
        try:
            found = read_schemas(conn, self.context.tables, mariadb=self.mariadb, only=[table])
        finally:
            conn.close()
        return found[0] if found else None

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self._phase, "server_id": self.server_id}
        if self._info is not None:
            out["server"] = self._info.version
        if self._last_position is not None:
            out["position"] = str(self._last_position)
        if self._acked is not None:
            out["acked"] = str(self._acked)
        if self._snapshot_tables:
            out["snapshot"] = dict(self._snapshot_tables)
        a = self._assembler
        if a is not None and a.last_event_ts is not None:
            out["lag_seconds"] = max(0.0, time.time() - a.last_event_ts)
        return out

    def ack(self, position: Position) -> None:
        self._acked = position

    # -- reading --------------------------------------------------------------------------
    def read(self, start: Position | None) -> Iterator[Batch]:
        if start is not None and not isinstance(start, MySQLPosition):
            raise SourceError(f"the checkpoint is a {start.kind!r} position, not a MySQL one; reset the integration's checkpoint", retryable=False)
        self._generator = self._guarded_read(start)
        return self._generator

    def _guarded_read(self, start: MySQLPosition | None) -> Iterator[Batch]:
        with self._reading:
            try:
                yield from self._read(start)
            except ZetlError:
                raise
            except Exception as exc:
                driver = self._driver
                if driver is not None and isinstance(exc, driver.err.MySQLError):
                    raise map_error(exc, self.config, f"reading ({self._phase})") from exc
                raise
            finally:
                self._close_connections()

    def _read(self, start: MySQLPosition | None) -> Iterator[Batch]:
        mode = self.config.snapshot
        if mode == "initial_only" and start is not None and not start.in_snapshot:
            self._phase = "done"
            self.log.info("snapshot: initial_only and the snapshot is done; nothing to read")
            return
        if start is None and mode == "never":
            start = current_position(self._ctl(), self.mariadb)
            self.log.info("snapshot: never; streaming from %s", start)
        self._check_same_server(start)
        if start is not None and not start.in_snapshot and self._purged(start):
            if mode != "when_needed":
                raise _BinlogGone(self._purged_message(start))
            self.log.warning("%s; snapshot: when_needed, so the tables are copied again", self._purged_message(start))
            start = None
        if start is None or start.in_snapshot:
            end = None
            for batch in self._snapshot(start):
                end = batch.end_position
                yield batch
            if self._closed.is_set() or end is None:
                return
            if mode == "initial_only":
                self._phase = "done"
                return
            assert isinstance(end, MySQLPosition)
            start = end
        try:
            yield from self._streaming(start)
        except _BinlogGone as exc:
            if mode != "when_needed" or self._closed.is_set():
                raise
            self.log.warning("%s; snapshot: when_needed, so the tables are copied again", exc.message)
            self._close_stream()
            end = None
            for batch in self._snapshot(None):
                end = batch.end_position
                yield batch
            if isinstance(end, MySQLPosition) and not self._closed.is_set():
                yield from self._streaming(end)

    # -- snapshot -------------------------------------------------------------------------
    def _snapshot(self, start: MySQLPosition | None) -> Iterator[Batch]:
        self._phase = "snapshot"
        conn = self._ctl()
        begun = begin_consistent_snapshot(
            conn, self.mariadb, self.log, selector=self.context.tables,
            lock_connection=lambda: connect(self.config, "locking the selected tables while the snapshot starts"),
        )
        base = start if start is not None else begun
        progress = start.snapshot if start is not None and start.snapshot is not None else SnapshotProgress()
        schemas = read_schemas(conn, self.context.tables, mariadb=self.mariadb)
        self._history().record(base.streaming(), {s.table: s for s in schemas}, complete=True)
        self._announced = {s.table for s in schemas}
        done = list(progress.done)
        rows_total = progress.rows
        for schema in schemas:
            table = schema.table
            if str(table) in done:
                continue
            after = progress.after if progress.table == str(table) else None
            estimate = estimate_rows(conn, table)
            table_rows = 0
            first = True
            self.context.progress(table, 0, estimate)
            for chunk in read_table(conn, schema, after, self.config.snapshot_chunk_rows, self._closed.is_set, lambda column: self.context.columns.reads(schema.table, column)):
                rows_total += chunk.count
                table_rows += chunk.count
                pos = MySQLPosition(base.file, base.pos, base.gtid, SnapshotProgress(tuple(done), str(table), chunk.last_key, rows_total))
                self._last_position = pos
                yield Batch(
                    schema_changes=(CreateTable(table, schema),) if first else (),
                    chunks=(RowChunk(table, Op.READ, chunk.rows, pos),),
                    end_position=pos,
                )
                first = False
                self._snapshot_tables[str(table)] = {"done": table_rows, "total": estimate}
                self.context.progress(table, table_rows, estimate)
            if self._closed.is_set():
                return
            done.append(str(table))
            pos = MySQLPosition(base.file, base.pos, base.gtid, SnapshotProgress(tuple(done), None, None, rows_total))
            self._last_position = pos
            yield Batch(schema_changes=(CreateTable(table, schema),) if first else (), end_position=pos)
            self._snapshot_tables[str(table)] = {"done": table_rows, "total": table_rows}
            self.context.progress(table, table_rows, table_rows)
        with conn.cursor() as cur:
            cur.execute("COMMIT")
        final = base.streaming()
        self._last_position = final
        self.log.info("snapshot done: %d rows of %d tables; streaming from %s", rows_total, len(schemas), final)
        yield Batch(end_position=final)

    # -- streaming ------------------------------------------------------------------------
    def _history(self) -> SchemaHistoryFile:
        return SchemaHistoryFile(self.context.state_dir / "mysql-schema-history.jsonl", self.log)

    def _server_record_path(self) -> Path:
        return self.context.state_dir / "mysql-server.json"

    def local_state_files(self) -> list[Path]:
        """The schema history (DDL is replayed against it) and the record of the server the
        checkpoint was taken on."""
        return [p for p in (self._history().path, self._server_record_path()) if p.exists()]

    def _check_same_server(self, start: MySQLPosition | None) -> None:
        """Refuse a checkpoint that cannot be of this server; record the server otherwise.

        A binlog coordinate means something only on the server that wrote it: a state copied
        from elsewhere, a server replaced under the same address or rebuilt from a backup would
        otherwise resume at an unrelated place and silently skip or repeat changes. Checked:
        the server's ``server_uuid`` (MySQL; MariaDB has none) against the one recorded with
        the checkpoint, and the coordinate against the binlogs the server has (a file newer
        than its newest, or an offset past a file's end, was written by another server).
        """
        from zetl.durable import read_json, write_json

        with self._ctl().cursor() as cur:
            uuid: str | None = None
            if not self.mariadb:
                cur.execute("SELECT @@global.server_uuid")
                uuid = str(cur.fetchone()[0])
            cur.execute("SHOW BINARY LOGS")
            logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        path = self._server_record_path()
        where = f"MySQL {self.config.host}:{self.config.port}"
        advice = (
            f"If the server was replaced or restored on purpose, copy the tables again with 'zetl reset {self.context.integration}'; "
            "otherwise check the connection settings (host, port) and which state file this integration uses (zetl status shows it)."
        )
        try:
            recorded = read_json(path) if start is not None else None
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read {path}: {exc}; restore it or run 'zetl reset {self.context.integration}'", retryable=False) from None
        if start is not None:
            if recorded is not None and uuid is not None and recorded.get("server_uuid") not in (None, uuid):
                raise NeedsAttentionError(
                    f"this integration's checkpoint ({start}) was taken on the server with server_uuid {recorded['server_uuid']}, "
                    f"but {where} is server_uuid {uuid}: the binlog coordinate means nothing here. {advice}"
                )
            if logs:
                sizes = dict(logs)
                newest = logs[-1][0]
                try:
                    ahead = binlog_index(start.file) > binlog_index(newest)
                except ValueError:
                    ahead = False
                if ahead or (start.file in sizes and start.pos > sizes[start.file]):
                    what = f"after the newest binlog {newest}" if ahead else f"past the end of {start.file} ({sizes[start.file]} bytes)"
                    raise NeedsAttentionError(
                        f"this integration's checkpoint ({start}) is {what} on {where}: it was taken on another server "
                        f"(or this one lost binlogs it had written). {advice}"
                    )
            if recorded is not None:
                return
        try:
            write_json(path, {"server_uuid": uuid, "host": self.config.host, "port": self.config.port})
        except OSError as exc:
            raise SourceError(f"cannot write {path}: {exc}", retryable=True) from None

    def _purged(self, position: MySQLPosition) -> bool:
        with self._ctl().cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            files = [str(r[0]) for r in cur.fetchall()]
        self._binlogs = files
        return position.file not in files

    def _purged_message(self, position: MySQLPosition) -> str:
        oldest = self._binlogs[0] if getattr(self, "_binlogs", None) else "none"
        return (
            f"the checkpoint's binlog position {position} is no longer on MySQL {self.config.host}:{self.config.port}"
            f" (oldest binlog kept: {oldest}); changes since then are lost to this integration. Run `zetl reset"
            f" {self.context.integration}` to copy the tables again (or set snapshot: when_needed to do that automatically), and keep binlogs longer"
            " (binlog_expire_logs_seconds / RDS 'binlog retention hours')"
        )

    def _open_stream(self, start: MySQLPosition) -> Any:
        from pymysqlreplication import BinLogStreamReader
        from pymysqlreplication.event import (
            GtidEvent,
            HeartbeatLogEvent,
            MariadbGtidEvent,
            QueryEvent,
            RotateEvent,
            XidEvent,
        )
        from pymysqlreplication.row_event import (
            DeleteRowsEvent,
            UpdateRowsEvent,
            WriteRowsEvent,
        )

        settings = connection_settings(self.config)
        settings.pop("autocommit", None)
        settings["read_timeout"] = max(30.0, self.config.heartbeat * 20)
        # The server gives up on a replica that does not read for net_write_timeout seconds (60 by
        # default); a slow sink can hold the reader longer than that between two batches.
        settings["init_command"] = "SET SESSION net_write_timeout = 3600"

        kwargs: dict[str, Any] = dict(
            connection_settings=settings,
            server_id=self.server_id,
            blocking=True,
            slave_heartbeat=self.config.heartbeat,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent, GtidEvent, MariadbGtidEvent, RotateEvent, HeartbeatLogEvent],
            # Table maps are parsed once per table id and kept until a DDL statement or a new
            # binlog file (the assembler clears them): parsing them before every row event is
            # what costs most on small transactions.
            freeze_schema=self._cache_table_maps,
            enable_logging=False,
        )
        if self._prefetch:
            # The binlog connection receives ahead in a thread while events are decoded.
            kwargs["pymysql_wrapper"] = prefetching_connection_class(pymysql().connections.Connection)
        if self.mariadb and start.gtid:
            kwargs.update(is_mariadb=True, auto_position=start.gtid)
        elif not self.mariadb and start.gtid and (self._info is None or self._info.variables.get("gtid_mode", "OFF").upper() == "ON"):
            kwargs.update(auto_position=start.gtid)
        else:
            kwargs.update(log_file=start.file, log_pos=start.pos, resume_stream=True)
        return BinLogStreamReader(**kwargs)

    def _streaming(self, start: MySQLPosition) -> Iterator[Batch]:
        self._phase = "stream"
        history = self._history()
        recorded, complete = history.at(start)
        schemas = {t: s for t, s in recorded.items() if s is not None and self.context.tables.matches(t)}
        if not complete:
            # No record of the tables at start (first run with snapshot: never, or a history
            # lost): their shape now is the best knowledge of their shape then.
            gone = {t for t, s in recorded.items() if s is None}
            unknown = {s.table: s for s in read_schemas(self._ctl(), self.context.tables, mariadb=self.mariadb) if s.table not in schemas and s.table not in gone}
            schemas.update(unknown)
            history.record(start, dict(schemas), complete=True)
        assembler = BinlogAssembler(
            mariadb=self.mariadb,
            start=start,
            schemas=schemas,
            selector=self.context.tables,
            reread=self._reread,
            max_batch_rows=self.config.max_batch_rows,
            logger=self.log,
            announced=self._announced,
            row_decoder=RowDecoder() if self._fast_rows else None,
            on_schema_change=history.record,
            columns=self.context.columns,
        )
        self._assembler = assembler
        self._last_position = start
        stream = self._stream = self._open_stream(start)
        self.log.info("streaming the binlog from %s (server id %d)", start, self.server_id)
        driver = pymysql()
        last_yield = time.monotonic()
        # The cyclic garbage collector would run every few hundred decoded rows (each row is a
        # dict, each event a tracked object) and cost ~15% of the reading time; nothing built
        # here forms cycles, so collection is paused while one batch is read and decoded (at most
        # max_batch_rows events) and resumed whenever a batch is handed out, on errors and on close.
        gc_paused = gc.isenabled()
        if gc_paused:
            gc.disable()
        try:
            while not self._closed.is_set():
                try:
                    event = stream.fetchone()
                except driver.err.OperationalError as exc:
                    code = exc.args[0] if exc.args else None
                    if code in _PURGED_CODES:
                        text = exc.args[1] if len(exc.args) > 1 else str(exc)
                        raise _BinlogGone(f"{self._purged_message(assembler.position)} (server: {text})") from exc
                    raise map_error(exc, self.config, "reading the binlog") from exc
                except (driver.err.InterfaceError, OSError, AttributeError) as exc:
                    if self._closed.is_set():
                        return
                    raise SourceConnectionError(f"MySQL {self.config.host}:{self.config.port}: binlog connection lost: {exc}") from exc
                if event is None:
                    raise SourceConnectionError(f"MySQL {self.config.host}:{self.config.port}: the server ended the binlog stream")
                if type(event).__name__ == "HeartbeatLogEvent":
                    assembler.last_event_ts = time.time()  # caught up: the server has nothing more
                elif getattr(event, "timestamp", 0):
                    assembler.last_event_ts = float(event.timestamp)
                batches = assembler.feed(event)
                if assembler.table_maps_dirty:
                    stream.table_map = {}
                    if assembler.row_decoder is not None:
                        assembler.row_decoder.clear()
                    assembler.table_maps_dirty = False
                if not batches and time.monotonic() - last_yield >= 1.0:
                    batches = assembler.tick()
                for batch in batches:
                    if batch.end_position is not None:
                        self._last_position = batch.end_position  # type: ignore[assignment]
                    last_yield = time.monotonic()
                    if gc_paused:
                        gc.enable()
                    yield batch
                    if gc_paused:
                        gc.disable()
        finally:
            if gc_paused:
                gc.enable()

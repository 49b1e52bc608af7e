"""The change stream: a logical replication connection reading pgoutput and answering the server.

psycopg 3 has no replication API, so this module speaks the streaming protocol itself on the
low-level ``pgconn`` of a ``replication=database`` connection: ``START_REPLICATION`` switches it to
COPY_BOTH; the server sends XLogData ('w') carrying pgoutput messages and keepalives ('k'); we send
standby status updates ('r') whose flush LSN is what the sink made durable.

Guarantees:
    * Batches end only at transaction commits; ``end_position`` is the commit LSN of the last
      transaction of the batch (or, when idle, a WAL position with no pending change before it).
    * Transactions whose commit LSN is <= the resume position are skipped (the server may resend
      the last confirmed transaction).
    * The flush LSN sent to the server never exceeds the last position passed to ``ack``, except
      when every delivered change is acknowledged: then it follows the server's WAL end, so that an
      idle slot does not retain WAL. Either way it is recorded (``before_confirm``) before it is
      sent, so the slot can be confirmed past that record only by another consumer.
    * A schema change (a Relation message with a new shape) leads the batch holding the first rows
      of the new shape.
    * With protocol version 2 (``stream_in_progress``) a large transaction arrives in blocks while
      it runs; its changes are buffered (``StreamedTransaction``, spilled to disk beyond a size) and
      emitted at its Stream Commit, in commit order with the other transactions, exactly like a
      transaction sent whole. A Stream Abort discards the transaction, or only the subtransaction
      it names. While a streamed transaction is open, no position past a confirmed commit is
      handed out or confirmed, so a restart receives it again from its first change.
"""

from __future__ import annotations

import gc
import logging
import select
import struct
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from zetl.errors import SourceConnectionError, SourceError
from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, TableId
from zetl.plugin import ColumnSelector, TableSelector
from zetl.schema.changes import AddColumn, CreateTable, DropColumn, RenameColumn, SchemaChange
from zetl.schema.types import DataType, Schema

from .catalog import driver_error, quote_ident
from .config import PostgresConfig
from .pgoutput import _PG_EPOCH_US, RelationDecoder, decode_relation, diff_schema, pg_time, relation_schema
from .position import PostgresPosition, format_lsn, parse_lsn
from .renames import CatalogColumn, match_columns, renamed_schema, with_renames
from . import streamed as streamed_buffer
from .streamed import StreamedTransaction

if TYPE_CHECKING:
    import psycopg

__all__ = ["ReplicationStream"]

_XLOG_HEADER = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">Qqb")
_STATUS = struct.Struct(">cQQQqb")
_BEGIN = struct.Struct(">Qqi")
_COMMIT = struct.Struct(">bQQq")
_U32 = struct.Struct(">I").unpack_from
_I32 = struct.Struct(">i").unpack_from
_MESSAGE = struct.Struct(">bQ")
_STREAM_START = struct.Struct(">Ib")  # xid, first segment
_STREAM_COMMIT = struct.Struct(">IbQQq")  # xid, flags, commit LSN, end LSN, commit time
_STREAM_ABORT = struct.Struct(">II")  # xid, subtransaction xid (== xid: the whole transaction)

STREAMING_SERVER_VERSION = 140000
"""First server version able to stream in-progress transactions (pgoutput protocol version 2)."""

MAX_BATCH_EVENTS = 20_000
"""A batch is closed at the first commit after this many events (big transactions stay whole)."""

IDLE_BATCH_INTERVAL = 0.5
"""Seconds between empty batches while nothing happens (the contract asks for at least 1/s)."""

FEEDBACK_INTERVAL = 1.0
"""Seconds between unsolicited standby status updates."""


def _now_pg() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_US


class ReplicationStream:
    """One replication connection: slot creation, snapshot export and the pgoutput stream."""

    def __init__(
        self,
        conn: "psycopg.Connection[Any]",
        config: PostgresConfig,
        slot: str,
        publication: str,
        selector: TableSelector,
        schemas: dict[TableId, Schema],
        data_type: Callable[[int, int], DataType],
        logger: logging.Logger | None = None,
        *,
        spill_dir: Path | None = None,
        spill_bytes: int | None = None,
        attnums: dict[TableId, dict[str, int]] | None = None,
        columns_now: Callable[[int], dict[int, CatalogColumn] | None] | None = None,
        before_confirm: Callable[[int], int] | None = None,
        confirmed: int = 0,
        columns: ColumnSelector | None = None,
    ) -> None:
        """``columns``: the columns the integration uses; the others are never decoded."""
        self.conn = conn
        self.pgconn = conn.pgconn
        self.config = config
        self.slot = slot
        self.publication = publication
        self.selector = selector
        self.columns = columns
        self.schemas = schemas
        self.data_type = data_type
        # column -> attnum of each known schema (a column missing: not known for certain), and
        # the catalog lookup that tells a rename from a drop + add (see ``renames``)
        self.attnums: dict[TableId, dict[str, int]] = attnums if attnums is not None else {}
        self.columns_now = columns_now
        self.oids: dict[TableId, int] = {}  # relation OID of each selected table a Relation message described
        self.log = logger or logging.getLogger("zetl.postgres")
        self.io_lock = threading.Lock()
        self.closed = False
        self.received_lsn = 0  # WAL end the server reported; everything before it was sent
        self.acked_lsn = 0  # durable in the sink (from ack)
        self.delivered_lsn = 0  # end position of the last batch handed out
        self.seen_lsn = 0  # commit LSN of the last transaction decoded
        self._idle = True  # no transaction open in the stream
        self.flushed_sent = -1
        self.last_feedback = 0.0
        self.relations: dict[int, RelationDecoder] = {}
        self.spill_dir = spill_dir
        # bytes of messages one streamed transaction keeps in memory (default streamed.SPILL_BYTES)
        self.spill_bytes = spill_bytes if spill_bytes is not None else streamed_buffer.SPILL_BYTES
        self.streaming = False  # protocol version 2 with in-progress transactions streamed
        self.streamed: dict[int, StreamedTransaction] = {}  # open streamed transactions by xid
        # Called with a flush LSN before a status update would confirm past ``confirmable``; it
        # records the LSN durably and returns what may be confirmed (less when it could not).
        self.before_confirm = before_confirm
        self.confirmable = confirmed

    # -- replication commands --------------------------------------------------------------
    def _command(self, command: str, doing: str) -> list[tuple[Any, ...]]:
        from psycopg import pq

        with self.io_lock:
            result = self.pgconn.exec_(command.encode())
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            message = (result.error_message or self.pgconn.error_message).decode(errors="replace").strip()
            if self.pgconn.status != pq.ConnStatus.OK:
                raise SourceConnectionError(f"Postgres replication connection lost while {doing}: {message}")
            if "already exists" in message or "is active" in message:
                raise SourceConnectionError(f"{doing}: {message}")
            raise SourceError(f"Postgres refused {doing}: {message}", retryable=False)
        rows = []
        for r in range(result.ntuples):
            rows.append(tuple((result.get_value(r, c) or b"").decode() for c in range(result.nfields)))
        return rows

    def identify_system(self) -> tuple[str, str]:
        """``IDENTIFY_SYSTEM``: the cluster's system identifier and the connected database."""
        rows = self._command("IDENTIFY_SYSTEM", "identifying the server")
        system_id, _timeline, _xlogpos, database = rows[0]
        return system_id, database

    def create_slot(self, *, export_snapshot: bool) -> tuple[int, str | None]:
        """Create the logical slot; returns (consistent point LSN, exported snapshot name or None).

        The exported snapshot stays valid until the next command on this connection.
        """
        mode = "export" if export_snapshot else "nothing"
        rows = self._command(f"CREATE_REPLICATION_SLOT {quote_ident(self.slot)} LOGICAL pgoutput (SNAPSHOT '{mode}')", f"creating replication slot {self.slot!r}")
        _name, consistent, snapshot, _plugin = rows[0]
        self.log.info("created replication slot %s at %s", self.slot, consistent)
        return parse_lsn(consistent), (snapshot or None)

    def start(self, lsn: int) -> None:
        """``START_REPLICATION`` from ``lsn`` (the server starts at its confirmed LSN if later)."""
        from psycopg import pq

        pubs = quote_ident(self.publication).replace("'", "''")
        self._discard_streamed()  # the server sends open transactions again from their start
        self.streaming = self._use_streaming()
        protocol = "proto_version '2', streaming 'on'" if self.streaming else "proto_version '1'"
        command = (
            f"START_REPLICATION SLOT {quote_ident(self.slot)} LOGICAL {format_lsn(lsn)} "
            f"({protocol}, publication_names '{pubs}', messages 'true')"
        )
        with self.io_lock:
            self.pgconn.send_query(command.encode())
            result = self.pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = (result.error_message if result is not None else self.pgconn.error_message).decode(errors="replace").strip()
            retryable = "is active" in message or self.pgconn.status != pq.ConnStatus.OK
            raise (SourceConnectionError if retryable else SourceError)(f"cannot start replication from slot {self.slot!r}: {message}")
        self.received_lsn = max(self.received_lsn, lsn)
        self.delivered_lsn = max(self.delivered_lsn, lsn)
        self.acked_lsn = max(self.acked_lsn, lsn)  # the resume position is durable by definition
        self.seen_lsn = max(self.seen_lsn, lsn)
        self.log.info("streaming from slot %s at %s (pgoutput protocol %d)", self.slot, format_lsn(lsn), 2 if self.streaming else 1)

    def _use_streaming(self) -> bool:
        """``stream_in_progress`` resolved against the server version (default: on from Postgres 14)."""
        version = self.pgconn.server_version
        wanted = self.config.stream_in_progress
        if wanted and version < STREAMING_SERVER_VERSION:
            raise SourceError(
                f"stream_in_progress: true needs Postgres 14 or later, but the server of database {self.config.database!r} "
                f"is version {version // 10000}; remove the setting or set it to false",
                retryable=False,
            )
        return version >= STREAMING_SERVER_VERSION if wanted is None else wanted

    def _discard_streamed(self) -> None:
        for streamed in self.streamed.values():
            streamed.close()
        self.streamed.clear()

    # -- feedback --------------------------------------------------------------------------
    def ack(self, lsn: int) -> None:
        """Everything up to ``lsn`` is durable; any thread. Sends the update at once if the connection is free."""
        if lsn > self.acked_lsn:
            self.acked_lsn = lsn
        if self.io_lock.acquire(blocking=False):
            try:
                if not self.closed:
                    self._feedback(False)
            except Exception as exc:  # the reader will notice a broken connection itself
                self.log.debug("could not send feedback: %s", exc)
            finally:
                self.io_lock.release()

    def flush_lsn(self) -> int:
        """What the server may forget: the acknowledged position, or its WAL end when every
        transaction decoded so far is acknowledged and none is open."""
        acked = self.acked_lsn
        if self._idle and not self.streamed and acked >= self.seen_lsn and self.received_lsn > acked:
            return self.received_lsn
        return acked

    def _feedback(self, reply_requested: bool) -> None:
        """Send a standby status update (caller holds ``io_lock``).

        A flush LSN past the acknowledged position (an idle slot following the WAL end) is sent
        only once ``before_confirm`` accepted it: the source records it before the server hears
        of it. Acknowledged positions need no record: they are checkpointed before ``ack``."""
        flush = self.flush_lsn()
        if self.before_confirm is not None and flush > self.acked_lsn:
            # past every acknowledged (checkpointed) position: the idle slot follows the WAL end,
            # and only a durable record of it tells a later run that this confirm was its own
            if flush > self.confirmable:
                self.confirmable = max(self.confirmable, self.before_confirm(flush))
            flush = max(self.acked_lsn, min(flush, self.confirmable))
        if not reply_requested and flush == self.flushed_sent and time.monotonic() - self.last_feedback < FEEDBACK_INTERVAL:
            return
        written = max(self.received_lsn, flush)
        self.pgconn.put_copy_data(_STATUS.pack(b"r", written, flush, flush, _now_pg(), 0))
        self.pgconn.flush()
        self.flushed_sent = flush
        self.last_feedback = time.monotonic()

    # -- relations -------------------------------------------------------------------------
    def _relation(self, buf: bytes) -> tuple[RelationDecoder, list[SchemaChange]]:
        oid, table, _identity, columns = decode_relation(buf)
        selected = self.selector.matches(table)
        known = self.schemas.get(table)
        renames: list[SchemaChange] = []
        if selected and known is not None and tuple(c.name for c in columns) != known.names:
            pairs = self._renames(oid, known, columns)
            if pairs:
                renames = with_renames(table, pairs)
                known = renamed_schema(known, pairs)
        schema = relation_schema(table, columns, self.data_type, known)
        changes = renames + diff_schema(known, schema) if selected else []
        if selected:
            self.schemas[table] = schema
            self.oids[table] = oid
        decoder = RelationDecoder(table, schema, selected, self.columns)
        self.relations[oid] = decoder
        return decoder, changes

    def _renames(self, oid: int, known: Schema, columns: list[Any]) -> list[tuple[str, str]]:
        """The renames that turn ``known`` into the columns of a Relation message (in an order
        they can be applied); updates the table's attnums. Empty when the catalog cannot tell
        for certain: the change is then reported by names (drop + add), with a log line."""
        table = known.table
        attnums = self.attnums.get(table, {})
        catalog = self.columns_now(oid) if self.columns_now is not None else None
        match = match_columns([(n, attnums.get(n)) for n in known.names], [(c.name, c.type_oid) for c in columns], catalog)
        self.attnums[table] = {c.name: a for c, a in zip(columns, match.attnums) if a is not None}
        if match.ambiguous is not None and set(known.names) - {c.name for c in columns} and {c.name for c in columns} - set(known.names):
            self.log.warning(
                "table %s: cannot tell renamed columns from dropped and added ones (%s); reporting them as dropped and added",
                table, match.ambiguous,
            )
        for old, new in match.renames:
            self.log.info("table %s: column %s was renamed to %s", table, old, new)
        return list(match.renames)

    def _replay(self, streamed: StreamedTransaction, position: PostgresPosition, commit_ts: Any, xid: int, skip: bool) -> tuple[list[ChangeEvent], list[SchemaChange]]:
        """The events and schema changes of a committed streamed transaction, in the order of its
        messages (Relation messages only when ``skip``: later messages may rely on them)."""
        events: list[ChangeEvent] = []
        changes: list[SchemaChange] = []
        relations = self.relations
        for buf in streamed.messages():
            kind = buf[0]
            if kind == 82:  # 'R' Relation
                _rel, rel_changes = self._relation(buf)
                changes.extend(rel_changes)
            elif skip:
                continue
            elif kind == 73 or kind == 85 or kind == 68:  # I U D
                (oid,) = _U32(buf, 1)
                rel = relations[oid]
                if rel.selected:
                    events.append(_row_event(rel, kind, buf, position, commit_ts, xid))
            elif kind == 84:  # 'T' Truncate
                events.extend(_truncate_events(buf, relations, position, commit_ts, xid))
            # 'Y' Type needs nothing; 'M' transactional messages are ignored as outside streams
        return events, changes

    # -- the stream ------------------------------------------------------------------------
    def batches(self, skip_upto: int, announced: set[TableId], stop: Callable[[], bool] | None = None) -> Iterator[Batch]:
        """Yield batches of committed transactions, and an empty batch at least every ``IDLE_BATCH_INTERVAL`` when idle.

        ``announced``: tables whose CreateTable this read already sent; a table's first batch
        starts with its CreateTable otherwise.
        """
        pgconn = self.pgconn
        lock = self.io_lock
        sock = pgconn.socket
        relations = self.relations
        events: list[ChangeEvent] = []  # complete transactions not yet handed out
        changes: list[SchemaChange] = []  # schema changes leading ``events``
        txn: list[ChangeEvent] | None = None
        txn_changes: list[SchemaChange] = []
        txn_skip = False
        txn_ts = None
        txn_xid = 0
        txn_position: PostgresPosition | None = None
        streaming: StreamedTransaction | None = None  # inside a Stream Start ... Stream Stop block
        batch_end: PostgresPosition | None = None
        held: tuple[list[SchemaChange], list[ChangeEvent], PostgresPosition | None] | None = None
        unannounced = True
        last_yield = time.monotonic()
        insert = Op.INSERT
        new_event = ChangeEvent

        def fail(exc: BaseException, doing: str) -> SourceError:
            if self.closed:
                return SourceConnectionError("the source was closed")
            from psycopg import Error

            if isinstance(exc, Error):
                return driver_error(exc, doing, self.config)
            return SourceConnectionError(f"Postgres replication stream of slot {self.slot!r}: {exc}")

        while True:
            if self.closed or (stop is not None and stop()):
                return
            lock.acquire()
            # The cyclic garbage collector would run every few hundred decoded rows (each row is
            # a dict, each event a tracked object) and cost ~40% of the decoding time; nothing
            # built here forms cycles, so collection is paused while the buffered messages are
            # decoded (at most MAX_BATCH_EVENTS events) and resumed right after.
            gc_paused = gc.isenabled()
            if gc_paused:
                gc.disable()
            try:
                while True:
                    try:
                        nbytes, data = pgconn.get_copy_data(1)
                    except Exception as exc:
                        raise fail(exc, "reading the replication stream") from None
                    if nbytes <= 0:
                        break
                    tag = data[0]
                    if tag == 119:  # 'w' XLogData
                        buf = bytes(data[25:])
                        kind = buf[0]
                        if streaming is not None:
                            if kind == 69:  # 'E' Stream Stop
                                streaming = None
                            else:
                                streaming.add(buf)
                            continue
                        if kind == 73 or kind == 85 or kind == 68:  # I U D
                            if txn_skip:
                                continue
                            (oid,) = _U32(buf, 1)
                            rel = relations[oid]
                            if not rel.selected:
                                continue
                            if kind == 73:
                                row, _ = rel.decode(buf, 6)
                                txn.append(new_event(rel.table, insert, None, row, txn_position, txn_ts, txn_xid))  # type: ignore[union-attr]
                            else:
                                txn.append(_row_event(rel, kind, buf, txn_position, txn_ts, txn_xid))  # type: ignore[union-attr, arg-type]
                        elif kind == 66:  # 'B' Begin
                            final_lsn, ts, txn_xid = _BEGIN.unpack_from(buf, 1)
                            txn = []
                            txn_changes = []
                            txn_skip = final_lsn <= skip_upto
                            txn_ts = pg_time(ts)
                            txn_position = PostgresPosition.stream(final_lsn)
                            self._idle = False
                        elif kind == 67 or kind == 99:  # 'C' Commit, 'c' Stream Commit
                            if kind == 67:
                                _flags, commit_lsn, end_lsn, _ts = _COMMIT.unpack_from(buf, 1)
                            else:
                                txn_xid, _flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT.unpack_from(buf, 1)
                                done = self.streamed.pop(txn_xid, None)
                                if done is None:
                                    raise SourceConnectionError(
                                        f"slot {self.slot!r}: the server committed streamed transaction {txn_xid} whose changes were not received; reconnecting"
                                    )
                                txn_ts = pg_time(ts)
                                txn_position = PostgresPosition.stream(commit_lsn)
                                txn_skip = commit_lsn <= skip_upto
                                try:
                                    txn, txn_changes = self._replay(done, txn_position, txn_ts, txn_xid, txn_skip)
                                finally:
                                    done.close()
                                unannounced = True  # its Relation messages were applied just now
                            if commit_lsn > self.seen_lsn:
                                self.seen_lsn = commit_lsn
                            if not txn_skip and (txn or txn_changes):
                                assert txn is not None
                                if txn_changes:
                                    txn = _reshape_before_changes(txn, txn_changes, self.schemas)
                                lead: list[SchemaChange] = []
                                if unannounced:  # only while some relation seen has not had its CreateTable
                                    for table in sorted({e.table for e in txn} - announced):
                                        lead.append(CreateTable(table, self.schemas[table]))
                                        announced.add(table)
                                    unannounced = any(r.selected and r.table not in announced for r in relations.values())
                                if txn_changes and (events or changes):
                                    # schema changes must lead a batch: hand out what is pending first
                                    held = (lead + txn_changes, txn, txn_position)
                                    txn = None
                                    txn_changes = []
                                    self._idle = True
                                    break
                                changes.extend(lead + txn_changes)
                                events.extend(txn)
                                batch_end = txn_position
                            elif not txn_skip:
                                batch_end = txn_position
                            txn = None
                            txn_changes = []
                            self._idle = True
                            if commit_lsn > self.received_lsn:
                                self.received_lsn = commit_lsn
                            if len(events) >= MAX_BATCH_EVENTS:
                                break
                        elif kind == 82:  # 'R' Relation
                            rel, rel_changes = self._relation(buf)
                            if rel.selected and rel.table not in announced:
                                unannounced = True
                            if rel_changes:
                                txn_changes.extend(rel_changes)
                        elif kind == 84:  # 'T' Truncate
                            if txn_skip:
                                continue
                            txn.extend(_truncate_events(buf, relations, txn_position, txn_ts, txn_xid))  # type: ignore[union-attr, arg-type]
                        elif kind == 83:  # 'S' Stream Start
                            xid, first = _STREAM_START.unpack_from(buf, 1)
                            streaming = self.streamed.get(xid)
                            if streaming is None:
                                if not first:
                                    raise SourceConnectionError(
                                        f"slot {self.slot!r}: the server continued streamed transaction {xid} whose first changes were not received; reconnecting"
                                    )
                                streaming = self.streamed[xid] = StreamedTransaction(xid, self.spill_dir, self.spill_bytes)
                        elif kind == 65:  # 'A' Stream Abort
                            xid, subxid = _STREAM_ABORT.unpack_from(buf, 1)
                            aborted = self.streamed.get(xid)
                            if aborted is not None:
                                if subxid == xid:
                                    del self.streamed[xid]
                                    aborted.close()
                                else:
                                    aborted.abort_subtransaction(subxid)
                        elif kind == 77:  # 'M' logical message (our heartbeats; transactional ones are ignored)
                            flags, msg_lsn = _MESSAGE.unpack_from(buf, 1)
                            if not (flags & 1) and txn is None and not self.streamed and msg_lsn > skip_upto:
                                batch_end = PostgresPosition.stream(msg_lsn)
                                if msg_lsn > self.received_lsn:
                                    self.received_lsn = msg_lsn
                        # 'Y' Type and 'O' Origin need nothing: types are resolved from pg_type
                    elif tag == 107:  # 'k' keepalive
                        wal_end, _ts, reply = _KEEPALIVE.unpack_from(data, 1)
                        if txn is None and not self.streamed and wal_end > self.received_lsn:
                            self.received_lsn = wal_end
                        if reply:
                            self._feedback(True)
                if nbytes == -1:
                    result = pgconn.get_result()
                    message = (result.error_message if result is not None else pgconn.error_message).decode(errors="replace").strip()
                    raise SourceConnectionError(f"the server ended the replication stream of slot {self.slot!r}: {message or 'connection closed'}")
                if nbytes == -2:
                    raise SourceConnectionError(f"replication stream of slot {self.slot!r} failed: {pgconn.error_message.decode(errors='replace').strip()}")
                try:
                    self._feedback(False)
                except Exception as exc:
                    raise fail(exc, "sending a status update") from None
            finally:
                if gc_paused:
                    gc.enable()
                lock.release()
            now = time.monotonic()
            if held is not None:
                if events or changes:
                    pending = Batch(events=tuple(events), schema_changes=tuple(changes), end_position=batch_end)
                    if batch_end is not None:
                        self.delivered_lsn = batch_end.lsn
                    yield pending
                changes, events, batch_end = list(held[0]), list(held[1]), held[2]
                held = None
                nbytes = 1  # more may be buffered: drain again before waiting
            if events or changes:
                batch = Batch(events=tuple(events), schema_changes=tuple(changes), end_position=batch_end)
                events, changes = [], []
                if batch_end is not None:
                    self.delivered_lsn = batch_end.lsn
                batch_end = None
                last_yield = now
                yield batch
                continue
            if nbytes > 0:
                continue  # stopped draining at a batch boundary with more data waiting
            if now - last_yield >= IDLE_BATCH_INTERVAL:
                end = batch_end
                if end is None and txn is None and not self.streamed and self.received_lsn > self.delivered_lsn and self.acked_lsn >= self.seen_lsn:
                    # nothing for us up to the server's WAL end: let the checkpoint follow it
                    end = PostgresPosition.stream(self.received_lsn)
                if end is not None:
                    self.delivered_lsn = max(self.delivered_lsn, end.lsn)
                batch_end = None
                last_yield = now
                yield Batch(end_position=end)
                continue
            try:
                select.select([sock], [], [], 0.1)
                with lock:
                    pgconn.consume_input()
            except (OSError, ValueError) as exc:
                if self.closed:
                    return
                raise fail(exc, "waiting for the replication stream") from None
            except SourceError:
                raise
            except Exception as exc:
                if self.closed:
                    return
                raise fail(exc, "reading the replication stream") from None

    def close(self) -> None:
        self.closed = True
        acquired = self.io_lock.acquire(timeout=2)
        try:
            self.conn.close()
        except Exception:
            pass
        finally:
            if acquired:
                self._discard_streamed()
                self.io_lock.release()


def _row_event(rel: RelationDecoder, kind: int, buf: bytes, position: PostgresPosition, commit_ts: Any, xid: int) -> ChangeEvent:
    """The event of an Insert (73), Update (85) or Delete (68) message of a selected relation."""
    if kind == 73:
        row, _ = rel.decode(buf, 6)
        return ChangeEvent(rel.table, Op.INSERT, None, row, position, commit_ts, xid)
    marker = buf[5]
    if kind == 85:
        before = None
        pos = 6
        if marker == 75 or marker == 79:  # 'K' key / 'O' old row
            old, pos = rel.decode(buf, 6)
            before = rel.key_of(old) if marker == 75 else old
            pos += 1  # the 'N'
        after, _ = rel.decode(buf, pos)
        if before is None:
            before = rel.key_of(after)
        elif marker == 79 and UNCHANGED in after.values():
            # REPLICA IDENTITY FULL: the old row holds the unchanged TOAST values
            after = {k: (before[k] if v is UNCHANGED else v) for k, v in after.items()}
        return ChangeEvent(rel.table, Op.UPDATE, before, after, position, commit_ts, xid)
    old, _ = rel.decode(buf, 6)
    before = rel.key_of(old) if marker == 75 else old
    return ChangeEvent(rel.table, Op.DELETE, before, None, position, commit_ts, xid)


def _truncate_events(buf: bytes, relations: dict[int, RelationDecoder], position: PostgresPosition, commit_ts: Any, xid: int) -> list[ChangeEvent]:
    """One truncate event per selected relation of a Truncate message."""
    (nrels,) = _I32(buf, 1)
    pos = 6
    events = []
    for _ in range(nrels):
        (oid,) = _U32(buf, pos)
        pos += 4
        rel = relations.get(oid)
        if rel is not None and rel.selected:
            events.append(ChangeEvent.truncate(rel.table, position, commit_ts=commit_ts, txid=xid))
    return events


def _reshape_before_changes(txn: list[ChangeEvent], changes: list[SchemaChange], schemas: dict[TableId, Schema]) -> list[ChangeEvent]:
    """Rows of a transaction written before an ALTER TABLE in the same transaction get the new shape:
    renamed columns take their new names, added columns are None (what the server stores for
    them), dropped columns are removed."""
    touched = {c.table for c in changes if isinstance(c, (AddColumn, DropColumn, RenameColumn))}
    if not touched:
        return txn
    renamed: dict[TableId, list[tuple[str, str]]] = {}
    for c in changes:
        if isinstance(c, RenameColumn):
            renamed.setdefault(c.table, []).append((c.old_name, c.new_name))
    out = []
    for e in txn:
        if e.table in touched and e.after is not None:
            names = schemas[e.table].names
            if set(e.after) != set(names):
                # written before the renames: its columns carry the old names
                pairs = renamed.get(e.table, ())
                after = _rename_keys(e.after, pairs)
                before = _rename_keys(e.before, pairs) if e.before is not None else None
                e = ChangeEvent(e.table, e.op, before, {n: after.get(n) for n in names}, e.position, e.commit_ts, e.txid)
        out.append(e)
    return out


def _rename_keys(row: dict[str, Any], renames: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """``row`` with each (old, new) rename applied in order."""
    for old, new in renames:
        if old in row and new not in row:
            row = {new if k == old else k: v for k, v in row.items()}
    return row

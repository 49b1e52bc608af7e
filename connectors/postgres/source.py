"""The Postgres source: a consistent snapshot, then the pgoutput change stream of a logical slot."""

from __future__ import annotations

import threading
from pathlib import Path
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generator, Iterator

from zetl.errors import NeedsAttentionError, SourceConnectionError, SourceError
from zetl.events import Batch, Op, Position, RowChunk, TableId
from zetl.schema.changes import CreateTable, DropTable, SchemaChange
from zetl.schema.types import Schema
from zetl.source import Source

from .catalog import Catalog, OnlyTables, TableInfo, connect, driver_error
from .columnstate import ColumnState, TableShape, renames_since, shape_of
from .config import PostgresConfig, default_slot_name
from .drops import DropWatch, PendingDrop, gone_tables
from .ownership import ServerIdentity, SlotOwnership, Verdict, judge_slot
from .position import PostgresPosition, format_lsn, parse_lsn
from .renames import CatalogColumn, renamed_schema, with_renames
from .snapshot import ChunkReader
from .stream import ReplicationStream

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresSource"]

JOIN_LOCK_TIMEOUT = 5.0
"""Seconds to wait for the SHARE lock that adds a new table to the publication; a table busy
with a longer write transaction joins at the next search instead of stalling its writers."""

DURABLE_WAIT_LOG_INTERVAL = 60.0
"""Seconds between log lines while the sink has not made a joining table's position durable."""


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

    Tables joining while streaming (``table_discovery_interval``): a table created in, or renamed
    into, the selection after the publication was made is not published, so its changes would
    never reach the stream. Every interval (and once when a stream resumes) the catalog is
    searched for selected tables the publication does not cover (excluded tables never are).
    For each batch of such tables, in this order:

    1. a position naming them as joining is handed out and waited for until the sink made it
       durable, so that a crash from here on resumes with them;
    2. each table, one at a time, is added to the publication under a brief SHARE lock
       (``Catalog.add_table``): from then on every change of it is either published or already
       committed;
    3. its rows are copied in a transaction snapshot taken after that (a ``CreateTable`` leads
       them), chunk by chunk, each chunk positioned at the stream's LSN with the copy's progress;
    4. a position without the table closes its copy, and streaming goes on where it stopped.

    No gap: rows committed before the table joined are in the copy; changes committed after are
    in the stream, which resumes at the LSN reached before the copy. Changes committed between
    the join and the copy's snapshot arrive twice (copied, then streamed in commit order after
    the copy): sinks apply rows by primary key, so the target converges. A table without a
    primary key (REPLICA IDENTITY FULL) may get such rows twice.

    Crash safety: a checkpoint taken at any step resumes correctly. Joining tables listed in it
    are added to the publication if they are not yet (crash before step 2) and copied from after
    the last completed chunk, in a new snapshot (any rows changed in between are then read newer
    and replayed on top, as for a resumed initial snapshot); the stream then resumes at the LSN
    the copy was positioned at. A table that joined the publication without a durable record of
    it cannot exist, because of step 1; one never added is found again by the next search.
    A table the search finds without a primary key and without REPLICA IDENTITY FULL is reported
    with the same error as at start if it is still so at the following search (the usual CREATE
    TABLE then ALTER TABLE ... ADD PRIMARY KEY is not caught half way); it is never added.

    Tables leaving the selection (``drops``): the stream carries no DDL, so the same search
    compares the tables replicated (by OID) with the catalog. A table dropped, dropped and created
    again (another OID: a drop, then a new table that joins as above), renamed to a name the
    selection does not match, or excluded is reported as a ``DropTable`` once the stream has
    passed the WAL position read right after the catalog showed it gone, so its rows still ahead
    in the WAL come first (``_hand_out_drops`` states the guarantee). A table renamed away is
    taken out of the publication; what the source knew of it is forgotten. The column state
    lists the tables the sink holds: a table in it that is gone at start (dropped while zetl was
    stopped, or before its drop was checkpointed) is reported the same way, also with
    ``table_discovery_interval: 0``. Not covered: a publication ``FOR ALL TABLES`` made by hand
    publishes a table created again under a dropped one's name by itself, so its rows may
    arrive before the drop is reported.
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
        # tables joining while streaming (see the class docstring)
        self._acked: PostgresPosition | None = None  # the greatest position passed to ack()
        self._ack_changed = threading.Condition()
        self._step = 0  # step of the last position handed out for a joining table
        self._stream_lsn = 0  # LSN of the last stream position handed out: copies are positioned there
        self._streaming = False  # START_REPLICATION was sent: feedback keeps the connection alive
        self._next_discovery = 0.0
        self._without_identity: set[TableId] = set()  # found by the last search, not publishable
        self._joining: tuple[str, ...] = ()
        # renamed columns (see ``renames``): renames found at start, and the shapes waiting for
        # the sink to make them durable before they are written to the column state
        self._columns: ColumnState | None = None
        self._renamed_while_stopped: list[SchemaChange] = []
        self._as_saved: dict[TableId, Schema] = {}
        self._shapes_pending: list[tuple[tuple[int, int, int], dict[TableId, TableShape | None]]] = []
        self._shapes_lock = threading.Lock()
        # tables leaving the selection (see ``drops`` and the class docstring)
        self._replicated: dict[TableId, int] = {}  # table -> OID of each table replicated (or about to be)
        self._drops = DropWatch()
        self._dropped_while_stopped: list[PendingDrop] = []
        self._held_back: set[TableId] = set()  # created again under a dropped table's name: joins after the drop
        self._rejoin = False  # a drop was handed out: search for new tables at the next batch
        # what this integration created on the server (see ``ownership``)
        self._ownership: SlotOwnership | None = None
        self._identity: ServerIdentity | None = None
        self._confirm_record_failed = False

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
                # With a slot, the checkpoint may be a stream position: a table missing from the
                # publication must then join it with a copy of its rows (read() decides).
                fresh = self._catalog.slot(self.slot_name) is None
                self._ensure_publication(add_missing=fresh)
            self._find_renamed_while_stopped()
            if not self.context.read_only:
                self._find_dropped_while_stopped()

    def _find_renamed_while_stopped(self) -> None:
        """Compare the column state with the catalog: a column whose ``attnum`` has another name
        now was renamed while zetl was stopped. ``discover`` then describes the table with the
        old names (what the sink holds) and ``read`` reports the renames first."""
        self._columns = ColumnState(self.context.state_dir, self.slot_name).load()
        self._renamed_while_stopped = []
        self._as_saved = {}
        with self._shapes_lock:
            self._shapes_pending = []
        for info in self._tables:
            saved = self._columns.get(info.table, info.oid)
            if saved is None:
                continue
            pairs = renames_since(saved, info.attnums)
            if pairs is None:
                self.log.warning(
                    "table %s: columns swapped names while zetl was stopped; they are reported as dropped and added", info.table
                )
                continue
            if not pairs:
                continue
            for old, new in pairs:
                self.log.info("table %s: column %s was renamed to %s while zetl was stopped", info.table, old, new)
            self._renamed_while_stopped.extend(with_renames(info.table, pairs))
            self._as_saved[info.table] = renamed_schema(info.schema, [(new, old) for old, new in reversed(pairs)])

    def _find_dropped_while_stopped(self) -> None:
        """Compare the tables of the column state (those the sink holds) with the catalog: one
        gone, or under its name with another OID, or no longer selected, was dropped (or renamed
        away, or excluded) while zetl was stopped or before its drop was checkpointed. ``read``
        reports it once the stream passed the WAL position read here (a resumed stream first
        replays the table's rows still ahead of the checkpoint). A table of that name created
        again joins after the drop (``_held_back``)."""
        assert self._catalog is not None and self._columns is not None
        now = {t.table: t.oid for t in self._tables}
        known = self._columns.known()
        gone = gone_tables(known, now)
        self._held_back = {t for t in gone if t in now}
        self._replicated = {t: oid for t, oid in now.items() if t not in self._held_back}
        self._dropped_while_stopped = []
        if gone:
            lsn = self._drop_position()
            self._dropped_while_stopped = [PendingDrop(t, oid, lsn) for t, oid in gone.items()]

    def _drop_position(self) -> int:
        """The WAL position a drop the catalog just showed waits for (caller holds the catalog
        connection): the insert position, read after the catalog, so past the commit of every
        DROP or RENAME it showed. A message written right after it lets the stream pass it
        even when the database is idle and heartbeats are off."""
        assert self._catalog is not None
        lsn = self._catalog.wal_insert_lsn()
        self._catalog.emit_heartbeat()
        return lsn

    def discover(self) -> list[Schema]:
        """The selected tables' schemas. A table with columns renamed while zetl was stopped is
        described with their old names, the renames coming first in ``read`` (an inspection
        sees the catalog as it is). A table created again under the name of a dropped one is
        left out: it is created (and copied) after the drop is reported."""
        if self.context.read_only:
            return [t.schema for t in self._tables]
        return [self._as_saved.get(t.table, t.schema) for t in self._tables if t.table not in self._held_back]

    def close(self) -> None:
        """Stop reading and release connections; safe from another thread than ``read``.

        The snapshot connection may be in use by the chunk prefetch thread: its query is
        cancelled here and the snapshot generator closes the connection itself.
        """
        self._closed.set()
        with self._ack_changed:
            self._ack_changed.notify_all()
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
        yield from self._report_renamed_while_stopped(start)
        if start is not None and not start.in_snapshot:
            for drop in self._dropped_while_stopped:
                self.log.info("table %s was dropped, renamed or deselected since the last checkpoint; it is reported as dropped once the stream reaches %s", drop.table, format_lsn(drop.lsn))
                self._drops.add(drop.table, drop.oid, drop.lsn)
        else:  # a new snapshot copies every selected table, whatever the target holds
            self._held_back = set()
            for info in self._tables:
                self._replicated.setdefault(info.table, info.oid)
        self._dropped_while_stopped = []
        if start is None or start.in_snapshot:
            with self._catalog_lock:
                self._ensure_publication(add_missing=True)
        ownership = self._load_ownership()
        if start is None:
            existing = catalog.slot(self.slot_name)
            if existing is not None:
                if existing["active"]:
                    raise SourceConnectionError(f"replication slot {self.slot_name!r} is in use by {self._holder(existing)}; retrying")
                self._judge(existing, None)
                if self.config.snapshot == "never" and existing["confirmed_flush_lsn"]:
                    self.log.info("reusing replication slot %s (%s)", self.slot_name, ownership.describe_slot())
                    yield from self._stream_from(None, announced)
                    return
                self.log.warning(
                    "dropping replication slot %s, which this integration created (%s) but never checkpointed; starting over",
                    self.slot_name,
                    ownership.describe_slot(),
                )
                catalog.drop_slot(self.slot_name)
                ownership.forget_slot()
            stream = self._open_stream()
            ownership.record_creating(self._server_identity())
            if self.config.snapshot == "never":
                lsn, _ = stream.create_slot(export_snapshot=False)
                ownership.record_created(lsn)
                yield Batch(end_position=PostgresPosition.stream(lsn))
                yield from self._stream_from(lsn, announced)
                return
            lsn, snapshot_name = stream.create_slot(export_snapshot=True)
            ownership.record_created(lsn)
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
        if slot["active"]:
            raise SourceConnectionError(f"replication slot {self.slot_name!r} is in use by {self._holder(slot)}; retrying")
        self._judge(slot, start.lsn)
        if start.in_snapshot:
            self.log.info("resuming the snapshot at %s with a new transaction snapshot; the stream then replays from %s", start, format_lsn(start.lsn))
            yield from self._snapshot(start, None, announced)
        else:
            self._stream_lsn = start.lsn
            self._step = max(self._step, start.step)  # above the renames' position, if any
            if start.joining:
                self.log.info("resuming the copy of joining table(s) at %s; the stream then replays from %s", start, format_lsn(start.lsn))
                yield from self._copy_joining(start, announced)
            # tables created or selected while zetl was stopped join before streaming starts
            yield from self._discover(announced)
        yield from self._stream_from(start.lsn, announced)

    def _report_renamed_while_stopped(self, start: PostgresPosition | None) -> Iterator[Batch]:
        """The renames found at start, before anything else; the column state records the
        catalog's shapes once the sink made a later position durable.

        Resuming the stream, the renames' batch ends at a position that resumes exactly as
        ``start`` does but orders after it, so the sink's checkpoint (and the column state with
        it) moves past the renames at once: a restart right after does not report them again.
        """
        # a table held back is another relation than the one the sink holds: its shape waits for its join
        shapes: dict[TableId, TableShape | None] = {
            t.table: (t.oid, shape_of(t.schema.names, t.attnums)) for t in self._tables if t.table not in self._held_back
        }
        end: PostgresPosition | None = None
        if start is not None and not start.in_snapshot and not start.joining and self._renamed_while_stopped:
            self._step = start.step + 1
            end = PostgresPosition("stream", start.lsn, step=self._step)
        self._remember_shapes(end.sort_key() if end is not None else start.sort_key() if start is not None else (-1, 0, 0), shapes)
        if self._renamed_while_stopped:
            changes, self._renamed_while_stopped = tuple(self._renamed_while_stopped), []
            self._as_saved = {}
            yield Batch(schema_changes=changes, end_position=end)

    def _remember_shapes(self, key: tuple[int, int, int], shapes: dict[TableId, TableShape | None]) -> None:
        with self._shapes_lock:
            self._shapes_pending.append((key, shapes))

    def _save_shapes(self, position: PostgresPosition) -> None:
        """Write the shapes of every batch up to ``position`` (durable in the sink) to the column state."""
        columns = self._columns
        if columns is None:
            return
        key = position.sort_key()
        with self._shapes_lock:
            due = [shapes for k, shapes in self._shapes_pending if k <= key]
            if not due:
                return
            self._shapes_pending = [(k, shapes) for k, shapes in self._shapes_pending if k > key]
            for shapes in due:
                columns.update(shapes)
            try:
                columns.save()
            except OSError as exc:
                self.log.warning("cannot write the Postgres column state %s: %s", columns.path, exc)

    def _columns_now(self, oid: int) -> dict[int, CatalogColumn] | None:
        assert self._catalog is not None
        with self._catalog_lock:
            return self._catalog.columns_now(oid)

    def _reads(self, table: TableId) -> Callable[[str], bool]:
        """Whether the integration uses a column of ``table`` (``PluginContext.columns``)."""
        columns = self.context.columns
        return lambda column: columns.reads(table, column)

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
            {t.table: t.schema for t in self._tables if t.table not in self._held_back},
            self._catalog.data_type,
            self.log,
            spill_dir=self.context.state_dir,
            attnums={t.table: dict(t.attnums) for t in self._tables if t.table not in self._held_back},
            columns_now=self._columns_now,
            before_confirm=self._before_confirm if self._ownership is not None else None,
            confirmed=self._ownership.confirmed if self._ownership is not None else 0,
            columns=self.context.columns,
        )
        return self._stream

    # -- ownership of the slot and publication (see ``ownership``) ---------------------------
    def _load_ownership(self) -> SlotOwnership:
        if self._ownership is None:
            self._ownership = SlotOwnership(self.context.state_dir, self.slot_name).load()
        return self._ownership

    def _server_identity(self) -> ServerIdentity:
        """The connected cluster and database; ``IDENTIFY_SYSTEM`` on a replication
        connection when this role may not call ``pg_control_system()``."""
        if self._identity is None:
            assert self._catalog is not None
            system_id = self._catalog.system_identifier()
            if system_id is None:
                stream = self._stream if self._stream is not None and not self._stream.closed else self._open_stream()
                system_id, _ = stream.identify_system()
            self._identity = ServerIdentity(system_id, self.config.database)
        return self._identity

    def _ensure_publication(self, *, add_missing: bool) -> None:
        """Create or align the publication, recording it before creating it."""
        assert self._catalog is not None
        if self._catalog.publication(self.publication_name) is None:
            self._load_ownership().record_publication(self._server_identity(), self.publication_name)
        self._catalog.ensure_publication(self.publication_name, self._tables, add_missing=add_missing)

    def _holder(self, slot: dict[str, Any]) -> str:
        assert self._catalog is not None
        _, described = self._catalog.slot_holder(slot.get("active_pid"))
        return described

    def _judge(self, slot: dict[str, Any], checkpoint: int | None) -> Verdict:
        """Use an existing, inactive slot only when it is provably this integration's and
        nothing this integration lacks was consumed from it; else ``NeedsAttentionError``."""
        ownership = self._load_ownership()
        identity = self._server_identity()
        confirmed = parse_lsn(slot["confirmed_flush_lsn"]) if slot.get("confirmed_flush_lsn") else 0
        where = identity.describe(self.config.host, self.config.port)
        name = self.slot_name
        integration = self.context.integration
        drop_hint = f"SELECT pg_drop_replication_slot('{name}')"
        if ownership.exists and not ownership.is_for(identity) and checkpoint is not None:
            assert ownership.identity is not None
            raise NeedsAttentionError(
                f"this integration's checkpoint was taken on another server (system identifier {ownership.identity.system_identifier}, "
                f"database {ownership.identity.database!r}), but it now connects to {where}: its position means nothing here. "
                f"If the server was replaced on purpose, start over with 'zetl reset {integration}'; otherwise fix the connection settings."
            )
        verdict = judge_slot(ownership, identity, slot.get("database") or "", confirmed, checkpoint)
        if verdict is Verdict.OWNED:
            return verdict
        if verdict is Verdict.ADOPT:
            self.log.info(
                "replication slot %s has no ownership record (made by an earlier zetl); it is not past the checkpoint (%s), so it is adopted",
                name,
                format_lsn(checkpoint or 0),
            )
            ownership.record_adopted(identity, confirmed)
            return verdict
        if verdict is Verdict.UNPROVEN:
            # A state written before ownership records existed: earlier versions let an idle slot
            # follow the WAL end without a record, so a slot past the checkpoint is what they
            # normally left. Refusing would strand every upgraded integration; say what cannot
            # be proven and how to check it.
            self.log.warning(
                "replication slot %s has no ownership record (made by an earlier zetl) and was confirmed up to %s, past the checkpoint %s: "
                "an earlier zetl does this while idle, and so would another consumer. It is adopted; if anything else may have read "
                "from it, run 'zetl drift' to compare the target with the source",
                name,
                format_lsn(confirmed),
                format_lsn(checkpoint or 0),
            )
            ownership.record_adopted(identity, confirmed)
            return verdict
        state = self.context.state_dir
        if verdict is Verdict.OTHER_DATABASE:
            message = (
                f"replication slot {name!r} belongs to database {slot.get('database')!r}, not {self.config.database!r}: slot names are shared by "
                f"the whole cluster. Set `slot_name` to another name for this integration."
            )
        elif verdict is Verdict.NOT_RECORDED:
            message = (
                f"replication slot {name!r} exists on {where}, but this integration's state ({state}) has no record of creating it: "
                f"another zetl state (another ZETL_HOME or checkpoint path, e.g. a run from another directory) or another program owns it, "
                f"and zetl never takes over a slot it cannot prove is its own. Run the integration with the state that created the slot, "
                f"or set `slot_name` to another name; if nothing needs the slot any more, drop it ({drop_hint}) and restart."
            )
        else:  # CONSUMED_ELSEWHERE
            own = ownership.describe_slot() if ownership.holds_slot else "no record of confirming anything on it"
            checkpointed = format_lsn(checkpoint) if checkpoint is not None else "none"
            message = (
                f"replication slot {name!r} on {where} was confirmed up to {format_lsn(confirmed)}, past this integration's checkpoint "
                f"({checkpointed}; {own}): another consumer (another zetl state, pg_recvlogical, a subscriber) read changes from it, and "
                f"those changes never reached this integration's target. To copy the tables again: stop the other consumer, then "
                f"'zetl reset --drop-source-state {integration}' (or {drop_hint} and 'zetl reset {integration}') and restart."
            )
        raise NeedsAttentionError(message)

    def _before_confirm(self, lsn: int) -> int:
        """Record ``lsn`` as confirmed by this integration before the slot hears of it; what may
        be confirmed (the previous record when the state cannot be written: WAL is then
        retained a little longer, nothing is lost)."""
        assert self._ownership is not None
        try:
            self._ownership.record_confirmed(lsn)
        except OSError as exc:
            if not self._confirm_record_failed:
                self.log.warning("cannot record the confirmed position of slot %s in %s (%s); the slot keeps WAL until it can", self.slot_name, self._ownership.path, exc)
            self._confirm_record_failed = True
            return self._ownership.confirmed
        if self._confirm_record_failed:
            self.log.info("the confirmed position of slot %s is recorded again", self.slot_name)
        self._confirm_record_failed = False
        return lsn

    def local_state_files(self) -> list[Path]:
        """The column state (renames and drops are judged against it). The ownership record
        stays: the slot and publication it lists still exist until ``drop_source_state``."""
        path = ColumnState(self.context.state_dir, self.slot_name).path
        return [path] if path.exists() else []

    def _owned_on_server(self) -> tuple[SlotOwnership, dict[str, Any] | None, list[str]]:
        """Connect; the record, the slot when it is provably ours, the recorded publications
        that exist."""
        ownership = SlotOwnership(self.context.state_dir, self.slot_name).load()
        if not ownership.exists:
            return ownership, None, []
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.config, application=f"zetl:{self.context.integration}")
            self._catalog = Catalog(self._conn, self.config)
        assert self._catalog is not None
        identity = self._server_identity()
        if not ownership.is_for(identity):
            self.log.warning("the ownership record %s is of another server; nothing is removed on %s", ownership.path, identity.describe(self.config.host, self.config.port))
            return ownership, None, []
        slot = self._catalog.slot(self.slot_name) if ownership.holds_slot else None
        if slot is not None:
            confirmed = parse_lsn(slot["confirmed_flush_lsn"]) if slot.get("confirmed_flush_lsn") else 0
            verdict = judge_slot(ownership, identity, slot.get("database") or "", confirmed, None)
            if verdict is not Verdict.OWNED:
                self.log.warning(
                    "replication slot %s was confirmed past what this integration recorded (%s): someone else uses it, so it is left in place",
                    self.slot_name,
                    ownership.describe_slot(),
                )
                slot = None
        publications = [p for p in ownership.publications if self._catalog.publication(p) is not None]
        return ownership, slot, publications

    def source_state(self) -> list[str]:
        """The slot and publications this integration recorded creating and that still exist."""
        _, slot, publications = self._owned_on_server()
        where = f"{self.config.host}:{self.config.port}/{self.config.database}"
        lines = []
        if slot is not None:
            active = f", in use by {self._holder(slot)}" if slot["active"] else ""
            lines.append(f"replication slot {self.slot_name!r} on {where} (confirmed up to {slot['confirmed_flush_lsn'] or 'nothing'}{active})")
        lines += [f"publication {p!r} on {where}" for p in publications]
        return lines

    def drop_source_state(self) -> list[str]:
        """Drop the recorded slot (refused while in use) and publications; idempotent."""
        ownership, slot, publications = self._owned_on_server()
        assert self._catalog is not None or (slot is None and not publications)
        removed = []
        if slot is not None:
            if slot["active"]:
                raise SourceError(f"replication slot {self.slot_name!r} is in use by {self._holder(slot)}: stop that consumer first", retryable=False)
            if self._catalog is not None and self._catalog.drop_slot(self.slot_name):
                removed.append(f"replication slot {self.slot_name!r}")
        if ownership.holds_slot and (self._catalog is None or self._catalog.slot(self.slot_name) is None):
            ownership.forget_slot()
        for name in publications:
            assert self._catalog is not None
            if self._catalog.drop_publication(name):
                removed.append(f"publication {name!r}")
            ownership.forget_publication(name)
        return removed

    def _stream_from(self, lsn: int | None, announced: set[TableId]) -> Iterator[Batch]:
        """Stream changes after ``lsn`` (None: from the slot's confirmed position)."""
        stream = self._stream if self._stream is not None and not self._stream.closed else self._open_stream()
        assert self._catalog is not None
        start = lsn or 0
        self._wait_for_slot_release()
        stream.start(start)
        self._streaming = True
        self._stream_lsn = max(self._stream_lsn, start)
        self._phase = "stream"
        self._next_discovery = time.monotonic() + self.config.table_discovery_interval
        for batch in stream.batches(start, announced, self._closed.is_set):
            end = batch.end_position
            if end is not None:
                self._position = str(end)
                if isinstance(end, PostgresPosition) and end.lsn > self._stream_lsn:
                    self._stream_lsn = end.lsn
            if batch.schema_changes and isinstance(end, PostgresPosition):
                tables = {c.table for c in batch.schema_changes}
                self._remember_shapes(
                    end.sort_key(),
                    {t: (stream.oids[t], shape_of(stream.schemas[t].names, stream.attnums.get(t, {}))) for t in tables if t in stream.oids},
                )
            yield batch
            self._maintenance()
            if self._drops:
                yield from self._hand_out_drops(announced)
            if self._rejoin or (self.config.table_discovery_interval > 0 and time.monotonic() >= self._next_discovery):
                self._rejoin = False
                yield from self._discover(announced)

    def _hand_out_drops(self, announced: set[TableId]) -> Iterator[Batch]:
        """Report the held drops the stream has now passed, in one batch of ``DropTable``.

        Guarantee: every change of a dropped table is handed out before its ``DropTable``. The
        drop was found by reading the catalog, then the WAL insert position ``lsn``; every
        transaction that wrote the table (before a DROP, or under the selected name before a
        RENAME) committed before that read, so its commit record lies before ``lsn``. The stream
        hands out transactions in commit order and a batch end at or past ``lsn`` only once
        every commit before it is out; the drop waits for such a batch.

        The batch ends at a position past the last stream position (same LSN, next step):
        resuming from it skips nothing the stream has not delivered, and the column state forgets
        the table once the sink made it durable. Before that, a restart finds the table in the
        column state and reports the drop again (sinks drop idempotently). A table of the same
        name created again joins only after the drop, through a position made durable first, so a
        restart never drops the table that came back.
        """
        due = self._drops.due(self._stream_lsn)
        if not due:
            return
        assert self._catalog is not None
        try:
            with self._catalog_lock:
                if self._closed.is_set():
                    return
                for drop in due:
                    renamed = self._catalog.remove_relation(self.publication_name, drop.oid)
                    if renamed is not None:
                        self.log.info("removed %s (replicated as %s) from publication %s", renamed, drop.table, self.publication_name)
        except SourceError as exc:
            self._catalog_failed(exc, "to leave dropped tables behind")
            return  # closing: the error is a consequence of the close
        stream = self._stream
        forgotten: dict[TableId, TableShape | None] = {}
        for drop in due:
            table = drop.table
            if stream is not None and stream.oids.get(table, drop.oid) == drop.oid:
                stream.oids.pop(table, None)
                stream.schemas.pop(table, None)
                stream.attnums.pop(table, None)
            self._tables = [t for t in self._tables if not (t.table == table and t.oid == drop.oid)]
            self._progress.pop(str(table), None)
            self._held_back.discard(table)
            announced.discard(table)  # a table created again under this name leads with its CreateTable
            forgotten[table] = None
        self._step += 1
        position = PostgresPosition("stream", self._stream_lsn, step=self._step)
        self._remember_shapes(position.sort_key(), forgotten)
        self._position = str(position)
        self._rejoin = True  # a table of the same name may be waiting to join
        self.log.info("reporting table(s) %s as dropped", ", ".join(str(d.table) for d in due))
        yield Batch(schema_changes=tuple(DropTable(d.table) for d in due), end_position=position)

    def _catalog_failed(self, exc: SourceError, used: str) -> None:
        """Raise what a failed catalog query on the side connection means; returns only when the
        source is closing (its connection was closed under the query).

        A retryable failure is a lost connection: raised as SourceConnectionError naming what the
        connection was ``used`` for, so the runner reconnects from the checkpoint."""
        if self._closed.is_set():
            return
        if not exc.retryable:
            raise exc
        raise SourceConnectionError(f"lost the Postgres connection used {used}: {exc.message}") from None

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
            self._catalog_failed(exc, "for heartbeats")
            return  # closing: the error is a consequence of the close

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
            reader = ChunkReader(conn, info.schema, self.config.snapshot_chunk_rows, self._reads(info.table))
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

    # -- tables joining while streaming ----------------------------------------------------
    def _discover(self, announced: set[TableId]) -> Iterator[Batch]:
        """Search the catalog for selected tables the publication does not cover; let them join."""
        interval = self.config.table_discovery_interval
        self._next_discovery = time.monotonic() + interval
        assert self._catalog is not None
        try:
            with self._catalog_lock:
                if self._closed.is_set():
                    return
                found = self._catalog.unpublished_tables(self.publication_name, self.context.tables)
                selected_now = self._catalog.selected_oids(self.context.tables)
                gone = gone_tables(self._replicated, selected_now)
                # read after the catalog: past the commit of every drop or rename it showed
                lsn = self._drop_position() if gone else 0
                for table, oid in gone.items():
                    self._drops.add(table, oid, lsn)
                    del self._replicated[table]
                    self.log.info("table %s was dropped, renamed or deselected; it is reported as dropped once the stream reaches %s", table, format_lsn(lsn))
                # a table created again under a dropped one's name joins after the drop
                found = [t for t in found if not self._drops.holds(t)]
                infos = self._catalog.tables(OnlyTables(found)) if found else []
        except SourceError as exc:
            self._catalog_failed(exc, "to look for new tables")
            return  # closing: the error is a consequence of the close
        lacking = [t for t in infos if Catalog.lacks_identity(t)]
        # reported only when still so at the next search: CREATE TABLE and ADD PRIMARY KEY are
        # often two transactions
        Catalog.check_identities([t for t in lacking if t.table in self._without_identity])
        self._without_identity = {t.table for t in lacking}
        for t in lacking:
            self.log.warning(
                "new table %s has no primary key and no REPLICA IDENTITY FULL: it is not replicated; zetl stops with an error "
                "if it is still so at the next search (in %.0f s)", t.table, interval
            )
        usable = [t for t in infos if not Catalog.lacks_identity(t)]
        if not usable or self._closed.is_set():
            return
        names = tuple(str(t.table) for t in usable)
        self.log.info("new table(s) matching the selection: %s; adding them to publication %s and copying their rows", ", ".join(names), self.publication_name)
        self._step += 1
        intent = PostgresPosition("stream", self._stream_lsn, joining=names, step=self._step)
        yield Batch(end_position=intent)
        if not self._wait_durable(intent):
            return
        yield from self._copy_joining(intent, announced, usable)

    def _wait_durable(self, position: PostgresPosition) -> bool:
        """Block until ``ack`` reached ``position`` (True) or the source is closed (False).

        The replication connection is kept alive meanwhile (the server drops a silent client).
        """
        started = time.monotonic()
        next_log = started + DURABLE_WAIT_LOG_INTERVAL
        while True:
            with self._ack_changed:
                if self._closed.is_set():
                    return False
                if self._acked is not None and self._acked >= position:
                    return True
                self._ack_changed.wait(0.5)
            self._keep_stream_alive()
            if time.monotonic() >= next_log:
                next_log += DURABLE_WAIT_LOG_INTERVAL
                self.log.warning("still waiting (%.0f s) for the sink to make %s durable before new tables join the publication", time.monotonic() - started, position)

    def _keep_stream_alive(self) -> None:
        """Send a status update if one is due, while the stream is not being read."""
        stream = self._stream
        if self._streaming and stream is not None and not stream.closed:
            stream.ack(0)  # acknowledges nothing new; sends the periodic status update

    def _copy_joining(self, position: PostgresPosition, announced: set[TableId], infos: list[TableInfo] | None = None) -> Iterator[Batch]:
        """Add each table of ``position.joining`` to the publication and copy its rows (resuming
        after ``position.last_key`` for the first); every position handed out is at ``position.lsn``."""
        from psycopg import Error

        assert self._catalog is not None
        lsn = position.lsn
        remaining = list(position.joining)
        if infos is None:  # resuming: the tables as they are now (gone or no longer selected: skipped)
            with self._catalog_lock:
                infos = self._catalog.tables(self.context.tables)
        by_name = {str(t.table): t for t in infos}
        after = position.last_key if position.table == (remaining[0] if remaining else None) else None
        lead: tuple[Any, ...] = ()
        try:
            while remaining and not self._closed.is_set():
                name = remaining[0]
                info = by_name.get(name)
                self._joining = tuple(remaining)
                if info is None:
                    self.log.warning("joining table %s is gone or no longer selected; its copy is abandoned", name)
                else:
                    with self._catalog_lock:
                        if self._closed.is_set():
                            return
                        joined = self._catalog.add_table(self.publication_name, info.table, lock_timeout=JOIN_LOCK_TIMEOUT)
                    if joined:
                        lead = yield from self._copy_table(info, lsn, tuple(remaining), after, announced)
                        if self._closed.is_set():
                            return
                remaining.pop(0)
                after = None
                self._step += 1
                yield Batch(schema_changes=lead, end_position=PostgresPosition("stream", lsn, joining=tuple(remaining), step=self._step))
                lead = ()
        finally:
            self._joining = ()
            conn, self._snapshot_conn = self._snapshot_conn, None
            if conn is not None:
                try:
                    conn.close()
                except Error:
                    pass

    def _copy_table(
        self, info: TableInfo, lsn: int, joining: tuple[str, ...], after: tuple[str, ...] | None, announced: set[TableId]
    ) -> Generator[Batch, None, tuple[Any, ...]]:
        """Copy the rows of a table that has just joined the publication, after key ``after``.

        Returns the table's ``CreateTable`` when no chunk carried it (an empty table), for the
        batch that closes the copy.

        The transaction snapshot is taken after the table joined, and after an ACCESS SHARE lock
        (taken before the snapshot, as a REPEATABLE READ transaction allows), so the schema and
        the rows read are of one moment and no DDL can change the table during the copy.
        """
        from psycopg import Error, errors, sql

        table, name = info.table, str(info.table)
        conn = self._snapshot_conn
        if conn is None or conn.closed:
            conn = connect(self.config, application=f"zetl:{self.context.integration}:copy")
            self._snapshot_conn = conn
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(table.namespace, table.name)))
            except errors.UndefinedTable:
                conn.execute("ROLLBACK")
                self.log.warning("joining table %s was dropped or renamed before its copy; the copy is abandoned", name)
                return ()
            described = Catalog(conn, self.config).tables(OnlyTables([table]))  # the snapshot starts here
            if not described:
                conn.execute("COMMIT")
                return ()
            info = described[0]
            self._tables = [t for t in self._tables if t.table != table] + [info]
            self._replicated[table] = info.oid
            if self._stream is not None:
                self._stream.schemas[table] = info.schema  # its first Relation message is no schema change
                self._stream.attnums[table] = dict(info.attnums)
            self._remember_shapes((1, lsn, self._step + 1), {table: (info.oid, shape_of(info.schema.names, info.attnums))})
            announced.add(table)
            # always: the target may hold an older table of that name (dropped, then created again)
            lead: tuple[Any, ...] = (CreateTable(table, info.schema),)
            total = info.estimated_rows or None
            rows = 0
            self.context.progress(table, 0, total)
            for arrow_rows, last_key in ChunkReader(conn, info.schema, self.config.snapshot_chunk_rows, self._reads(table)).chunks(after):
                if self._closed.is_set():
                    return ()
                self._step += 1
                rows += arrow_rows.num_rows
                position = PostgresPosition("stream", lsn, joining=joining, table=name, last_key=last_key, step=self._step)
                self._progress[name] = {"done": rows, "total": total}
                self.context.progress(table, rows, max(total or 0, rows) or None)
                yield Batch(schema_changes=lead, chunks=(RowChunk(table, Op.READ, arrow_rows, position),), end_position=position)
                lead = ()
                self._keep_stream_alive()
            conn.execute("COMMIT")
        except Error as exc:
            raise driver_error(exc, f"copying table {name}, which joined the publication", self.config) from None
        self._progress[name] = {"done": rows, "total": rows, "finished": True}
        self.context.progress(table, rows, rows)
        self.log.info("copied %d row(s) of joining table %s", rows, name)
        return lead

    # -- acknowledgements and status -------------------------------------------------------
    def durable(self, position: Position) -> None:
        """The column state follows the sink before the checkpoint does: a restart after the
        checkpoint never reports a rename the target already has."""
        if isinstance(position, PostgresPosition):
            self._save_shapes(position)

    def ack(self, position: Position) -> None:
        if not isinstance(position, PostgresPosition):
            return
        self._save_shapes(position)
        if position.in_snapshot:
            return
        with self._ack_changed:
            if self._acked is None or position > self._acked:
                self._acked = position
                self._ack_changed.notify_all()
        if self._stream is not None:
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
        if self._joining:
            data["joining"] = list(self._joining)
        dropping = self._drops.tables()
        if dropping:
            data["dropping"] = [str(t) for t in dropping]
        return data

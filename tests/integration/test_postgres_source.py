"""The Postgres source against the private Postgres 15 server of the test session."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from decimal import Decimal
from typing import Any, Callable, Iterator

import pytest

from zetl.jsonvalue import JsonText
from zetl.errors import NeedsAttentionError, SourceConnectionError, SourceError
from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import AddColumn, CreateTable, DropColumn
from zetl.schema.types import T
from zetl.tables import TableSelection
from zetl.testing.conformance import SourceConformance
from zetl.testing.servers import PostgresServer
from pgsql import Sql
from zetl_connectors.postgres import PostgresConfig, PostgresPosition, PostgresSource

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ITEMS = TableId("public", "items")


def make_source(server: PostgresServer, database: str, integration: str | None = None, tables: list[str] | None = None, **settings: Any) -> PostgresSource:
    config = PostgresConfig(host=server.host, port=server.port, database=database, user="postgres", heartbeat_interval=settings.pop("heartbeat_interval", 0.5), **settings)
    # one slot per test database: slot names are cluster-wide
    # state of its own per integration, kept across the restarts of one test
    state_dir = server.dir / "state" / (integration or database)
    state_dir.mkdir(parents=True, exist_ok=True)
    context = PluginContext(integration=integration or database, tables=TableSelection.of(tables or []), state_dir=state_dir)
    return PostgresSource(config, context)


def drain(
    source: PostgresSource,
    start: Any,
    until: Callable[[list[ChangeEvent], list[Batch]], bool],
    *,
    timeout: float = 20.0,
    on_batch: Callable[[Batch], None] | None = None,
    ack: bool = True,
) -> tuple[list[ChangeEvent], list[Batch]]:
    """Read until ``until`` holds, acknowledging every stream position as a sink would."""
    events: list[ChangeEvent] = []
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        events.extend(batch.iter_events())
        if on_batch is not None:
            on_batch(batch)
        if ack and batch.end_position is not None:
            source.ack(batch.end_position)
        if until(events, batches):
            return events, batches
        assert time.monotonic() < deadline, f"timed out; got {[str(e)[:200] for e in events[-5:]]}"
    return events, batches


def snapshot_done(batch: Batch) -> bool:
    """The batch that marks a table of the snapshot complete (tests using it have one table)."""
    end = batch.end_position
    return isinstance(end, PostgresPosition) and end.in_snapshot and end.table is None


def stream_ops(events: list[ChangeEvent]) -> list[tuple[str, Any]]:
    return [(e.op.name, (e.row or {}).get("id")) for e in events if e.op is not Op.READ]


ALL_TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE alltypes (
  id int PRIMARY KEY, i2 smallint, i8 bigint, num numeric(12,2), num_free numeric, f4 real, f8 double precision,
  ok boolean, txt text, vc varchar(20), ch char(3), raw bytea, d date, tm time, ts timestamp, tstz timestamptz,
  js json, jb jsonb, u uuid, ints int[], txts text[], m mood, iv interval, ip inet, nneg numeric(5,-2)
);
"""
ALL_TYPES_ROW = """INSERT INTO alltypes VALUES (1, -3, 9000000000, 1234.56, 3.14159265358979323846, 1.5, 2.25,
  true, 'héllo, "world"' || chr(10) || 'line2', 'v', 'ab', '\\x00ff', '2024-02-29', '13:14:15.5', '2024-01-02 03:04:05.123456',
  '2024-01-02 03:04:05+02', '{"a": [1, 2]}', '{"b": {"c": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{1,NULL,3}', '{"x,y","q\\"z",NULL}', 'happy', '1 day 2 hours', '10.0.0.1/8', 12345)"""
ALL_TYPES_NULLS = "INSERT INTO alltypes (id, txt) VALUES (2, '')"

EXPECTED_ROW = {
    "id": 1, "i2": -3, "i8": 9000000000, "num": Decimal("1234.56"), "num_free": "3.14159265358979323846", "f4": 1.5, "f8": 2.25,
    "ok": True, "txt": 'héllo, "world"\nline2', "vc": "v", "ch": "ab ", "raw": b"\x00\xff", "d": dt.date(2024, 2, 29),
    "tm": dt.time(13, 14, 15, 500000), "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "tstz": dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.timezone.utc), "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "ints": [1, None, 3], "txts": ["x,y", 'q"z', None], "m": "happy", "iv": "P1DT2H", "ip": "10.0.0.1/8", "nneg": Decimal("12300"),
}  # fmt: skip


def test_snapshot_and_stream_of_every_common_type(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql(ALL_TYPES_DDL)
    sql(ALL_TYPES_ROW)
    sql(ALL_TYPES_NULLS)
    with make_source(pg_server, pg_database) as source:
        schema = {s.table: s for s in source.discover()}[TableId("public", "alltypes")]
        types = {f.name: str(f.type) for f in schema.fields}
        assert types["num"] == "decimal(12,2)" and types["num_free"] == "string" and types["vc"] == "string(20)"
        assert types["ints"] == "list<int32>" and types["m"] == "string" and types["tstz"] == "timestamptz" and types["jb"] == "json"
        assert types["nneg"] == "decimal(7,0)"  # numeric(5,-2): the golden file's typmod is the server's

        def on_batch(batch: Batch) -> None:
            if any(c.op is Op.READ for c in batch.chunks):
                sql(ALL_TYPES_ROW.replace("VALUES (1,", "VALUES (3,"))

        events, _ = drain(source, None, lambda ev, _b: any(e.op is Op.INSERT for e in ev), on_batch=on_batch)
    snap = {e.after["id"]: dict(e.after) for e in events if e.op is Op.READ}  # type: ignore[index]
    streamed = next(dict(e.after) for e in events if e.op is Op.INSERT)  # type: ignore[arg-type]
    for row in (snap[1], streamed):
        assert row["tstz"] == EXPECTED_ROW["tstz"] and row["tstz"].utcoffset() == dt.timedelta(0)
        for column, value in EXPECTED_ROW.items():
            if column in ("id", "tstz"):
                continue
            assert row[column] == value, f"{column}: {row[column]!r} != {value!r}"
        assert row["js"] == JsonText('{"a": [1, 2]}') and row["jb"] == JsonText('{"b": {"c": null}}')  # as Postgres prints them
    assert snap[2]["txt"] == "" and all(v is None for k, v in snap[2].items() if k not in ("id", "txt")), "NULL and empty string stay distinct"


def test_infinite_dates_and_timestamps(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE ends (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz)")
    sql("INSERT INTO ends VALUES (1, 'infinity', '-infinity', 'infinity'), (2, '2024-01-01', '2024-01-01 00:00:00', '2024-01-01 12:00:00+05')")
    with make_source(pg_server, pg_database) as source:
        def on_batch(batch: Batch) -> None:
            if snapshot_done(batch):
                sql("INSERT INTO ends VALUES (3, '-infinity', 'infinity', '-infinity')")

        events, _ = drain(source, None, lambda ev, _b: any(e.op is Op.INSERT for e in ev), on_batch=on_batch)
    rows = {e.after["id"]: dict(e.after) for e in events}  # type: ignore[index]
    utc = dt.timezone.utc
    assert rows[1] == {"id": 1, "d": dt.date.max, "ts": dt.datetime.min, "tstz": dt.datetime.max.replace(tzinfo=utc)}
    assert rows[2]["tstz"] == dt.datetime(2024, 1, 1, 7, 0, tzinfo=utc) and rows[2]["d"] == dt.date(2024, 1, 1)
    assert rows[3] == {"id": 3, "d": dt.date.min, "ts": dt.datetime.max, "tstz": dt.datetime.min.replace(tzinfo=utc)}


def test_inserts_updates_deletes_truncate_stream_in_commit_order(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))")
    sql("CREATE TABLE other (id int PRIMARY KEY)")  # not selected: must not appear
    with make_source(pg_server, pg_database, tables=["public.items"], snapshot="never") as source:
        def on_batch(batch: Batch) -> None:
            if batch.end_position is not None and not on_batch.done:  # type: ignore[attr-defined]
                on_batch.done = True  # type: ignore[attr-defined]
                with sql.conn.transaction():
                    sql("INSERT INTO items VALUES (1, 'a', 1.10), (2, 'b', 2.20)")
                    sql("INSERT INTO other VALUES (1)")
                sql("UPDATE items SET name = 'A' WHERE id = 1")
                sql("UPDATE items SET id = 20 WHERE id = 2")
                sql("DELETE FROM items WHERE id = 1")
                sql("TRUNCATE items")

        on_batch.done = False  # type: ignore[attr-defined]
        events, batches = drain(source, None, lambda ev, _b: any(e.op is Op.TRUNCATE for e in ev), on_batch=on_batch)
    assert stream_ops(events) == [("INSERT", 1), ("INSERT", 2), ("UPDATE", 1), ("UPDATE", 20), ("DELETE", 1), ("TRUNCATE", None)]
    assert {e.table for e in events} == {ITEMS}
    update_key = events[3]
    assert update_key.before == {"id": 2} and update_key.after == {"id": 20, "name": "b", "amount": Decimal("2.20")}
    assert events[4].before == {"id": 1}
    assert events[0].txid == events[1].txid and events[0].position == events[1].position
    assert events[0].commit_ts is not None and events[0].commit_ts.tzinfo is not None
    creates = [c for b in batches for c in b.schema_changes if isinstance(c, CreateTable)]
    assert [c.table for c in creates] == [ITEMS]
    ends = [b.end_position for b in batches if b.end_position is not None]
    assert ends == sorted(ends)


def test_unchanged_toast_value_is_never_null(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    big = "".join(chr(65 + (i * 7919) % 26) for i in range(100_000))
    for table in ("docs", "docs_full"):
        sql(f"CREATE TABLE {table} (id int PRIMARY KEY, body text, n int)")
        sql(f"ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL")  # out of line, never compressed inline
        sql(f"INSERT INTO {table} VALUES (1, %s, 0)", (big,))
    sql("ALTER TABLE docs_full REPLICA IDENTITY FULL")
    with make_source(pg_server, pg_database) as source:
        def on_batch(batch: Batch) -> None:
            end = batch.end_position
            if isinstance(end, PostgresPosition) and end.in_snapshot and len(end.tables_done) == 2 and end.table is None:
                sql("UPDATE docs SET n = 1 WHERE id = 1")
                sql("UPDATE docs_full SET n = 1 WHERE id = 1")

        events, _ = drain(source, None, lambda ev, _b: len([e for e in ev if e.op is Op.UPDATE]) == 2, on_batch=on_batch)
    read = next(e for e in events if e.op is Op.READ)
    assert read.after is not None and read.after["body"] == big
    update, update_full = (e for e in events if e.op is Op.UPDATE)
    assert update.after is not None and update.after["n"] == 1
    assert update.after["body"] is UNCHANGED, "an unchanged TOAST value must arrive as UNCHANGED, never None"
    # under REPLICA IDENTITY FULL the old row carries the value: the event is complete
    assert update_full.table.name == "docs_full" and update_full.after is not None
    assert update_full.after["body"] == big, "the unchanged value is taken from the old row"


def test_add_and_drop_column_mid_stream(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))")
    sql("INSERT INTO items VALUES (1, 'a', 1)")
    with make_source(pg_server, pg_database) as source:
        def on_batch(batch: Batch) -> None:
            if snapshot_done(batch):
                sql("INSERT INTO items VALUES (2, 'b', 2)")
                sql("ALTER TABLE items ADD COLUMN qty int, DROP COLUMN amount")
                sql("INSERT INTO items VALUES (3, 'c', 7)")
                sql("ALTER TABLE items ALTER COLUMN qty TYPE bigint")
                sql("UPDATE items SET qty = 8 WHERE id = 3")

        events, batches = drain(source, None, lambda ev, _b: any(e.op is Op.UPDATE for e in ev), on_batch=on_batch)
    stream_batches = [b for b in batches if b.events or b.schema_changes]
    first_new = next(b for b in stream_batches if any(e.row and e.row.get("id") == 3 for e in b.events))
    kinds = [type(c).__name__ for c in first_new.schema_changes]
    assert kinds == ["DropColumn", "AddColumn"], kinds
    assert isinstance(first_new.schema_changes[1], AddColumn) and first_new.schema_changes[1].field.type == T.int32
    assert isinstance(first_new.schema_changes[0], DropColumn) and first_new.schema_changes[0].column == "amount"
    assert first_new.events[0].after == {"id": 3, "name": "c", "qty": 7}
    old_shape = next(e for e in events if e.op is Op.INSERT and e.after and e.after["id"] == 2)
    assert old_shape.after == {"id": 2, "name": "b", "amount": Decimal("2.00")}
    update_batch = next(b for b in stream_batches if any(e.op is Op.UPDATE for e in b.events))
    assert [str(c) for c in update_batch.schema_changes] == ["alter column public.items.qty type int32 -> int64"]
    assert update_batch.events[0].after == {"id": 3, "name": "c", "qty": 8}


def test_restart_from_checkpoint_without_loss_or_duplicate(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))")
    sql("INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(1, 25) g")
    # 1) crash in the middle of the snapshot (after the first chunk of 10 rows)
    with make_source(pg_server, pg_database, snapshot_chunk_rows=10) as source:
        events, batches = drain(source, None, lambda ev, _b: len(ev) >= 10)
    checkpoint = batches[-1].end_position
    assert isinstance(checkpoint, PostgresPosition) and checkpoint.in_snapshot and checkpoint.last_key == ("10",)
    # changes while the source is down: in the part already copied and in the part not yet copied
    sql("UPDATE items SET name = 'changed' WHERE id IN (5, 15)")
    sql("DELETE FROM items WHERE id IN (6, 16)")
    sql("INSERT INTO items VALUES (100, 'new', 1)")
    # 2) resume: remaining chunks from a new snapshot, then the stream replays everything since the slot's start
    with make_source(pg_server, pg_database, snapshot_chunk_rows=10) as source:
        events, batches = drain(source, checkpoint, lambda ev, _b: any(e.op is Op.INSERT for e in ev))
    reads = sorted(e.after["id"] for e in events if e.op is Op.READ)  # type: ignore[index]
    # the remaining chunks come from a snapshot taken now (row 100 included, row 16 gone) ...
    assert reads == [*(i for i in range(11, 26) if i != 16), 100], "the snapshot resumes after the last completed chunk"
    # ... and the stream replays every change since the slot's consistent point: the sink's upserts converge
    assert stream_ops(events) == [("UPDATE", 5), ("UPDATE", 15), ("DELETE", 6), ("DELETE", 16), ("INSERT", 100)]
    # 3) crash while streaming: the sink made only the first of two transactions durable
    stream_ends = [b.end_position for b in batches if b.events]
    sql("INSERT INTO items VALUES (101, 'x', 1)")
    sql("INSERT INTO items VALUES (102, 'y', 1)")
    with make_source(pg_server, pg_database) as source:
        events, batches = drain(source, stream_ends[-1], lambda ev, _b: any(e.after and e.after.get("id") == 102 for e in ev), ack=False)
        assert stream_ops(events) == [("INSERT", 101), ("INSERT", 102)]
        # a transaction's commit position is a valid resume point (a batch may hold both transactions)
        middle = next(e.position for e in events if e.after and e.after.get("id") == 101)
        assert middle is not None
        source.ack(middle)
    sql("INSERT INTO items VALUES (103, 'z', 1)")
    with make_source(pg_server, pg_database) as source:
        events, _ = drain(source, middle, lambda ev, _b: any(e.after and e.after.get("id") == 103 for e in ev))
    assert stream_ops(events) == [("INSERT", 102), ("INSERT", 103)], "resume gives exactly what follows the checkpoint"


def test_idle_slot_advances_thanks_to_heartbeats(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    sql("CREATE TABLE busy (id int)")  # not replicated: writes here retain WAL unless the slot moves
    with make_source(pg_server, pg_database, tables=["public.items"], snapshot="never", heartbeat_interval=0.2) as source:
        def confirmed() -> int:
            (lsn,) = sql("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = %s", (source.slot_name,))[0]
            return int(lsn)

        state: dict[str, int] = {}

        def on_batch(batch: Batch) -> None:
            if "start" not in state and batch.end_position is not None:
                state["start"] = confirmed()
                sql("INSERT INTO busy SELECT generate_series(1, 1000)")

        drain(
            source,
            None,
            lambda _e, b: "start" in state and confirmed() > state["start"] + 10_000 and source.status().get("heartbeats", 0) >= 2,
            on_batch=on_batch,
            timeout=15,
        )
        status = source.status()
        assert status["phase"] == "stream"
        assert 0 <= status["slot_lag_bytes"] < 10_000


def test_lost_connection_raises_retryable_error_and_resume_works(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    source = make_source(pg_server, pg_database, snapshot="never")
    source.open()
    last: list[Any] = []
    with pytest.raises(SourceConnectionError) as err:
        for batch in source.read(None):
            if batch.end_position is not None:
                last.append(batch.end_position)
            if not any(b for b in batch.events) and len(last) == 1:
                sql("INSERT INTO items VALUES (1)")
                last.append(None)
            if any(e.op is Op.INSERT for e in batch.events):
                last.append(batch.end_position)
                sql("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s", (source.slot_name,))
                sql("INSERT INTO items VALUES (2)")
    source.close()
    assert err.value.retryable
    with make_source(pg_server, pg_database, snapshot="never") as again:
        events, _ = drain(again, last[-1], lambda ev, _b: any(e.op is Op.INSERT for e in ev))
    assert stream_ops(events) == [("INSERT", 2)]


def test_missing_slot_needs_attention(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    with make_source(pg_server, pg_database, snapshot="never") as source:
        _, batches = drain(source, None, lambda _e, b: len(b) >= 1)
        slot = source.slot_name
    deadline = time.monotonic() + 60  # the server may need a moment to notice the closed connection
    while sql("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)):
        sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (slot,))
        assert time.monotonic() < deadline, "the slot stayed active"
        time.sleep(0.05)
    with make_source(pg_server, pg_database, snapshot="never") as source:
        with pytest.raises(NeedsAttentionError, match=f"slot '{slot}' no longer exists.*zetl reset"):
            next(iter(source.read(batches[0].end_position)))


def test_preflight_errors_are_clear(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE nokey (a int)")
    with pytest.raises(SourceError, match=r"public.nokey.*REPLICA IDENTITY FULL"):
        make_source(pg_server, pg_database).open()
    sql("ALTER TABLE nokey REPLICA IDENTITY FULL")
    sql("DROP ROLE IF EXISTS plain_user")
    sql("CREATE ROLE plain_user LOGIN")
    try:
        config = PostgresConfig(host=pg_server.host, port=pg_server.port, database=pg_database, user="plain_user")
        with pytest.raises(SourceError, match="REPLICATION privilege") as err:
            PostgresSource(config, PluginContext(integration="nopriv")).open()
        assert not err.value.retryable
        sql("ALTER ROLE plain_user REPLICATION")
        with pytest.raises(SourceError, match="publication"):
            PostgresSource(config, PluginContext(integration="nopriv")).open()
    finally:
        sql(f'REVOKE ALL ON DATABASE "{pg_database}" FROM plain_user')
        sql("DROP ROLE plain_user")
    with pytest.raises(SourceError, match="no table"):
        make_source(pg_server, pg_database, tables=["public.missing"]).open()


def test_wal_level_must_be_logical(tmp_path: Any) -> None:
    with PostgresServer(settings={"wal_level": "replica"}) as server:
        config = PostgresConfig(host=server.host, port=server.port, database="postgres", user="postgres")
        with pytest.raises(SourceError, match="wal_level is 'replica'"):
            PostgresSource(config, PluginContext(integration="wal")).open()


class TestPostgresConformance(SourceConformance):
    @pytest.fixture
    def source_factory(self, pg_server: PostgresServer, pg_database: str) -> Callable[[], PostgresSource]:
        return lambda: make_source(pg_server, pg_database)

    @pytest.fixture
    def source_driver(self, pg_server: PostgresServer, pg_database: str) -> Iterator[Any]:
        driver = _Driver(Sql(pg_server, pg_database))
        yield driver
        driver.sql.conn.close()


class _Driver:
    table = ITEMS

    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    def create(self) -> None:
        self.sql("CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))")

    def insert(self, rows: list[dict[str, Any]]) -> None:
        with self.sql.conn.transaction():
            for r in rows:
                self.sql("INSERT INTO items (id, name, amount) VALUES (%(id)s, %(name)s, %(amount)s)", r)

    def update(self, id: int, values: dict[str, Any]) -> None:
        from psycopg import sql

        sets = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values)
        self.sql.conn.execute(sql.SQL("UPDATE items SET {} WHERE id = %(id)s").format(sets), {**values, "id": id})

    def delete(self, id: int) -> None:
        self.sql("DELETE FROM items WHERE id = %s", (id,))


def test_server_restart_then_resume_from_checkpoint(tmp_path: Any) -> None:
    # A server of its own: restarting the session's server would disturb other tests. On a
    # clean shutdown each walsender waits until its client confirms everything it was sent;
    # a long wal_sender_timeout makes a source that stops answering fail this test every time
    # instead of racing pg_ctl's own timeout.
    with PostgresServer(settings={"wal_sender_timeout": "'10min'"}) as server:
        server.psql("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)")
        source = make_source(server, "postgres", integration="restart", snapshot="never", tables=["public.items"])
        source.open()
        checkpoint: list[Any] = []
        restart: threading.Thread | None = None
        restart_errors: list[BaseException] = []

        def restart_server() -> None:
            try:
                server.restart()
            except BaseException as exc:  # reported by the test thread
                restart_errors.append(exc)

        with pytest.raises(SourceConnectionError) as err:
            for batch in source.read(None):
                if batch.end_position is not None:
                    source.ack(batch.end_position)
                    checkpoint.append(batch.end_position)
                if restart is None and any(e.op is Op.INSERT for e in batch.events):
                    # WAL the publication does not carry moves the server's sent position past the
                    # last change: the source must still confirm it for the shutdown to finish
                    server.psql("INSERT INTO other VALUES (1)")
                    restart = threading.Thread(target=restart_server, daemon=True)
                    restart.start()  # the source keeps reading (and answering) while the server stops
                elif len(checkpoint) == 1 and not batch.events:
                    server.psql("INSERT INTO items VALUES (1)")
                    checkpoint.append(batch.end_position or checkpoint[-1])
        source.close()
        assert restart is not None
        restart.join(timeout=120)
        assert not restart.is_alive() and not restart_errors, f"the server could not restart: {restart_errors}"
        assert err.value.retryable
        server.psql("INSERT INTO items VALUES (2)")
        with make_source(server, "postgres", integration="restart", snapshot="never", tables=["public.items"]) as again:
            events, _ = drain(again, checkpoint[-1], lambda ev, _b: any(e.op is Op.INSERT and e.after and e.after["id"] == 2 for e in ev))
        assert stream_ops(events) == [("INSERT", 2)], "resuming after a restart gives what followed the checkpoint, once"


def test_initial_only_copies_without_a_slot(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, name text)")
    sql("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 7) g")
    with make_source(pg_server, pg_database, snapshot="initial_only", snapshot_chunk_rows=3) as source:
        events, batches = drain(source, None, lambda _e, _b: False)
        assert source.status()["snapshot"]["public.items"]["done"] == 7
    assert sorted(e.after["id"] for e in events) == list(range(1, 8))  # type: ignore[index]
    assert [len(c) for b in batches for c in b.chunks] == [3, 3, 1]
    assert sql("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()") == [(0,)]
    with make_source(pg_server, pg_database, snapshot="initial_only") as source:
        assert list(source.read(batches[-1].end_position)) == [], "a finished copy is not repeated"


def test_table_without_key_under_replica_identity_full(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE log (a int, b text)")
    sql("ALTER TABLE log REPLICA IDENTITY FULL")
    sql("INSERT INTO log VALUES (1, 'x'), (2, 'y')")
    with make_source(pg_server, pg_database, snapshot_chunk_rows=1) as source:
        assert source.discover()[0].primary_key == ()

        def on_batch(batch: Batch) -> None:
            if snapshot_done(batch):
                sql("UPDATE log SET b = 'z' WHERE a = 1")
                sql("DELETE FROM log WHERE a = 2")

        events, _ = drain(source, None, lambda ev, _b: any(e.op is Op.DELETE for e in ev), on_batch=on_batch)
    assert sorted(e.after["a"] for e in events if e.op is Op.READ) == [1, 2]  # type: ignore[index]
    update = next(e for e in events if e.op is Op.UPDATE)
    assert update.before == {"a": 1, "b": "x"} and update.after == {"a": 1, "b": "z"}
    assert next(e for e in events if e.op is Op.DELETE).before == {"a": 2, "b": "y"}


def test_publication_follows_the_selection_and_progress_is_reported(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE a (id int PRIMARY KEY)")
    sql("CREATE TABLE b (id int PRIMARY KEY)")
    sql("INSERT INTO a SELECT generate_series(1, 5)")

    def published() -> set[str]:
        return {r[0] for r in sql("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (f"zetl_{pg_database}"[:63],))}

    with make_source(pg_server, pg_database, tables=["public.a"]):
        pass
    assert published() == {"a"}
    progress: list[tuple[str, int, int | None]] = []
    config = PostgresConfig(host=pg_server.host, port=pg_server.port, database=pg_database, user="postgres", snapshot_chunk_rows=2)
    context = PluginContext(integration=pg_database, tables=TableSelection.of(["public.*"]), progress=lambda t, d, n: progress.append((str(t), d, n)), state_dir=pg_server.dir)
    with PostgresSource(config, context) as source:
        assert published() == {"a", "b"}, "the publication is brought in line with the selection"
        drain(source, None, lambda _e, b: any(snapshot_done(x) and x.end_position.tables_done == ("public.a", "public.b") for x in b))  # type: ignore[union-attr]
        assert source.status()["snapshot"]["public.a"] == {"done": 5, "total": 5, "finished": True}
    assert [p for p in progress if p[0] == "public.a"][-1] == ("public.a", 5, 5)
    assert [d for t, d, _ in progress if t == "public.a"] == [0, 2, 4, 5, 5]

"""Large transactions streamed while they run (pgoutput protocol 2), against a Postgres of this module
whose ``logical_decoding_work_mem`` is 64kB, so that a few thousand rows are enough to be streamed.

Each test checks through ``pg_stat_replication_slots`` that the server really streamed (or, with
``stream_in_progress: false``, did not stream) the transaction it is about.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from zetl.events import Batch, ChangeEvent, Op, Position
from zetl.plugin import PluginContext
from zetl.schema.changes import AddColumn
from zetl.tables import TableSelection
from zetl.testing.servers import PostgresServer
from pgsql import Sql
from zetl_connectors.postgres import PostgresConfig, PostgresSource
from zetl_connectors.postgres import streamed as streamed_buffer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

BIG = 5000
PAD = "repeat('p', 40)"  # about 80 bytes of decoded change per row: 64kB is exceeded after ~800 rows


def drain(
    source: PostgresSource, start: Position | None, until: Callable[[list[ChangeEvent], list[Batch]], bool], *, timeout: float = 60.0
) -> tuple[list[ChangeEvent], list[Batch]]:
    """Read until ``until`` holds, acknowledging every position as a sink would."""
    events: list[ChangeEvent] = []
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        events.extend(batch.iter_events())
        if batch.end_position is not None:
            source.ack(batch.end_position)
        if until(events, batches):
            return events, batches
        assert time.monotonic() < deadline, f"timed out after {len(events)} events"
    return events, batches


@pytest.fixture(scope="module")
def small_memory_server() -> Iterator[PostgresServer]:
    """A private Postgres that streams every transaction larger than 64kB of decoded changes."""
    server = PostgresServer(settings={"logical_decoding_work_mem": "64kB"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database(small_memory_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "v2_" + "".join(ch if ch.isalnum() else "_" for ch in request.node.name.lower())[:50]
    small_memory_server.psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        small_memory_server.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active")
        small_memory_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sql(small_memory_server: PostgresServer, database: str) -> Iterator[Sql]:
    s = Sql(small_memory_server, database)
    s("CREATE TABLE items (id int PRIMARY KEY, note text)")
    yield s
    s.conn.close()


@pytest.fixture(autouse=True)
def small_spill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill buffered transactions to disk beyond 64 KiB, so that the spill file is exercised too."""
    monkeypatch.setattr(streamed_buffer, "SPILL_BYTES", 64 * 1024)


def make_source(server: PostgresServer, database: str, state_dir: Path, **settings: Any) -> PostgresSource:
    config = PostgresConfig(host=server.host, port=server.port, database=database, user="postgres", heartbeat_interval=0.5, snapshot="never", **settings)
    return PostgresSource(config, PluginContext(integration=database, tables=TableSelection.of([]), state_dir=state_dir))


def streamed_txns(sql: Sql, database: str) -> int:
    rows = sql("SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = %s", ("zetl_" + database,))
    return int(rows[0][0])


def wait_streamed(sql: Sql, database: str, more_than: int, timeout: float = 30.0) -> int:
    """Poll the server's statistics until it has streamed more than ``more_than`` transactions."""
    deadline = time.monotonic() + timeout
    while True:
        count = streamed_txns(sql, database)
        if count > more_than:
            return count
        assert time.monotonic() < deadline, f"the server streamed no transaction (stream_txns stays {count})"
        time.sleep(0.1)


def ids(events: list[Any]) -> list[int]:
    return [e.after["id"] for e in events if e.op is Op.INSERT]


def insert_rows(first: int, last: int) -> str:
    return f"INSERT INTO items SELECT g, {PAD} FROM generate_series({first}, {last}) g"


def create_slot(server: PostgresServer, database: str, state_dir: Path) -> Position:
    """Create the integration's slot (snapshot: never) and return its first checkpoint."""
    with make_source(server, database, state_dir) as source:
        _events, batches = drain(source, None, lambda _e, b: any(x.end_position is not None for x in b))
    position = next(b.end_position for b in batches if b.end_position is not None)
    assert position is not None
    return position


def test_large_transactions_arrive_complete_once_in_commit_order(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    start = create_slot(small_memory_server, database, tmp_path)
    with make_source(small_memory_server, database, tmp_path) as source:
        first, second = Sql(small_memory_server, database), Sql(small_memory_server, database)
        try:
            # two large transactions whose streamed blocks interleave; the one begun last commits first
            first("BEGIN")
            second("BEGIN")
            first(insert_rows(1, BIG // 2))
            second(insert_rows(100_001, 101_500))
            sql("INSERT INTO items VALUES (-1, 'small, committed first')")
            first(insert_rows(BIG // 2 + 1, BIG))
            second(insert_rows(101_501, 103_000))
            second("COMMIT")
            first("COMMIT")
        finally:
            first.conn.close()
            second.conn.close()
        sql("INSERT INTO items VALUES (-2, 'small, committed last')")
        events, batches = drain(source, start, lambda ev, _b: -2 in ids(ev), timeout=60)
        assert wait_streamed(sql, database, 1) >= 2, "both large transactions were streamed"
    assert ids(events) == [-1, *range(100_001, 103_001), *range(1, BIG + 1), -2], "commit order, each row once"
    big = [e for e in events if e.op is Op.INSERT and 0 < e.after["id"] <= BIG]
    assert len({e.position for e in big}) == 1 and len({e.txid for e in big}) == 1, "one transaction, one commit position"
    small_first = next(e for e in events if e.after["id"] == -1)
    small_last = next(e for e in events if e.after["id"] == -2)
    second_position = next(e for e in events if e.after["id"] == 100_001).position
    assert small_first.position < second_position < big[0].position < small_last.position
    assert big[0].after["note"] == "p" * 40
    batch_of_big = [b for b in batches if any(e.op is Op.INSERT and e.after["id"] == 1 for e in b.iter_events())]
    assert len(batch_of_big) == 1, "a transaction is never split across batches"
    assert sum(1 for e in batch_of_big[0].iter_events() if e.position == big[0].position) == BIG
    assert batch_of_big[0].end_position is not None and batch_of_big[0].end_position >= big[0].position


def test_aborted_large_transaction_and_rolled_back_savepoint(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    start = create_slot(small_memory_server, database, tmp_path)
    with make_source(small_memory_server, database, tmp_path) as source:
        # a large transaction rolled back
        sql("BEGIN")
        sql(insert_rows(1, BIG))
        sql("ROLLBACK")
        # a large transaction whose middle savepoint (itself large) is rolled back
        sql("BEGIN")
        sql(insert_rows(10_001, 12_000))
        sql("SAVEPOINT middle")
        sql(insert_rows(20_001, 23_000))
        sql("SAVEPOINT nested")  # a subtransaction inside the one rolled back goes with it
        sql(insert_rows(30_001, 31_000))
        sql("RELEASE SAVEPOINT nested")
        sql("ROLLBACK TO SAVEPOINT middle")
        sql("SAVEPOINT kept")
        sql(insert_rows(40_001, 40_005))
        sql("RELEASE SAVEPOINT kept")
        sql("COMMIT")
        sql("INSERT INTO items VALUES (-1, 'marker')")
        events, _ = drain(source, start, lambda ev, _b: -1 in ids(ev), timeout=60)
        assert wait_streamed(sql, database, 1) >= 2, "both large transactions were streamed"
    assert ids(events) == [*range(10_001, 12_001), *range(40_001, 40_006), -1]


def test_rolled_back_savepoint_holding_the_first_change_keeps_the_table_description(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    # The server describes a table (Relation message) once per streamed transaction, tagged with
    # the subtransaction of the first change to it; rolling that subtransaction back must not
    # take the description with it, or the rows after it cannot be decoded.
    start = create_slot(small_memory_server, database, tmp_path)
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            with make_source(small_memory_server, database, tmp_path) as source:
                result["events"], _ = drain(source, start, lambda ev, _b: -1 in ids(ev), timeout=90)
        except BaseException as exc:  # reported by the test thread
            result["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()  # the source reads while the transaction runs, so its first block is streamed at once
    sql("BEGIN")
    sql("ALTER TABLE items ADD COLUMN extra int DEFAULT 7")  # the description changes in this transaction
    sql("SAVEPOINT first")
    sql(insert_rows(1, BIG // 2))
    sql("SELECT pg_switch_wal()")  # hand the WAL to the walsender now, while the savepoint is open
    wait_streamed(Sql(small_memory_server, database), database, 0)  # streamed before the rollback
    sql("ROLLBACK TO SAVEPOINT first")
    sql(insert_rows(50_001, 50_000 + BIG // 2))
    sql("COMMIT")
    sql("INSERT INTO items VALUES (-1, 'marker')")
    reader.join(120)
    assert not reader.is_alive() and "error" not in result, result.get("error")
    events = result["events"]
    assert ids(events) == [*range(50_001, 50_001 + BIG // 2), -1]
    assert all(e.after["extra"] == 7 for e in events if e.op is Op.INSERT and e.after["id"] > 0), "rows decoded with the new description"


def test_restart_while_a_transaction_is_streamed_yields_it_exactly_once(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    other = Sql(small_memory_server, database)
    try:
        start = create_slot(small_memory_server, database, tmp_path)
        with make_source(small_memory_server, database, tmp_path) as source:
            other("BEGIN")
            other(insert_rows(1, BIG // 2))
            sql("INSERT INTO items VALUES (-1, 'small, inside the large one')")
            # read until the small transaction is delivered and part of the large one is buffered
            events, batches = drain(source, start, lambda ev, _b: -1 in ids(ev) and bool(source._stream and source._stream.streamed), timeout=60)
            assert ids(events) == [-1]
            checkpoint = next(b.end_position for b in batches if any(e.after["id"] == -1 for e in b.iter_events()))
            assert checkpoint is not None
            source.ack(checkpoint)
            # the crash: the source goes away with the large transaction half received
        other(insert_rows(BIG // 2 + 1, BIG))
        other("COMMIT")
    finally:
        other.conn.close()
    sql("INSERT INTO items VALUES (-2, 'after')")
    with make_source(small_memory_server, database, tmp_path) as source:
        events, _ = drain(source, checkpoint, lambda ev, _b: -2 in ids(ev), timeout=60)
    assert ids(events) == [*range(1, BIG + 1), -2], "resumed after the small transaction; the large one exactly once"


def test_protocol_1_when_streaming_is_off(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    start = create_slot(small_memory_server, database, tmp_path)
    sql(insert_rows(1, BIG))
    sql("INSERT INTO items VALUES (-1, 'marker')")
    with make_source(small_memory_server, database, tmp_path, stream_in_progress=False) as source:
        events, _ = drain(source, start, lambda ev, _b: -1 in ids(ev), timeout=60)
        assert source._stream is not None and not source._stream.streaming
    assert ids(events) == [*range(1, BIG + 1), -1]
    assert streamed_txns(sql, database) == 0, "protocol 1 does not stream in-progress transactions"


def test_column_added_inside_a_streamed_transaction(small_memory_server: PostgresServer, database: str, sql: Sql, tmp_path: Path) -> None:
    start = create_slot(small_memory_server, database, tmp_path)
    with make_source(small_memory_server, database, tmp_path) as source:
        sql("BEGIN")
        sql(insert_rows(1, 2000))
        sql("ALTER TABLE items ADD COLUMN extra int")
        sql("INSERT INTO items SELECT g, 'q', g * 2 FROM generate_series(2001, 4000) g")
        sql("COMMIT")
        sql("INSERT INTO items VALUES (-1, 'marker', 7)")
        events, batches = drain(source, start, lambda ev, _b: -1 in ids(ev), timeout=60)
        assert wait_streamed(sql, database, 0) >= 1
    assert ids(events) == [*range(1, 4001), -1]
    added = [(b, c) for b in batches for c in b.schema_changes if isinstance(c, AddColumn)]
    assert [c.field.name for _b, c in added] == ["extra"]
    batch, _change = added[0]
    assert any(e.after["id"] == 1 for e in batch.iter_events()), "the change leads the batch of the transaction that made it"
    rows = {e.after["id"]: e.after for e in events}
    assert rows[1]["extra"] is None and rows[2001]["extra"] == 4002 and rows[-1]["extra"] == 7

"""Column renames in the Postgres source: reported as ``rename.column`` (the column keeps its
attnum), told from a drop + add, found again when they happened while zetl was stopped, and
applied by the lenient policy end to end (the evolve policy end to end, with Iceberg:
tests/integration/test_filters_postgres_iceberg.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

from zetl.config.load import Integration, parse_integration
from zetl.config.yamlfile import load_yaml
from zetl.events import Batch, ChangeEvent, TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.schema.changes import AddColumn, CreateTable, DropColumn, RenameColumn, SchemaChange
from zetl.status import State
from zetl.tables import TableSelection
from zetl.testing.plugins import FileSink
from zetl.testing.servers import PostgresServer
from zetl_connectors.postgres import PostgresConfig, PostgresPosition, PostgresSource
from zetl_connectors.postgres.columnstate import ColumnState

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ITEMS = TableId("public", "items")
DEADLINE = 30.0


def make_source(server: PostgresServer, database: str, state_dir: Path) -> PostgresSource:
    config = PostgresConfig(host=server.host, port=server.port, database=database, user="postgres", heartbeat_interval=0.5)
    context = PluginContext(integration=database, tables=TableSelection.of(["public.items"]), state_dir=state_dir)
    return PostgresSource(config, context)


@pytest.fixture
def sql(pg_server: PostgresServer, pg_database: str) -> Iterator[Callable[[str], None]]:
    conn = psycopg.connect(pg_server.dsn(pg_database), autocommit=True)
    conn.execute("SET lock_timeout = '10s'")  # a test that blocks fails instead of hanging

    def run(query: str) -> None:
        conn.execute(query)

    yield run
    conn.close()


class Reader:
    """Reads one source's batches on demand, acknowledging positions as a sink would."""

    def __init__(self, source: PostgresSource, start: PostgresPosition | None) -> None:
        self.source = source
        self.batches: Iterator[Batch] = source.read(start)
        self.changes: list[SchemaChange] = []
        self.events: list[ChangeEvent] = []
        self.last: PostgresPosition | None = None
        self.ack = True  # False: positions are no longer acknowledged (a sink that stopped writing)

    def until(self, done: Callable[[Batch], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        for batch in self.batches:
            self.changes.extend(c for c in batch.schema_changes if not isinstance(c, CreateTable))
            self.events.extend(batch.iter_events())
            if isinstance(batch.end_position, PostgresPosition) and self.ack:
                self.source.ack(batch.end_position)
                self.last = batch.end_position
            if done(batch):
                return
            assert time.monotonic() < deadline, f"timed out; changes {self.changes}, events {[e.after for e in self.events]}"

    def streaming(self) -> None:
        """Until a batch of the stream arrived: the snapshot's transaction (and its lock) is over."""
        self.until(lambda b: isinstance(b.end_position, PostgresPosition) and not b.end_position.in_snapshot)

    def row(self, key: int) -> dict[str, Any]:
        self.until(lambda b: any(e.after is not None and e.after.get("id") == key for e in self.events))
        return next(e.after for e in reversed(self.events) if e.after is not None and e.after.get("id") == key)


def test_rename_mid_stream_is_reported_as_rename(pg_server: PostgresServer, pg_database: str, sql: Callable[[str], None], tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, a text, n int)")
    sql("INSERT INTO items VALUES (1, 'one', 1)")
    source = make_source(pg_server, pg_database, tmp_path)
    source.open()
    try:
        reader = Reader(source, None)
        reader.streaming()
        # a row written before the rename in the same transaction takes the new name
        sql("BEGIN; INSERT INTO items VALUES (2, 'two', 2); ALTER TABLE items RENAME COLUMN a TO b; INSERT INTO items VALUES (3, 'three', 3); COMMIT")
        # more DDL before the source reads the Relation messages: when the message naming c is
        # decoded, the catalog already calls that column d; its attnum still tells
        sql("ALTER TABLE items RENAME COLUMN b TO c; INSERT INTO items VALUES (4, 'four', 4)")
        sql("ALTER TABLE items RENAME COLUMN c TO d; ALTER TABLE items ADD COLUMN e int; INSERT INTO items VALUES (5, 'five', 5, 55)")
        assert reader.row(5) == {"id": 5, "d": "five", "n": 5, "e": 55}
    finally:
        source.close()
    assert reader.row(2) == {"id": 2, "b": "two", "n": 2} and reader.row(3) == {"id": 3, "b": "three", "n": 3}
    assert reader.row(4) == {"id": 4, "c": "four", "n": 4}
    assert [str(c) for c in reader.changes] == [
        "rename column public.items.a to b",
        "rename column public.items.b to c",
        "rename column public.items.c to d",
        "add column public.items.e int32 after n",
    ]


def test_drop_and_add_of_the_same_type_at_the_same_place_stays_drop_and_add(
    pg_server: PostgresServer, pg_database: str, sql: Callable[[str], None], tmp_path: Path
) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, a text)")
    source = make_source(pg_server, pg_database, tmp_path)
    source.open()
    try:
        reader = Reader(source, None)
        reader.streaming()
        sql("ALTER TABLE items DROP COLUMN a; ALTER TABLE items ADD COLUMN b text; INSERT INTO items VALUES (1, 'x')")
        assert reader.row(1) == {"id": 1, "b": "x"}
    finally:
        source.close()
    assert [type(c) for c in reader.changes] == [DropColumn, AddColumn], reader.changes
    assert reader.changes[0] == DropColumn(ITEMS, "a")


def test_rename_while_stopped_is_reported_first_at_restart(pg_server: PostgresServer, pg_database: str, sql: Callable[[str], None], tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, a text)")
    sql("INSERT INTO items VALUES (1, 'one')")
    source = make_source(pg_server, pg_database, tmp_path)
    source.open()
    try:
        reader = Reader(source, None)
        reader.streaming()
        # a crash before the sink made anything after here durable: nothing more is acknowledged
        checkpoint = reader.last
        reader.ack = False
        sql("INSERT INTO items VALUES (2, 'two')")
        sql("ALTER TABLE items RENAME COLUMN a TO b")
        sql("INSERT INTO items VALUES (3, 'three')")
        reader.row(3)
        assert reader.changes == [RenameColumn(ITEMS, "a", "b")]
    finally:
        source.close()
    assert checkpoint is not None and not checkpoint.in_snapshot

    # The restart finds the rename (the column state still holds a), reports it first, then
    # replays row 2 in the shape of its time: the attnum tells the way back and forth.
    source = make_source(pg_server, pg_database, tmp_path)
    source.open()
    try:
        assert [s.names for s in source.discover()] == [("id", "a")]  # as the sink holds it
        reader = Reader(source, checkpoint)
        assert reader.row(3) == {"id": 3, "b": "three"} and reader.row(2) == {"id": 2, "a": "two"}
        assert reader.changes == [RenameColumn(ITEMS, "a", "b"), RenameColumn(ITEMS, "b", "a"), RenameColumn(ITEMS, "a", "b")]
    finally:
        source.close()
    checkpoint = reader.last
    state = ColumnState(tmp_path, source.slot_name).load()
    assert sorted(state.tables[str(ITEMS)][1].values()) == ["b", "id"]  # saved once durable

    # renamed while stopped, with rows after it
    sql("ALTER TABLE items RENAME COLUMN b TO c; INSERT INTO items VALUES (4, 'four')")
    source = make_source(pg_server, pg_database, tmp_path)
    source.open()
    try:
        assert [s.names for s in source.discover()] == [("id", "b")]
        reader = Reader(source, checkpoint)
        reader.until(lambda b: True)
        # its batch resumes where the checkpoint does, yet moves it on (acknowledged at once)
        renamed_at = reader.last
        assert renamed_at is not None and renamed_at.lsn == checkpoint.lsn and renamed_at > checkpoint
        assert reader.row(4) == {"id": 4, "c": "four"}
        assert reader.changes == [RenameColumn(ITEMS, "b", "c")]
    finally:
        source.close()
    state = ColumnState(tmp_path, source.slot_name).load()
    assert sorted(state.tables[str(ITEMS)][1].values()) == ["c", "id"]


def _integration(tmp_path: Path, server: PostgresServer, database: str) -> Integration:
    path = tmp_path / "renames.yaml"
    path.write_text(
        f"""name: pg-renames
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  heartbeat_interval: 1s
sink: {{type: file, path: out.db}}
tables: [public.items]
schema_evolution: {{behavior: lenient}}
batching: {{max_delay: 100ms}}
checkpoint:
  path: {tmp_path / 'state.db'}
"""
    )
    result, issues = parse_integration(load_yaml(path))
    assert not issues and result is not None, issues
    return result


def test_lenient_keeps_the_old_column_and_adds_the_new_one(pg_server: PostgresServer, pg_database: str, sql: Callable[[str], None], tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, a text)")
    sql("INSERT INTO items VALUES (1, 'one')")

    def rows() -> dict[int, dict[str, Any]]:
        try:
            return {int(r["id"]): r for r in FileSink.read_rows(tmp_path / "out.db", "public.items")}
        except sqlite3.Error:  # the file or its table is not there yet
            return {}

    def run(change: Callable[[], None], done: Callable[[dict[int, dict[str, Any]]], bool]) -> None:
        runner = IntegrationRunner(_integration(tmp_path, pg_server, pg_database))
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + DEADLINE
            while runner.status.source.get("phase") != "stream":
                assert thread.is_alive() and time.monotonic() < deadline, runner.status.last_error
                time.sleep(0.05)
            change()
            while not done(rows()):
                assert thread.is_alive() and time.monotonic() < deadline, (runner.status.last_error, rows())
                time.sleep(0.1)
        finally:
            runner.stop.set()
            thread.join(30)
        assert not thread.is_alive() and runner.status.state is State.STOPPED, runner.status.last_error

    # mid-stream: a is kept (null from now on) and b is added
    def rename_mid_stream() -> None:
        sql("INSERT INTO items VALUES (2, 'two')")
        sql("ALTER TABLE items RENAME COLUMN a TO b")
        sql("INSERT INTO items VALUES (3, 'three')")

    run(rename_mid_stream, lambda r: 3 in r)
    # while stopped: found at the restart, the same rule applies to b -> c
    sql("ALTER TABLE items RENAME COLUMN b TO c; INSERT INTO items VALUES (4, 'four')")
    run(lambda: None, lambda r: 4 in r)
    got = {k: (v.get("a"), v.get("b"), v.get("c")) for k, v in rows().items()}
    assert got == {1: ("one", None, None), 2: ("two", None, None), 3: (None, "three", None), 4: (None, None, "four")}, got

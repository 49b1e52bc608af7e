"""Replicated tables that leave the selection while the Postgres source streams, or while zetl is
stopped, are reported as ``drop.table`` (``DropTable``) after the rows still ahead in the WAL.

Against the private Postgres of the test session: a drop mid-stream with rows written just
before it, a rename out of the selection, a drop and re-create under the same name, drops found
at start (``table_discovery_interval: 0``) and replayed from an earlier checkpoint, and the
runner applying the policy's decision (lenient keeps and records, evolve drops).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from zetl_connectors.postgres import PostgresConfig, PostgresPosition, PostgresSource
from zetl_connectors.postgres.columnstate import ColumnState
from zetl_connectors.postgres.drops import DropWatch, gone_tables

from zetl.config.load import load_integration
from zetl.drift import drift_report
from zetl.events import Batch, ChangeEvent, TableId
from zetl.pipeline import SchemaHistory
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.schema.changes import CreateTable, DropTable
from zetl.statedb import StateDB
from zetl.status import State
from zetl.tables import TableSelection
from zetl.testing.plugins import FileSink, MemorySink
from zetl.testing.servers import PostgresServer
from pgsql import Sql

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ITEMS, GONE = TableId("public", "items"), TableId("public", "gone")


# -- bookkeeping (no server) -------------------------------------------------------------------
def test_gone_tables_by_name_and_oid_and_drops_held_until_their_lsn() -> None:
    replicated = {ITEMS: 10, GONE: 11, TableId("public", "again"): 12}
    now = {ITEMS: 10, TableId("public", "again"): 99, TableId("public", "new"): 13}
    assert gone_tables(replicated, now) == {TableId("public", "again"): 12, GONE: 11}
    watch = DropWatch()
    watch.add(GONE, 11, 500)
    watch.add(ITEMS, 10, 700)
    watch.add(GONE, 11, 900)  # already held: the first position stays
    assert watch.holds(GONE) and watch.tables() == [GONE, ITEMS]
    assert watch.due(499) == []
    assert [d.table for d in watch.due(600)] == [GONE] and not watch.holds(GONE)
    assert [d.table for d in watch.due(10_000)] == [ITEMS] and not watch


def test_column_state_forgets_dropped_tables_and_keeps_dotted_names(tmp_path: Path) -> None:
    dotted = TableId("public", "a.b")
    state = ColumnState(tmp_path, "slot")
    state.update({dotted: (5, {1: "id"}), GONE: (6, {1: "id"})})
    state.update({GONE: None})
    state.save()
    assert ColumnState(tmp_path, "slot").load().known() == {dotted: 5}


# -- helpers -----------------------------------------------------------------------------------
def make_source(server: PostgresServer, database: str, state_dir: Path, *, interval: float = 0.2, exclude: tuple[str, ...] = ()) -> PostgresSource:
    config = PostgresConfig(
        host=server.host, port=server.port, database=database, user="postgres", heartbeat_interval=0.3, table_discovery_interval=interval
    )
    context = PluginContext(integration=database, tables=TableSelection.of(["public.*"], list(exclude)), state_dir=state_dir)
    return PostgresSource(config, context)


def drain(
    source: PostgresSource,
    reader: Iterator[Batch],
    until: Callable[[list[Batch]], bool],
    *,
    on_batch: Callable[[Batch], None] | None = None,
    acknowledge: bool = True,
    timeout: float = 30.0,
) -> list[Batch]:
    """Read from ``reader`` (``source.read(...)``, continued across calls) until ``until`` holds,
    acknowledging every position as a sink would (but the last one without ``acknowledge``:
    the sink crashed before making it durable)."""
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in reader:
        batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
        if until(batches):
            if acknowledge and batch.end_position is not None:
                source.ack(batch.end_position)
            return batches
        if batch.end_position is not None:
            source.ack(batch.end_position)
        assert time.monotonic() < deadline, f"timed out; last batches {[str(b)[:200] for b in batches[-3:]]}"
    raise AssertionError("the source ended")


def streaming(batch: Batch) -> bool:
    end = batch.end_position
    return isinstance(end, PostgresPosition) and not end.in_snapshot and not end.joining and not end.step


def dropped(batches: list[Batch], table: TableId) -> int | None:
    """Index of the batch carrying the DropTable of ``table``."""
    return next((i for i, b in enumerate(batches) if DropTable(table) in b.schema_changes), None)


def events_of(batches: list[Batch], table: TableId) -> list[tuple[int, ChangeEvent]]:
    return [(i, e) for i, b in enumerate(batches) for e in b.iter_events() if e.table == table]


# -- the source --------------------------------------------------------------------------------
def test_drop_mid_stream_comes_after_the_rows_written_before_it(pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY, v text); INSERT INTO gone VALUES (1, 'a')")
    done: list[str] = []

    def on_batch(batch: Batch) -> None:
        if not done and streaming(batch):
            done.append("dropped")
            for first in range(2, 30_002, 1000):  # more transactions than one batch holds
                sql("INSERT INTO gone SELECT g, 'v' FROM generate_series(%s::int, %s::int) g", (first, first + 999))
            sql("UPDATE gone SET v = 'last' WHERE id = 1")
            sql("DROP TABLE gone")
            sql("INSERT INTO items VALUES (1)")

    # a search after every batch: it sees the table gone before the stream decoded its last rows
    with make_source(pg_server, pg_database, tmp_path, interval=0.001) as source:
        batches = drain(source, source.read(None), lambda b: dropped(b, GONE) is not None, on_batch=on_batch)
        assert source.status().get("dropping") is None
        publication = source.publication_name
    at = dropped(batches, GONE)
    assert at is not None and batches[at].schema_changes == (DropTable(GONE),) and not batches[at].events
    streamed = [(i, e) for i, e in events_of(batches, GONE) if e.op.name != "READ"]
    assert len(streamed) == 30_001 and all(i < at for i, _ in streamed), "every row written before the drop comes first"
    ends = [b.end_position for b in batches if b.end_position is not None]
    assert all(a <= b for a, b in zip(ends, ends[1:])) and ends[-1] == batches[at].end_position
    assert sql.published(publication) == {"items"}
    assert GONE not in ColumnState(tmp_path, source.slot_name).load().known(), "the acknowledged drop is forgotten"


def test_rename_out_of_the_selection_is_a_drop_and_leaves_the_publication(pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY)")
    done: list[str] = []

    def on_batch(batch: Batch) -> None:
        if not done and streaming(batch):
            done.append("renamed")
            sql("INSERT INTO gone VALUES (1)")
            sql("ALTER TABLE gone RENAME TO zz_archive")
            sql("INSERT INTO zz_archive VALUES (2)")  # under a name the selection excludes: not replicated

    with make_source(pg_server, pg_database, tmp_path, exclude=("public.zz_*",)) as source:
        reader = source.read(None)
        batches = drain(source, reader, lambda b: dropped(b, GONE) is not None, on_batch=on_batch)
        sql("INSERT INTO zz_archive VALUES (3); INSERT INTO items VALUES (1)")
        more = drain(source, reader, lambda b: any(e.table == ITEMS for x in b for e in x.iter_events()))
        publication = source.publication_name
    at = dropped(batches, GONE)
    assert at is not None
    assert [(i < at, e.op.name, (e.row or {})["id"]) for i, e in events_of(batches, GONE)] == [(True, "INSERT", 1)]
    assert not [e for b in batches + more for e in b.iter_events() if e.table.name == "zz_archive"]
    assert sql.published(publication) == {"items"}


def test_drop_and_create_again_is_a_drop_then_a_new_table_with_its_rows(pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY, v text); INSERT INTO gone VALUES (1, 'old')")
    done: list[str] = []

    def on_batch(batch: Batch) -> None:
        if not done and streaming(batch):
            done.append("recreated")
            sql("INSERT INTO gone VALUES (2, 'old')")
            sql("DROP TABLE gone; CREATE TABLE gone (id int PRIMARY KEY, w int); INSERT INTO gone VALUES (7, 70)")

    def copied(batches: list[Batch]) -> bool:
        return any(e.op.name == "READ" and (e.row or {}).get("id") == 7 for _i, e in events_of(batches, GONE))

    with make_source(pg_server, pg_database, tmp_path) as source:
        reader = source.read(None)
        batches = drain(source, reader, copied, on_batch=on_batch)
        sql("INSERT INTO gone VALUES (8, 80)")
        more = drain(source, reader, lambda b: len(events_of(b, GONE)) > 0)
        publication = source.publication_name
    at = dropped(batches, GONE)
    assert at is not None
    created = [i for i, b in enumerate(batches) if any(isinstance(c, CreateTable) and c.table == GONE and "w" in c.schema for c in b.schema_changes)]
    assert created and created[0] > at, "the new table is created after the old one is dropped"
    rows = [(i, e.op.name, dict(e.row or {})) for i, e in events_of(batches, GONE)]
    assert [r for r in rows if r[1] == "INSERT"] == [(r[0], "INSERT", {"id": 2, "v": "old"}) for r in rows if r[1] == "INSERT"]
    assert all(i < at for i, op, _ in rows if op == "INSERT") and [(op, row) for i, op, row in rows if i > at] == [("READ", {"id": 7, "w": 70})]
    assert [(e.op.name, dict(e.row or {})) for _i, e in events_of(more, GONE)] == [("INSERT", {"id": 8, "w": 80})]
    assert sql.published(publication) == {"items", "gone"}


def test_drops_while_stopped_are_found_at_start_and_not_repeated_once_durable(
    pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path
) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE gone (id int PRIMARY KEY); CREATE TABLE moved (id int PRIMARY KEY)")
    with make_source(pg_server, pg_database, tmp_path, interval=0) as source:
        reader = source.read(None)
        checkpoint = drain(source, reader, lambda b: streaming(b[-1]))[-1].end_position
        sql("INSERT INTO gone VALUES (1)")
        drain(source, reader, lambda b: bool(events_of(b, GONE)))
    # while stopped: one table dropped, one renamed out of the selection (excluded)
    sql("INSERT INTO gone VALUES (2); DROP TABLE gone; ALTER TABLE moved RENAME TO zz_moved")
    moved = TableId("public", "moved")
    # resumed from the earlier checkpoint (the slot, told of the later one, starts after it):
    # the row written while stopped comes first, then both drops, without any search. The first
    # time the sink crashes before the drop is durable: the next start reports it again.
    for acknowledge in (False, True):
        with make_source(pg_server, pg_database, tmp_path, interval=0, exclude=("public.zz_*",)) as source:
            assert [s.table for s in source.discover()] == [ITEMS]
            batches = drain(source, source.read(checkpoint), lambda b: dropped(b, GONE) is not None, acknowledge=acknowledge)
            slot = source.slot_name
        assert ColumnState(tmp_path, slot).load().known().keys() == ({ITEMS} if acknowledge else {ITEMS, GONE, moved})
        at = dropped(batches, GONE)
        assert at is not None and set(batches[at].schema_changes) == {DropTable(GONE), DropTable(moved)}
        if not acknowledge:  # the slot was told of every earlier position: the second time starts after the row
            assert [(i < at, e.op.name, (e.row or {})["id"]) for i, e in events_of(batches, GONE)] == [(True, "INSERT", 2)]
    drop_position = batches[at].end_position
    # resumed after the durable drop: nothing is dropped again
    with make_source(pg_server, pg_database, tmp_path, interval=0, exclude=("public.zz_*",)) as source:
        sql("INSERT INTO items VALUES (1)")
        again = drain(source, source.read(drop_position), lambda b: bool(events_of(b, ITEMS)))
    assert not [c for b in again for c in b.schema_changes if isinstance(c, DropTable)]


# -- through the runner ------------------------------------------------------------------------
def _config(tmp_path: Path, server: PostgresServer, database: str, behavior: str, sink: dict[str, Any]) -> Path:
    doc = {
        "name": f"pg-drop-{behavior}",
        "source": {
            "type": "postgres", "host": "127.0.0.1", "port": server.port, "database": database, "user": "postgres",
            "heartbeat_interval": "300ms", "table_discovery_interval": "300ms",
        },
        "sink": sink,
        "tables": ["public.*"],
        "schema_evolution": {"behavior": behavior},
        "batching": {"max_delay": "100ms"},
        "checkpoint": {"path": str(tmp_path / f"state-{behavior}.db")},
    }  # fmt: skip
    path = tmp_path / f"{behavior}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run_until(config: Path, reached: Callable[[IntegrationRunner], bool], step: Callable[[], None]) -> None:
    """Run the integration; once ``reached`` holds for the first time call ``step``, then wait
    until ``reached`` holds again after it."""
    stop = threading.Event()
    runner = IntegrationRunner(load_integration(config), stop)
    result: list[State] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    try:
        for action in (step, None):
            deadline = time.monotonic() + 30
            while not reached(runner):
                assert thread.is_alive(), f"the integration stopped: {runner.status.last_error}"
                assert time.monotonic() < deadline, f"timed out; source status {runner.status.source}"
                time.sleep(0.1)
            if action is not None:
                action()
    finally:
        stop.set()
        thread.join(30)
    assert result == [State.STOPPED], runner.status.last_error


def test_runner_lenient_keeps_the_table_records_it_and_drift_is_in_sync(pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE gone (id int PRIMARY KEY, v text); INSERT INTO gone VALUES (1, 'a')")
    config = _config(tmp_path, pg_server, pg_database, "lenient", {"type": "file", "path": "out.db"})
    out = tmp_path / "out.db"

    def rows(table: str) -> list[dict[str, Any]]:
        try:
            return FileSink.read_rows(out, table)
        except Exception:  # the file or its tables do not exist yet
            return []

    def history() -> list[dict[str, Any]]:
        try:
            return SchemaHistory(StateDB(tmp_path / "state-lenient.db"), "pg-drop-lenient").entries("public.gone")
        except sqlite3.Error:  # the daemon creates the file at the same moment: look again
            return []

    state: dict[str, bool] = {}

    def reached(runner: IntegrationRunner) -> bool:
        if not state:
            return runner.status.source.get("phase") == "stream" and rows("public.gone") == [{"id": 1, "v": "a"}]
        return any(e["change"] == "drop table public.gone" for e in history())

    def drop() -> None:
        state["dropped"] = True
        sql("INSERT INTO gone VALUES (2, 'b'); DROP TABLE gone")

    _run_until(config, reached, drop)
    assert sorted(r["id"] for r in rows("public.gone")) == [1, 2], "lenient keeps the table and its rows"
    [entry] = [e for e in history() if e["change"] == "drop table public.gone"]
    assert entry["decision"] == "skip" and "lenient" in entry["reason"]
    report = drift_report(load_integration(config))
    assert report.error is None and report.exit_code == 0, report.to_json()
    assert [(t["table"], t["recorded"]) for t in report.to_json()["target_only"]] == [("public.gone", True)]


def test_runner_evolve_drops_the_table_in_the_sink(pg_server: PostgresServer, pg_database: str, sql: Sql, tmp_path: Path) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE gone (id int PRIMARY KEY, v text); INSERT INTO gone VALUES (1, 'a')")
    MemorySink.instances.clear()
    config = _config(tmp_path, pg_server, pg_database, "evolve", {"type": "memory"})
    state: dict[str, bool] = {}

    def reached(runner: IntegrationRunner) -> bool:
        sink = MemorySink.instances[-1] if MemorySink.instances else None
        if sink is None:
            return False
        if not state:
            return runner.status.source.get("phase") == "stream" and bool(sink.rows(GONE))
        return DropTable(GONE) in sink.applied

    def drop() -> None:
        state["dropped"] = True
        sql("INSERT INTO gone VALUES (2, 'b'); DROP TABLE gone")

    _run_until(config, reached, drop)
    sink = MemorySink.instances[-1]
    assert GONE not in sink.tables and ITEMS in sink.tables
    written = [e for b in sink.batches for e in b.iter_events() if e.table == GONE]
    assert [(e.row or {})["id"] for e in written] == [1, 2], "the row written before the drop reached the table before it went"

"""Tables that join the selection while the Postgres source streams (``table_discovery_interval``).

Against the private Postgres 15 of the test session: a table created mid-stream arrives complete
(rows written before it was found are copied, later ones streamed, in order), a crash before and
in the middle of its copy resumes without loss, excluded tables and tables without a replica
identity are never published, a missing privilege is reported clearly, and the runner carries a
new table into the file sink.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

from zetl.config.load import parse_integration
from zetl.config.yamlfile import load_yaml
from zetl.errors import SourceError
from zetl.events import Batch, ChangeEvent, Op, Position, TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.schema.changes import CreateTable
from zetl.tables import TableSelection
from zetl.testing.plugins import FileSink
from zetl.testing.servers import PostgresServer
from pgsql import Sql as BaseSql
from zetl_connectors.postgres import PostgresConfig, PostgresPosition, PostgresSource

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LATE = TableId("public", "late")


# -- positions (no server) ---------------------------------------------------------------------
def test_joining_positions_round_trip_and_order() -> None:
    plain = PostgresPosition.stream(1000)
    intent = PostgresPosition("stream", 1000, joining=("public.a", "public.b"), step=1)
    chunk = PostgresPosition("stream", 1000, joining=("public.a", "public.b"), table="public.a", last_key=("7",), step=2)
    done = PostgresPosition("stream", 1000, joining=("public.b",), step=3)
    later = PostgresPosition.stream(1001)
    assert plain < intent < chunk < done < later, "copies sit between the stream position they start at and the next one"
    for p in (plain, intent, chunk, done, later):
        back = Position.from_json(p.to_json())
        assert back == p and isinstance(back, PostgresPosition)
        assert (back.joining, back.table, back.last_key, back.step) == (p.joining, p.table, p.last_key, p.step)
    assert plain.to_json() == {"kind": "postgres", "phase": "stream", "lsn": "0/3E8"}, "plain stream checkpoints keep their JSON"
    assert "copying public.a, public.b after key ['7']" in str(chunk)


# -- helpers -----------------------------------------------------------------------------------
class Sql(BaseSql):
    def rows(self, table: str) -> dict[int, str | None]:
        return {i: v for i, v in self(f"SELECT id, v FROM {table}")}  # noqa: S608 - a fixed test table name


@pytest.fixture
def sql(pg_server: PostgresServer, pg_database: str) -> Iterator[Sql]:
    s = Sql(pg_server, pg_database)
    yield s
    s.close()


def make_source(server: PostgresServer, database: str, *, user: str = "postgres", exclude: tuple[str, ...] = (), **settings: Any) -> PostgresSource:
    config = PostgresConfig(
        host=server.host, port=server.port, database=database, user=user,
        heartbeat_interval=0.5, table_discovery_interval=settings.pop("table_discovery_interval", 0.2), **settings,
    )  # fmt: skip
    # state of its own per test database, kept across the restarts of one test
    state_dir = server.dir / "state" / database
    state_dir.mkdir(parents=True, exist_ok=True)
    return PostgresSource(config, PluginContext(integration=database, tables=TableSelection.of(["public.*"], list(exclude)), state_dir=state_dir))


def drain(
    source: PostgresSource,
    start: Any,
    until: Callable[[list[ChangeEvent], list[Batch]], bool],
    *,
    on_batch: Callable[[Batch], None] | None = None,
    timeout: float = 30.0,
) -> tuple[list[ChangeEvent], list[Batch]]:
    """Read until ``until`` holds, acknowledging every position as a sink would."""
    events: list[ChangeEvent] = []
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        events.extend(batch.iter_events())
        if on_batch is not None:
            on_batch(batch)
        if batch.end_position is not None:
            source.ack(batch.end_position)
        if until(events, batches):
            return events, batches
        assert time.monotonic() < deadline, f"timed out; last events {[str(e)[:160] for e in events[-5:]]}"
    raise AssertionError("the source ended")


def streaming(batch: Batch) -> bool:
    """A batch of the change stream proper (not of a snapshot or of a joining table's copy)."""
    end = batch.end_position
    return isinstance(end, PostgresPosition) and not end.in_snapshot and not end.joining and not end.step


def ops(events: list[ChangeEvent], table: TableId) -> list[tuple[str, Any]]:
    return [(e.op.name, (e.row or {}).get("id")) for e in events if e.table == table]


def apply(events: list[ChangeEvent], table: TableId) -> dict[int, str | None]:
    """The table a sink applying ``events`` by primary key would hold."""
    state: dict[int, str | None] = {}
    for e in events:
        if e.table != table:
            continue
        if e.op is Op.DELETE:
            state.pop(e.before["id"], None)  # type: ignore[index]
        elif e.after is not None:
            state[e.after["id"]] = e.after["v"]
    return state


# -- the source --------------------------------------------------------------------------------
def test_table_created_mid_stream_arrives_complete_and_in_order(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    state: dict[str, bool] = {}
    with make_source(pg_server, pg_database, exclude=("public.skip_*",), snapshot_chunk_rows=2) as source:

        def on_batch(batch: Batch) -> None:
            if "created" not in state and streaming(batch):
                state["created"] = True
                # one transaction: the search cannot find the table empty
                sql(
                    "CREATE TABLE late (id int PRIMARY KEY, v text); CREATE TABLE skip_me (id int PRIMARY KEY, v text);"
                    "INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 5) g; INSERT INTO skip_me VALUES (1, 'x')"
                )
            if "changed" not in state and any(isinstance(c, CreateTable) and c.table == LATE for c in batch.schema_changes):
                state["changed"] = True  # the table is in the publication and its copy is under way
                sql("INSERT INTO late VALUES (6, 'v6')")
                sql("UPDATE late SET v = 'one' WHERE id = 1")
                sql("DELETE FROM late WHERE id = 2")
                sql("INSERT INTO skip_me VALUES (2, 'y')")

        events, batches = drain(source, None, lambda ev, _b: ("DELETE", 2) in ops(ev, LATE), on_batch=on_batch)
        assert source.status()["snapshot"]["public.late"] == {"done": 5, "total": 5, "finished": True}
    # the rows written before the table was found are copied, the later changes streamed after them
    assert ops(events, LATE) == [*(("READ", i) for i in range(1, 6)), ("INSERT", 6), ("UPDATE", 1), ("DELETE", 2)]
    assert apply(events, LATE) == sql.rows("late") == {1: "one", 3: "v3", 4: "v4", 5: "v5", 6: "v6"}
    first_late = next(i for i, b in enumerate(batches) if LATE in b.tables())
    assert batches[first_late].schema_changes[0] == CreateTable(LATE, batches[first_late].schema_changes[0].schema)  # type: ignore[attr-defined]
    assert [c.name for c in batches[first_late].schema_changes[0].schema.fields] == ["id", "v"]  # type: ignore[attr-defined]
    intent = batches[first_late - 1].end_position
    assert isinstance(intent, PostgresPosition) and intent.joining == ("public.late",) and not batches[first_late - 1].row_count
    ends = [b.end_position for b in batches if b.end_position is not None]
    assert all(a <= b for a, b in zip(ends, ends[1:])), "end positions never go backwards"
    # the excluded table is never published and none of its rows is read
    assert sql.published(source.publication_name) == {"items", "late"}
    assert not [e for e in events if e.table.name == "skip_me"]


def test_restart_before_and_in_the_middle_of_the_copy(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")

    def create_late(batch: Batch) -> None:
        if streaming(batch) and not sql("SELECT to_regclass('late')")[0][0]:
            sql("CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 7) g")

    # 1) crash once the joining position is durable, before the table joined the publication
    with make_source(pg_server, pg_database, snapshot_chunk_rows=2) as source:
        _, batches = drain(source, None, lambda _e, b: bool(getattr(b[-1].end_position, "joining", ())), on_batch=create_late)
        publication = source.publication_name
    intent = batches[-1].end_position
    assert isinstance(intent, PostgresPosition) and intent.joining == ("public.late",) and intent.table is None
    assert "late" not in sql.published(publication)
    # 2) the restart adds it and copies it; crash after the first chunk
    with make_source(pg_server, pg_database, snapshot_chunk_rows=2) as source:
        events, batches = drain(source, intent, lambda ev, _b: any(e.table == LATE for e in ev))
    assert "late" in sql.published(publication)
    assert ops(events, LATE) == [("READ", 1), ("READ", 2)]
    checkpoint = batches[-1].end_position
    assert isinstance(checkpoint, PostgresPosition) and checkpoint.table == "public.late" and checkpoint.last_key == ("2",)
    assert checkpoint.lsn == intent.lsn and checkpoint > intent
    # changes while down, in the part copied and in the part not yet copied
    sql("UPDATE late SET v = 'one' WHERE id = 1")
    sql("UPDATE late SET v = 'five' WHERE id = 5")
    sql("DELETE FROM late WHERE id = 6")
    sql("INSERT INTO late VALUES (100, 'hundred')")
    # 3) the copy resumes after key 2 in a new snapshot, then the stream replays from where the copy began
    with make_source(pg_server, pg_database, snapshot_chunk_rows=2) as source:
        resumed, batches = drain(source, checkpoint, lambda ev, _b: ("INSERT", 100) in [o for o in ops(ev, LATE) if o[0] != "READ"])
    assert ops(resumed, LATE) == [
        ("READ", 3), ("READ", 4), ("READ", 5), ("READ", 7), ("READ", 100),
        ("UPDATE", 1), ("UPDATE", 5), ("DELETE", 6), ("INSERT", 100),
    ]  # fmt: skip
    assert apply(events + resumed, LATE) == sql.rows("late")
    ends = [b.end_position for b in batches if b.end_position is not None]
    assert ends[0] > checkpoint and all(a <= b for a, b in zip(ends, ends[1:]))


def test_restart_copies_tables_created_while_stopped_and_drops_unselected_ones(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE a (id int PRIMARY KEY, v text)")
    with make_source(pg_server, pg_database, table_discovery_interval=0) as source:
        _, batches = drain(source, None, lambda _e, b: streaming(b[-1]))
        publication = source.publication_name
    checkpoint = batches[-1].end_position
    sql("CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'v' || g FROM generate_series(1, 3) g")
    # restarted with a narrower selection and searches disabled: the restart itself finds table b
    with make_source(pg_server, pg_database, exclude=("public.a",), table_discovery_interval=0) as source:
        assert sql.published(publication) == set(), "opening removes the unselected table and adds none without its copy"
        sql("INSERT INTO b VALUES (4, 'v4')")

        def on_batch(batch: Batch) -> None:
            if streaming(batch) and not sql("SELECT 1 FROM b WHERE id = 5"):
                sql("INSERT INTO b VALUES (5, 'v5')")

        def changes(batches: list[Batch]) -> list[tuple[str, str]]:
            return sorted((c.kind, c.table.name) for b in batches for c in b.schema_changes)

        # the newly excluded table a is reported as dropped once the stream has passed the point
        # at which the restart saw it leave the selection: wait for that as well
        events, batches = drain(
            source, checkpoint, lambda ev, b: ("INSERT", 5) in ops(ev, TableId("public", "b")) and ("drop.table", "a") in changes(b), on_batch=on_batch
        )
    assert sql.published(publication) == {"b"}
    assert ops(events, TableId("public", "b")) == [("READ", 1), ("READ", 2), ("READ", 3), ("READ", 4), ("INSERT", 5)]
    assert changes(batches) == [("create.table", "b"), ("drop.table", "a")]


def test_a_transaction_writing_the_table_while_it_joins_is_not_lost(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    """A transaction that wrote the new table before it joined the publication and commits after
    would be neither published nor seen by the copy: the join waits for it to end."""
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    watcher = Sql(pg_server, pg_database)
    writer = psycopg.connect(pg_server.dsn(pg_database), autocommit=False)
    join_waited = threading.Event()

    def commit_once_the_join_waits() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not join_waited.is_set():
            if watcher("SELECT count(*) FROM pg_locks WHERE relation = 'late'::regclass AND mode = 'ShareLock' AND NOT granted")[0][0]:
                join_waited.set()
            else:
                time.sleep(0.05)
        writer.execute("INSERT INTO late VALUES (2, 'while the join waits')")
        writer.commit()

    helper = threading.Thread(target=commit_once_the_join_waits, daemon=True)

    def on_batch(batch: Batch) -> None:
        if not helper.is_alive() and not join_waited.is_set() and streaming(batch) and not sql("SELECT to_regclass('late')")[0][0]:
            sql("CREATE TABLE late (id int PRIMARY KEY, v text)")
            writer.execute("INSERT INTO late VALUES (1, 'before the join')")  # left uncommitted
            helper.start()

    try:
        with make_source(pg_server, pg_database) as source:
            events, _ = drain(source, None, lambda ev, _b: len(ops(ev, LATE)) >= 2, on_batch=on_batch)
        helper.join(20)
        assert join_waited.is_set(), "the table joined the publication while a transaction writing it was open"
        assert ops(events, LATE) == [("READ", 1), ("READ", 2)]
    finally:
        writer.close()
        watcher.conn.close()


def test_new_table_without_replica_identity_is_reported_not_published(
    pg_server: PostgresServer, pg_database: str, sql: Sql, caplog: pytest.LogCaptureFixture
) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY)")
    steps: list[str] = []
    caplog.set_level(logging.WARNING)

    def warned(table: str) -> bool:
        return any(f"new table public.{table} has no primary key" in r.getMessage() for r in caplog.records)

    def on_batch(batch: Batch) -> None:
        if not steps and streaming(batch):
            steps.append("created")
            sql("CREATE TABLE keyed_later (id int, v text); INSERT INTO keyed_later VALUES (1, 'a')")
        elif steps == ["created"] and warned("keyed_later"):
            steps.append("keyed")  # the key arrives before the next search: the table joins
            sql("ALTER TABLE keyed_later ADD PRIMARY KEY (id)")
        elif steps == ["created", "keyed"] and any(c.table.name == "keyed_later" for c in batch.schema_changes):
            steps.append("nokey")
            sql("CREATE TABLE nokey (a int)")

    with make_source(pg_server, pg_database) as source:
        with pytest.raises(SourceError, match=r"public\.nokey.*REPLICA IDENTITY FULL") as err:
            drain(source, None, lambda _e, _b: False, on_batch=on_batch)
        assert not err.value.retryable
        assert steps == ["created", "keyed", "nokey"] and warned("nokey")
        assert sql.published(source.publication_name) == {"items", "keyed_later"}


def test_missing_ownership_is_reported_with_the_table_and_the_fix(pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    role = f"r_{pg_database}"[:63]
    sql(f'CREATE ROLE "{role}" LOGIN REPLICATION')
    try:
        sql(f'GRANT CREATE ON DATABASE "{pg_database}" TO "{role}"')
        sql("CREATE TABLE items (id int PRIMARY KEY)")
        sql(f'ALTER TABLE items OWNER TO "{role}"')

        def create_foreign(batch: Batch) -> None:
            if streaming(batch) and not sql("SELECT to_regclass('late')")[0][0]:
                sql(f'CREATE TABLE late (id int PRIMARY KEY); GRANT SELECT ON late TO "{role}"')

        with make_source(pg_server, pg_database, user=role) as source:
            with pytest.raises(SourceError) as err:
                drain(source, None, lambda _e, _b: False, on_batch=create_foreign)
            publication = source.publication_name
        message = str(err.value)
        assert "public.late" in message and "owner" in message and f'GRANT "postgres" TO "{role}"' in message, message
        assert not err.value.retryable and "late" not in sql.published(publication)
    finally:
        sql(f'DROP OWNED BY "{role}"')
        sql(f'DROP ROLE "{role}"')


# -- through the runner ------------------------------------------------------------------------
def test_runner_carries_a_new_table_into_the_file_sink(tmp_path: Path, pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    sql("CREATE TABLE items (id int PRIMARY KEY, v text)")
    sql("INSERT INTO items VALUES (1, 'a')")
    path = tmp_path / "pg.yaml"
    path.write_text(
        f"""name: pg-new-tables
source:
  type: postgres
  host: 127.0.0.1
  port: {pg_server.port}
  database: {pg_database}
  user: postgres
  table_discovery_interval: 300ms
sink: {{type: file, path: out.db}}
tables: ["public.*"]
batching: {{max_delay: 100ms}}
checkpoint:
  path: {tmp_path / 'state.db'}
"""
    )
    integration, issues = parse_integration(load_yaml(path))
    assert not issues and integration is not None

    def sink_rows(table: str) -> dict[int, Any]:
        try:
            return {int(r["id"]): r["v"] for r in FileSink.read_rows(tmp_path / "out.db", table)}
        except Exception:  # the file or the table does not exist yet
            return {}

    def wait_for(check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    runner = IntegrationRunner(integration)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: sink_rows("public.items") == {1: "a"} and runner.status.source.get("phase") == "stream")
        sql("CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 4) g")
        wait_for(lambda: sink_rows("public.late") == sql.rows("late"))
        sql("UPDATE late SET v = 'two' WHERE id = 2")
        sql("INSERT INTO late VALUES (5, 'v5')")
        wait_for(lambda: sink_rows("public.late") == sql.rows("late") == {1: "v1", 2: "two", 3: "v3", 4: "v4", 5: "v5"})
    finally:
        runner.stop.set()
        thread.join(20)
    assert not thread.is_alive() and runner.status.state.name == "STOPPED"

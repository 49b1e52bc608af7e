"""End to end through the daemon: sources -> Redshift-compatible target (proxy + shim on Postgres).

* The memory source through ``zetl run``, SIGKILLed mid-snapshot and mid-stream, restarted once
  with the local checkpoint store deleted: history mode keeps one row per change, so every change
  must be there exactly once, resumed from ``_zetl_checkpoints`` alone.
* The Postgres source (logical replication) through the runner: snapshot, inserts, updates,
  deletes, a jsonb document queryable by key in SUPER, and an added column.
* ``zetl drift`` against the target before any run and after one, also as a role that may only
  read: the report is right and the target gains no schema, table or row.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
import yaml
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget

from zetl.config.load import load_integration
from zetl.runner import IntegrationRunner
from zetl.testing.plugins import MemorySourceConfig, expected_rows
from zetl.testing.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SOURCE = {"table": "demo.items", "snapshot_rows": 300, "stream_events": 1500, "events_per_batch": 10, "chunk_rows": 50, "interval": 0.01}


def _write_yaml(path: Path, name: str, source: dict[str, Any], sink: dict[str, Any], **extra: Any) -> Path:
    doc = {"name": name, "source": source, "sink": {"type": "redshift", **sink}, "checkpoint": {"path": str(path.parent / "state.db")}, **extra}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _count(target: RedshiftTarget, sql: str) -> int:
    try:
        return int(target.query(sql)[0]["n"])
    except psycopg.errors.UndefinedTable:
        return 0


def _wait(target: RedshiftTarget, sql: str, minimum: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(target, sql) >= minimum:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the daemon exited early: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.05)
    raise AssertionError(f"{sql} did not reach {minimum} in {timeout}s")


def test_sigkill_and_restart_apply_every_change_exactly_once(redshift_target: RedshiftTarget, tmp_path: Path) -> None:
    config = _write_yaml(
        tmp_path / "crash.yaml",
        "rs-crash",
        {"type": "memory", **SOURCE},
        redshift_target.sink_config(history_mode=True, load="auto", copy_min_rows=40),
        batching={"max_rows": 60, "max_delay": "50ms"},
    )
    versions = "SELECT count(*) AS n FROM public.items"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    for kill_at in (150, 900):  # during the snapshot, then in the stream
        proc = start()
        try:
            _wait(redshift_target, versions, kill_at, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    (tmp_path / "state.db").unlink()  # the local checkpoint store is lost: only _zetl_checkpoints remains
    proc = start()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output.decode()[-3000:]

    source = MemorySourceConfig(**SOURCE)  # type: ignore[arg-type]
    stream = redshift_target.query("SELECT _position AS p, count(*) AS n FROM public.items WHERE _op <> 'r' GROUP BY _position")
    assert len(stream) == SOURCE["stream_events"] and all(r["n"] == 1 for r in stream), "each change exactly once"
    assert _count(redshift_target, "SELECT count(*) AS n FROM public.items WHERE _op = 'r'") == SOURCE["snapshot_rows"]
    current = {r["id"]: r for r in redshift_target.query("SELECT id, name, amount FROM public.items WHERE _valid_to IS NULL")}
    expected = expected_rows(source)
    assert set(current) == set(expected)
    assert all(current[i]["name"] == e["name"] and current[i]["amount"] == e["amount"] for i, e in expected.items())
    stored = redshift_target.query("SELECT integration, position FROM public._zetl_checkpoints")
    assert [r["integration"] for r in stored] == ["rs-crash"] and '"offset":1500' in stored[0]["position"].replace(" ", "")


@pytest.fixture
def source_database(pg_server: PostgresServer) -> Iterator[str]:
    name = "rs_source_db"
    pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_server.psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_server.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active")
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _until(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last is True:
                return
        except psycopg.errors.UndefinedTable as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s; last: {last!r}")


def test_postgres_to_redshift_end_to_end(pg_server: PostgresServer, source_database: str, redshift_target: RedshiftTarget, tmp_path: Path) -> None:
    src = psycopg.connect(pg_server.dsn(source_database), autocommit=True)
    src.execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(12,2), doc jsonb, notes text)")
    src.execute("ALTER TABLE public.orders ALTER COLUMN notes SET STORAGE EXTERNAL")
    src.execute(
        "INSERT INTO public.orders SELECT g, 'c' || g, g * 1.5, jsonb_build_object('customer', jsonb_build_object('name', 'cust ' || g), 'lines', jsonb_build_array(g)), "
        "repeat('n', 5000) FROM generate_series(1, 20) g"
    )
    config = _write_yaml(
        tmp_path / "pg.yaml",
        "pg-to-redshift",
        {"type": "postgres", "host": pg_server.host, "port": pg_server.port, "database": source_database, "user": "postgres", "heartbeat_interval": 0.5},
        redshift_target.sink_config(),
        tables=["public.orders"],
        batching={"max_delay": "100ms"},
    )
    runner = IntegrationRunner(load_integration(config))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        _until(lambda: redshift_target.query("SELECT count(*) AS n FROM public.orders")[0]["n"] == 20)
        src.execute("INSERT INTO public.orders VALUES (21, 'c21', 1.00, '{\"customer\": {\"name\": \"new\"}}', 'short')")
        src.execute("UPDATE public.orders SET total = 99.99 WHERE id = 1")  # notes is TOASTed and unchanged
        src.execute("DELETE FROM public.orders WHERE id = 2")
        src.execute("ALTER TABLE public.orders ADD COLUMN status varchar(10)")
        src.execute("INSERT INTO public.orders (id, customer, status) VALUES (22, 'c22', 'open')")
        _until(lambda: redshift_target.query("SELECT count(*) AS n FROM public.orders WHERE id = 22")[0]["n"] == 1)
    finally:
        runner.stop.set()
        thread.join(30)
        src.close()
    rows = {r["id"]: r for r in redshift_target.query("SELECT id, customer, total, notes, status FROM public.orders")}
    assert set(rows) == set(range(1, 23)) - {2}
    assert rows[1]["total"] == Decimal("99.99") and rows[1]["notes"] == "n" * 5000, "unchanged TOAST value kept"
    assert rows[22]["status"] == "open" and rows[21]["notes"] == "short"
    by_key = redshift_target.query(
        "SELECT id, json_extract_path_text(json_serialize(doc), 'customer', 'name') AS name FROM public.orders WHERE id IN (3, 21) ORDER BY id"
    )
    assert by_key == [{"id": 3, "name": "cust 3"}, {"id": 21, "name": "new"}]


def test_postgres_history_mode_sigkill_mid_stream_exactly_once(pg_server: PostgresServer, source_database: str, redshift_target: RedshiftTarget, tmp_path: Path) -> None:
    """Logical replication into history mode: the daemon is SIGKILLed while it works through a
    backlog of single-row transactions and restarted without its local checkpoint store. Every
    change must be one version row: batches committed before the kill are skipped on replay by
    the position stored in ``_zetl_checkpoints`` with the data."""
    src = psycopg.connect(pg_server.dsn(source_database), autocommit=True)
    src.execute("CREATE TABLE public.ledger (id int PRIMARY KEY, step int NOT NULL)")
    src.execute("INSERT INTO public.ledger SELECT g, 0 FROM generate_series(1, 20) g")
    config = _write_yaml(
        tmp_path / "pg-history.yaml",
        "pg-history",
        {"type": "postgres", "host": pg_server.host, "port": pg_server.port, "database": source_database, "user": "postgres", "heartbeat_interval": 0.5},
        redshift_target.sink_config(history_mode=True),
        tables=["public.ledger"],
        batching={"max_rows": 5, "max_delay": "20ms"},
    )
    versions = "SELECT count(*) AS n FROM public.ledger"
    stream_versions = "SELECT count(*) AS n FROM public.ledger WHERE _op <> 'r'"
    inserted, marker = range(1001, 1151), 9999

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    proc = start()
    try:
        _wait(redshift_target, versions, 20, proc)  # the snapshot is in: the slot exists
        for i in inserted:  # 300 transactions of one change each
            src.execute("INSERT INTO public.ledger VALUES (%s, 1)", (i,))
        for i in inserted:
            src.execute("UPDATE public.ledger SET step = 2 WHERE id = %s", (i,))
        _wait(redshift_target, stream_versions, 100, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    (tmp_path / "state.db").unlink()  # only _zetl_checkpoints remains
    proc = start()
    try:
        src.execute("INSERT INTO public.ledger VALUES (%s, 3)", (marker,))  # after every change above
        _wait(redshift_target, f"SELECT count(*) AS n FROM public.ledger WHERE id = {marker}", 1, proc, timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        src.close()
    assert proc.returncode == 0, output.decode()[-3000:]

    history = redshift_target.query("SELECT id, step, _op, count(*) AS n FROM public.ledger GROUP BY id, step, _op")
    counts = {(r["id"], r["step"], r["_op"]): r["n"] for r in history}
    expected = {(i, 0, "r"): 1 for i in range(1, 21)}
    expected |= {(i, 1, "c"): 1 for i in inserted} | {(i, 2, "u"): 1 for i in inserted} | {(marker, 3, "c"): 1}
    assert counts == expected, "every change exactly once"
    current = redshift_target.query("SELECT id, step FROM public.ledger WHERE _valid_to IS NULL")
    assert sorted((r["id"], r["step"]) for r in current) == [(i, 0) for i in range(1, 21)] + [(i, 2) for i in inserted] + [(marker, 3)]
    positions = redshift_target.query("SELECT count(DISTINCT _position) AS n FROM public.ledger WHERE _op <> 'r'")
    assert positions[0]["n"] == 2 * len(inserted) + 1
    assert [r["integration"] for r in redshift_target.query("SELECT integration FROM public._zetl_checkpoints")] == ["pg-history"]


@pytest.mark.mariadb
def test_mariadb_to_redshift_end_to_end(mariadb_server: Any, mariadb_database: str, redshift_target: RedshiftTarget, tmp_path: Path) -> None:
    import pymysql

    src = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="zetl", password="zetl", database=mariadb_database, autocommit=True)
    cur = src.cursor()
    cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(40) NOT NULL, total DECIMAL(12,2), placed DATETIME(6), doc JSON)")
    cur.executemany(
        "INSERT INTO orders VALUES (%s, %s, %s, '2026-01-02 03:04:05.678901', %s)",
        [(i, f"c{i}", Decimal(i) / 4, json.dumps({"customer": {"name": f"cust {i}"}, "lines": [i, i + 1]})) for i in range(1, 11)],
    )
    config = _write_yaml(
        tmp_path / "my.yaml",
        "mysql-to-redshift",
        {"type": "mysql", "port": mariadb_server.port, "user": "zetl", "password": "zetl"},
        redshift_target.sink_config(table_name="{namespace}_{name}"),
        tables=[f"{mariadb_database}.orders"],
        batching={"max_delay": "100ms"},
    )
    target_table = f"{mariadb_database}_orders".lower()
    count = f'SELECT count(*) AS n FROM public."{target_table}"'
    runner = IntegrationRunner(load_integration(config))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        _until(lambda: redshift_target.query(count)[0]["n"] == 10)
        cur.execute("UPDATE orders SET total = 100.50 WHERE id = 1")
        cur.execute("DELETE FROM orders WHERE id = 2")
        cur.execute("ALTER TABLE orders ADD COLUMN status VARCHAR(10)")
        cur.execute("INSERT INTO orders (id, customer, status, doc) VALUES (11, 'c11', 'open', '{\"customer\": {\"name\": \"streamed\"}, \"vip\": true}')")
        _until(lambda: redshift_target.query(count)[0]["n"] == 10 and redshift_target.query(f'SELECT count(*) AS n FROM public."{target_table}" WHERE id = 11')[0]["n"] == 1)
    finally:
        runner.stop.set()
        thread.join(30)
        src.close()
    rows = {r["id"]: r for r in redshift_target.query(f'SELECT id, customer, total, placed, status FROM public."{target_table}"')}
    assert set(rows) == set(range(1, 12)) - {2}
    assert rows[1]["total"] == Decimal("100.50") and rows[3]["total"] == Decimal("0.75")
    assert rows[11]["status"] == "open" and rows[3]["placed"].microsecond == 678901
    # MariaDB's JSON (LONGTEXT checked by json_valid) lands in SUPER, queryable by key.
    super_column = redshift_target.query("SELECT data_type, domain_name FROM information_schema.columns WHERE table_name = %s AND column_name = 'doc'", (target_table,))
    assert super_column == [{"data_type": "jsonb", "domain_name": "super"}]
    by_key = redshift_target.query(
        f"SELECT id, json_extract_path_text(json_serialize(doc), 'customer', 'name') AS name FROM public.\"{target_table}\" WHERE id IN (3, 11) ORDER BY id"
    )
    assert by_key == [{"id": 3, "name": "cust 3"}, {"id": 11, "name": "streamed"}]
    docs = {r["id"]: r["doc"] for r in redshift_target.query(f'SELECT id, doc FROM public."{target_table}" WHERE id IN (3, 11)')}
    assert docs == {3: {"customer": {"name": "cust 3"}, "lines": [3, 4]}, 11: {"customer": {"name": "streamed"}, "vip": True}}


# -- zetl drift: read only --------------------------------------------------------------------

_USER_OBJECTS = (
    "SELECT n.nspname AS schema, coalesce(c.relname, '') AS relation FROM pg_namespace n "
    "LEFT JOIN pg_class c ON c.relnamespace = n.oid "
    "WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'"
)


def _objects(target: RedshiftTarget) -> set[tuple[str, str]]:
    """Every schema and relation (tables, indexes, sequences, ...) of the target database."""
    return {(r["schema"], r["relation"]) for r in target.query(_USER_OBJECTS)}


@pytest.fixture
def select_only_user(pg_server: PostgresServer, redshift_target: RedshiftTarget) -> Iterator[str]:
    """A login role that may read (USAGE on public and the shim) but not create anything."""
    role = f"reader_{abs(hash(redshift_target.database)) % 10**8}"
    pg_server.psql(f'DROP ROLE IF EXISTS "{role}"')
    pg_server.psql(f'CREATE ROLE "{role}" LOGIN')
    try:
        pg_server.psql(f'GRANT USAGE ON SCHEMA public, zetl_shim TO "{role}"', dbname=redshift_target.database)
        yield role
    finally:
        pg_server.psql(f'DROP OWNED BY "{role}"', dbname=redshift_target.database)
        pg_server.psql(f'DROP ROLE IF EXISTS "{role}"')


def test_drift_changes_nothing_in_redshift_before_and_after_a_run(
    pg_server: PostgresServer, redshift_target: RedshiftTarget, select_only_user: str, tmp_path: Path
) -> None:
    from zetl.drift import drift_report
    from zetl.errors import SinkError
    from zetl.plugin import PluginContext
    from zetl.status import State
    from zetl_sinks.redshift import RedshiftConfig, RedshiftSink

    source = {"type": "memory", "snapshot_rows": 30, "stream_events": 20}
    config = _write_yaml(tmp_path / "drift.yaml", "rs-drift", source, redshift_target.sink_config(schema="analytics"))
    reader_config = _write_yaml(tmp_path / "drift_reader.yaml", "rs-drift", source, redshift_target.sink_config(schema="analytics", user=select_only_user))
    db = redshift_target.database

    # The role really cannot create zetl's schema: a writable open fails, so the reports below
    # prove that drift needs no more than SELECT/USAGE.
    reader_sink = RedshiftSink(RedshiftConfig.model_validate(redshift_target.sink_config(schema="analytics", user=select_only_user)), PluginContext(integration="x"))
    with pytest.raises(SinkError, match="permission denied"):
        reader_sink.open()

    before = _objects(redshift_target)
    assert not any(schema == "analytics" for schema, _ in before)
    for path in (config, reader_config):
        report = drift_report(load_integration(path))
        assert report.error is None and report.exit_code == 1, report.to_json()
        [table] = report.tables
        assert str(table.table) == "demo.items" and table.target is None
        assert [(s["kind"], s["decision"]) for s in table.to_json()["steps"]] == [("create.table", "apply")]
        assert table.only_in_source == ["id", "name", "amount", "updated_at", "doc"]
        assert _objects(redshift_target) == before, "drift created something in the target"

    assert IntegrationRunner(load_integration(config)).run() is State.STOPPED
    pg_server.psql(f'GRANT USAGE ON SCHEMA analytics TO "{select_only_user}"', dbname=db)
    pg_server.psql(f'GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO "{select_only_user}"', dbname=db)
    after_run = _objects(redshift_target)
    checkpoint = redshift_target.query("SELECT position, updated_at FROM analytics._zetl_checkpoints")
    layouts = redshift_target.query("SELECT target_table, layout, updated_at FROM analytics._zetl_tables")
    rows = redshift_target.query("SELECT count(*) AS n FROM analytics.items")
    for path in (config, reader_config):
        report = drift_report(load_integration(path))
        assert report.error is None and report.exit_code == 0, report.to_json()
        [table] = report.tables
        assert table.target is not None and table.status() == "in_sync" and not table.plan.steps
    assert _objects(redshift_target) == after_run
    assert redshift_target.query("SELECT position, updated_at FROM analytics._zetl_checkpoints") == checkpoint
    assert redshift_target.query("SELECT target_table, layout, updated_at FROM analytics._zetl_tables") == layouts
    assert redshift_target.query("SELECT count(*) AS n FROM analytics.items") == rows

    # A column added by hand in the target is reported, still without touching anything.
    pg_server.psql("ALTER TABLE analytics.items ADD COLUMN legacy_flag boolean", dbname=db)
    drifted = _objects(redshift_target)
    report = drift_report(load_integration(reader_config))
    assert report.error is None, report.error
    [table] = report.tables
    assert table.only_in_target == ["legacy_flag"] and table.only_in_source == []
    assert report.exit_code == 1, report.to_json()
    assert _objects(redshift_target) == drifted

    # A sink opened read only refuses to write or change the schema, whatever calls it.
    from zetl.events import Batch, ChangeEvent, SequencePosition, TableId
    from zetl.schema.changes import DropColumn

    inspector = RedshiftSink(RedshiftConfig.model_validate(redshift_target.sink_config(schema="analytics")), PluginContext(integration="rs-drift", read_only=True))
    with inspector:
        assert inspector.stored_position() is not None
        items = TableId("demo", "items")
        with pytest.raises(SinkError, match="opened read only"):
            inspector.apply(DropColumn(items, "legacy_flag"))
        with pytest.raises(SinkError, match="opened read only"):
            inspector.write(Batch(events=(ChangeEvent.delete(items, {"id": 1}, SequencePosition("stream", 10**6)),), end_position=SequencePosition("stream", 10**6)))
    assert _objects(redshift_target) == drifted
    assert redshift_target.query("SELECT count(*) AS n FROM analytics.items") == rows

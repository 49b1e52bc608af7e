"""Postgres -> Iceberg end to end with `zetl run` as a subprocess: snapshot, stream, ADD COLUMN,
unchanged TOAST values, and SIGKILLs (during the snapshot, between a table's Iceberg commit and
the next one / the checkpoint save, while streaming). The Iceberg tables read back with DuckDB
equal the Postgres tables row for row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.testing.servers import PostgresServer
import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind read back from Iceberg)
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "pg-ice"
TABLES = ("customers", "orders")

SCHEMA_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email varchar(120));
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id int NOT NULL,
    total numeric(12,2),
    doc jsonb,
    note text,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 300) g;
INSERT INTO orders SELECT g, 1 + g % 300, g * 1.25, jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 3)),
    CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 400) END, '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute'
FROM generate_series(1, 1200) g;
"""


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _config(tmp_path: Path, server: PostgresServer, database: str) -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    catalog = "\n".join(f"    {k}: '{v}'" for k, v in _catalog(tmp_path).items())
    text = f"""name: {NAME}
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  snapshot_chunk_rows: 200
  heartbeat_interval: 1s
sink:
  type: iceberg
  namespace: lake
  commit_interval: 300ms
  max_buffered_rows: 400
  catalog:
{catalog}
tables: [public.customers, public.orders]
batching:
  max_rows: 400
  max_delay: 100ms
checkpoint:
  path: state.db
"""
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(text)
    return path


def _run(config: Path, kill_at: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("ZETL_ICEBERG_KILL_AT", None)
    if kill_at:
        env["ZETL_ICEBERG_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _source_rows(server: PostgresServer, database: str, table: str) -> dict[int, dict[str, Any]]:
    import psycopg

    with psycopg.connect(server.dsn(database)) as conn:
        cur = conn.execute(f'SELECT * FROM "{table}"')
        names = [d.name for d in cur.description or ()]
        return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}


def _target_rows(tmp_path: Path, table: str) -> dict[int, dict[str, Any]]:
    with _sink(tmp_path) as sink:
        loaded = sink._load(TableId("public", table))
        if loaded is None or loaded.metadata.current_snapshot_id is None:
            return {}
        location = loaded.metadata_location
    return {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("doc"), str):
        out["doc"] = json.loads(out["doc"])
    if out.get("total") is not None:
        out["total"] = Decimal(out["total"])
    return out


def _differences(tmp_path: Path, server: PostgresServer, database: str) -> list[str]:
    problems = []
    for table in TABLES:
        source = {k: _normalise(v) for k, v in _source_rows(server, database, table).items()}
        target = {k: _normalise(v) for k, v in _target_rows(tmp_path, table).items()}
        if set(source) != set(target):
            problems.append(f"{table}: keys only in source {sorted(set(source) - set(target))[:5]}, only in target {sorted(set(target) - set(source))[:5]}")
            continue
        for key, row in source.items():
            if row != target[key]:
                problems.append(f"{table} id={key}: source {str(row)[:200]} != target {str(target[key])[:200]}")
                break
    return problems


def _wait_equal(tmp_path: Path, server: PostgresServer, database: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    problems: list[str] = ["not checked"]
    while time.monotonic() < deadline:
        problems = _differences(tmp_path, server, database)
        if not problems:
            return
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"the daemon exited ({proc.returncode}): {out[-3000:]}")
        time.sleep(0.3)
    raise AssertionError("Iceberg does not equal Postgres: " + "; ".join(problems))


def _expect_kill(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the daemon did not reach its crash point: {out.decode()[-3000:]}") from None
    assert proc.returncode == -signal.SIGKILL, out.decode()[-3000:]


def _sink(tmp_path: Path) -> IcebergSink:
    return IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=NAME, state_dir=tmp_path))


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode()


def test_postgres_to_iceberg_with_crashes(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    pg_server.psql(SCHEMA_SQL, pg_database)
    config = _config(tmp_path, pg_server, pg_database)
    sql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731

    # Killed by SIGKILL during the snapshot, right after an Iceberg commit (checkpoint not saved).
    _expect_kill(_run(config, "after-commit:2"))
    with _sink(tmp_path) as sink:
        stored = sink.stored_position()
    assert stored is not None and stored.phase == "snapshot", f"the kill must fall in the snapshot, stored: {stored}"

    # Changes on both tables in one transaction; the next run dies between the two tables of a commit.
    sql("UPDATE customers SET email = 'new' || id || '@example.com' WHERE id <= 20; DELETE FROM orders WHERE id BETWEEN 100 AND 110;")
    _expect_kill(_run(config, "mid-round:1"))

    # A normal run: snapshot completes, then streaming with DML, a TOAST-unchanged update and ADD COLUMN.
    proc = _run(config)
    try:
        _wait_equal(tmp_path, pg_server, pg_database, proc)
        sql("INSERT INTO orders (id, customer_id, total, doc) SELECT g, 1, g, jsonb_build_object('late', g) FROM generate_series(5001, 5200) g")
        sql("UPDATE orders SET total = total + 1 WHERE id % 50 = 0")  # note (TOASTed) is not sent: UNCHANGED
        sql("DELETE FROM customers WHERE id BETWEEN 290 AND 300; UPDATE customers SET name = 'renamed' WHERE id = 5")
        sql("ALTER TABLE customers ADD COLUMN tier smallint")
        sql("INSERT INTO customers (id, name, tier) VALUES (1001, 'after add column', 3); UPDATE customers SET tier = 1 WHERE id = 1")
        _wait_equal(tmp_path, pg_server, pg_database, proc)
        # SIGKILL while streaming, with changes in flight.
        sql("UPDATE orders SET doc = jsonb_build_object('v', 2) WHERE id BETWEEN 1 AND 30")
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    sql("INSERT INTO orders (id, customer_id, total) VALUES (9001, 2, 3.5); DELETE FROM orders WHERE id = 9001 - 8000")
    proc = _run(config)
    stopped = False
    try:
        _wait_equal(tmp_path, pg_server, pg_database, proc)
        assert _target_rows(tmp_path, "customers")[1001]["tier"] == 3
        assert len(_target_rows(tmp_path, "orders")[50]["note"]) == 32 * 400, "an unchanged TOAST value keeps its content"
        output = _stop(proc)
        stopped = True
        assert proc.returncode == 0, output[-3000:]
    finally:
        if not stopped:
            _stop(proc)

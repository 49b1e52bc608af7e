"""Schema evolution on a real Postgres -> Iceberg integration: ADD COLUMN, DROP COLUMN, type
widening and a new JSON key while rows flow, then `zetl drift` reports in sync; a drifted target
(a column dropped in the source while the daemon was stopped, a column added by hand in Iceberg)
comes out with the right exit code."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from zetl.config.load import load_integration
from zetl.drift import drift_report
from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.servers import PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "pg-ice-drift"
ORDERS = TableId("public", "orders")


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _config(tmp_path: Path, server: PostgresServer, database: str, behavior: str = "lenient", file: str = "drift.yaml") -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    catalog = "\n".join(f"    {k}: '{v}'" for k, v in _catalog(tmp_path).items())
    path = tmp_path / file
    path.write_text(
        f"""name: {NAME}
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  heartbeat_interval: 1s
sink:
  type: iceberg
  namespace: lake
  commit_interval: 200ms
  catalog:
{catalog}
tables: [public.orders]
schema_evolution: {{behavior: {behavior}}}
flatten:
  separator: "_"
  tables:
    public.orders: {{unnest: top_level, columns: [doc]}}
batching: {{max_rows: 500, max_delay: 100ms}}
checkpoint: {{path: state.db}}
"""
    )
    return path


def _sink(tmp_path: Path) -> IcebergSink:
    return IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=NAME, state_dir=tmp_path))


def _target(tmp_path: Path) -> tuple[Any, dict[int, dict[str, Any]]]:
    with _sink(tmp_path) as sink:
        schema = sink.current_schema(ORDERS)
        loaded = sink._load(ORDERS)
        if loaded is None or loaded.metadata.current_snapshot_id is None:
            return schema, {}
        location = loaded.metadata_location
    return schema, {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


def _wait(tmp_path: Path, runner_thread: threading.Thread, ok: Callable[[Any, dict[int, dict[str, Any]]], bool], what: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            schema, rows = _target(tmp_path)
        except SinkConnectionError:  # the daemon creates the catalog at the same moment: look again
            time.sleep(0.3)
            continue
        if schema is not None and ok(schema, rows):
            return
        if not runner_thread.is_alive():
            raise AssertionError(f"the integration stopped before: {what}")
        time.sleep(0.3)
    schema, rows = _target(tmp_path)
    raise AssertionError(f"timed out waiting for: {what}; target schema {schema}; rows {list(rows.values())[-3:]}")


def test_postgres_to_iceberg_evolution_then_drift(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    sql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731
    sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, name text NOT NULL, qty int, doc jsonb);"
        "INSERT INTO orders SELECT g, 'o' || g, g, jsonb_build_object('n', g) FROM generate_series(1, 50) g;"
    )
    config = _config(tmp_path, pg_server, pg_database)
    stop = threading.Event()
    runner = IntegrationRunner(load_integration(config), stop)
    result: list[State] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    try:
        _wait(tmp_path, thread, lambda s, rows: len(rows) == 50 and "doc_n" in s, "the snapshot with doc flattened")
        # Under load: ADD COLUMN, widening int -> bigint, a new JSON key, DROP COLUMN of a NOT NULL column.
        sql("INSERT INTO orders SELECT g, 'o' || g, g, jsonb_build_object('n', g) FROM generate_series(51, 150) g")
        sql("ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders VALUES (151, 'with note', 1, '{\"n\": 151}', 'hello')")
        sql("ALTER TABLE orders ALTER COLUMN qty TYPE bigint; INSERT INTO orders VALUES (152, 'big', 5000000000, '{\"n\": 152}', NULL)")
        sql("INSERT INTO orders VALUES (153, 'key', 1, '{\"n\": 153, \"coupon\": \"SUMMER\"}', NULL)")
        sql("ALTER TABLE orders DROP COLUMN name; INSERT INTO orders (id, qty, doc) VALUES (154, 2, '{\"n\": 154}')")
        _wait(tmp_path, thread, lambda s, rows: 154 in rows, "every change in the target")
    finally:
        stop.set()
        thread.join(60)
    assert result == [State.STOPPED], runner.status.last_error
    schema, rows = _target(tmp_path)
    assert str(schema.field("qty").type) == "int64"
    assert schema.field("name").nullable, "lenient keeps a dropped NOT NULL column, nullable"
    assert rows[151]["note"] == "hello" and rows[152]["qty"] == 5_000_000_000
    assert rows[153]["doc_coupon"] == "SUMMER" and rows[150]["doc_coupon"] is None
    assert rows[154]["name"] is None and rows[1]["name"] == "o1" and rows[154]["doc_n"] == 154

    # The daemon did everything the policy allows: the report agrees.
    report = drift_report(load_integration(config))
    assert report.exit_code == 0, orjson.dumps(report.to_json()).decode()

    # Drift while the daemon is stopped: a column dropped in the source -> 1 (lenient would keep it).
    sql("ALTER TABLE orders DROP COLUMN note")
    report = drift_report(load_integration(config))
    assert report.exit_code == 1 and report.tables[0].only_in_target == ["name", "note"], report.to_json()
    # The same target under policy fail, through the CLI: the daemon would refuse -> 2.
    failing = _config(tmp_path, pg_server, pg_database, "fail", "drift-fail.yaml")
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "drift", str(failing), "--format", "json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    steps = orjson.loads(proc.stdout)["tables"][0]["steps"]
    assert [(s["column"], s["decision"]) for s in steps] == [("name", "fail"), ("note", "fail")]
    # A column added by hand in Iceberg is reported too.
    with _sink(tmp_path) as sink:
        table = sink._load(ORDERS)
        from pyiceberg.types import StringType

        with table.update_schema() as update:
            update.add_column("added_by_hand", StringType())
    report = drift_report(load_integration(config))
    assert report.exit_code == 1 and "added_by_hand" in report.tables[0].only_in_target, report.to_json()

"""Row filters, masks and column exclusion on a real Postgres -> Iceberg integration, read back
with DuckDB: the snapshot (Arrow chunks) and the stream (single events) filter alike, an UPDATE
moves a row out of and into the filter under Postgres' default replica identity (no old row),
and a `behavior: evolve` run applies a dropped and a renamed source column to the target.

What the target must contain, with no old row to look at: an UPDATE whose new row fails the
filter deletes the key in the target (the row leaves the filter; deleting a row the target
never had is harmless); an UPDATE whose new row passes is written as an upsert (a row entering
the filter is inserted, one already in it is updated).
"""

from __future__ import annotations

import datetime
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from zetl.config.load import load_integration
from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.filters.apply import mask_hash
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.servers import PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "pg-ice-filters"
ORDERS = TableId("public", "orders")
SALT = "filters-test-salt"
UTC = datetime.timezone.utc


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _config(tmp_path: Path, server: PostgresServer, database: str) -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    catalog = "\n".join(f"    {k}: '{v}'" for k, v in _catalog(tmp_path).items())
    path = tmp_path / "filters.yaml"
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
schema_evolution: {{behavior: evolve}}
filters:
  salt: {SALT}
  tables:
    public.orders:
      columns:
        exclude: [notes]
        mask: {{email: hash, ssn: null}}
      rows: amount >= 100 and updated_at >= '2026-01-01'
batching: {{max_rows: 500, max_delay: 100ms}}
checkpoint: {{path: state.db}}
"""
    )
    return path


def _target(tmp_path: Path) -> tuple[Any, dict[int, dict[str, Any]]]:
    sink = IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=NAME, state_dir=tmp_path))
    with sink:
        schema = sink.current_schema(ORDERS)
        loaded = sink._load(ORDERS)
        if loaded is None or loaded.metadata.current_snapshot_id is None:
            return schema, {}
        location = loaded.metadata_location
    return schema, {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


def _wait(tmp_path: Path, thread: threading.Thread, ok: Callable[[Any, dict[int, dict[str, Any]]], bool], what: str, timeout: float = 60) -> tuple[Any, dict[int, dict[str, Any]]]:
    """Poll the target until ``ok(schema, rows)``; fails early when the integration stopped."""
    deadline = time.monotonic() + timeout
    schema: Any = None
    rows: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        try:
            schema, rows = _target(tmp_path)
        except SinkConnectionError:  # the daemon creates the catalog at the same moment: look again
            time.sleep(0.2)
            continue
        if schema is not None and ok(schema, rows):
            return schema, rows
        if not thread.is_alive():
            raise AssertionError(f"the integration stopped before: {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {what}; target schema {schema}; rows {sorted(rows)}")


def test_filters_masks_and_evolve_from_postgres_to_iceberg(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    sql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731
    sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10,2), updated_at timestamptz NOT NULL,"
        " email text, ssn text, notes text, status text, legacy text);"
        "INSERT INTO orders VALUES"
        " (1, 150.00, '2026-03-01 10:00+00', 'a@x.io', '111-11', 'n1', 'open', 'l1'),"  # in
        " (2, 99.99, '2026-03-01 10:00+00', 'b@x.io', '222-22', 'n2', 'open', 'l2'),"  # out: amount
        " (3, 500, '2025-12-31 23:59:59+00', 'c@x.io', '333-33', 'n3', 'open', 'l3'),"  # out: time
        " (4, 100, '2026-01-01 00:00:00+00', 'd@x.io', '444-44', 'n4', 'open', 'l4'),"  # in: both bounds
        " (5, NULL, '2026-05-01 00:00+00', 'e@x.io', '555-55', 'n5', 'open', 'l5'),"  # out: NULL amount
        " (6, 300, '2026-01-01 01:00+02', 'f@x.io', '666-66', 'n6', 'open', 'l6'),"  # out: 2025-12-31 23:00 UTC
        " (7, 200, '2026-02-01 00:00+00', 'g@x.io', '777-77', 'n7', 'open', 'l7')"  # in, later moved out
    )
    config = _config(tmp_path, pg_server, pg_database)
    stop = threading.Event()
    runner = IntegrationRunner(load_integration(config), stop)
    result: list[State] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    try:
        # Snapshot (Arrow chunks): only the rows passing on both the numeric and the timestamp column.
        schema, rows = _wait(tmp_path, thread, lambda s, r: bool(r), "the snapshot")
        assert sorted(rows) == [1, 4, 7]
        assert "notes" not in schema.names and schema.field("ssn").nullable and str(schema.field("email").type).startswith("string")
        assert rows[1]["email"] == mask_hash(SALT.encode(), "a@x.io") and rows[1]["ssn"] is None
        assert rows[4]["amount"] == Decimal("100.00") and rows[4]["updated_at"] == datetime.datetime(2026, 1, 1, tzinfo=UTC)

        # Stream (single events): inserts on both sides of the filter, updates moving rows across it.
        sql(
            "INSERT INTO orders VALUES (8, 1000, '2026-06-01 00:00+00', 'h@x.io', '888-88', 'n8', 'open', 'l8'),"
            " (9, 10, '2026-06-01 00:00+00', 'i@x.io', '999-99', 'n9', 'open', 'l9');"
            "UPDATE orders SET amount = 120 WHERE id = 2;"  # moves in: inserted
            "UPDATE orders SET amount = 50 WHERE id = 7;"  # moves out on the number: deleted
            "UPDATE orders SET updated_at = '2025-06-01 00:00+00' WHERE id = 4;"  # moves out on the time: deleted
            "UPDATE orders SET status = 'paid' WHERE id = 1;"  # stays in: updated
            "UPDATE orders SET status = 'paid' WHERE id = 9;"  # stays out: nothing reaches the target
            "DELETE FROM orders WHERE id = 3;"  # never reached the target
        )
        _, rows = _wait(tmp_path, thread, lambda s, r: sorted(r) == [1, 2, 8] and r[1]["status"] == "paid", "rows moved across the filter")
        assert rows[2]["amount"] == Decimal("120.00") and rows[2]["email"] == mask_hash(SALT.encode(), "b@x.io") and rows[2]["ssn"] is None
        assert rows[8]["email"] == mask_hash(SALT.encode(), "h@x.io") and rows[8]["ssn"] is None and "notes" not in rows[8]

        # behavior: evolve applies a dropped column and a renamed one to the target.
        sql(
            "ALTER TABLE orders DROP COLUMN legacy; ALTER TABLE orders RENAME COLUMN status TO state;"
            "INSERT INTO orders VALUES (10, 700, '2026-07-01 00:00+00', 'j@x.io', '101-01', 'n10', 'new');"
            "INSERT INTO orders VALUES (11, 1, '2026-07-01 00:00+00', 'k@x.io', '111-01', 'n11', 'new')"
        )
        schema, rows = _wait(tmp_path, thread, lambda s, r: 10 in r, "the row written after the drop and the rename")
    finally:
        stop.set()
        thread.join(60)
    assert result == [State.STOPPED], runner.status.last_error
    assert "legacy" not in schema.names and "state" in schema.names and "status" not in schema.names, schema
    assert sorted(rows) == [1, 2, 8, 10] and rows[10]["state"] == "new" and rows[10]["ssn"] is None
    # The source tells the rename from a drop + add (the column keeps its attnum), so evolve
    # renames the target column: rows written before the rename keep their value in it.
    assert rows[1]["state"] == "paid" and rows[1]["amount"] == Decimal("150.00")
    assert runner.history is not None
    applied = [e["change"] for e in runner.history.entries() if e["decision"] == "apply"]
    assert applied[1:] == ["rename column public.orders.status to state", "drop column public.orders.legacy"], applied

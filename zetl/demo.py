"""`make demo` (``python -m zetl.demo``): a Postgres shop replicated into Apache Iceberg while it changes, read back with DuckDB.

Steps: start a private Postgres (its own directory and port; stopped at the end), create
customers / orders (jsonb) / order_items with data, write configs/demo.yaml, run `zetl run` on it
as a subprocess, make inserts, updates, deletes and an ADD COLUMN while it runs, wait until the
Iceberg tables equal the Postgres tables, stop the daemon, and print the tables (DuckDB's
iceberg_scan) and where their files are. Everything it starts is stopped, also on errors or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

# configs/demo.yaml and demo/ are written under the current directory (`make demo` runs in the
# repository), or under ZETL_DEMO_ROOT (the test of the demo uses a temp dir).
ROOT = Path(os.environ.get("ZETL_DEMO_ROOT") or Path.cwd()).resolve()
CONFIG = ROOT / "configs" / "demo.yaml"
DEMO_DIR = ROOT / "demo"
INTEGRATION = "shop-to-iceberg"
DATABASE = "shop"
TABLES = ("customers", "orders", "order_items")

CONFIG_TEXT = f"""\
# Demo integration written by `make demo` (zetl/demo.py): a Postgres shop replicated into Apache
# Iceberg tables. The demo starts a private Postgres and exports ZETL_DEMO_PG_PORT; without it this
# file points at a local server on 5432 with a database called shop.
# The sink uses the embedded catalog (SQLite + local warehouse) under the state directory:
# demo/{INTEGRATION}/iceberg/.
name: {INTEGRATION}
description: Postgres shop -> Iceberg (the `make demo` integration)
source:
  type: postgres
  host: ${{env:ZETL_DEMO_PG_HOST:-127.0.0.1}}
  port: ${{env:ZETL_DEMO_PG_PORT:-5432}}
  database: ${{env:ZETL_DEMO_PG_DATABASE:-{DATABASE}}}
  user: ${{env:ZETL_DEMO_PG_USER:-postgres}}
  heartbeat_interval: 1s
tables: [public.customers, public.orders, public.order_items]
sink:
  type: iceberg
  namespace: shop
  table_name: "{{table}}"
  commit_interval: 1s
  tables:
    public.orders:
      partition_by: ["month(created_at)"]
batching:
  max_delay: 200ms
checkpoint:
  path: ../demo/state.db
"""

SCHEMA_SQL = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    country char(2),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    status text NOT NULL,
    total numeric(12,2) NOT NULL,
    details jsonb,
    created_at timestamptz NOT NULL
);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    line int NOT NULL,
    sku text NOT NULL,
    quantity int NOT NULL,
    unit_price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
INSERT INTO customers (name, email, country, created_at)
SELECT 'Customer ' || g, 'customer' || g || '@example.com', (ARRAY['FR','DE','US','JP','BR'])[1 + g % 5],
       timestamptz '2026-01-01 00:00:00+00' + g * interval '3 hours'
FROM generate_series(1, 200) g;
INSERT INTO orders (customer_id, status, total, details, created_at)
SELECT 1 + g % 200, (ARRAY['new','paid','shipped'])[1 + g % 3], 0, 
       jsonb_build_object('channel', (ARRAY['web','store','app'])[1 + g % 3], 'gift', g % 7 = 0, 'tags', jsonb_build_array('t' || g % 4)),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '90 minutes'
FROM generate_series(1, 1000) g;
INSERT INTO order_items (order_id, line, sku, quantity, unit_price)
SELECT o.id, l, 'SKU-' || ((o.id * 7 + l) % 50), 1 + (o.id + l) % 4, 5 + ((o.id * l) % 40)
FROM orders o, generate_series(1, 3) l;
UPDATE orders o SET total = s.total FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) s
WHERE s.order_id = o.id;
"""

CHANGES_SQL = [
    ("new orders (insert)", """
        INSERT INTO orders (customer_id, status, total, details, created_at)
        SELECT 1 + g % 200, 'new', 42.50, jsonb_build_object('channel', 'app', 'promo', 'SPRING'), timestamptz '2026-03-15 12:00:00+00' + g * interval '1 minute'
        FROM generate_series(1, 50) g"""),
    ("orders shipped (update)", "UPDATE orders SET status = 'shipped', details = details || '{\"carrier\": \"DHL\"}' WHERE status = 'paid' AND id % 5 = 0"),
    ("cancelled orders (delete, cascading to order_items)", "DELETE FROM orders WHERE id IN (SELECT id FROM orders WHERE status = 'new' ORDER BY id LIMIT 25)"),
    ("ALTER TABLE customers ADD COLUMN loyalty_tier", "ALTER TABLE customers ADD COLUMN loyalty_tier smallint"),
    ("loyalty tiers (update)", "UPDATE customers SET loyalty_tier = 1 + id % 3 WHERE id <= 60"),
    ("a new customer (insert, with the new column)", "INSERT INTO customers (name, email, country, loyalty_tier) VALUES ('Ada Lovelace', 'ada@example.com', 'GB', 3)"),
]


def say(text: str) -> None:
    print(f"\033[1;36m==>\033[0m {text}", flush=True)


def write_config() -> None:
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(CONFIG_TEXT)
    say(f"wrote {CONFIG.relative_to(ROOT)}")


def source_rows(dsn: str, table: str) -> dict[Any, dict[str, Any]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f'SELECT * FROM "{table}"')
        names = [d.name for d in cur.description or ()]
        return {_key(table, r): _normalise(r) for r in (dict(zip(names, row)) for row in cur.fetchall())}


def _key(table: str, row: dict[str, Any]) -> Any:
    return (row["order_id"], row["line"]) if table == "order_items" else row["id"]


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if k == "details" and isinstance(v, str):
            v = json.loads(v)
        elif isinstance(v, Decimal):
            v = v.normalize()
        elif isinstance(v, str):
            v = v.rstrip()
        out[k] = v
    return out


def iceberg_tables() -> tuple[Any, dict[str, Any]]:
    """The demo's Iceberg tables through the same catalog the daemon uses."""
    from zetl.events import TableId
    from zetl.plugin import PluginContext
    from zetl_sinks.iceberg import IcebergConfig, IcebergSink

    sink = IcebergSink(IcebergConfig(namespace="shop", table_name="{table}"), PluginContext(integration=INTEGRATION, state_dir=DEMO_DIR / INTEGRATION))
    sink.open()
    try:
        found = {name: sink._load(TableId("public", name)) for name in TABLES}
    finally:
        sink.close()
    return sink, found


def target_rows(con: Any, table: Any, name: str) -> dict[Any, dict[str, Any]]:
    from zetl_sinks.iceberg.inspect import read_rows

    if table is None or table.metadata.current_snapshot_id is None:
        return {}
    return {_key(name, r): _normalise(r) for r in read_rows(con, table.metadata_location)}


def wait_in_sync(con: Any, dsn: str, daemon: subprocess.Popen[bytes], what: str, timeout: float = 60) -> float:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon stopped (exit code {daemon.returncode}); see its log above")
        _, tables = iceberg_tables()
        differences = []
        for name in TABLES:
            source, target = source_rows(dsn, name), target_rows(con, tables[name], name)
            if source != target:
                differences.append(f"{name}: {len(target)}/{len(source)} rows match" if set(source) != set(target) else f"{name}: values differ")
        if not differences:
            seconds = time.monotonic() - started
            say(f"{what}: Iceberg equals Postgres ({seconds:.1f}s)")
            return seconds
        if "; ".join(differences) != last:
            last = "; ".join(differences)
            print(f"    waiting: {last}", flush=True)
        time.sleep(0.5)
    raise RuntimeError(f"{what}: Iceberg did not catch up within {timeout:.0f}s ({last})")


def show(con: Any) -> None:
    _, tables = iceberg_tables()
    warehouse = DEMO_DIR / INTEGRATION / "iceberg" / "warehouse"
    for name in TABLES:
        table = tables[name]
        location = table.metadata_location.replace("'", "''")
        count = con.execute(f"SELECT count(*) FROM iceberg_scan('{location}')").fetchone()[0]
        order = "order_id, line" if name == "order_items" else "id DESC"
        say(f"Iceberg table shop.{name}: {count} rows (newest first where it makes sense), read with DuckDB iceberg_scan")
        con.sql(f"SELECT * FROM iceberg_scan('{location}') ORDER BY {order} LIMIT 5").show(max_width=160)
        snapshot = table.current_snapshot()
        props = snapshot.summary.additional_properties if snapshot is not None else {}
        print(f"    snapshots: {len(table.metadata.snapshots)}, source position in the last one: {props.get('zetl.position')}")
        print(f"    metadata: {table.metadata_location}")
    files = sorted(warehouse.rglob("*.parquet"))
    say(f"Iceberg warehouse: {warehouse} ({len(files)} Parquet data files); catalog: {warehouse.parent / 'catalog.db'}")
    print("    query it yourself: duckdb -c \"INSTALL iceberg; LOAD iceberg; SELECT * FROM iceberg_scan('<metadata file above>')\"")


def main() -> int:
    started = time.monotonic()
    from zetl.testing.servers import PostgresServer
    from zetl_sinks.iceberg.inspect import duckdb_connection

    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)  # a fresh demo each time (state, catalog and warehouse)
    DEMO_DIR.mkdir()
    write_config()
    server = PostgresServer()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        say("starting a private Postgres 15 (wal_level=logical) on 127.0.0.1")
        server.start()
        print(f"    port {server.port}, data in {server.dir}", flush=True)
        server.psql(f'CREATE DATABASE "{DATABASE}"')
        server.psql(SCHEMA_SQL, DATABASE)
        dsn = server.dsn(DATABASE)
        counts = {t: server.psql(f'SELECT count(*) FROM "{t}"', DATABASE) for t in TABLES}
        say("created the shop: " + ", ".join(f"{t} ({n} rows)" for t, n in counts.items()))

        env = {**os.environ, "ZETL_DEMO_PG_PORT": str(server.port), "ZETL_DEMO_PG_HOST": server.host, "ZETL_DEMO_PG_DATABASE": DATABASE}
        env.pop("ZETL_ICEBERG_KILL_AT", None)
        say(f"running: zetl run {CONFIG.relative_to(ROOT)}")
        daemon = subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(CONFIG)], env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
        con = duckdb_connection()
        wait_in_sync(con, dsn, daemon, "initial snapshot")

        for what, sql in CHANGES_SQL:
            server.psql(sql, DATABASE)
            say(f"in Postgres: {what}")
        wait_in_sync(con, dsn, daemon, "changes while running")

        say("stopping the daemon (SIGTERM: it commits what it holds and saves its checkpoint)")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        daemon_code = daemon.returncode
        daemon = None
        show(con)
        say(f"done in {time.monotonic() - started:.0f}s (daemon exit code {daemon_code}); `make demo` again starts over")
        return 0 if daemon_code == 0 else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        server.stop()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

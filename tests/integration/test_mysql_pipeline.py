"""MariaDB through the daemon (``zetl run`` in a subprocess): kill -9 and restart, and into Iceberg."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest

from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.testing.plugins import FileSink
from zetl.testing.servers import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


def write_config(tmp_path: Path, server: MariaDBServer, database: str, sink: list[str], name: str = "mysql-it") -> Path:
    lines = [
        f"name: {name}",
        "source:",
        "  type: mysql",
        f"  port: {server.port}",
        "  user: zetl",
        "  password: ${env:ZETL_TEST_MYSQL_PASSWORD}",
        "  snapshot_chunk_rows: 50",
        f"tables: ['{database}.*']",
        "sink:",
        *sink,
        "batching:",
        "  max_rows: 50",
        "  max_delay: 200ms",
        "checkpoint:",
        "  path: state.db",
    ]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    import os

    env = {**os.environ, "ZETL_TEST_MYSQL_PASSWORD": "zetl"}
    return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # the sink's file may not exist yet
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon exited while waiting for {what}:\n{proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out.decode()


def connect(server: MariaDBServer, database: str) -> Any:
    return pymysql.connect(host="127.0.0.1", port=server.port, user="zetl", password="zetl", database=database, autocommit=True)


def test_daemon_killed_mid_stream_and_restarted_loses_and_repeats_nothing(tmp_path: Path, mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    table = TableId(mariadb_database, "orders")
    out = tmp_path / "out.db"
    config = write_config(tmp_path, mariadb_server, mariadb_database, ["  type: file", "  path: out.db"])
    conn = connect(mariadb_server, mariadb_database)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, qty int, price decimal(10,2))")
        cur.execute("INSERT INTO orders SELECT seq, seq % 7, seq / 4 FROM seq_1_to_300")
    txns, per_txn = 60, 10
    done = threading.Event()

    def writer() -> None:
        c = connect(mariadb_server, mariadb_database)
        with c.cursor() as cur:
            for t in range(txns):
                cur.execute("BEGIN")
                for k in range(per_txn):
                    i = 1000 + t * per_txn + k
                    cur.execute("INSERT INTO orders VALUES (%s, %s, %s)", (i, k, Decimal(i) / 4))
                cur.execute("UPDATE orders SET qty = qty + 1 WHERE id = %s", (t + 1,))
                cur.execute("COMMIT")
                time.sleep(0.02)
        c.close()
        done.set()

    def stream_inserts() -> int:
        return len([1 for _, op, _ in FileSink.read_log(out, table) if op == "INSERT"])

    proc = start(config)
    try:
        wait_until(lambda: len(FileSink.read_rows(out, table)) >= 300, 60, "the snapshot", proc)
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_until(lambda: stream_inserts() >= 150, 60, "part of the stream", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    thread.join(60)
    assert done.is_set()
    proc = start(config)
    try:
        wait_until(lambda: stream_inserts() >= txns * per_txn, 60, "the rest of the stream", proc)
    finally:
        log = stop(proc)
    assert proc.returncode == 0, log
    inserted = [pk for _, op, pk in FileSink.read_log(out, table) if op == "INSERT"]
    assert len(inserted) == txns * per_txn == len(set(inserted)), "every inserted row exactly once"
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT id, qty, price FROM orders ORDER BY id")
        expected = [{"id": r["id"], "qty": r["qty"], "price": r["price"]} for r in cur.fetchall()]
    got = sorted(FileSink.read_rows(out, table), key=lambda r: r["id"])
    assert [{"id": r["id"], "qty": r["qty"], "price": Decimal(str(r["price"]))} for r in got] == expected
    conn.close()


def test_mariadb_to_iceberg_end_to_end(tmp_path: Path, mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    from zetl_sinks.iceberg import IcebergConfig, IcebergSink
    from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

    config = write_config(tmp_path, mariadb_server, mariadb_database, ["  type: iceberg", "  commit_interval: 300ms"], name="mysql-ice")
    conn = connect(mariadb_server, mariadb_database)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id bigint unsigned PRIMARY KEY, name varchar(20), price decimal(10,2), at datetime(6), doc json)")
        cur.execute("INSERT INTO items VALUES (1, 'one', 1.10, '2024-01-01 00:00:00.000001', '{\"a\": 1}'), (2, 'two', 2.20, NULL, NULL)")
    table = TableId(mariadb_database, "items")
    duck = duckdb_connection()

    def rows() -> dict[int, dict[str, Any]]:
        sink = IcebergSink(IcebergConfig(), PluginContext(integration="mysql-ice", state_dir=tmp_path / "mysql-ice"))
        sink.open()
        try:
            location = sink._require_open().load_table(sink.table_identifier(table)).metadata_location
        finally:
            sink.close()
        return {int(r["id"]): r for r in read_rows(duck, location)}

    proc = start(config)
    try:
        wait_until(lambda: set(rows()) == {1, 2}, 60, "the snapshot in Iceberg", proc)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (3, 'three', 3.30, '2024-03-03 03:03:03', '[3]')")
            cur.execute("UPDATE items SET name = 'uno', price = 1.11 WHERE id = 1")
            cur.execute("DELETE FROM items WHERE id = 2")
            cur.execute("ALTER TABLE items ADD COLUMN stock int AFTER name")
            cur.execute("INSERT INTO items (id, name, stock, price) VALUES (4, 'four', 40, 4.40)")
        wait_until(lambda: set(rows()) == {1, 3, 4} and rows()[4].get("stock") == 40, 60, "the stream in Iceberg", proc)
    finally:
        log = stop(proc)
    assert proc.returncode == 0, log
    final = rows()
    assert final[1]["name"] == "uno" and final[1]["price"] == Decimal("1.11") and final[1]["stock"] is None
    assert final[3]["at"].isoformat() == "2024-03-03T03:03:03" and final[4]["stock"] == 40
    assert str(final[1]["at"]) == "2024-01-01 00:00:00.000001"
    conn.close()

"""The Postgres source driven by the daemon's runner into the file sink: YAML in, rows out, restart."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from zetl.config.load import Integration, parse_integration
from zetl.config.yamlfile import load_yaml
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.plugins import FileSink
from zetl.testing.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def integration(tmp_path: Path, server: PostgresServer, database: str) -> Integration:
    path = tmp_path / "pg.yaml"
    path.write_text(
        f"""name: pg-to-file
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  password: ${{env:ZETL_TEST_PG_PASSWORD:-unused}}
  heartbeat_interval: 1s
  snapshot_chunk_rows: 3
sink: {{type: file, path: out.db}}
tables: [public.items]
batching: {{max_delay: 100ms}}
checkpoint:
  path: {tmp_path / 'state.db'}
"""
    )
    result, issues = parse_integration(load_yaml(path))
    assert not issues, issues
    assert result is not None
    return result


def wait_for(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_yaml_to_file_sink_with_restart(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    db = psycopg.connect(pg_server.dsn(pg_database), autocommit=True)
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, amount numeric(12,2))")
    db.execute("INSERT INTO items SELECT g, 'n' || g, g FROM generate_series(1, 10) g")

    def source_rows() -> dict[int, Any]:
        return {i: (n, a) for i, n, a in db.execute("SELECT id, name, amount FROM items").fetchall()}

    def sink_rows() -> dict[int, Any]:
        try:
            rows = FileSink.read_rows(tmp_path / "out.db", "public.items")
        except Exception:
            return {}
        return {int(r["id"]): (r["name"], Decimal(str(r["amount"])) if r["amount"] is not None else None) for r in rows}

    def run_until(check: Callable[[], bool], during: Callable[[], None] | None = None) -> IntegrationRunner:
        runner = IntegrationRunner(integration(tmp_path, pg_server, pg_database))
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        try:
            if during is not None:
                wait_for(lambda: runner.status.source.get("phase") == "stream")
                during()
            wait_for(check)
        finally:
            runner.stop.set()
            thread.join(20)
        assert not thread.is_alive()
        return runner

    runner = run_until(
        lambda: sink_rows() == source_rows(),
        during=lambda: (db.execute("UPDATE items SET name = 'one' WHERE id = 1"), db.execute("DELETE FROM items WHERE id = 2")),
    )
    assert runner.status.state is State.STOPPED and runner.status.rows_written >= 12
    # while stopped: more changes; the restart resumes from the checkpoint
    db.execute("INSERT INTO items VALUES (11, 'eleven', 11)")
    db.execute("UPDATE items SET amount = 0.5 WHERE id = 3")
    runner = run_until(lambda: sink_rows() == source_rows())
    assert sink_rows()[11] == ("eleven", Decimal("11.00")) and sink_rows()[3] == ("n3", Decimal("0.50"))
    assert runner.status.source["phase"] == "stream" and runner.status.source["slot"] == "zetl_pg_to_file"
    db.close()

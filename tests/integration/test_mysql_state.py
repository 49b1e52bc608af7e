"""A MariaDB integration's state: ``zetl reset`` starts it over, and a checkpoint that cannot be
of the connected server is refused instead of resuming at an unrelated binlog place."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson
import pymysql
import pytest

from zetl.events import TableId
from zetl.testing.plugins import FileSink
from zetl.testing.servers import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


class Setup:
    def __init__(self, tmp_path: Path, server: MariaDBServer, database: str, name: str) -> None:
        self.server, self.database, self.name = server, database, name
        self.table = TableId(database, "items")
        self.home = tmp_path / "home"
        self.out = tmp_path / "out.db"
        self.yaml = tmp_path / f"{name}.yaml"
        self.yaml.write_text(
            f"""name: {name}
source:
  type: mysql
  port: {server.port}
  user: zetl
  password: ${{env:ZETL_TEST_MYSQL_PASSWORD}}
tables: ['{database}.items']
sink: {{type: file, path: {self.out}}}
batching: {{max_delay: 100ms}}
"""
        )
        self.sql("CREATE TABLE items (id int PRIMARY KEY, v varchar(40))")
        self.sql("INSERT INTO items SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5")

    def sql(self, query: str) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.server.port, user="zetl", password="zetl", database=self.database, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(query)
        finally:
            conn.close()

    def env(self) -> dict[str, str]:
        return {**{k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}, "ZETL_HOME": str(self.home), "ZETL_TEST_MYSQL_PASSWORD": "zetl"}

    def zetl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "zetl.cli", *args], env=self.env(), capture_output=True, text=True, timeout=120)

    def status(self) -> dict[str, Any]:
        proc = self.zetl("status", "--format", "json", str(self.yaml))
        data = orjson.loads(proc.stdout) if proc.stdout.strip() else []
        return data[0] if data else {}

    def target(self) -> dict[int, str]:
        try:
            return {row["id"]: row["v"] for row in FileSink.read_rows(self.out, self.table)}
        except Exception:  # the table may not exist yet
            return {}

    def run_until_streaming_with(self, ids: set[int], timeout: float = 60) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zetl.cli", "run", str(self.yaml)], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            wait_until(
                lambda: proc.poll() is not None or (set(self.target()) == ids and (s := self.status()).get("state") == "streaming" and "snapshot" not in str(s.get("position"))),
                timeout,
                f"target holds {sorted(ids)}",
            )
            assert proc.poll() is None, proc.communicate()[0]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        return output


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def setup(tmp_path: Path, mariadb_server: MariaDBServer, mariadb_database: str, request: pytest.FixtureRequest) -> Setup:
    return Setup(tmp_path, mariadb_server, mariadb_database, "my-" + request.node.name[5:30].replace("_", "-"))


def test_reset_of_a_mysql_integration_starts_over(setup: Setup) -> None:
    setup.run_until_streaming_with({1, 2, 3, 4, 5})
    setup.sql("UPDATE items SET v = 'changed' WHERE id = 2")
    setup.sql("DELETE FROM items WHERE id = 5")

    proc = setup.zetl("reset", "--yes", str(setup.yaml))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'the checkpoint ({"kind":"mysql"' in proc.stdout, proc.stdout
    assert "mysql-schema-history.jsonl" in proc.stdout and "mysql-server.json" in proc.stdout, proc.stdout
    assert not list(setup.home.rglob("mysql-schema-history.jsonl"))

    # The next run copies the tables again (the target's rows are overwritten by the copy).
    setup.run_until_streaming_with({1, 2, 3, 4, 5})
    assert setup.target()[2] == "changed"
    again = setup.zetl("reset", "--yes", str(setup.yaml))
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_checkpoint_past_the_servers_binlog_is_refused(setup: Setup) -> None:
    """A state taken on another server (copied, or the server was replaced under the same
    address): its coordinate lies beyond what this server ever wrote."""
    setup.run_until_streaming_with({1, 2, 3, 4, 5})
    state = setup.home / "state.db"
    conn = sqlite3.connect(state)
    try:
        (raw,) = conn.execute("SELECT position FROM checkpoints WHERE integration = ?", (setup.name,)).fetchone()
        position = orjson.loads(raw)
        position["file"] = position["file"].rsplit(".", 1)[0] + ".999999"
        conn.execute("UPDATE checkpoints SET position = ? WHERE integration = ?", (orjson.dumps(position).decode(), setup.name))
        conn.commit()
    finally:
        conn.close()

    proc = setup.zetl("run", str(setup.yaml))
    assert proc.returncode == 1, proc.stderr
    assert "after the newest binlog" in proc.stderr and "taken on another server" in proc.stderr, proc.stderr
    assert f"zetl reset {setup.name}" in proc.stderr
    assert setup.status()["state"] == "needs_attention"


def _start(setup: Setup) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zetl.cli", "run", str(setup.yaml)], env=setup.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_two_daemons_started_at_once_one_runs(setup: Setup) -> None:
    """Reproduction 2: both used to read the binlog and write the same tables at once."""
    first, second = _start(setup), _start(setup)
    try:
        wait_until(lambda: first.poll() is not None or second.poll() is not None, 60, "one of the two daemons to exit")
        refused, running = (first, second) if first.poll() is not None else (second, first)
        output = refused.communicate(timeout=10)[0]
        assert refused.returncode == 1, output
        assert f"integration '{setup.name}' is already running (process {running.pid}" in output, output
        wait_until(lambda: set(setup.target()) == {1, 2, 3, 4, 5}, 60, "the running daemon copies the table")
        assert running.poll() is None
        assert setup.status()["pid"] == running.pid, "the refused daemon did not overwrite the status"
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert running.wait(timeout=60) == 0


def test_a_graceful_stop_under_load_exits_0_every_time(setup: Setup) -> None:
    """Reproduction 4: a SIGTERM while the binlog streams used to end, now and then, in
    ``Fatal Python error: _enter_buffered_busy`` and exit code -6."""
    import threading

    stop = threading.Event()

    def writer() -> None:
        conn = pymysql.connect(host="127.0.0.1", port=setup.server.port, user="zetl", password="zetl", database=setup.database, autocommit=True)
        i = 100
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO items VALUES (%s, 'load')", (i,))
                i += 1
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for round_ in range(3):
            proc = _start(setup)
            wait_until(
                lambda: proc.poll() is not None or ((s := setup.status()).get("pid") == proc.pid and s.get("state") == "streaming" and (s.get("rows_written") or 0) > 20),
                60,
                f"round {round_}: this daemon streams under load",
            )
            assert proc.poll() is None, proc.communicate()[0]
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=60)[0]
            assert proc.returncode == 0 and "Fatal Python error" not in output, output
    finally:
        stop.set()
        thread.join(30)

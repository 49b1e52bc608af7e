"""One writer per integration, on the target's side: a ``zetl run`` frozen with SIGSTOP (holding
its lock and its replication connection) while a second run of the same integration, with another
state directory and told to start over, takes over the same target and commits. Resumed with
SIGCONT, the first run reads the changes made meanwhile and tries to write them: the target
refuses (``WriterFencedError``, the integration fails saying another run took over), nothing of
it is committed, and the target equals the source row for row.

Postgres -> Iceberg (SQL catalog, the commit refused by the catalog's optimistic check and then
by the epoch on the fresh metadata) and Postgres -> the Redshift target (the epoch in
``_zetl_checkpoints``, checked in the write transaction).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson
import psycopg
import pytest
import yaml
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget

from zetl.checkpoints import SQLiteCheckpointStore
from zetl.testing.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "fence"
Rows = dict[int, str]


@pytest.fixture
def source_database(pg_server: PostgresServer) -> Iterator[str]:
    name = f"fence_src_{os.getpid()}"
    pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_server.psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_server.psql(f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{name}' AND active")
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # its slots go with it


class IcebergTarget:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "warehouse").mkdir()
        self.catalog_properties = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}
        self.sink = {"type": "iceberg", "namespace": "lake", "commit_interval": "100ms", "catalog": self.catalog_properties}

    def _table(self) -> Any:
        from pyiceberg.catalog import load_catalog

        # "zetl": the sink's catalog_name (the SQL catalog keeps tables per catalog name)
        return load_catalog("zetl", **self.catalog_properties).load_table(("lake", "public_items"))

    def rows(self) -> Rows:
        return {r["id"]: r["v"] for r in self._table().scan().to_arrow().to_pylist()}

    def commits(self) -> list[tuple[int, dict[str, str]]]:
        """Every snapshot: its id and the writer epoch and position in its summary."""
        out = []
        for s in self._table().metadata.snapshots:
            props = s.summary.additional_properties if s.summary is not None else {}
            out.append((s.snapshot_id, {k: v for k, v in props.items() if k in ("zetl.writer-epoch", "zetl.position")}))
        return out

    def epoch(self) -> int:
        return max(int(p["zetl.writer-epoch"]) for _, p in self.commits() if "zetl.writer-epoch" in p)


class RedshiftFenceTarget:
    def __init__(self, target: RedshiftTarget) -> None:
        self.target = target
        self.sink = {"type": "redshift", **target.sink_config()}

    def rows(self) -> Rows:
        return {r["id"]: r["v"] for r in self.target.query("SELECT id, v FROM public.items")}

    def commits(self) -> list[dict[str, Any]]:
        return self.target.query("SELECT integration, position, writer_epoch, updated_at FROM public._zetl_checkpoints")

    def epoch(self) -> int:
        return int(self.commits()[0]["writer_epoch"])


def _yaml(directory: Path, pg_server: PostgresServer, database: str, sink: dict[str, Any], **source: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": NAME,
        "source": {"type": "postgres", "host": pg_server.host, "port": pg_server.port, "database": database, "user": "postgres", "heartbeat_interval": 0.5, **source},
        "sink": sink,
        "tables": ["public.items"],
        "batching": {"max_delay": "100ms"},
        "checkpoint": {"path": str(directory / "state.db")},
    }
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "zetl.cli", "run", "--log-level", "info", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )


def _until(check: Callable[[], bool], what: str, *running: subprocess.Popen[str], timeout: float = float(os.environ.get('ZETL_TEST_FENCE_TIMEOUT', 120))) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for proc in running:
            if proc.poll() is not None:
                raise AssertionError(f"zetl exited early ({proc.returncode}) waiting for {what}:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if check():
                return
        except Exception as exc:  # the target table may not exist yet
            last = exc
        time.sleep(0.1)
    for proc in running:
        proc.send_signal(signal.SIGTERM)  # its log says where it is
    logs = "\n".join(proc.communicate(timeout=30)[0] for proc in running)
    raise AssertionError(f"not within {timeout}s: {what} (last error: {last!r}); log:\n{logs}")


def _status(config: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "status", "--format", "json", str(config)], capture_output=True, text=True, timeout=60)
    [status] = orjson.loads(proc.stdout)
    return status


def test_a_paused_iceberg_writer_cannot_commit_after_a_newer_run_took_over(pg_server: PostgresServer, source_database: str, tmp_path: Path) -> None:
    target = IcebergTarget(tmp_path)
    src = psycopg.connect(pg_server.dsn(source_database), autocommit=True)
    src.execute("CREATE TABLE public.items (id int PRIMARY KEY, v text)")
    src.execute("INSERT INTO public.items SELECT g, 'v' || g FROM generate_series(1, 20) g")

    def source_rows() -> Rows:
        return {r[0]: r[1] for r in src.execute("SELECT id, v FROM public.items").fetchall()}

    # The first run commits its copy at once and then holds streamed rows (commit_interval 1h)
    # until it is forced to commit: when it is stopped or its source fails.
    first_config = _yaml(tmp_path / "first", pg_server, source_database, {**target.sink, "commit_interval": "1h"})
    first = _start(first_config)
    second: subprocess.Popen[str] | None = None
    try:
        _until(lambda: target.rows() == source_rows(), "the first run copied the table", first)
        assert target.epoch() == 1
        src.execute("UPDATE public.items SET v = 'held by the first run' WHERE id = 20")
        _until(lambda: (_status(first_config).get("sink") or {}).get("buffered_rows", 0) >= 1, "the first run holds the streamed change", first)

        os.kill(first.pid, signal.SIGSTOP)  # holds its lock, its buffered rows and its connections
        # A second run on a copy of the state (another state directory, so the lock does not
        # stop it; the same slot, taken over once the paused run's connection is cut).
        second_dir = tmp_path / "second"
        shutil.copytree(tmp_path / "first", second_dir, ignore=shutil.ignore_patterns("locks"))
        second_config = second_dir / f"{NAME}.yaml"
        doc = yaml.safe_load(second_config.read_text())
        doc["checkpoint"]["path"] = str(second_dir / "state.db")
        doc["sink"]["commit_interval"] = "100ms"
        second_config.write_text(yaml.safe_dump(doc, sort_keys=False))
        pg_server.psql(f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{source_database}' AND active")
        second = _start(second_config)
        _until(lambda: target.rows() == source_rows(), "the second run replayed the change", second)
        src.execute("UPDATE public.items SET v = 'streamed by the second run' WHERE id = 20")
        src.execute("INSERT INTO public.items VALUES (21, 'inserted by the second run')")
        src.execute("DELETE FROM public.items WHERE id = 3")
        _until(lambda: target.rows() == source_rows(), "the second run streamed its changes", second)
        second.send_signal(signal.SIGTERM)
        second_output, _ = second.communicate(timeout=120)
        assert second.returncode == 0, second_output
        assert "writer epoch 2" in second_output, second_output
        assert target.epoch() == 2
        committed = target.commits()
        expected = source_rows()

        # Resumed, the first run finds its connection cut and commits what it holds: refused.
        os.kill(first.pid, signal.SIGCONT)
        first_output, _ = first.communicate(timeout=120)
        assert first.returncode == 1, first_output
        assert "another run took over" in first_output, first_output
        status = _status(first_config)
        assert status["state"] == "failed" and "another run took over" in status["last_error"], status
        assert status["writer_epoch"] == 1 and "epoch 2" in status["last_error"], status

        assert target.commits() == committed, "the paused run committed after the newer one"
        assert target.rows() == expected == source_rows()
        assert target.rows()[20] == "streamed by the second run"  # not the paused run's older value
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(30)
        src.close()

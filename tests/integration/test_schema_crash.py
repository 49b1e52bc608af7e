"""Schema changes that survive a crash: `zetl run` (Postgres -> Iceberg) SIGKILLed at each point
around a schema change, then restarted; the Iceberg table read back with DuckDB is what it would
have been without the crash, row for row, and `zetl drift` agrees.

The kill points are ``zetl.faults`` points (``ZETL_FAULT_POINT``), so no test depends on timing:
before the change is applied, between two changes of one plan, after the apply and before the
next checkpoint, right after that checkpoint. One more test reproduces the original report by
timing: a rename while other rows are updated, and a SIGKILL as soon as the target shows it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.faults import ENV as FAULT_ENV
from zetl.faults import FaultPoint
from zetl.plugin import PluginContext
from zetl.testing.servers import PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "schema-crash"
TABLE = TableId("public", "r")
ROWS = 1001
DEADLINE = 90.0

Row = dict[str, Any]


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def write_config(tmp_path: Path, server: PostgresServer, database: str, behavior: str, discovery: str = "0") -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    catalog = "\n".join(f"    {k}: '{v}'" for k, v in _catalog(tmp_path).items())
    path = tmp_path / f"{NAME}.yaml"
    path.write_text(
        f"""name: {NAME}
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  heartbeat_interval: 500ms
  table_discovery_interval: {discovery}
sink:
  type: iceberg
  namespace: lake
  commit_interval: 200ms
  catalog:
{catalog}
tables: [public.*]
schema_evolution: {{behavior: {behavior}}}
batching: {{max_rows: 200, max_delay: 50ms}}
checkpoint: {{path: state.db}}
"""
    )
    return path


class Daemon:
    """One `zetl run` subprocess; its output is collected by a thread (never blocks the pipe)."""

    def __init__(self, config: Path, fault: str | None = None) -> None:
        env = dict(os.environ)
        env.pop(FAULT_ENV, None)
        env.pop("ZETL_ICEBERG_KILL_AT", None)
        if fault is not None:
            env[FAULT_ENV] = fault
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=config.parent
        )
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.output)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"zetl run did not exit within {timeout}s:\n{self.log[-4000:]}") from None
        self._reader.join(timeout=10)
        return code

    def stop(self) -> None:
        """SIGTERM and expect a clean exit."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = self.wait()
        assert code == 0, f"zetl run exited {code}:\n{self.log[-4000:]}"

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.wait()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.alive():
            daemon.kill()


def lake(tmp_path: Path, table: TableId = TABLE) -> tuple[list[str] | None, dict[int, Row]]:
    """The Iceberg table's column names (None: no table) and rows by id, read with DuckDB."""
    sink = IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=NAME, state_dir=tmp_path))
    with sink:
        loaded = sink._load(table)
        if loaded is None:
            return None, {}
        names = [f.name for f in loaded.schema().fields]
        if loaded.metadata.current_snapshot_id is None:
            return names, {}
        location = loaded.metadata_location
    return names, {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


def wait_for(
    tmp_path: Path,
    daemon: Daemon | None,
    ok: Callable[[list[str] | None, dict[int, Row]], bool],
    what: str,
    table: TableId = TABLE,
    explain: Callable[[dict[int, Row]], Any] = lambda rows: f"{len(rows)} rows",
) -> dict[int, Row]:
    """Poll the lake until ``ok(columns, rows)``; fails at once when the daemon exited."""
    deadline = time.monotonic() + DEADLINE
    names: list[str] | None = None
    rows: dict[int, Row] = {}
    while time.monotonic() < deadline:
        try:
            names, rows = lake(tmp_path, table)
        except (SinkConnectionError, OSError):  # the daemon writes the catalog at this moment: look again
            names, rows = None, {}
        else:
            if ok(names, rows):
                return rows
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"zetl run exited ({daemon.proc.returncode}) before: {what}\n{daemon.log[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {what}; columns {names}; {explain(rows)}\n{daemon.log[-4000:] if daemon else ''}")


def source_rows(server: PostgresServer, database: str, table: str = "r") -> dict[int, Row]:
    with psycopg.connect(server.dsn(database), row_factory=dict_row) as conn:
        return {int(r["id"]): dict(r) for r in conn.execute(f'SELECT * FROM public."{table}"').fetchall()}


def drift(config: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "zetl.cli", "drift", str(config), "--format", "json"], capture_output=True, text=True, timeout=120, cwd=config.parent)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"zetl drift printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}") from None
    return done.returncode, report[0] if isinstance(report, list) else report


@dataclass(frozen=True)
class Case:
    """One schema change: the DDL, and the row each source row must be in the target."""

    name: str
    behavior: str
    ddl: str
    expected: Callable[[Row, bool], Row]
    """(source row now, whether the row was written after the change) -> the target row."""
    not_null_a: bool = False
    while_stopped: bool = False
    """The DDL is made while zetl is stopped (the change is planned at start), else mid-stream."""
    after_ddl: str = "UPDATE r SET n = n + 1 WHERE id <= 50"
    written_after: frozenset[int] = field(default_factory=lambda: frozenset(range(1, 51)))


def same(row: Row, _after: bool) -> Row:
    return dict(row)


def lenient_rename(row: Row, after: bool) -> Row:
    out = dict(row)
    out["a"], out["b"] = (None, row["b"]) if after else (row["b"], None)
    return out


def lenient_drop(row: Row, after: bool) -> Row:
    return {**row, "c": None if after else row["id"]}


CASES = {
    "rename-evolve": Case("rename-evolve", "evolve", "ALTER TABLE r RENAME COLUMN a TO b", same),
    "rename-lenient": Case("rename-lenient", "lenient", "ALTER TABLE r RENAME COLUMN a TO b", lenient_rename),
    "rename-lenient-not-null": Case("rename-lenient-not-null", "lenient", "ALTER TABLE r RENAME COLUMN a TO b", lenient_rename, not_null_a=True),
    "rename-try_evolve": Case("rename-try_evolve", "try_evolve", "ALTER TABLE r RENAME COLUMN a TO b", same),
    "drop-evolve": Case("drop-evolve", "evolve", "ALTER TABLE r DROP COLUMN c", same),
    "drop-lenient": Case("drop-lenient", "lenient", "ALTER TABLE r DROP COLUMN c", lenient_drop),
    "add-evolve": Case("add-evolve", "evolve", "ALTER TABLE r ADD COLUMN d int", same, after_ddl="UPDATE r SET n = n + 1, d = id WHERE id <= 50"),
    "add-lenient": Case("add-lenient", "lenient", "ALTER TABLE r ADD COLUMN d int", same, after_ddl="UPDATE r SET n = n + 1, d = id WHERE id <= 50"),
    "widen-evolve": Case("widen-evolve", "evolve", "ALTER TABLE r ALTER COLUMN c TYPE bigint", same, after_ddl="UPDATE r SET c = c + 10000000000 WHERE id <= 50"),
    "widen-lenient": Case("widen-lenient", "lenient", "ALTER TABLE r ALTER COLUMN c TYPE bigint", same, after_ddl="UPDATE r SET c = c + 10000000000 WHERE id <= 50"),
    "nullable-evolve": Case(
        "nullable-evolve", "evolve", "ALTER TABLE r ALTER COLUMN a DROP NOT NULL", same, not_null_a=True, while_stopped=True,
        after_ddl="UPDATE r SET a = NULL WHERE id <= 50",
    ),
    "rename-while-stopped-evolve": Case("rename-while-stopped-evolve", "evolve", "ALTER TABLE r RENAME COLUMN a TO b", same, while_stopped=True),
}

# (case, kill point, the how-many-th pass of the point kills: the table's creation at the first
# start is the first plan, and the first checkpoint after it the first checkpoint point)
MATRIX = [
    ("rename-evolve", FaultPoint.SCHEMA_BEFORE_APPLY, 2),
    ("rename-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("rename-evolve", FaultPoint.SCHEMA_AFTER_CHECKPOINT, 2),
    ("rename-lenient", FaultPoint.SCHEMA_BEFORE_APPLY, 2),
    ("rename-lenient", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("rename-lenient", FaultPoint.SCHEMA_AFTER_CHECKPOINT, 2),
    ("rename-lenient-not-null", FaultPoint.SCHEMA_BETWEEN_CHANGES, 1),
    ("rename-lenient-not-null", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("rename-try_evolve", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("drop-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("add-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("add-lenient", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("widen-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("widen-lenient", FaultPoint.SCHEMA_AFTER_APPLY, 2),
    ("nullable-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 1),
    ("rename-while-stopped-evolve", FaultPoint.SCHEMA_AFTER_APPLY, 1),
    ("rename-while-stopped-evolve", FaultPoint.SCHEMA_AFTER_CHECKPOINT, 1),
]


def expected_rows(case: Case, source: dict[int, Row]) -> dict[int, Row]:
    return {key: case.expected(row, key in case.written_after) for key, row in source.items()}


def differences(expected: dict[int, Row], rows: dict[int, Row]) -> list[str]:
    problems = [f"missing row {k}" for k in sorted(expected.keys() - rows.keys())][:5]
    problems += [f"extra row {k}" for k in sorted(rows.keys() - expected.keys())][:5]
    bad = [k for k in sorted(expected.keys() & rows.keys()) if expected[k] != rows[k]]
    problems += [f"row {k}: expected {expected[k]}, target {rows[k]}" for k in bad[:5]]
    if len(bad) > 5:
        problems.append(f"... {len(bad)} rows differ")
    return problems


def setup_table(sql: Callable[[str], Any], not_null_a: bool) -> None:
    sql(f"CREATE TABLE r (id int PRIMARY KEY, a text{' NOT NULL' if not_null_a else ''}, c int, n int NOT NULL DEFAULT 0)")
    sql(f"INSERT INTO r (id, a, c) SELECT i, 'a' || i, i FROM generate_series(1, {ROWS}) AS i")


def streaming(tmp_path: Path, daemon: Daemon, sql: Callable[[str], Any], marker: int) -> None:
    """Until the snapshot is in the lake and a streamed update reached it."""
    wait_for(tmp_path, daemon, lambda names, rows: len(rows) == ROWS, "the snapshot")
    sql(f"UPDATE r SET n = {marker} WHERE id = {ROWS}")
    wait_for(tmp_path, daemon, lambda names, rows: rows.get(ROWS, {}).get("n") == marker, "a streamed update")


@pytest.mark.parametrize(("case_name", "point", "count"), MATRIX, ids=[f"{c}-{p.value}" for c, p, _ in MATRIX])
def test_crash_around_a_schema_change_leaves_the_target_as_without_it(
    case_name: str, point: FaultPoint, count: int, tmp_path: Path, pg_server: PostgresServer, pg_database: str, sql: Any, daemons: list[Daemon]
) -> None:
    case = CASES[case_name]
    setup_table(sql, case.not_null_a)
    config = write_config(tmp_path, pg_server, pg_database, case.behavior)
    fault = f"{point.value}:{count}"
    if case.while_stopped:
        first = Daemon(config)
        daemons.append(first)
        streaming(tmp_path, first, sql, -1)
        first.stop()
        sql(case.ddl)
        sql(case.after_ddl)
        crashing = Daemon(config, fault)
        daemons.append(crashing)
    else:
        crashing = Daemon(config, fault)
        daemons.append(crashing)
        streaming(tmp_path, crashing, sql, -1)
        sql(case.ddl)
        sql(case.after_ddl)
    code = crashing.wait()
    assert code == -signal.SIGKILL, f"the fault point {fault} was not reached (exit {code}):\n{crashing.log[-4000:]}"
    assert f"{FAULT_ENV}={fault} reached" in crashing.log
    # more rows change while zetl is down
    sql("UPDATE r SET n = n + 100 WHERE id BETWEEN 40 AND 60")
    written_after = case.written_after | frozenset(range(40, 61)) | {ROWS}  # ROWS: the last write below
    case = Case(case.name, case.behavior, case.ddl, case.expected, case.not_null_a, case.while_stopped, case.after_ddl, written_after)

    restarted = Daemon(config)
    daemons.append(restarted)
    sql(f"UPDATE r SET n = n + 1 WHERE id = {ROWS}")  # the last write: once it is in, everything is
    source = source_rows(pg_server, pg_database)
    expected = expected_rows(case, source)
    columns = sorted(next(iter(expected.values())))
    rows = wait_for(
        tmp_path,
        restarted,
        lambda names, rows: names is not None and sorted(names) == columns and rows.get(ROWS) == expected[ROWS] and not differences(expected, rows),
        f"the target equal to the source after the restart ({case.name}, {fault})",
        explain=lambda rows: differences(expected, rows),
    )
    assert not differences(expected, rows)
    restarted.stop()
    if case.ddl.endswith("RENAME COLUMN a TO b"):  # never the inversion of the rename
        assert "drop column public.r.b" not in restarted.log + crashing.log, restarted.log[-4000:]
    code, report = drift(config)
    assert code == 0 and report["status"] == "in_sync", report


def test_rename_under_updates_and_a_kill_right_after_it_loses_nothing(
    tmp_path: Path, pg_server: PostgresServer, pg_database: str, sql: Any, daemons: list[Daemon]
) -> None:
    """The original report, by timing: evolve, a rename while other rows are updated, SIGKILL as
    soon as the Iceberg table shows the rename (before the rows after it are committed)."""
    setup_table(sql, False)
    config = write_config(tmp_path, pg_server, pg_database, "evolve")
    first = Daemon(config)
    daemons.append(first)
    streaming(tmp_path, first, sql, -1)
    stop_updates = threading.Event()
    updated: set[int] = set()
    errors: list[BaseException] = []

    def updater() -> None:
        try:
            with psycopg.connect(pg_server.dsn(pg_database), autocommit=True) as conn:
                key = 1
                while not stop_updates.is_set():
                    conn.execute("UPDATE r SET n = n + 1 WHERE id = %s", (key,))
                    updated.add(key)
                    key = key % 100 + 1
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=updater, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + DEADLINE
        while len(updated) < 20:
            assert time.monotonic() < deadline, "the updates did not start"
            time.sleep(0.01)
        sql("ALTER TABLE r RENAME COLUMN a TO b")
        wait_for(tmp_path, first, lambda names, rows: names is not None and "b" in names, "the rename in the target")
        first.kill()
    finally:
        stop_updates.set()
        thread.join(timeout=30)
    assert not errors, errors
    restarted = Daemon(config)
    daemons.append(restarted)
    sql(f"UPDATE r SET n = n + 1 WHERE id = {ROWS}")
    source = source_rows(pg_server, pg_database)
    rows = wait_for(
        tmp_path, restarted, lambda names, rows: rows == source, "the target equal to the source after the restart", explain=lambda rows: differences(source, rows)
    )
    assert sum(1 for r in rows.values() if r["b"] is None) == 0
    restarted.stop()
    code, report = drift(config)
    assert code == 0 and report["status"] == "in_sync", report

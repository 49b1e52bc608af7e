"""One awkward value must not stop a table, and the advice zetl gives about a value it cannot
carry must work. Against a real Postgres and a real MariaDB, into Iceberg read back with DuckDB.

* A snapshot chunk that Arrow's fast reader refuses (an ``infinity`` timestamp, a float NaN) is
  read value by value into the same Arrow types: json stays its text, uuid stays text (before,
  the fallback decoded json into dicts and failed: "Expected bytes, got a 'dict' object").
* A value zetl cannot carry (a timestamp in the year 20000, a MariaDB TIME beyond 24 hours)
  fails the integration with a message naming the table and the column and the ``filters``
  setting that leaves the column out; following that advice makes the integration run, because
  an excluded column is never read, neither by the snapshot nor by the stream.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from zetl.config.load import load_integration
from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.servers import MariaDBServer, PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = [pytest.mark.integration]

ADVICE = re.compile(r"add to the integration's file: (filters: \{.*\}\}\}\}) \(an excluded column is never read\)")
"""The ``filters`` setting a cannot-read error advises, in YAML flow style."""


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _config(tmp_path: Path, name: str, source: list[str], table: TableId, extra: str = "") -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    catalog = ", ".join(f"{k}: '{v}'" for k, v in _catalog(tmp_path).items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "\n".join(
            [
                f"name: {name}",
                "source:",
                *source,
                f"sink: {{type: iceberg, namespace: lake, commit_interval: 200ms, catalog: {{{catalog}}}}}",
                f"tables: ['{table}']",
                "batching: {max_rows: 500, max_delay: 100ms}",
                "checkpoint: {path: state.db}",
                extra,
            ]
        )
        + "\n"
    )
    return path


def _rows(tmp_path: Path, name: str, table: TableId) -> tuple[Any, dict[int, dict[str, Any]]]:
    sink = IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=name, state_dir=tmp_path))
    with sink:
        schema = sink.current_schema(table)
        loaded = sink._load(table)
        if loaded is None or loaded.metadata.current_snapshot_id is None:
            return schema, {}
        location = loaded.metadata_location
    return schema, {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


class _Run:
    """One integration running in a thread until ``finish``."""

    def __init__(self, config: Path) -> None:
        self.stop = threading.Event()
        self.runner = IntegrationRunner(load_integration(config), self.stop)
        self.result: list[State] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.runner.run()), daemon=True)
        self.thread.start()

    def wait_rows(self, tmp_path: Path, table: TableId, ok: Callable[[dict[int, dict[str, Any]]], bool], what: str, timeout: float = 90) -> tuple[Any, dict[int, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        schema: Any = None
        rows: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            try:
                schema, rows = _rows(tmp_path, self.runner.name, table)
            except SinkConnectionError:  # the catalog is being created at this moment
                time.sleep(0.2)
                continue
            if ok(rows):
                return schema, rows
            if not self.thread.is_alive():
                raise AssertionError(f"the integration stopped before {what}: {self.runner.status.last_error}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; rows {rows}")

    def wait_failed(self, timeout: float = 90) -> str:
        """The integration's error once it has failed on its own."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the integration did not fail"
        assert self.result == [State.FAILED], (self.result, self.runner.status.last_error)
        return self.runner.status.last_error or ""

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert self.result == [State.STOPPED], self.runner.status.last_error


def _follow(tmp_path: Path, error: str, table: TableId, column: str, config: Path) -> None:
    """Add the ``filters`` setting the error advises to the integration's file."""
    assert str(table) in error and column in error, error
    found = ADVICE.search(error)
    assert found is not None, f"the error does not advise a filters setting: {error}"
    advised = yaml.safe_load(found.group(1))
    assert advised == {"filters": {"tables": {str(table): {"columns": {"exclude": [column]}}}}}, advised
    config.write_text(config.read_text() + found.group(1) + "\n")


def _postgres_source(server: PostgresServer, database: str) -> list[str]:
    return ["  type: postgres", "  host: 127.0.0.1", f"  port: {server.port}", f"  database: {database}", "  user: postgres", "  heartbeat_interval: 1s"]


@pytest.mark.postgres
def test_a_chunk_arrow_refuses_is_read_value_by_value_into_the_same_types(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    """The issue's reproduction (json column + an ``infinity`` timestamp in one chunk), with a
    uuid, a NaN and a json array column in the same chunk; the stream carries the same values."""
    table = TableId("vals", "fb")
    psql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731
    psql(
        "CREATE SCHEMA vals; CREATE TABLE vals.fb (id int PRIMARY KEY, j json, ts timestamp, u uuid, f float8, js jsonb[]);"
        "INSERT INTO vals.fb VALUES (1, '{\"a\":1}', '2026-03-01 10:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.5, ARRAY['{\"k\": 1}']::jsonb[]),"
        " (2, NULL, 'infinity', NULL, 'NaN', NULL), (3, '{\"n\": 1e400}', '-infinity', 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 2.5, ARRAY['[1, 2]', 'null']::jsonb[])"
    )
    run = _Run(_config(tmp_path, "pg-fallback", _postgres_source(pg_server, pg_database), table))
    try:
        _, rows = run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2, 3], "the snapshot")
        psql("INSERT INTO vals.fb VALUES (4, '{\"a\":1,\"a\":2}', 'infinity', 'c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'NaN', ARRAY['{\"k\": 1}']::jsonb[])")
        _, rows = run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2, 3, 4], "the streamed row")
    finally:
        run.finish()
    assert rows[1]["j"] == '{"a":1}' and rows[1]["ts"] == dt.datetime(2026, 3, 1, 10, 0) and rows[1]["f"] == 1.5
    assert uuid.UUID(str(rows[1]["u"])) == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11") and list(rows[1]["js"]) == ['{"k": 1}']
    # infinity is carried as the largest timestamp zetl carries, on both paths alike
    assert rows[2]["j"] is None and rows[2]["ts"] == dt.datetime.max and math.isnan(rows[2]["f"])
    assert rows[3]["j"] == '{"n": 1e400}' and rows[3]["ts"] == dt.datetime.min and list(rows[3]["js"]) == ["[1, 2]", "null"]
    assert rows[4]["j"] == '{"a":1,"a":2}' and rows[4]["ts"] == dt.datetime.max and math.isnan(rows[4]["f"]) and list(rows[4]["js"]) == ['{"k": 1}']


@pytest.mark.postgres
def test_excluding_the_column_the_error_names_makes_a_postgres_integration_run(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    table = TableId("vals", "far")
    psql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731
    psql(
        "CREATE SCHEMA vals; CREATE TABLE vals.far (id int PRIMARY KEY, j json, ts timestamp, note text);"
        "INSERT INTO vals.far VALUES (1, '{\"a\":1}', '2026-03-01 10:00', 'one'), (2, '[1]', '20000-01-01 00:00', 'two')"
    )
    config = _config(tmp_path, "pg-far", _postgres_source(pg_server, pg_database), table)
    error = _Run(config).wait_failed()
    assert "cannot read column 'ts' of table vals.far" in error, error
    _follow(tmp_path, error, table, "ts", config)

    run = _Run(config)
    try:
        run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2], "the snapshot without the column")
        # the stream does not decode the excluded column either
        psql("INSERT INTO vals.far VALUES (3, '{\"b\": 2}', '30000-06-01 00:00', 'three'); UPDATE vals.far SET ts = '40000-01-01', note = 'uno' WHERE id = 1")
        _, rows = run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2, 3] and r[1]["note"] == "uno", "the streamed rows")
    finally:
        run.finish()
    # the failed first run had created the target with the column; lenient keeps it, NULL from now on
    assert all(r.get("ts") is None for r in rows.values()), rows
    assert {i: (r["j"], r["note"]) for i, r in rows.items()} == {1: ('{"a":1}', "uno"), 2: ("[1]", "two"), 3: ('{"b": 2}', "three")}


@pytest.mark.mariadb
def test_excluding_the_column_the_error_names_makes_a_mariadb_integration_run(tmp_path: Path, mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    """MariaDB's snapshot converts column by column (zero dates become NULL on both paths, json
    stays its text); a TIME beyond 24 hours cannot be carried, and excluding it works."""
    table = TableId(mariadb_database, "t")
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="zetl", password="zetl", database=mariadb_database, autocommit=True)
    cur = conn.cursor()
    cur.execute("SET SESSION sql_mode = ''")  # allows zero dates
    cur.execute("CREATE TABLE t (id int PRIMARY KEY, doc JSON, d date, hours time, note varchar(10))")
    cur.execute("INSERT INTO t VALUES (1, '{\"a\":1,\"a\":2}', '0000-00-00', '10:00:00', 'one'), (2, '[1e400]', '2026-01-31', '100:00:00', 'two')")
    source = ["  type: mysql", "  host: 127.0.0.1", f"  port: {mariadb_server.port}", "  user: zetl", "  password: zetl", "  heartbeat: 200ms"]
    config = _config(tmp_path, "maria-far", source, table)
    try:
        error = _Run(config).wait_failed()
        assert "TIME value" in error, error
        _follow(tmp_path, error, table, "hours", config)
        run = _Run(config)
        try:
            run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2], "the snapshot without the column")
            cur.execute("INSERT INTO t VALUES (3, '{\"n\": 123456789012345678901234567890}', '0000-00-00', '-500:00:00', 'three')")
            _, rows = run.wait_rows(tmp_path, table, lambda r: sorted(r) == [1, 2, 3], "the streamed row")
        finally:
            run.finish()
    finally:
        conn.close()
    assert all(r.get("hours") is None for r in rows.values()), rows
    assert {i: (r["doc"], r["d"], r["note"]) for i, r in rows.items()} == {
        1: ('{"a":1,"a":2}', None, "one"),
        2: ("[1e400]", dt.date(2026, 1, 31), "two"),
        3: ('{"n": 123456789012345678901234567890}', None, "three"),
    }

"""JSON kept exactly: hostile json values through a real Postgres and a real MariaDB, by the
snapshot and by the stream, into the file sink and into Iceberg (read back with DuckDB).

The values are in tests/golden/json/ (one per line, with the text that must arrive). For every
value, the text in each target is the same whichever path the row took, and equals the golden
text: Postgres ``json`` as written, ``jsonb`` as Postgres prints it, MariaDB's JSON (longtext) as
written. Before json was carried as text, the stream parsed and rewrote it: duplicate keys
collapsed, big integers became doubles, and ``1e400`` stopped the integration for good.

``ZETL_UPDATE_GOLDEN=1`` rewrites the expected column with what arrives (review the diff).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pymysql
import pytest

import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from unit.golden_util import Case, cases, check
from zetl.config.load import load_integration
from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.plugins import FileSink
from zetl.testing.servers import MariaDBServer, PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

if TYPE_CHECKING:
    from pgsql import Sql

pytestmark = [pytest.mark.integration]

STREAM_OFFSET = 1000
"""Row ``i`` of the golden file is written by the snapshot with id ``i`` and again, after the
snapshot, with id ``STREAM_OFFSET + i`` (the stream)."""


def render(text: str | None) -> str:
    """The text that arrived, unambiguous in a golden line: a JSON string literal (whitespace and
    escapes visible), or its length and a sha256 prefix when it is long; NULL for SQL NULL."""
    if text is None:
        return "NULL"
    assert isinstance(text, str), f"a json value must arrive as its text, got {type(text).__name__}: {text!r}"
    if len(text) > 160:
        return f"{len(text)} chars, sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return orjson.dumps(text).decode()


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _write_configs(tmp_path: Path, name: str, source: list[str], table: str) -> tuple[Path, Path]:
    """Two integrations of the same source table: into the file sink and into Iceberg."""
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    common = ["source:", *source, f"tables: [{table}]", "batching: {max_rows: 500, max_delay: 100ms}", "checkpoint: {path: state.db}"]
    file_config = tmp_path / "to-file.yaml"
    file_config.write_text("\n".join([f"name: {name}-file", *common, "sink: {type: file, path: out.db}"]) + "\n")
    catalog = ", ".join(f"{k}: '{v}'" for k, v in _catalog(tmp_path).items())
    iceberg_config = tmp_path / "to-iceberg.yaml"
    iceberg_config.write_text(
        "\n".join([f"name: {name}-iceberg", *common, f"sink: {{type: iceberg, namespace: lake, commit_interval: 200ms, catalog: {{{catalog}}}}}"]) + "\n"
    )
    return file_config, iceberg_config


def _iceberg_rows(tmp_path: Path, integration: str, table: TableId) -> dict[int, dict[str, Any]]:
    sink = IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=integration, state_dir=tmp_path))
    with sink:
        loaded = sink._load(table)
        if loaded is None or loaded.metadata.current_snapshot_id is None:
            return {}
        location = loaded.metadata_location
    return {int(r["id"]): r for r in read_rows(duckdb_connection(), location)}


def _file_rows(tmp_path: Path, table: TableId) -> dict[int, dict[str, Any]]:
    path = tmp_path / "out.db"
    if not path.exists():
        return {}
    try:
        return {int(r["id"]): r for r in FileSink.read_rows(path, table)}
    except sqlite3.OperationalError:  # the sink created the file but not yet its tables
        return {}


class _Runs:
    """The two integrations running in threads until ``stop``."""

    def __init__(self, configs: tuple[Path, Path]) -> None:
        self.stop = threading.Event()
        self.runners = [IntegrationRunner(load_integration(c), self.stop) for c in configs]
        self.results: list[State] = []
        self.threads = [threading.Thread(target=lambda r=r: self.results.append(r.run()), daemon=True) for r in self.runners]
        for t in self.threads:
            t.start()

    def wait(self, ok: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ok():
                    return
            except SinkConnectionError:  # the catalog is being created at this moment: look again
                pass
            if not all(t.is_alive() for t in self.threads):
                errors = [r.status.last_error for r in self.runners]
                raise AssertionError(f"an integration stopped before {what}: {errors}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert self.results == [State.STOPPED, State.STOPPED], [r.status.last_error for r in self.runners]


def _run_both_paths(
    tmp_path: Path, name: str, source: list[str], table: TableId, insert: Callable[[int], None], count: int
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Rows 1..count through the snapshot, then the same values again (ids + STREAM_OFFSET)
    through the stream; returns what the file sink and Iceberg hold."""
    insert(0)
    runs = _Runs(_write_configs(tmp_path, name, source, str(table)))
    try:
        everything = set(range(1, count + 1))
        runs.wait(lambda: set(_file_rows(tmp_path, table)) == everything and set(_iceberg_rows(tmp_path, f"{name}-iceberg", table)) == everything, "the snapshot")
        insert(STREAM_OFFSET)
        everything |= {STREAM_OFFSET + i for i in range(1, count + 1)}
        runs.wait(lambda: set(_file_rows(tmp_path, table)) == everything and set(_iceberg_rows(tmp_path, f"{name}-iceberg", table)) == everything, "the stream")
    finally:
        runs.finish()
    return _file_rows(tmp_path, table), _iceberg_rows(tmp_path, f"{name}-iceberg", table)


def _check_paths_agree(found: list[Case], column_of: Callable[[Case], str], targets: dict[str, dict[int, dict[str, Any]]]) -> None:
    """Every value arrived as the same text in every target by both paths, that text is what the
    source prints for it (``targets["source"]``), and it is the golden text."""
    for i, case in enumerate(found, 1):
        column = column_of(case)
        texts = {f"{target} by {path}": rows[row_id][column] for target, rows in targets.items() for path, row_id in (("snapshot", i), ("stream", STREAM_OFFSET + i))}
        assert len(set(texts.values())) == 1, f"{case.id}: {case.inputs} arrived differently: {texts}"
        check(case, render(next(iter(texts.values()))))


@pytest.mark.postgres
def test_hostile_json_arrives_as_the_same_exact_text_from_postgres(tmp_path: Path, pg_server: PostgresServer, pg_database: str, sql: Sql) -> None:
    found = cases("json/postgres.txt", 3)
    pg_server.psql("CREATE TABLE vals (id int PRIMARY KEY, j json, jb jsonb)", pg_database)

    def insert(offset: int) -> None:
        rows = ", ".join(
            f"({offset + i}, {expression if kind == 'json' else 'NULL'}, {expression if kind == 'jsonb' else 'NULL'})"
            for i, (kind, expression) in ((i, c.inputs) for i, c in enumerate(found, 1))
        )
        pg_server.psql(f"INSERT INTO vals VALUES {rows}", pg_database)

    source = ["  type: postgres", "  host: 127.0.0.1", f"  port: {pg_server.port}", f"  database: {pg_database}", "  user: postgres", "  heartbeat_interval: 1s"]
    file_rows, iceberg_rows = _run_both_paths(tmp_path, "pg-json", source, TableId("public", "vals"), insert, len(found))
    printed = {row[0]: {"j": row[1], "jb": row[2]} for row in sql("SELECT id, j::text, jb::text FROM vals")}
    _check_paths_agree(found, lambda c: "j" if c.inputs[0] == "json" else "jb", {"the source": printed, "file sink": file_rows, "Iceberg": iceberg_rows})


@pytest.mark.mariadb
def test_hostile_json_arrives_as_the_same_exact_text_from_mariadb(tmp_path: Path, mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    found = cases("json/mariadb.txt", 2)
    mariadb_server.sql("CREATE TABLE vals (id int PRIMARY KEY, doc JSON)", mariadb_database)

    def insert(offset: int) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="zetl", password="zetl", database=mariadb_database, autocommit=True)
        try:
            with conn.cursor() as cur:
                # the expressions are SQL text from the golden file (no bound values to bind)
                cur.execute("INSERT INTO vals VALUES " + ", ".join(f"({offset + i}, {c.inputs[0]})" for i, c in enumerate(found, 1)))
        finally:
            conn.close()

    source = ["  type: mysql", "  host: 127.0.0.1", f"  port: {mariadb_server.port}", "  user: zetl", "  password: zetl", "  heartbeat: 200ms"]
    file_rows, iceberg_rows = _run_both_paths(tmp_path, "maria-json", source, TableId(mariadb_database, "vals"), insert, len(found))
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="zetl", password="zetl", database=mariadb_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, doc FROM vals")
            stored = {row[0]: {"doc": row[1]} for row in cur.fetchall()}
    finally:
        conn.close()
    _check_paths_agree(found, lambda c: "doc", {"the source": stored, "file sink": file_rows, "Iceberg": iceberg_rows})

"""Table names chosen by whoever can create a table in the source cannot place anything outside
the target: a path traversal, quotes, dots, spaces, unicode, control characters and two names
that collide once made safe, replicated from a real Postgres (``tables: [public.*, ...]``) into
Iceberg with the embedded SQL catalog (read back with pyiceberg and DuckDB), the Redshift target
and the file sink."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
import yaml
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget

import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from zetl.config.load import load_integration
from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.testing.plugins import FileSink
from zetl.testing.servers import PostgresServer
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows
from zetl_sinks.redshift.config import RedshiftConfig
from zetl_sinks.redshift.identifiers import quote
from zetl_sinks.redshift.sink import RedshiftSink

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

_databases = itertools.count(1)


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside every target (short: Postgres names hold 63 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="z", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tables(outside: Path) -> list[TableId]:
    traversal = "x/" + "../" * 12 + str(outside).lstrip("/") + "/escaped"
    assert len(traversal.encode()) <= 63, traversal
    return [
        TableId("public", traversal),
        TableId("public", 'we ird "q" ünï'),
        TableId("public", "t.x"),
        TableId("public", "a/b"),  # these three collide once '/' and '\' become '_'
        TableId("public", "a\\b"),
        TableId("public", "a_b"),
        TableId("public", "tab\tand ."),
        TableId("we.ird", "t.x"),
    ]


@pytest.fixture
def source(pg_server: PostgresServer, outside: Path) -> Iterator[tuple[str, list[TableId]]]:
    """A source database holding every table of ``_tables``, each with the row (1, its name)."""
    name = f"names_src_{os.getpid()}_{next(_databases)}"
    pg_server.psql(f'CREATE DATABASE "{name}"')
    tables = _tables(outside)
    try:
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            conn.execute('CREATE SCHEMA "we.ird"')
            for table in tables:
                ident = psycopg.sql.Identifier(table.namespace, table.name)
                conn.execute(psycopg.sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(ident))
                conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (1, %s)").format(ident), (table.name,))
        yield name, tables
    finally:
        pg_server.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active")
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _replicate(pg_server: PostgresServer, database: str, tables: list[TableId], tmp_path: Path, sink: dict[str, Any], done: Callable[[], bool]) -> None:
    """Run the integration until ``done()`` holds after the snapshot and one streamed insert per
    table (row 2), then stop it."""
    doc = {
        "name": "names",
        "source": {"type": "postgres", "host": pg_server.host, "port": pg_server.port, "database": database, "user": "postgres", "heartbeat_interval": 0.5},
        "sink": sink,
        "tables": ["public.*", "we.ird.*"],
        "batching": {"max_delay": "100ms"},
        "checkpoint": {"path": str(tmp_path / "state" / "state.db")},
    }
    config = tmp_path / "names.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    runner = IntegrationRunner(load_integration(config))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        _until(lambda: runner.status.state is State.STREAMING, runner, "streaming")
        with psycopg.connect(pg_server.dsn(database), autocommit=True) as conn:
            for table in tables:
                conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (2, %s)").format(psycopg.sql.Identifier(table.namespace, table.name)), (f"streamed {table.name}",))
        _until(done, runner, "every table holds both rows in the target")
    finally:
        runner.stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the runner did not stop"
    assert runner.status.state is State.STOPPED, runner.status.last_error


def _until(check: Callable[[], bool], runner: IntegrationRunner, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.status.state in (State.FAILED, State.NEEDS_ATTENTION):
            raise AssertionError(f"the integration {runner.status.state.value}: {runner.status.last_error}")
        try:
            if check():
                return
        except Exception:  # the target table may not exist yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what} (state {runner.status.state.value}, last error {runner.status.last_error})")


def _expected(table: TableId) -> dict[int, str]:
    return {1: table.name, 2: f"streamed {table.name}"}


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")]


def test_hostile_table_names_stay_inside_the_iceberg_warehouse(pg_server: PostgresServer, source: tuple[str, list[TableId]], outside: Path, tmp_path: Path) -> None:
    database, tables = source
    state_dir = tmp_path / "state" / "names"
    warehouse = state_dir / "iceberg" / "warehouse"
    sink = IcebergSink(IcebergConfig(), PluginContext(integration="names", state_dir=state_dir))
    identifiers = {t: sink.table_identifier(t) for t in tables}
    assert len(set(identifiers.values())) == len(tables), identifiers

    def rows(table: TableId) -> dict[int, str]:
        loaded = sink._require_open().load_table(identifiers[table])
        return {r["id"]: r["v"] for r in loaded.scan().to_arrow().to_pylist()}

    def done() -> bool:
        if sink._catalog is None:
            sink.open()
        return all(rows(t) == _expected(t) for t in tables)

    try:
        _replicate(pg_server, database, tables, tmp_path, {"type": "iceberg", "commit_interval": "100ms"}, done)
        catalog = sink._require_open()
        assert sorted(catalog.list_tables(("zetl",))) == sorted(identifiers.values())
        con = duckdb_connection()
        for table in tables:
            loaded = catalog.load_table(identifiers[table])
            assert loaded.metadata.properties["zetl.source-table"] == str(table)
            assert TableId.parse(loaded.metadata.properties["zetl.source-table"]) == table
            location = Path(loaded.location().removeprefix("file://"))
            assert location.resolve().parent == (warehouse / "zetl").resolve(), location
            files = [loaded.metadata_location, *(task.file.file_path for task in loaded.scan().plan_files())]
            for file in files:
                resolved = Path(file.removeprefix("file://")).resolve()
                assert resolved.is_relative_to(warehouse.resolve()) and resolved.exists(), file
            by_duckdb = {r["id"]: r["v"] for r in read_rows(con, loaded.metadata_location)}
            assert by_duckdb == _expected(table), table
        assert sorted(sink.managed_tables() or []) == sorted(tables)
    finally:
        sink.close()
    assert _all_files(outside) == [], "files were created outside the warehouse"
    assert not any(Path(p).name == "escaped" for p in _all_files(tmp_path)), "a directory named after the traversal's end exists"


def test_hostile_table_names_become_distinct_redshift_tables(
    pg_server: PostgresServer, source: tuple[str, list[TableId]], outside: Path, redshift_target: RedshiftTarget, tmp_path: Path
) -> None:
    database, tables = source
    sink_config = redshift_target.sink_config(table_name="{namespace}_{name}")  # public.t.x and we.ird.t.x
    names = RedshiftSink(RedshiftConfig.model_validate(sink_config), PluginContext(integration="names"))
    targets = {t: names.target_table_name(t) for t in tables}
    assert len(set(targets.values())) == len(tables), targets
    for target in targets.values():
        assert "/" not in target and "\\" not in target and ".." not in target and "\t" not in target and len(target.encode()) <= 63

    def rows(table: TableId) -> dict[int, str]:
        return {r["id"]: r["v"] for r in redshift_target.query(f"SELECT id, v FROM public.{quote(targets[table])}")}

    _replicate(pg_server, database, tables, tmp_path, {"type": "redshift", **sink_config}, lambda: all(rows(t) == _expected(t) for t in tables))
    present = {r["table_name"] for r in redshift_target.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert set(targets.values()) <= present
    assert _all_files(outside) == []


def test_hostile_table_names_in_the_file_sink(pg_server: PostgresServer, source: tuple[str, list[TableId]], outside: Path, tmp_path: Path) -> None:
    database, tables = source
    out = tmp_path / "out" / "target.db"

    def done() -> bool:
        return all({r["id"]: r["v"] for r in FileSink.read_rows(out, t)} == _expected(t) for t in tables)

    _replicate(pg_server, database, tables, tmp_path, {"type": "file", "path": str(out)}, done)
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith("target.db")) == []
    with FileSink(FileSink.config_class(path=str(out)), PluginContext(integration="names", read_only=True)) as sink:
        assert sorted(sink.managed_tables() or []) == sorted(tables)
    assert _all_files(outside) == []

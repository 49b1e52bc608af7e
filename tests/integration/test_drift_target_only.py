"""`zetl drift` reports the tables that exist only in the target: replicated by the integration,
then dropped in the source or no longer selected. Each is planned as a ``drop.table`` under the
integration's policy, against a real Postgres -> Iceberg integration and a Redshift target."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml
import zetl_connectors.postgres  # noqa: F401  (registers the postgres position kind)
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget
from zetl_sinks.iceberg import IcebergConfig, IcebergSink

from zetl.config.load import load_integration
from zetl.drift import drift_report
from zetl.errors import SinkConnectionError
from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl.runner import IntegrationRunner
from zetl.schema.changes import CreateTable
from zetl.schema.types import Field, Schema, T
from zetl.status import State
from zetl.testing.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

NAME = "pg-ice-gone"
ORDERS, GONE = TableId("public", "orders"), TableId("public", "gone")


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _iceberg_config(tmp_path: Path, server: PostgresServer, database: str, tables: list[str], behavior: str) -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    doc = {
        "name": NAME,
        "source": {"type": "postgres", "host": "127.0.0.1", "port": server.port, "database": database, "user": "postgres", "heartbeat_interval": "1s"},
        "sink": {"type": "iceberg", "namespace": "lake", "commit_interval": "200ms", "catalog": _catalog(tmp_path)},
        "tables": tables,
        "schema_evolution": {"behavior": behavior},
        "batching": {"max_rows": 500, "max_delay": "100ms"},
        "checkpoint": {"path": "state.db"},
    }
    path = tmp_path / f"{behavior}-{len(tables)}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _written(tmp_path: Path) -> set[TableId]:
    """The integration's Iceberg tables that hold a committed snapshot."""
    with IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), namespace="lake"), PluginContext(integration=NAME, state_dir=tmp_path, read_only=True)) as sink:
        managed = sink.managed_tables() or []
        return {t for t in managed if (loaded := sink._load(t)) is not None and loaded.metadata.current_snapshot_id is not None}


def _replicate(tmp_path: Path, config: Path, tables: set[TableId], timeout: float = 60) -> None:
    stop = threading.Event()
    runner = IntegrationRunner(load_integration(config), stop)
    result: list[State] = []
    thread = threading.Thread(target=lambda: result.append(runner.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if _written(tmp_path) == tables:
                    break
            except SinkConnectionError:  # the daemon creates the catalog at the same moment: look again
                pass
            assert thread.is_alive(), f"the integration stopped: {runner.status.last_error}"
            assert time.monotonic() < deadline, f"timed out waiting for {sorted(map(str, tables))} in Iceberg"
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join(60)
    assert result == [State.STOPPED], runner.status.last_error


def test_postgres_table_dropped_while_replicated_to_iceberg(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> None:
    sql = lambda text: pg_server.psql(text, pg_database)  # noqa: E731
    sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, v text); INSERT INTO orders VALUES (1, 'a');"
        "CREATE TABLE gone (id bigint PRIMARY KEY, w int); INSERT INTO gone VALUES (1, 2);"
    )
    both = ["public.orders", "public.gone"]
    _replicate(tmp_path, _iceberg_config(tmp_path, pg_server, pg_database, both, "lenient"), {ORDERS, GONE})

    report = drift_report(load_integration(_iceberg_config(tmp_path, pg_server, pg_database, both, "lenient")))
    assert report.exit_code == 0 and report.target_only == [], orjson.dumps(report.to_json()).decode()

    # No longer selected: the table is still in the source, but the integration leaves it behind.
    report = drift_report(load_integration(_iceberg_config(tmp_path, pg_server, pg_database, ["public.orders"], "lenient")))
    assert [(str(t.table), t.daemon_would) for t in report.target_only or []] == [("public.gone", "keep")], report.to_json()

    sql("DROP TABLE gone")
    expected = {
        # lenient never drops; the daemon did not see the drop, so it is not recorded yet: drift.
        "lenient": ("keep", "skip", 1),
        # the evolving policies make the target follow the source: the table would be dropped
        "try_evolve": ("drop", "apply", 1),
        "evolve": ("drop", "apply", 1),
        "fail": ("fail", "fail", 2),
    }
    for behavior, (would, decision, exit_code) in expected.items():
        report = drift_report(load_integration(_iceberg_config(tmp_path, pg_server, pg_database, both, behavior)))
        data = report.to_json()
        assert report.error is None and report.exit_code == exit_code, (behavior, data)
        assert [t["table"] for t in data["tables"]] == ["public.orders"] and data["summary"]["target_only"] == 1, (behavior, data)
        [entry] = data["target_only"]
        assert (entry["table"], entry["source_exists"], entry["daemon_would"], entry["recorded"]) == ("public.gone", False, would, False), (behavior, entry)
        assert [(s["kind"], s["decision"]) for s in entry["steps"]] == [("drop.table", decision)], (behavior, entry)
    assert _written(tmp_path) == {ORDERS, GONE}, "drift changed nothing: the table is still there"


# -- Redshift --------------------------------------------------------------------------------------
def _redshift_config(tmp_path: Path, target: RedshiftTarget, behavior: str) -> Path:
    doc = {
        "name": "rs-gone",
        "source": {"type": "memory", "snapshot_rows": 5, "stream_events": 5},
        "sink": {"type": "redshift", **target.sink_config(schema="lake")},
        "schema_evolution": {"behavior": behavior},
        "checkpoint": {"path": str(tmp_path / "state.db")},
    }
    path = tmp_path / f"rs-{behavior}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_redshift_lists_the_tables_it_manages(tmp_path: Path, pg_server: PostgresServer, redshift_target: RedshiftTarget) -> None:
    from zetl_sinks.redshift import RedshiftConfig, RedshiftSink

    lenient = _redshift_config(tmp_path, redshift_target, "lenient")
    # Before any run zetl's metadata table does not exist: none, and nothing is created.
    report = drift_report(load_integration(lenient))
    assert report.error is None and report.target_only == [], report.to_json()
    assert redshift_target.query("SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = 'lake'") == [{"n": 0}]

    assert IntegrationRunner(load_integration(lenient)).run() is State.STOPPED
    gone = TableId("demo", "gone")
    sink = RedshiftSink(RedshiftConfig.model_validate(redshift_target.sink_config(schema="lake")), PluginContext(integration="rs-gone"))
    with sink:
        sink.apply(CreateTable(gone, Schema.of(gone, [Field("id", T.int64), Field("v", T.string())], ["id"])))
        assert sink.managed_tables() == [gone, TableId("demo", "items")]
    # A table created by hand (no layout in _zetl_tables) is not the integration's.
    pg_server.psql("CREATE TABLE lake.by_hand (id int)", redshift_target.database)
    layouts = redshift_target.query("SELECT target_table, layout FROM lake._zetl_tables ORDER BY 1")

    for behavior, would, exit_code in (("lenient", "keep", 1), ("evolve", "drop", 1), ("fail", "fail", 2)):
        report = drift_report(load_integration(_redshift_config(tmp_path, redshift_target, behavior)))
        data = report.to_json()
        assert report.error is None and report.exit_code == exit_code, (behavior, data)
        assert [t["status"] for t in data["tables"]] == ["in_sync"], (behavior, data)
        assert [(t["table"], t["daemon_would"]) for t in data["target_only"]] == [("demo.gone", would)], (behavior, data)
    assert redshift_target.query("SELECT target_table, layout FROM lake._zetl_tables ORDER BY 1") == layouts
    assert redshift_target.query("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'lake' AND table_name = 'gone'") == [{"n": 1}]

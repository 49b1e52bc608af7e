"""`zetl drift` as users run it: the real CLI in a subprocess, memory source -> file sink.

Drifts are made by hand in the target (a column added, a NOT NULL column the source does not
have, a narrower type), and each must come out with the documented exit code and JSON."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import orjson

from zetl.config.load import load_integration
from zetl.errors import ConfigError
from zetl.events import TableId
from zetl.runner import IntegrationRunner
from zetl.schema.types import Field, T
from zetl.status import State
from zetl.testing.plugins import FileSink, FileSinkConfig

ITEMS = TableId("demo", "items")


def write_config(tmp_path: Path, behavior: str = "lenient", name: str = "drift-cli") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        "source: {type: memory, snapshot_rows: 20, stream_events: 20}\n"
        "sink: {type: file, path: target.db}\n"
        f"schema_evolution: {{behavior: {behavior}}}\n"
        "checkpoint: {path: state.db}\n"
    )
    return path


def drift(config: Path, *args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "zetl.cli", "drift", str(config), *args], capture_output=True, text=True, timeout=60, cwd=config.parent
    )
    return result.returncode, result.stdout + result.stderr


def edit_target(tmp_path: Path, edit: object) -> None:
    """Change the target's schema by hand, as a person with DDL rights would."""
    sink = FileSink(FileSinkConfig(path=str(tmp_path / "target.db")))
    sink.open()
    try:
        schema = sink.current_schema(ITEMS)
        assert schema is not None
        sink._save_schema(edit(schema))  # type: ignore[operator]
    finally:
        sink.close()


def test_drift_exit_codes_and_json(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert IntegrationRunner(load_integration(config)).run() is State.STOPPED

    code, output = drift(config, "--format", "json")
    assert code == 0, output
    report = orjson.loads(output)
    assert set(report) == {"integration", "status", "exit_code", "fail_on", "error", "summary", "tables", "target_only"}
    assert report["status"] == "in_sync" and report["summary"] == {"tables": 1, "in_sync": 1, "drift": 0, "rejected": 0, "target_only": 0}
    table = report["tables"][0]
    assert set(table) == {"table", "status", "source_exists", "target_exists", "only_in_source", "only_in_target", "type_differences", "routed", "steps"}

    # A column added by hand in the target: lenient keeps it, but the daemon has not decided it yet.
    edit_target(tmp_path, lambda s: s.replace_fields([*s.fields, Field("by_hand", T.string())]))
    code, output = drift(config, "--format", "json")
    report = orjson.loads(output)
    assert code == 1 and report["tables"][0]["only_in_target"] == ["by_hand"], output
    step = report["tables"][0]["steps"][0]
    assert (step["kind"], step["column"], step["decision"], step["classification"], step["kept_by_policy"], step["kept"]) == (
        "drop.column", "by_hand", "skip", "lossy", True, False
    )
    # Once the daemon ran and recorded that it keeps the column, the target counts as in sync.
    assert IntegrationRunner(load_integration(config)).run() is State.STOPPED
    code, output = drift(config, "--history")
    assert code == 0, output
    assert "in sync" in output and "keep (recorded)" in output and "schema history" in output and "drop column demo.items.by_hand" in output

    # A narrower type in the target: the daemon would widen it (safe) -> 1, unless only breaking counts.
    edit_target(tmp_path, lambda s: s.replace_fields([f.with_type(T.decimal(10, 2)) if f.name == "amount" else f for f in s.fields]))
    code, output = drift(config, "--format", "json")
    steps = orjson.loads(output)["tables"][0]["steps"]
    assert code == 1 and steps[0]["detected"] == "alter column demo.items.amount type decimal(10,2) -> decimal(12,2)", output
    assert orjson.loads(output)["tables"][0]["type_differences"] == [{"column": "amount", "source": "decimal(12,2)", "target": "decimal(10,2)"}]
    code, _ = drift(config, "--fail-on", "breaking")
    assert code == 0

    # A NOT NULL column the source does not have (dropped while the daemon was stopped), under
    # policy fail: the daemon would stop -> 2.
    edit_target(tmp_path, lambda s: s.replace_fields([replace(f, nullable=False) if f.name == "by_hand" else f for f in s.fields]))
    failing = write_config(tmp_path, "fail", "drift-cli-fail")
    failing.write_text(failing.read_text().replace("name: drift-cli-fail", "name: drift-cli"))
    code, output = drift(failing, "--format", "json")
    report = orjson.loads(output)
    assert code == 2 and report["status"] == "rejected", output
    assert {s["decision"] for s in report["tables"][0]["steps"]} == {"fail"}


def test_drift_errors_exit_3(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nsource: {type: memory}\nsink: {type: file, path: t.db}\nschema_evolution: {behavior: sometimes}\n")
    code, output = drift(broken)
    assert code == 3 and "broken.yaml:4" in output and "schema_evolution.behavior" in output, output
    # A source that cannot be reached: exit 3 with the reason, in JSON too.
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(
        "name: unreachable\nsource: {type: postgres, host: 127.0.0.1, port: 1, database: x, user: x, connect_timeout: 2s}\n"
        "sink: {type: file, path: t.db}\ncheckpoint: {path: state.db}\n"
    )
    code, output = drift(unreachable, "--format", "json")
    report = orjson.loads(output)
    assert code == 3 and report["status"] == "error" and report["exit_code"] == 3 and "127.0.0.1" in report["error"], output


def test_row_filter_syntax_error_points_into_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad-filter.yaml"
    path.write_text(
        "name: bad-filter\n"
        "source: {type: memory}\n"
        "sink: {type: file, path: t.db}\n"
        "filters:\n"
        "  tables:\n"
        "    demo.items:\n"
        "      rows: \"amount >= 100 and name in 'x'\"\n"
    )
    try:
        load_integration(path)
    except ConfigError as exc:
        assert [str(i).split("\n")[0] for i in exc.issues] == [
            f"{path}:7:40  filters.tables.demo.items.rows: invalid row filter at column 27: expected '(' after 'in', got \"'x'\""
            " (got \"amount >= 100 and name in 'x'\")"
        ]
    else:
        raise AssertionError("the invalid row filter was accepted")


def test_drift_creates_nothing_in_the_source(pg_server, pg_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pg_server.psql("CREATE TABLE public.t (id int PRIMARY KEY, v text)", pg_database)
    config = tmp_path / "ro.yaml"
    config.write_text(
        f"name: ro\nsource: {{type: postgres, host: 127.0.0.1, port: {pg_server.port}, database: {pg_database}, user: postgres}}\n"
        "sink: {type: file, path: t.db}\ncheckpoint: {path: state.db}\n"
    )
    code, output = drift(config)
    assert code == 1, output
    assert pg_server.psql("SELECT count(*) FROM pg_publication", pg_database) == "0"
    assert pg_server.psql(f"SELECT count(*) FROM pg_replication_slots WHERE database = '{pg_database}'") == "0"
    assert not (tmp_path / "t.db").exists(), "drift creates nothing in the target either"


def test_drift_lists_tables_only_in_the_target(tmp_path: Path) -> None:
    from zetl.schema.changes import CreateTable
    from zetl.schema.types import Schema

    config = write_config(tmp_path, name="drift-gone")
    assert IntegrationRunner(load_integration(config)).run() is State.STOPPED
    # A table the integration wrote earlier whose source table is gone now.
    gone = TableId("demo", "gone")
    sink = FileSink(FileSinkConfig(path=str(tmp_path / "target.db")))
    sink.open()
    try:
        sink.apply(CreateTable(gone, Schema.of(gone, [Field("id", T.int64), Field("v", T.string())], ["id"])))
        assert sink.managed_tables() == [gone, ITEMS]
    finally:
        sink.close()
    code, output = drift(config)
    assert code == 1, output
    assert "demo.gone  (only in the target)" in output and "drop table demo.gone" in output and "keep" in output, output
    assert "1 only in the target" in output, output
    code, output = drift(config, "--format", "json")
    report = orjson.loads(output)
    assert code == 1 and report["summary"]["target_only"] == 1 and report["summary"]["tables"] == 1, output
    [entry] = report["target_only"]
    assert (entry["table"], entry["status"], entry["daemon_would"], entry["recorded"], entry["only_in_target"]) == (
        "demo.gone", "drift", "keep", False, ["id", "v"]
    ), entry

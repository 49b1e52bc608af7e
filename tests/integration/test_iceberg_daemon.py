"""`zetl run` into Iceberg as a subprocess, SIGKILLed at chosen points and restarted: the table read
back with DuckDB equals the source, with no duplicate and nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from zetl.checkpoints import SQLiteCheckpointStore
from zetl.events import SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.testing.plugins import MemorySourceConfig, expected_rows
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows

pytestmark = pytest.mark.integration

ITEMS = TableId("demo", "items")
SOURCE = {"snapshot_rows": 1500, "stream_events": 3000, "events_per_batch": 20, "chunk_rows": 100, "interval": 0.004, "follow": True}


def _catalog(tmp_path: Path) -> dict[str, str]:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": (tmp_path / "warehouse").as_uri()}


def _config(tmp_path: Path, mode: str) -> Path:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    lines = ["name: ice-crash", "source:", "  type: memory"] + [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in SOURCE.items()]
    lines += ["sink:", "  type: iceberg", "  commit_interval: 200ms", "  max_buffered_rows: 300", f"  mode: {mode}", "  catalog:"]
    lines += [f"    {k}: '{v}'" for k, v in _catalog(tmp_path).items()]
    lines += ["batching:", "  max_rows: 500", "  max_delay: 100ms", "checkpoint:", "  path: state.db"]
    path = tmp_path / "ice-crash.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(config: Path, kill_at: str | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("ZETL_ICEBERG_KILL_AT", None)
    if kill_at:
        env["ZETL_ICEBERG_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _sink(tmp_path: Path) -> IcebergSink:
    mode = "changelog" if "mode: changelog" in (tmp_path / "ice-crash.yaml").read_text() else "current"
    return IcebergSink(IcebergConfig(catalog=_catalog(tmp_path), mode=mode), PluginContext(integration="ice-crash", state_dir=tmp_path))


def _positions(tmp_path: Path) -> tuple[Any, Any]:
    """(position stored in Iceberg, position in the checkpoint store)."""
    with _sink(tmp_path) as sink:
        stored = sink.stored_position()
    return stored, SQLiteCheckpointStore(tmp_path / "state.db").load("ice-crash")


def _committed_rows(tmp_path: Path) -> int:
    try:
        with _sink(tmp_path) as sink:
            table = sink._load(ITEMS)
            snapshot = table.current_snapshot() if table is not None else None
            return int(snapshot.summary["total-records"]) if snapshot is not None else 0
    except Exception:  # the catalog may not exist yet
        return 0


@pytest.mark.parametrize("mode", ["current", "changelog"])
def test_sigkill_at_every_stage_then_restart_gives_exactly_the_source(tmp_path: Path, mode: str) -> None:
    config = _config(tmp_path, mode)

    # 1. During the snapshot, right after an Iceberg commit and before the checkpoint is saved.
    proc = _run(config, "after-commit:2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out.decode()[-3000:]
    stored, saved = _positions(tmp_path)
    assert stored is not None and stored.phase == "snapshot"
    assert saved is None or saved < stored, "the kill must fall between the Iceberg commit and the checkpoint save"

    # 2. Later, in the stream, at the same point. How many commits the rest of the snapshot takes
    #    depends on the machine's speed (commits are by size or by interval), so kill again until
    #    the kill lands in the stream; every kill on the way is one more crash to survive.
    for _ in range(6):
        proc = _run(config, "after-commit:6")
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, out.decode()[-3000:]
        stored, saved = _positions(tmp_path)
        assert stored is not None and (saved is None or saved < stored)
        if stored.phase == "stream":
            break
    else:
        pytest.fail("six runs of six commits each never reached the stream")

    # 3. An outside SIGKILL at an arbitrary moment while streaming.
    before = _committed_rows(tmp_path)
    proc = _run(config)
    try:
        deadline = time.monotonic() + 30
        while _committed_rows(tmp_path) <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the daemon finished before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    # 4. Run until everything is in Iceberg (the source then idles: follow), stop with SIGTERM.
    proc = _run(config)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        last = SequencePosition("stream", SOURCE["stream_events"])  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while not any(b"starting from" in line for line in lines) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # SIGTERM is handled once the integration runs
        while time.monotonic() < deadline and proc.poll() is None:
            stored, _ = _positions(tmp_path)
            if stored is not None and stored >= last:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(10)
    assert proc.returncode == 0, b"".join(lines).decode()[-3000:]
    assert _positions(tmp_path)[0] >= last, "the whole stream reached Iceberg"

    expected = expected_rows(MemorySourceConfig(**SOURCE))  # type: ignore[arg-type]
    with _sink(tmp_path) as sink:
        location = sink._load(ITEMS).metadata_location
    rows = read_rows(duckdb_connection(), location)
    if mode == "changelog":
        snapshot = [int(r["id"]) for r in rows if r["_op"] == "r"]
        assert sorted(snapshot) == list(range(1, SOURCE["snapshot_rows"] + 1)), "each snapshot row exactly once"
        stream = [orjson.loads(r["_position"])["offset"] for r in rows if r["_op"] != "r"]
        assert sorted(stream) == list(range(1, SOURCE["stream_events"] + 1)), "each change exactly once"
        latest: dict[int, dict[str, Any]] = {}
        for r in sorted(rows, key=lambda r: (r["_op"] != "r", orjson.loads(r["_position"])["offset"] if r["_op"] != "r" else 0)):
            if r["_op"] == "d":
                latest.pop(int(r["id"]), None)
            else:
                latest[int(r["id"])] = r
        rows = list(latest.values())
    ids = [int(r["id"]) for r in rows]
    assert len(ids) == len(set(ids)), "no duplicate key"
    assert set(ids) == set(expected)
    for r in rows:
        e = expected[int(r["id"])]
        assert (r["name"], Decimal(r["amount"]), r["updated_at"], orjson.loads(r["doc"])) == (e["name"], e["amount"], e["updated_at"], _document(e["doc"]))


def _document(value: object) -> object:
    """A json value as a document: sources hand json over as its text (``JsonText``)."""
    return orjson.loads(str(value)) if isinstance(value, str) else value

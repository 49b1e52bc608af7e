"""The daemon as a user runs it: a subprocess, killed and restarted."""

from __future__ import annotations


import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from zetl.events import TableId
from zetl.testing.plugins import FileSink, MemorySourceConfig, expected_rows

ITEMS = TableId("demo", "items")
SOURCE = {"snapshot_rows": 2000, "stream_events": 6000, "events_per_batch": 20, "chunk_rows": 100, "interval": 0.005}


def write_config(tmp_path: Path, name: str = "crash-test", **source: object) -> Path:
    options = {**SOURCE, **source}
    lines = [f"name: {name}", "source:", "  type: memory"] + [f"  {k}: {v}" for k, v in options.items()]
    lines += ["sink:", "  type: file", "  path: out.db", "batching:", "  max_rows: 200", "checkpoint:", "  path: state.db"]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def log_size(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return len(FileSink.read_log(path, ITEMS))
    except Exception:  # the table may not exist yet
        return 0


def wait_for_rows(path: Path, minimum: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_size(path) >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {minimum} events arrived in {timeout}s")


@pytest.mark.integration
def test_sigkill_mid_stream_then_restart_gives_every_event_exactly_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "out.db"
    for kill_at in (500, 3000, 5500):  # during the snapshot, early and late in the stream
        proc = start(config)
        try:
            wait_for_rows(out, kill_at)
            assert proc.poll() is None, "the daemon finished before it could be killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    proc = start(config)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output.decode()
    log = FileSink.read_log(out, ITEMS)
    stream = [(p, op) for p, op, _ in log if op != "READ"]
    assert len(stream) == 6000 == len(set(stream)), "each stream event exactly once"
    assert len([1 for _, op, _ in log if op == "READ"]) == 2000
    expected = expected_rows(MemorySourceConfig(**SOURCE))  # type: ignore[arg-type]
    rows = {int(r["id"]): r for r in FileSink.read_rows(out, ITEMS)}
    assert set(rows) == set(expected)
    assert all(rows[i]["name"] == e["name"] and Decimal(str(rows[i]["amount"])) == e["amount"] for i, e in expected.items())


@pytest.mark.integration
def test_sigterm_stops_gracefully_with_exit_code_0(tmp_path: Path) -> None:
    config = write_config(tmp_path, "sigterm-test", stream_events=1_000_000, interval=0.01)
    proc = start(config)
    try:
        wait_for_rows(tmp_path / "out.db", 2100)
    finally:
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output.decode()
    status = subprocess.run([sys.executable, "-m", "zetl.cli", "status", "--format", "json", str(config)], capture_output=True, text=True, check=True)
    data = orjson.loads(status.stdout)
    assert data[0]["state"] == "stopped"
    # The saved checkpoint covers exactly what the sink holds.
    stream_events = len([1 for _, op, _ in FileSink.read_log(tmp_path / "out.db", ITEMS) if op != "READ"])
    assert data[0]["position"] == f"stream:{stream_events}"


@pytest.mark.integration
def test_one_failing_integration_does_not_stop_the_others(tmp_path: Path) -> None:
    good = write_config(tmp_path, "good", snapshot_rows=10, stream_events=50, interval=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsource: {type: memory, stream_events: 50}\nsink: {type: file, path: bad.db, fail_after_writes: 1}\ncheckpoint: {path: state.db}\n")
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "run", str(good), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, "a failed integration makes the exit code 1"
    assert "simulated failure on write 1" in proc.stderr
    assert log_size(tmp_path / "out.db") == 60
    status_proc = subprocess.run([sys.executable, "-m", "zetl.cli", "status", "--format", "json", "--state", str(tmp_path / "state.db")], capture_output=True, text=True)
    assert status_proc.returncode == 1, "status exits 1 while an integration has failed"
    status = orjson.loads(status_proc.stdout)
    assert {s["integration"]: s["state"] for s in status} == {"bad": "failed", "good": "stopped"}


@pytest.mark.integration
def test_json_logs(tmp_path: Path) -> None:
    config = write_config(tmp_path, "json-logs", snapshot_rows=5, stream_events=5, interval=0)
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "run", "--log-format", "json", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    lines = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("integration") == "json-logs" and "create table" in line["message"] for line in lines)



@pytest.mark.integration
def test_metrics_endpoint(tmp_path: Path) -> None:
    import urllib.request

    from zetl.testing.servers import free_port

    config = write_config(tmp_path, "metrics-test", stream_events=1_000_000, interval=0.01)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "zetl.cli", "run", "--metrics-port", str(port), str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_rows(tmp_path / "out.db", 2100)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'state="streaming"} 1.0' in text:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    rows = [line for line in text.splitlines() if line.startswith('zetl_rows_written_total{integration="metrics-test"}')]
    assert rows and float(rows[0].split()[-1]) >= 2000
    assert 'zetl_state{integration="metrics-test",state="streaming"} 1.0' in text

"""The state belongs to the integration: the same from any directory, one writer at a time,
truthful when it cannot be written, complete on disk after a clean stop, and reset cleanly.

Each test runs ``zetl`` as a user does (subprocesses) with its own home directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from zetl.events import TableId
from zetl.testing.plugins import FileSink

ITEMS = TableId("demo", "items")


def env_for(home: Path, zetl_home: Path | None = None) -> dict[str, str]:
    """A user's environment: HOME is ``home``; no ZETL_HOME unless given (the default applies)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ZETL_HOME", "XDG_STATE_HOME")}
    env["HOME"] = str(home)
    if zetl_home is not None:
        env["ZETL_HOME"] = str(zetl_home)
    return env


def write_config(directory: Path, name: str, checkpoint: str | None = None, **source: object) -> Path:
    options = {"snapshot_rows": 200, "stream_events": 400, "events_per_batch": 20, "interval": 0.0, **source}
    lines = [f"name: {name}", "source:", "  type: memory"] + [f"  {k}: {v}" for k, v in options.items()]
    lines += ["sink:", "  type: file", f"  path: {name}-out.db", "batching:", "  max_rows: 100"]
    if checkpoint:
        lines += ["checkpoint:", f"  path: {checkpoint}"]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def zetl(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zetl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "zetl.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stream_events(out: Path) -> int:
    try:
        return len([1 for _, op, _ in FileSink.read_log(out, ITEMS) if op != "READ"])
    except Exception:  # the table may not exist yet
        return 0


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def status_json(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, list[dict[str, object]]]:
    proc = zetl("status", "--format", "json", *args, cwd=cwd, env=env)
    return proc.returncode, orjson.loads(proc.stdout)


@pytest.mark.integration
def test_the_default_state_is_the_same_from_any_directory(tmp_path: Path) -> None:
    """Reproduction 1: a run from another working directory resumes the same state."""
    work, elsewhere, home = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "home"
    for d in (work, elsewhere, home):
        d.mkdir()
    env = env_for(home)
    config = write_config(work, "shop", stream_events=400)
    first = zetl("run", "shop.yaml", cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    state = home / ".local" / "state" / "zetl" / "state.db"
    assert f"state: {state} (zetl home)" in first.stderr
    # Another directory, as cron or systemd would start it: the same state, nothing copied again.
    config.write_text(config.read_text().replace("stream_events: 400", "stream_events: 600"))
    second = zetl("run", str(Path("..") / "work" / "shop.yaml"), cwd=elsewhere, env=env)
    assert second.returncode == 0, second.stderr
    assert "starting from stream:400" in second.stderr
    assert not (elsewhere / ".zetl").exists() and not (work / ".zetl").exists()
    log = FileSink.read_log(work / "shop-out.db", ITEMS)
    assert len([1 for _, op, _ in log if op == "READ"]) == 200, "the snapshot was read once"
    assert len([1 for _, op, _ in log if op != "READ"]) == 600
    code, rows = status_json(tmp_path, env)
    assert code == 0
    assert [(r["integration"], r["state"], r["state_file"]) for r in rows] == [("shop", "stopped", str(state))]


@pytest.mark.integration
def test_an_earlier_dot_zetl_state_is_found_and_kept(tmp_path: Path) -> None:
    """Upgrading: a state an earlier zetl kept in ./.zetl is used (with a message) and recorded,
    so a later run from another directory finds it too."""
    work, elsewhere, home = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "home"
    for d in (work, elsewhere, home):
        d.mkdir()
    write_config(work, "legacy", stream_events=300)
    # The earlier default was .zetl/state.db relative to the current directory.
    old = zetl("run", "legacy.yaml", cwd=work, env=env_for(home, zetl_home=work / ".zetl"))
    assert old.returncode == 0, old.stderr
    legacy_state = work / ".zetl" / "state.db"
    env = env_for(home)
    config = work / "legacy.yaml"
    config.write_text(config.read_text().replace("stream_events: 300", "stream_events: 500"))
    upgraded = zetl("run", "legacy.yaml", cwd=work, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"using the state of an earlier zetl at {legacy_state}" in upgraded.stderr
    assert "starting from stream:300" in upgraded.stderr
    config.write_text(config.read_text().replace("stream_events: 500", "stream_events: 700"))
    later = zetl("run", str(config), cwd=elsewhere, env=env)
    assert later.returncode == 0, later.stderr
    assert f"state: {legacy_state} (recorded in the zetl home)" in later.stderr
    assert "starting from stream:500" in later.stderr
    assert stream_events(work / "legacy-out.db") == 700
    code, rows = status_json(elsewhere, env)
    assert code == 0 and [(r["integration"], r["state_file"]) for r in rows] == [("legacy", str(legacy_state))]


@pytest.mark.integration
def test_a_second_daemon_of_the_same_integration_is_refused(tmp_path: Path) -> None:
    """Reproduction 2: two daemons started at once: one runs, the other exits naming it; a
    directory run skips the locked integration and runs the others."""
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    config = write_config(tmp_path, "single", stream_events=1_000_000, interval=0.01)
    first = start("run", str(config), cwd=tmp_path, env=env)
    try:
        wait_until(lambda: stream_events(tmp_path / "single-out.db") > 100, 60, "the first daemon streams")
        _, before = status_json(tmp_path, env)
        second = zetl("run", str(config), cwd=tmp_path, env=env)
        assert second.returncode == 1
        assert f"integration 'single' is already running (process {first.pid} on" in second.stderr
        _, after = status_json(tmp_path, env)
        assert [r["pid"] for r in after] == [first.pid] == [r["pid"] for r in before], "the refused daemon wrote no status"
        # A directory run: the locked one is skipped with the same message, the other one runs.
        directory = tmp_path / "dir"
        directory.mkdir()
        shutil.copy(config, directory / "single.yaml")
        write_config(directory, "other", stream_events=50)
        both = zetl("run", str(directory), cwd=tmp_path, env=env)
        assert both.returncode == 0, both.stderr
        assert "skipping single: integration 'single' is already running" in both.stderr
        assert stream_events(directory / "other-out.db") == 50
        assert first.poll() is None, "the first daemon kept running"
    finally:
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=60)
    assert first.returncode == 0, output


@pytest.mark.integration
def test_status_exit_code_says_when_an_integration_failed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    good = write_config(tmp_path, "fine", stream_events=20)
    assert zetl("run", str(good), cwd=tmp_path, env=env).returncode == 0
    assert status_json(tmp_path, env)[0] == 0
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nsource: {type: memory, stream_events: 50}\nsink: {type: file, path: b.db, fail_after_writes: 1}\n")
    assert zetl("run", str(bad), cwd=tmp_path, env=env).returncode == 1
    code, rows = status_json(tmp_path, env)
    assert code == 1
    assert {r["integration"]: (r["state"], r["healthy"]) for r in rows} == {"broken": ("failed", False), "fine": ("stopped", True)}
    table = zetl("status", cwd=tmp_path, env=env)
    assert table.returncode == 1 and "failed" in table.stdout


def _immutable(paths: list[Path], on: bool) -> bool:
    """``chattr +i``: writes fail even through descriptors already open (file modes do not stop
    root, and a read-only remount is refused while files are open for writing)."""
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


@pytest.mark.integration
def test_status_tells_the_truth_when_the_state_cannot_be_written(tmp_path: Path) -> None:
    """Reproduction 8: the state file stops accepting writes under a running daemon. ``zetl
    status`` must not keep showing a healthy ``streaming``; the log says why; once writable
    again the daemon catches up with nothing lost and the status records what happened."""
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make a file refuse writes through open descriptors")
    proc = None
    state_dir = tmp_path / "state"
    files = [state_dir / "state.db", state_dir / "state.db-wal", state_dir]
    try:
        home = tmp_path / "home"
        home.mkdir()
        env = env_for(home, zetl_home=state_dir)
        config = write_config(tmp_path, "ro", stream_events=4000, interval=0.02)
        proc = start("run", str(config), cwd=tmp_path, env=env)
        wait_until(lambda: stream_events(tmp_path / "ro-out.db") > 100, 60, "the daemon streams")
        if not _immutable(files, True):
            pytest.skip(f"the file system of {state_dir} does not support chattr +i")
        unwritable_since = time.monotonic()
        wait_until(lambda: status_json(tmp_path, env)[0] == 1, 90, "zetl status reports the daemon as unhealthy")
        code, rows = status_json(tmp_path, env)
        assert rows[0]["stale"] is True and rows[0]["healthy"] is False
        assert time.monotonic() - unwritable_since < 75
        table = zetl("status", cwd=tmp_path, env=env)
        assert table.returncode == 1 and "stale" in table.stdout
        _immutable(files, False)
        wait_until(lambda: (lambda r: r[0] == 0 and r[1][0]["state"] in ("streaming", "stopped"))(status_json(tmp_path, env)), 90, "the daemon writes its state again")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert "cannot write the state file" in output
        assert "can be written again" in output
        _, rows = status_json(tmp_path, env)
        assert rows[0]["state_error"] and rows[0]["state_error_until"] is not None
        # Nothing lost: a run to the end delivers every change exactly once.
        final = zetl("run", str(config), cwd=tmp_path, env=env, timeout=300)
        assert final.returncode == 0, final.stderr
        log = FileSink.read_log(tmp_path / "ro-out.db", ITEMS)
        stream = [(p, op) for p, op, _ in log if op != "READ"]
        assert len(set(stream)) == 4000
    finally:
        _immutable(files, False)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.integration
def test_after_a_clean_stop_the_state_file_alone_is_complete(tmp_path: Path) -> None:
    """Reproduction 8, second half: a copy of state.db alone (a backup) holds the checkpoint."""
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    config = write_config(tmp_path, "backup", stream_events=1_000_000, interval=0.005)
    proc = start("run", str(config), cwd=tmp_path, env=env)
    try:
        wait_until(lambda: stream_events(tmp_path / "backup-out.db") > 300, 60, "the daemon streams")
    finally:
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    state = home / ".local" / "state" / "zetl" / "state.db"
    copy = tmp_path / "copy.db"
    shutil.copy(state, copy)  # the file alone, without -wal and -shm
    wal = state.with_name("state.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    row = sqlite3.connect(copy).execute("SELECT position FROM checkpoints WHERE integration = 'backup'").fetchone()
    assert row is not None and orjson.loads(row[0])["offset"] == stream_events(tmp_path / "backup-out.db")


@pytest.mark.integration
def test_reset_shows_what_it_removes_and_the_next_run_starts_over(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    config = write_config(tmp_path, "again", stream_events=100)
    assert zetl("run", str(config), cwd=tmp_path, env=env).returncode == 0
    asked = subprocess.run([sys.executable, "-m", "zetl.cli", "reset", str(config)], cwd=tmp_path, env=env, input="n\n", capture_output=True, text=True, timeout=60)
    assert asked.returncode == 1 and "the checkpoint ({" in asked.stdout and "the schema history (1 decision)" in asked.stdout
    assert "starting from stream:100" in zetl("run", str(config), cwd=tmp_path, env=env).stderr, "declining removed nothing"
    done = zetl("reset", "--yes", "again", cwd=tmp_path, env=env)
    assert done.returncode == 0 and "again reset; its next run starts over" in done.stdout, done.stdout + done.stderr
    again = zetl("run", str(config), cwd=tmp_path, env=env)
    assert again.returncode == 0 and "starting from the beginning" in again.stderr
    assert zetl("reset", "--yes", "nothing-here", cwd=tmp_path, env=env).returncode == 0


@pytest.mark.integration
def test_reset_is_refused_while_the_integration_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = env_for(home)
    config = write_config(tmp_path, "busy", stream_events=1_000_000, interval=0.01)
    proc = start("run", str(config), cwd=tmp_path, env=env)
    try:
        wait_until(lambda: stream_events(tmp_path / "busy-out.db") > 50, 60, "the daemon streams")
        refused = zetl("reset", "--yes", str(config), cwd=tmp_path, env=env)
        assert refused.returncode == 1 and "is already running" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0

"""The replication slot and publication belong to the state that created them.

zetl records what it creates on the server before creating it, never drops or takes over a slot
it cannot prove is its own, and stops with ``needs_attention`` when someone else consumed
changes from its slot. Each test runs ``zetl`` as a user does (subprocesses), with its own
``ZETL_HOME`` standing for "another working directory, cron job or systemd unit".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest

from zetl.events import TableId
from zetl.testing.plugins import FileSink
from zetl.testing.servers import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

ITEMS = TableId("public", "items")


class Setup:
    """One integration (Postgres -> file sink) and the tools to drive it."""

    def __init__(self, tmp_path: Path, server: PostgresServer, database: str, name: str) -> None:
        self.server, self.database, self.name = server, database, name
        self.slot = "zetl_" + name.replace("-", "_")
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.out = self.work / "out.db"
        self.yaml = self.work / f"{name}.yaml"
        self.yaml.write_text(
            f"""name: {name}
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {database}
  user: postgres
  heartbeat_interval: 1s
sink: {{type: file, path: {self.out}}}
tables: [public.items]
batching: {{max_delay: 100ms}}
"""
        )
        self.sql("CREATE TABLE public.items (id int PRIMARY KEY, v text)")
        self.sql("CREATE TABLE public.unrelated (id serial PRIMARY KEY, v text)")
        self.sql("INSERT INTO public.items SELECT g, 'row ' || g FROM generate_series(1, 5) g")

    def sql(self, query: str) -> str:
        return self.server.psql(query, self.database)

    def env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ZETL_HOME", "XDG_STATE_HOME")}
        env["ZETL_HOME"] = str(home)
        return env

    def zetl(self, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "zetl.cli", *args], cwd=self.work, env=self.env(home), capture_output=True, text=True, timeout=timeout)

    def start(self, home: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "zetl.cli", "run", str(self.yaml)], cwd=self.work, env=self.env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def status(self, home: Path) -> dict[str, Any]:
        proc = self.zetl(home, "status", "--format", "json", str(self.yaml))
        data = orjson.loads(proc.stdout) if proc.stdout.strip() else []
        return data[0] if data else {}

    def slot_row(self) -> tuple[str, str] | None:
        """(confirmed_flush_lsn, active) of the integration's slot, None when it does not exist."""
        out = self.sql(f"SELECT confirmed_flush_lsn, active FROM pg_replication_slots WHERE slot_name = '{self.slot}'").strip()
        if not out:
            return None
        confirmed, active = out.split("|")
        return confirmed, active

    def target_ids(self) -> dict[int, str]:
        """The target's current rows: id -> v."""
        try:
            return {row["id"]: row["v"] for row in FileSink.read_rows(self.out, ITEMS)}
        except Exception:  # the table may not exist yet
            return {}

    def run_until(self, home: Path, done: Callable[[], bool], what: str, timeout: float = 60) -> str:
        """Run the integration until ``done``, then stop it with SIGTERM; its output."""
        proc = self.start(home)
        try:
            wait_until(lambda: done() or proc.poll() is not None, timeout, what)
            assert proc.poll() is None, f"zetl stopped early ({what}):\n{proc.communicate()[0]}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        return output

    def run_to_checkpoint(self, home: Path, ids: set[int]) -> str:
        """Run until the target holds exactly ``ids`` and the checkpoint covers a stream position."""

        def done() -> bool:
            status = self.status(home)
            return set(self.target_ids()) == ids and status.get("state") == "streaming" and str(status.get("position", "")).startswith("lsn ")

        return self.run_until(home, done, f"target holds {sorted(ids)}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def setup(tmp_path: Path, pg_server: PostgresServer, pg_database: str, request: pytest.FixtureRequest) -> Setup:
    name = "own-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name[5:40].lower()).strip("-")
    return Setup(tmp_path, pg_server, pg_database, name)


def test_a_second_state_never_takes_over_the_slot_of_the_first(setup: Setup, tmp_path: Path) -> None:
    """Reproduction 1: the same YAML run with another state (another directory, cron, a systemd
    unit) used to drop the first state's slot as "never checkpointed" and consume from a new
    one; the first state then silently missed every change in between."""
    first, second = tmp_path / "home-a", tmp_path / "home-b"
    setup.run_to_checkpoint(first, {1, 2, 3, 4, 5})
    before = setup.slot_row()
    assert before is not None

    proc = setup.zetl(second, "run", str(setup.yaml))
    assert proc.returncode == 1, proc.stderr
    assert "has no record of creating it" in proc.stderr and setup.slot in proc.stderr, proc.stderr
    assert "dropping replication slot" not in proc.stderr
    assert setup.status(second)["state"] == "needs_attention"
    assert setup.slot_row() == before, "the slot was left exactly as it was"

    setup.sql("INSERT INTO public.items VALUES (6, 'while the other state was refused')")
    setup.run_to_checkpoint(first, {1, 2, 3, 4, 5, 6})
    assert setup.target_ids()[6] == "while the other state was refused"


def test_changes_consumed_by_someone_else_stop_the_integration(setup: Setup, tmp_path: Path) -> None:
    """Another consumer read from the slot while zetl was stopped: those changes can never
    reach the target, so zetl says so instead of starting silently after them."""
    home = tmp_path / "home"
    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})
    setup.sql("INSERT INTO public.items VALUES (6, 'consumed elsewhere')")
    setup.sql(
        f"SELECT count(*) FROM pg_logical_slot_get_binary_changes('{setup.slot}', NULL, NULL, 'proto_version', '1', 'publication_names', '{setup.slot}')"
    )

    proc = setup.zetl(home, "run", str(setup.yaml))
    assert proc.returncode == 1, proc.stderr
    assert "past this integration's checkpoint" in proc.stderr and "another consumer" in proc.stderr, proc.stderr
    assert "zetl reset --drop-source-state" in proc.stderr
    status = setup.status(home)
    assert status["state"] == "needs_attention" and "another consumer" in (status.get("last_error") or ""), status
    assert 6 not in setup.target_ids()

    # The advice works: drop the slot with the state, and the next run copies everything.
    reset = setup.zetl(home, "reset", "--drop-source-state", "--yes", str(setup.yaml))
    assert reset.returncode == 0, reset.stdout + reset.stderr
    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5, 6})


def test_an_idle_slot_following_the_wal_end_is_still_recognised_as_its_own(setup: Setup, tmp_path: Path) -> None:
    """With nothing to replicate, the slot is confirmed past the checkpoint (so that it does not
    hold WAL): that confirm is recorded first, so the next run resumes instead of suspecting
    another consumer."""
    home = tmp_path / "home"
    proc = setup.start(home)
    try:
        wait_until(lambda: set(setup.target_ids()) == {1, 2, 3, 4, 5} and setup.status(home).get("state") == "streaming", 60, "snapshot copied")
        checkpoint = str(setup.status(home)["position"])
        setup.sql("INSERT INTO public.unrelated (v) SELECT repeat('x', 100) FROM generate_series(1, 2000)")
        wal_end = setup.sql("SELECT pg_current_wal_lsn()").strip()
        wait_until(
            lambda: (row := setup.slot_row()) is not None and setup.sql(f"SELECT '{row[0]}'::pg_lsn >= '{wal_end}'::pg_lsn") == "t",
            60,
            f"the idle slot follows the WAL end {wal_end} (checkpoint {checkpoint})",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.communicate()[0]

    setup.sql("INSERT INTO public.items VALUES (6, 'after an idle time')")
    output = setup.run_to_checkpoint(home, {1, 2, 3, 4, 5, 6})
    assert "another consumer" not in output


def test_reset_of_a_postgres_integration_starts_over_with_its_own_slot(setup: Setup, tmp_path: Path) -> None:
    """Reproduction 3: ``zetl reset --yes`` crashed on every Postgres integration."""
    home = tmp_path / "home"
    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})
    setup.sql("UPDATE public.items SET v = 'changed' WHERE id = 1")

    proc = setup.zetl(home, "reset", "--yes", str(setup.yaml))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'the checkpoint ({"kind":"postgres"' in proc.stdout and "postgres_columns" in proc.stdout, proc.stdout
    assert setup.slot_row() is not None, "without --drop-source-state the slot stays"

    output = setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})
    assert "which this integration created" in output and "never checkpointed" in output, output
    assert setup.target_ids()[1] == "changed"


def test_reset_drop_source_state_removes_the_slot_and_publication_it_created(setup: Setup, tmp_path: Path) -> None:
    home = tmp_path / "home"
    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})

    proc = setup.zetl(home, "reset", "--drop-source-state", "--yes", str(setup.yaml))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"replication slot '{setup.slot}'" in proc.stdout and f"publication '{setup.slot}'" in proc.stdout, proc.stdout
    assert f"removed on the source: replication slot '{setup.slot}'" in proc.stdout
    assert setup.slot_row() is None
    assert setup.sql(f"SELECT count(*) FROM pg_publication WHERE pubname = '{setup.slot}'").strip() == "0"

    again = setup.zetl(home, "reset", "--drop-source-state", "--yes", str(setup.yaml))
    assert again.returncode == 0 and "nothing to reset" in again.stdout, again.stdout + again.stderr

    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})
    assert setup.slot_row() is not None


def test_reset_never_drops_a_slot_it_did_not_create(setup: Setup, tmp_path: Path) -> None:
    setup.sql(f"SELECT pg_create_logical_replication_slot('{setup.slot}', 'pgoutput')")
    home = tmp_path / "home"
    proc = setup.zetl(home, "run", str(setup.yaml))
    assert proc.returncode == 1 and "has no record of creating it" in proc.stderr, proc.stderr
    reset = setup.zetl(home, "reset", "--drop-source-state", "--yes", str(setup.yaml))
    assert f"replication slot '{setup.slot}'" not in reset.stdout, reset.stdout
    assert setup.slot_row() is not None, "a slot zetl did not create is never dropped"


def test_a_state_from_an_earlier_zetl_adopts_its_slot_when_nothing_was_consumed(setup: Setup, tmp_path: Path) -> None:
    """States written before ownership records existed keep working after an upgrade."""
    home = tmp_path / "home"
    setup.run_to_checkpoint(home, {1, 2, 3, 4, 5})
    records = list(home.rglob("postgres_ownership.*.json"))
    assert len(records) == 1, records
    records[0].unlink()  # as an earlier zetl left it
    setup.sql("INSERT INTO public.items VALUES (6, 'after the upgrade')")
    output = setup.run_to_checkpoint(home, {1, 2, 3, 4, 5, 6})
    assert "is adopted" in output, output
    assert records[0].exists()
    # from now on the record proves it: another consumer is recognised
    setup.sql("INSERT INTO public.items VALUES (7, 'consumed elsewhere')")
    setup.sql(
        f"SELECT count(*) FROM pg_logical_slot_get_binary_changes('{setup.slot}', NULL, NULL, 'proto_version', '1', 'publication_names', '{setup.slot}')"
    )
    proc = setup.zetl(home, "run", str(setup.yaml))
    assert proc.returncode == 1 and "another consumer" in proc.stderr, proc.stderr

"""The runner's guarantees, with the shipped memory source and file/memory sinks."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from zetl.checkpoints import SQLiteCheckpointStore
from zetl.config.load import Integration, parse_integration
from zetl.config.yamlfile import load_yaml
from zetl.events import Batch, Position, SequencePosition, TableId
from zetl.runner import IntegrationRunner
from zetl.statedb import StateDB
from zetl.status import State, StatusStore
from zetl.testing.plugins import FileSink, MemorySink, MemorySource, MemorySourceConfig, expected_rows

ITEMS = TableId("demo", "items")


def integration(tmp_path: Path, text: str) -> Integration:
    path = tmp_path / "integration.yaml"
    path.write_text(text + f"\ncheckpoint:\n  path: {tmp_path / 'state.db'}\n")
    result, issues = parse_integration(load_yaml(path))
    assert not issues, issues
    assert result is not None
    return result


def wait_until(condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.02)


def same_rows(got: list[dict[str, Any]], config: MemorySourceConfig) -> bool:
    expected = expected_rows(config)
    by_id = {int(r["id"]): r for r in got}
    if set(by_id) != set(expected):
        return False
    return all(by_id[i]["name"] == e["name"] and Decimal(str(by_id[i]["amount"])) == e["amount"] for i, e in expected.items())


def test_memory_to_file_equals_source(tmp_path: Path) -> None:
    it = integration(tmp_path, "name: r1\nsource: {type: memory, snapshot_rows: 120, stream_events: 300}\nsink: {type: file, path: out.db}")
    assert IntegrationRunner(it).run() is State.STOPPED
    assert same_rows(FileSink.read_rows(tmp_path / "out.db", ITEMS), MemorySourceConfig(snapshot_rows=120, stream_events=300))
    saved = SQLiteCheckpointStore(tmp_path / "state.db").load("r1")
    assert saved == SequencePosition("stream", 300)


def test_checkpoint_is_saved_only_after_a_durable_write(tmp_path: Path) -> None:
    # The 3rd write fails: the checkpoint must be the end of the 2nd, never further.
    it = integration(
        tmp_path,
        "name: r2\nsource: {type: memory, snapshot_rows: 0, stream_events: 100, events_per_batch: 10}\n"
        "sink: {type: file, path: out.db, fail_after_writes: 3, write_delay: 0.05}\nbatching: {max_rows: 10}",
    )
    assert IntegrationRunner(it).run() is State.FAILED
    saved = SQLiteCheckpointStore(tmp_path / "state.db").load("r2")
    log = FileSink.read_log(tmp_path / "out.db", ITEMS)
    assert saved is not None and isinstance(saved, SequencePosition)
    written = {Position.from_json(__import__("orjson").loads(p)) for p, _, _ in log}
    # Everything up to the checkpoint is in the sink; nothing after it was claimed.
    assert max(written) == saved  # type: ignore[type-var]
    status = StatusStore(StateDB(tmp_path / "state.db")).load_all()[0]
    assert status.state is State.FAILED and "simulated failure on write 3" in (status.last_error or "")


def test_resume_after_failure_gives_exactly_the_source(tmp_path: Path) -> None:
    text = "name: r3\nsource: {type: memory, snapshot_rows: 50, stream_events: 200, events_per_batch: 7}\nsink: {type: file, path: out.db%s}\nbatching: {max_rows: 7}"
    assert IntegrationRunner(integration(tmp_path, text % ", fail_after_writes: 5")).run() is State.FAILED
    assert IntegrationRunner(integration(tmp_path, text % "")).run() is State.STOPPED
    assert same_rows(FileSink.read_rows(tmp_path / "out.db", ITEMS), MemorySourceConfig(snapshot_rows=50, stream_events=200))
    log = FileSink.read_log(tmp_path / "out.db", ITEMS)
    stream_positions = [p for p, op, _ in log if op != "READ"]
    assert len(stream_positions) == 200 == len(set(stream_positions))


def test_retryable_error_is_retried_from_the_checkpoint(tmp_path: Path) -> None:
    it = integration(
        tmp_path,
        "name: r4\nsource: {type: memory, snapshot_rows: 10, stream_events: 100, fail_once_after: 40}\n"
        "sink: {type: file, path: out.db}\nretry: {initial_backoff: 0.05}",
    )
    runner = IntegrationRunner(it)
    assert runner.run() is State.STOPPED
    assert runner.status.attempts == 2
    assert same_rows(FileSink.read_rows(tmp_path / "out.db", ITEMS), MemorySourceConfig(snapshot_rows=10, stream_events=100))


def test_stop_writes_what_was_read_and_saves_the_checkpoint(tmp_path: Path) -> None:
    it = integration(
        tmp_path,
        "name: r5\nsource: {type: memory, snapshot_rows: 0, stream_events: 100000, events_per_batch: 10, interval: 0.01}\nsink: {type: file, path: out.db}",
    )
    stop = threading.Event()
    runner = IntegrationRunner(it, stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    wait_until(lambda: runner.status.rows_written >= 50, "the runner never wrote a row")
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the runner must stop within a bounded time"
    saved = SQLiteCheckpointStore(tmp_path / "state.db").load("r5")
    log = FileSink.read_log(tmp_path / "out.db", ITEMS)
    assert saved is not None and saved.offset == len(log) > 0  # type: ignore[attr-defined]
    assert runner.status.state is State.STOPPED


def test_a_slow_sink_slows_reading(tmp_path: Path) -> None:
    # queue_size bounds how far the reader runs ahead of a slow sink.
    read_events = [0]

    class CountingSource(MemorySource):
        def read(self, start: Position | None) -> Iterator[Batch]:
            for batch in super().read(start):
                read_events[0] += len(batch.events)
                yield batch

    it = integration(
        tmp_path,
        "name: r6\nsource: {type: memory, snapshot_rows: 0, stream_events: 100000, events_per_batch: 10}\n"
        "sink: {type: file, path: out.db, write_delay: 0.05}\nbatching: {max_rows: 10, queue_size: 2}",
    )
    it = Integration(it.config, it.file, CountingSource, it.source_config, it.sink_class, it.sink_config)
    stop = threading.Event()
    runner = IntegrationRunner(it, stop)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        wait_until(lambda: runner.status.rows_written >= 100, "the sink never wrote 100 rows")
        read, written = read_events[0], runner.status.rows_written
    finally:
        stop.set()
        thread.join(30)
    # 2 batches queued, one being written, one being handed over: 10 rows each
    assert read - written <= 40, f"the reader ran ahead: {read} events read, {written} written"


def test_a_sink_that_stores_positions_wins_over_an_older_checkpoint(tmp_path: Path) -> None:
    class StoringSink(MemorySink):
        from zetl.sink import SinkCapabilities

        capabilities = SinkCapabilities(schema_changes=MemorySink.capabilities.schema_changes, stores_checkpoint=True)

        def stored_position(self) -> Position | None:
            return SequencePosition("stream", 60)

    it = integration(tmp_path, "name: r7\nsource: {type: memory, snapshot_rows: 5, stream_events: 100}\nsink: {type: memory}")
    SQLiteCheckpointStore(tmp_path / "state.db").save("r7", SequencePosition("stream", 20))
    it = Integration(it.config, it.file, it.source_class, it.source_config, StoringSink, it.sink_config)
    runner = IntegrationRunner(it)
    assert runner.run() is State.STOPPED
    sink = MemorySink.instances[-1]
    first_positions = [e.position for b in sink.batches for e in b.events]
    assert first_positions[0] == SequencePosition("stream", 61), "reading resumes after the sink's own position"


def test_status_is_readable_while_running(tmp_path: Path) -> None:
    it = integration(tmp_path, "name: r8\nsource: {type: memory, snapshot_rows: 10, stream_events: 100000, interval: 0.01}\nsink: {type: memory}")
    stop = threading.Event()
    thread = threading.Thread(target=IntegrationRunner(it, stop).run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = StatusStore(StateDB(tmp_path / "state.db")).load_all()
            if rows and rows[0].state is State.STREAMING and rows[0].rows_written > 10:
                break
            time.sleep(0.1)
        else:
            pytest.fail("status never showed the integration streaming")
        assert rows[0].position is not None
    finally:
        stop.set()
        thread.join(5)


def test_checkpoint_never_moves_backwards(tmp_path: Path) -> None:
    # A sink that reports an older durable position (e.g. a commit of earlier data) must not
    # rewind the checkpoint.
    class Rewinding(MemorySink):
        def flush(self, force: bool = False) -> Position | None:
            return SequencePosition("stream", 1)

    it = integration(tmp_path, "name: r9\nsource: {type: memory, snapshot_rows: 5, stream_events: 50}\nsink: {type: memory}")
    it = Integration(it.config, it.file, it.source_class, it.source_config, Rewinding, it.sink_config)
    assert IntegrationRunner(it).run() is State.STOPPED
    assert SQLiteCheckpointStore(tmp_path / "state.db").load("r9") == SequencePosition("stream", 50)


def test_runner_tunes_the_garbage_collector_once(tmp_path: Path) -> None:
    import gc

    from zetl import runner as runner_module

    it = integration(tmp_path, "name: r10\nsource: {type: memory, snapshot_rows: 1, stream_events: 1}\nsink: {type: memory}")
    IntegrationRunner(it).run()
    assert gc.get_threshold()[0] >= 50_000 and gc.get_freeze_count() > 0
    runner_module.tune_garbage_collector()  # idempotent
    assert gc.isenabled()

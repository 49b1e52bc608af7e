"""The runner's lag figure: time since the newest source commit of the last written batch."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from zetl.config.load import parse_integration
from zetl.config.yamlfile import load_yaml
from zetl.events import Batch, ChangeEvent, Op, Position, SequencePosition, TableId
from zetl.pipeline import SchemaPipeline
from zetl.runner import IntegrationRunner
from zetl.schema.changes import CreateTable
from zetl.schema.types import Field, Schema, T
from zetl.testing.plugins import MemorySink

TABLE = TableId("demo", "items")


class _Source:
    def ack(self, position: Position) -> None:
        pass


def _runner(tmp_path: Path) -> IntegrationRunner:
    path = tmp_path / "integration.yaml"
    path.write_text(f"name: lag\nsource: {{type: memory}}\nsink: {{type: memory}}\ncheckpoint:\n  path: {tmp_path / 'state.db'}\n")
    integration, issues = parse_integration(load_yaml(path))
    assert integration is not None and not issues, issues
    return IntegrationRunner(integration)


def _event(i: int, commit_ts: dt.datetime | None) -> ChangeEvent:
    return ChangeEvent(TABLE, Op.INSERT, None, {"id": i}, SequencePosition("stream", i), commit_ts)


def test_lag_is_measured_from_the_newest_commit_of_the_batch(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    sink = MemorySink()
    sink.apply(CreateTable(TABLE, Schema.of(TABLE, [Field("id", T.int64, nullable=False)], primary_key=("id",))))
    pipeline = SchemaPipeline(runner.config, sink)
    now = dt.datetime.now(dt.UTC)
    # Not in order, and some events without a commit time: the newest one counts.
    events = (_event(1, now - dt.timedelta(seconds=30)), _event(2, None), _event(3, now - dt.timedelta(seconds=10)), _event(4, now - dt.timedelta(seconds=20)))
    before = time.time()
    runner._write(pipeline, sink, _Source(), [Batch(events=events[:2]), Batch(events=events[2:], end_position=SequencePosition("stream", 4))])  # type: ignore[arg-type]
    after = time.time()
    assert before - (now.timestamp() - 10) <= runner.status.lag_seconds <= after - (now.timestamp() - 10)
    assert runner.status.rows_written == 4


def test_lag_is_kept_when_no_event_has_a_commit_time(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    sink = MemorySink()
    sink.apply(CreateTable(TABLE, Schema.of(TABLE, [Field("id", T.int64, nullable=False)], primary_key=("id",))))
    runner.status.lag_seconds = 7.0
    runner._write(SchemaPipeline(runner.config, sink), sink, _Source(), [Batch(events=(_event(1, None),))])  # type: ignore[arg-type]
    assert runner.status.lag_seconds == 7.0

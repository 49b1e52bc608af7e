"""The documented way to write a custom sink: the example in configs/examples, loaded by dotted
path, passes the conformance suite and runs in the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from zetl.events import TableId
from zetl.registry import load_plugin
from zetl.sink import Sink
from zetl.testing.conformance import SinkConformance
from zetl.testing.plugins import MemorySourceConfig, expected_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"


def jsonl_sink_class() -> Any:
    return load_plugin("sink", "jsonl_sink:JsonLinesSink", EXAMPLES)


class TestJsonLinesSink(SinkConformance):
    @pytest.fixture
    def sink_factory(self, tmp_path: Path) -> Callable[[], Sink]:
        cls = jsonl_sink_class()
        return lambda: cls(cls.config_class(path=str(tmp_path / "out")))

    @pytest.fixture
    def read_rows(self, tmp_path: Path) -> Callable[[TableId], list[dict[str, Any]]]:
        cls = jsonl_sink_class()

        def read(table: TableId) -> list[dict[str, Any]]:
            sink = cls(cls.config_class(path=str(tmp_path / "out")))
            sink.open()
            return sink.rows(table)

        return read


def test_example_integration_runs_with_the_custom_sink(tmp_path: Path) -> None:
    env = {**os.environ, "ZETL_EXAMPLE_OUT": str(tmp_path / "out"), "ZETL_EXAMPLE_STATE": str(tmp_path / "state.db")}
    proc = subprocess.run([sys.executable, "-m", "zetl.cli", "run", str(EXAMPLES / "custom-sink.yaml")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    cls = jsonl_sink_class()
    sink = cls(cls.config_class(path=str(tmp_path / "out")))
    sink.open()
    rows = {r["id"]: r["name"] for r in sink.rows(TableId("demo", "items"))}
    assert rows == {i: r["name"] for i, r in expected_rows(MemorySourceConfig(snapshot_rows=20, stream_events=30)).items()}

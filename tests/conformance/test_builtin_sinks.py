"""The shipped test sinks pass the same conformance suite as every real sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from zetl.events import TableId
from zetl.testing.conformance import SinkConformance
from zetl.testing.plugins import FileSink, FileSinkConfig, MemorySink


class TestMemorySink(SinkConformance):
    @pytest.fixture
    def shared(self) -> dict[str, MemorySink]:
        return {}

    @pytest.fixture
    def sink_factory(self, shared: dict[str, MemorySink]) -> Callable[[], MemorySink]:
        # The memory sink's "target" is the process: a restarted sink sees the same tables.
        def make() -> MemorySink:
            sink = MemorySink()
            if "first" in shared:
                sink.tables = shared["first"].tables
            else:
                shared["first"] = sink
            return sink

        return make

    @pytest.fixture
    def read_rows(self, shared: dict[str, MemorySink]) -> Callable[[TableId], list[dict[str, Any]]]:
        return lambda table: shared["first"].rows(table)


class TestFileSink(SinkConformance):
    @pytest.fixture
    def sink_factory(self, tmp_path: Path) -> Callable[[], FileSink]:
        return lambda: FileSink(FileSinkConfig(path=str(tmp_path / "target.db")))

    @pytest.fixture
    def read_rows(self, tmp_path: Path) -> Callable[[TableId], list[dict[str, Any]]]:
        return lambda table: FileSink.read_rows(tmp_path / "target.db", table)

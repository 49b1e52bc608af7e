"""Shared pieces of the benchmark workloads: timers, CPU accounting, figures and a counting sink.

A workload module (``tests/bench/<name>.py``) runs standalone (``python tests/bench/<name>.py --json out.json``)
and writes one JSON object. ``tests/bench/run.py`` runs the workloads, merges their JSON into
``tests/bench/results/<date>_<machine>.json`` and prints a table. To be printed as a table row, a figure
goes in the workload's ``"figures"`` list as ``Figure(...).to_json()``; other keys are kept as-is.
"""

from __future__ import annotations

import resource
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from zetl.events import Batch, Position, TableId
from zetl.schema.changes import SchemaChange
from zetl.schema.types import Schema
from zetl.sink import Sink, SinkCapabilities, SinkConfig

__all__ = ["CountingSink", "Figure", "cpu_seconds", "timed_command"]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed_command(cmd: list[str], **kw: Any) -> tuple[float, float]:
    """Run ``cmd`` with stdout to /dev/null; returns (wall seconds, CPU seconds of the command)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


@dataclass
class Figure:
    """One measured figure, with the raw ceiling measured in the same run when there is one.

    ``higher_is_better`` says how ``target`` reads: a minimum ratio (True) or a maximum value.
    """

    name: str
    value: float
    unit: str
    ceiling: float | None = None
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.ceiling if self.ceiling else None

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        measured = self.ratio if self.ceiling else self.value
        if measured is None:
            return None
        return measured >= self.target if self.higher_is_better else measured <= self.target

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        data["meets_target"] = self.meets_target
        return data


class _NoConfig(SinkConfig):
    pass


class CountingSink(Sink[_NoConfig]):
    """A sink that only counts rows, so that a benchmark measures the source.

    Every write is "durable" at once: ``write`` returns the batch's end position.
    """

    name = "counting"
    config_class = _NoConfig
    capabilities = SinkCapabilities()

    def __init__(self) -> None:
        super().__init__(_NoConfig())
        self.rows = 0
        self.batches = 0

    def current_schema(self, table: TableId) -> Schema | None:
        return None

    def apply(self, change: SchemaChange) -> None:
        return None

    def write(self, batch: Batch) -> Position | None:
        self.rows += batch.row_count
        self.batches += 1
        return batch.end_position

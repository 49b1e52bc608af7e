"""What waits to be committed to one Iceberg table, collapsed to the last change of each key.

Guarantees:
    * ``changes`` holds, per primary key, the row as it is after the last buffered change (None:
      the row is gone), in first-seen order. A change that leaves a value ``UNCHANGED`` takes it
      from the previously buffered version of the row when there is one.
    * ``chunks`` hold snapshot rows (Arrow); a buffered change to the same key is newer than a
      chunk buffered before it, and a chunk buffered later replaces earlier changes of its keys.
    * ``truncated``: the table is emptied before anything buffered is applied.
    * ``log`` (changelog mode) keeps every change in order instead of collapsing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow as pa

from zetl.arrow import python_converters
from zetl.events import UNCHANGED, ChangeEvent, Op, Position

__all__ = ["LoggedChange", "TableBuffer"]


@dataclass(frozen=True, slots=True)
class LoggedChange:
    op: Op
    row: Mapping[str, Any]
    position: Position | None
    commit_ts: dt.datetime | None


@dataclass
class TableBuffer:
    primary_key: tuple[str, ...]
    truncated: bool = False
    changes: dict[tuple[Any, ...], Mapping[str, Any] | None] = field(default_factory=dict)
    chunks: list[tuple[pa.Table | pa.RecordBatch, Position | None]] = field(default_factory=list)
    log: list[LoggedChange] = field(default_factory=list)
    rows: int = 0
    has_unchanged: bool = False
    """Some buffered row holds an ``UNCHANGED`` value (to be read from the table at commit)."""

    @property
    def is_empty(self) -> bool:
        return not (self.truncated or self.changes or self.chunks or self.log)

    def truncate(self) -> None:
        self.truncated = True
        self.changes.clear()
        self.chunks.clear()
        self.log.clear()

    def _key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        pk = self.primary_key
        if len(pk) == 1:
            return (row[pk[0]],)
        return tuple([row[c] for c in pk])

    def add_event(self, event: ChangeEvent) -> None:
        """Collapse one INSERT/UPDATE/DELETE/READ into ``changes`` (current-state mode)."""
        self.rows += 1
        if event.op is Op.DELETE:
            assert event.before is not None
            self.changes[self._key(event.before)] = None
            return
        after = event.after
        assert after is not None
        key = self._key(after)
        changes = self.changes
        if event.op is Op.UPDATE and event.before is not None:
            try:
                old_key = self._key(event.before)
            except KeyError:
                old_key = key
            if old_key != key:  # the primary key changed: the old row is gone
                previous = changes.get(old_key)
                changes[old_key] = None
                if previous is not None and UNCHANGED in after.values():
                    after = self._filled(after, previous)
        if UNCHANGED in after.values():
            previous = changes.get(key)
            if previous is not None:
                after = self._filled(after, previous)
            if UNCHANGED in after.values():
                self.has_unchanged = True
        changes[key] = after  # type: ignore[assignment]

    @classmethod
    def _filled(cls, row: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(row)
        cls._fill(out, previous)
        return out

    @staticmethod
    def _fill(row: dict[str, Any], previous: Mapping[str, Any]) -> None:
        for name, value in row.items():
            if value is UNCHANGED and name in previous and previous[name] is not UNCHANGED:
                row[name] = previous[name]

    def add_chunk(self, rows: pa.Table | pa.RecordBatch, position: Position | None) -> None:
        """Buffer snapshot rows; they replace earlier buffered changes of the same keys."""
        self.rows += rows.num_rows
        if self.changes and rows.num_rows:
            converters = python_converters(rows.schema)
            columns = []
            for c in self.primary_key:
                values = rows.column(c).to_pylist()
                convert = converters.get(c)
                columns.append([convert(v) for v in values] if convert else values)
            for key in zip(*columns):
                self.changes.pop(tuple(key), None)
        self.chunks.append((rows, position))

    def add_logged(self, event: ChangeEvent) -> None:
        """Append one change as it is (changelog mode); unchanged values come from the previous
        buffered version of the row when there is one."""
        self.rows += 1
        row = dict(event.row or {})
        if self.primary_key and UNCHANGED in row.values():
            key = tuple(row.get(c) for c in self.primary_key)
            for earlier in reversed(self.log):
                if tuple(earlier.row.get(c) for c in self.primary_key) == key:
                    self._fill(row, earlier.row)
                    break
        if UNCHANGED in row.values():
            self.has_unchanged = True
        self.log.append(LoggedChange(event.op, row, event.position, event.commit_ts))

    def event_rows(self) -> tuple[list[Mapping[str, Any]], list[tuple[Any, ...]]]:
        """The rows to write and the keys to remove (current-state mode)."""
        changes = self.changes
        rows = [row for row in changes.values() if row is not None]
        gone = [key for key, row in changes.items() if row is None] if len(rows) != len(changes) else []
        return rows, gone

    @staticmethod
    def key_rows(primary_key: Sequence[str], keys: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        return [dict(zip(primary_key, k)) for k in keys]

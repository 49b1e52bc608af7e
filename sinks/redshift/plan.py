"""Turning one table's events of a batch into staged rows.

Plain mode (``TablePlan.rows``): one row per key, the last change wins (Redshift does not enforce
primary keys, so two rows for a key would both land): ``u`` rows are upserted with MERGE, ``d``
rows deleted with DELETE ... USING. History mode: one row per change, in order, with the validity
interval of each version computed here. Unchanged markers take the key's previous value in the
batch when there is one, otherwise a keep flag tells the statements to keep the target's value.
A TRUNCATE splits the events: the table is emptied (history: every open version is closed) at
that point and only later events are applied after it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson

from zetl.errors import SinkError
from zetl.events import UNCHANGED, ChangeEvent, Op, Position

from .layout import TableLayout

__all__ = ["Segment", "StagedRow", "plan_table"]

_OP_CHAR = {Op.READ: "r", Op.INSERT: "c", Op.UPDATE: "u", Op.DELETE: "d"}


@dataclass
class StagedRow:
    op: str  # plain: 'u' / 'd'; history: r/c/u/d
    values: list[Any]  # in layout column order; None where kept
    keep: set[int] = field(default_factory=set)
    position: str | None = None
    valid_from: dt.datetime | None = None
    valid_to: dt.datetime | None = None
    first: bool = False


@dataclass
class Segment:
    """Rows to apply after an optional truncate (``truncate_at``: when the table was emptied)."""

    truncate: bool
    truncate_at: dt.datetime | None
    rows: list[StagedRow]

    @property
    def keep_columns(self) -> tuple[int, ...]:
        return tuple(sorted({i for r in self.rows for i in r.keep}))


def _position_json(p: Position | None) -> str | None:
    return orjson.dumps(p.to_json()).decode() if p is not None else None


def _key(layout: TableLayout, row: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    if row is None or not layout.primary_key:
        return None
    try:
        key = tuple(row[k] for k in layout.primary_key)
    except KeyError:
        return None
    return None if any(v is UNCHANGED for v in key) else key


def plan_table(layout: TableLayout, events: Iterable[ChangeEvent], now: dt.datetime) -> list[Segment]:
    """The segments to apply for one table, in order."""
    segments: list[Segment] = []
    current: list[ChangeEvent] = []
    truncated: tuple[bool, dt.datetime | None] = (False, None)
    for e in events:
        if e.op is Op.TRUNCATE:
            if current or truncated[0]:
                segments.append(_segment(layout, truncated, current, now))
            current, truncated = [], (True, e.commit_ts or now)
            continue
        current.append(e)
    if current or truncated[0]:
        segments.append(_segment(layout, truncated, current, now))
    if not layout.history and segments:
        # Only what follows the last truncate survives in a table without history.
        last = segments[-1]
        return [last] if last.truncate else segments
    return segments


def _segment(layout: TableLayout, truncated: tuple[bool, dt.datetime | None], events: list[ChangeEvent], now: dt.datetime) -> Segment:
    rows = _history_rows(layout, events, now) if layout.history else _latest_rows(layout, events)
    return Segment(truncated[0], truncated[1], rows)


def _resolve(layout: TableLayout, after: Mapping[str, Any], base: StagedRow | None) -> tuple[list[Any], set[int]]:
    values: list[Any] = []
    keep: set[int] = set()
    for i, c in enumerate(layout.columns):
        v = after.get(c.source)
        if v is UNCHANGED:
            if base is not None and base.op != "d" and i not in base.keep:
                v = base.values[i]
            else:
                keep.add(i)
                v = None
        values.append(v)
    return values, keep


def _image(layout: TableLayout, row: Mapping[str, Any]) -> list[Any]:
    return [None if row.get(c.source) is UNCHANGED else row.get(c.source) for c in layout.columns]


def _latest_rows(layout: TableLayout, events: list[ChangeEvent]) -> list[StagedRow]:
    if not layout.primary_key:
        rows = []
        for e in events:
            if e.op in (Op.UPDATE, Op.DELETE):
                raise SinkError(
                    f"table {e.table} has no primary key, so its {e.op} cannot be applied in Redshift; "
                    "give the source table a primary key, or set history_mode: true to append every version",
                    retryable=False,
                )
            values, keep = _resolve(layout, e.after or {}, None)
            rows.append(StagedRow("u", values, keep))
        return rows
    latest: dict[tuple[Any, ...], StagedRow] = {}
    for e in events:
        if e.op is Op.DELETE:
            key = _key(layout, e.before)
            if key is None:
                raise SinkError(f"DELETE on {e.table} carries no primary key values {layout.primary_key}; cannot apply it", retryable=False)
            latest.pop(key, None)
            latest[key] = StagedRow("d", _image(layout, e.before or {}))
            continue
        key = _key(layout, e.after)
        if key is None:
            raise SinkError(f"{e.op} on {e.table} has no value for primary key {layout.primary_key}", retryable=False)
        base = latest.get(key)
        if e.op is Op.UPDATE:
            old_key = _key(layout, e.before)
            if old_key is not None and old_key != key:
                base = latest.get(old_key)
                latest.pop(old_key, None)
                latest[old_key] = StagedRow("d", _image(layout, e.before or {}))
        values, keep = _resolve(layout, e.after or {}, base)
        latest.pop(key, None)
        latest[key] = StagedRow("u", values, keep)
    return list(latest.values())


def _history_rows(layout: TableLayout, events: list[ChangeEvent], now: dt.datetime) -> list[StagedRow]:
    rows: list[StagedRow] = []
    last: dict[tuple[Any, ...], StagedRow] = {}
    for e in events:
        at = e.commit_ts or now
        pos = _position_json(e.position)
        if e.op is Op.DELETE:
            key = _key(layout, e.before)
            row = StagedRow("d", _image(layout, e.before or {}), set(), pos, at, at)
            keys = [key]
        else:
            key = _key(layout, e.after)
            old_key = _key(layout, e.before) if e.op is Op.UPDATE else None
            keys = [key]
            base = last.get(key) if key is not None else None
            if old_key is not None and key is not None and old_key != key:
                base = last.get(old_key)
                gone = StagedRow("d", _image(layout, e.before or {}), set(), pos, at, at)
                _append_version(rows, last, old_key, gone)
            values, keep = _resolve(layout, e.after or {}, base)
            row = StagedRow(_OP_CHAR[e.op], values, keep, pos, at, None)
        _append_version(rows, last, keys[0], row)
    return rows


def _append_version(rows: list[StagedRow], last: dict[tuple[Any, ...], StagedRow], key: tuple[Any, ...] | None, row: StagedRow) -> None:
    if key is not None:
        prev = last.get(key)
        if prev is None:
            row.first = True
        elif prev.valid_to is None:
            prev.valid_to = row.valid_from
        last[key] = row
    rows.append(row)

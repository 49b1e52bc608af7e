"""Source positions stored in Iceberg snapshot summaries, and the resume rule across tables.

Every commit zetl makes to a table carries, in its snapshot summary:

* ``zetl.integration``: the integration's name;
* ``zetl.position``: the source position (``Position.to_json``) up to which the table is complete;
* ``zetl.commit-tables``: the Iceberg tables of the same commit round (JSON list);
* ``zetl.writer-epoch``: the writer epoch of the run that committed (``Sink.stored_epoch``), so
  that a run that was paused while a newer one took over cannot commit after it.

Iceberg has no multi-table transaction, so a commit round writes its tables one after the other.
If the process dies in between, some tables hold the new position and the others the previous one.
``resume_position`` then answers the smallest position of that round, so nothing the unfinished
tables miss is skipped; the tables that did commit skip the replayed changes they already hold
(each table only accepts changes after its own stored position). Hence no loss and no duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from zetl.events import Position

__all__ = ["EPOCH_KEY", "INTEGRATION_KEY", "POSITION_KEY", "TABLES_KEY", "TableMark", "newest_epoch", "read_mark", "resume_position", "summary_properties"]

INTEGRATION_KEY = "zetl.integration"
POSITION_KEY = "zetl.position"
TABLES_KEY = "zetl.commit-tables"
EPOCH_KEY = "zetl.writer-epoch"


@dataclass(frozen=True)
class TableMark:
    """What zetl last committed to one table for one integration."""

    table: str
    position: Position | None
    commit_tables: tuple[str, ...]
    snapshot_id: int | None


def summary_properties(integration: str, position: Position | None, commit_tables: Iterable[str], epoch: int = 0) -> dict[str, str]:
    """The summary of one commit (``epoch`` 0: a caller outside fencing, nothing recorded)."""
    props = {INTEGRATION_KEY: integration, TABLES_KEY: orjson.dumps(sorted(commit_tables)).decode()}
    if position is not None:
        props[POSITION_KEY] = orjson.dumps(position.to_json()).decode()
    if epoch > 0:
        props[EPOCH_KEY] = str(epoch)
    return props


def newest_epoch(iceberg_table: Any, integration: str) -> int | None:
    """The greatest writer epoch ``integration`` recorded in the snapshots the table's metadata
    still lists (None: none). Every snapshot, not only the current one's ancestors: a rollback
    does not make an epoch that once wrote forgotten."""
    newest: int | None = None
    for snapshot in iceberg_table.metadata.snapshots:
        props = _summary(snapshot)
        text = props.get(EPOCH_KEY)
        if text is None or props.get(INTEGRATION_KEY) != integration:
            continue
        try:
            epoch = int(text)
        except ValueError:
            continue  # not written by zetl
        if newest is None or epoch > newest:
            newest = epoch
    return newest


def _summary(snapshot: Any) -> Mapping[str, str]:
    summary = getattr(snapshot, "summary", None)
    if summary is None:
        return {}
    return getattr(summary, "additional_properties", None) or {}


def read_mark(iceberg_table: Any, name: str, integration: str) -> TableMark:
    """The newest snapshot of ``iceberg_table`` written by ``integration`` (walking back over
    snapshots other writers made, e.g. compactions)."""
    metadata = iceberg_table.metadata
    by_id = {s.snapshot_id: s for s in metadata.snapshots}
    snapshot = by_id.get(metadata.current_snapshot_id) if metadata.current_snapshot_id is not None else None
    while snapshot is not None:
        props = _summary(snapshot)
        if props.get(INTEGRATION_KEY) == integration and POSITION_KEY in props:
            position = Position.from_json(orjson.loads(props[POSITION_KEY]))
            tables = tuple(orjson.loads(props.get(TABLES_KEY, "[]")))
            return TableMark(name, position, tables, snapshot.snapshot_id)
        snapshot = by_id.get(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id is not None else None
    return TableMark(name, None, (), None)


def resume_position(marks: Mapping[str, TableMark]) -> Position | None:
    """Where to resume so that every table of the latest commit round gets what it misses.

    The latest round is the one with the greatest position; the answer is the smallest position
    among its tables (None when one of them never committed: then nothing stored is safe, and the
    runner resumes from its checkpoint store).
    """
    latest = None
    for mark in marks.values():
        if mark.position is not None and (latest is None or mark.position > latest.position):  # type: ignore[operator]
            latest = mark
    if latest is None or latest.position is None:
        return None
    result: Position = latest.position
    for name in latest.commit_tables:
        mark = marks.get(name)
        if mark is None:
            continue  # the table is gone from the catalog: nothing to resume for it
        if mark.position is None:
            return None
        if mark.position < result:
            result = mark.position
    return result

"""The column identities (``attnum``) of the replicated tables, kept across restarts.

The file holds, per table, the name each ``attnum`` had in the last shape the sink made durable
(written on ``ack``, never ahead of the sink). At start, a live ``attnum`` whose name differs in
the catalog now was renamed while zetl was stopped: the source reports it as a rename before
anything else. Without the file (first run, or a state directory that was removed) there is
nothing to compare with, and the catalog's names are taken as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from zetl.errors import SourceError
from zetl.events import TableId

__all__ = ["FILE_PREFIX", "ColumnState", "renames_since", "shape_of"]

FILE_PREFIX = "postgres_columns"

Shape = dict[int, str]  # attnum -> column name
TableShape = tuple[int, Shape]  # the table's OID (a table dropped and created again is another table), its shape


class ColumnState:
    """The persisted ``attnum -> name`` of each table, one file per replication slot; ``save``
    replaces the file atomically."""

    def __init__(self, directory: Path, slot: str) -> None:
        self.path = directory / f"{FILE_PREFIX}.{slot}.json"
        self.tables: dict[str, TableShape] = {}
        self.ids: dict[str, TableId] = {}  # str(table) -> the table (its name may hold dots)

    def load(self) -> ColumnState:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"cannot read the Postgres column state {self.path}: {exc}. Delete the file to start from the catalog's "
                "column names (a column renamed while zetl was stopped is then seen as dropped and added).",
                retryable=False,
            ) from None
        entries = data.get("tables", {})
        self.tables = {table: (int(entry["oid"]), {int(a): str(n) for a, n in entry["columns"].items()}) for table, entry in entries.items()}
        self.ids = {
            table: TableId(str(entry["namespace"]), str(entry["name"])) if "name" in entry else TableId.parse(table) for table, entry in entries.items()
        }
        return self

    def get(self, table: TableId, oid: int) -> Shape | None:
        """The saved shape of ``table``, if saved for the same relation (OID)."""
        entry = self.tables.get(str(table))
        return entry[1] if entry is not None and entry[0] == oid else None

    def known(self) -> dict[TableId, int]:
        """Table -> OID of every table whose shape the sink made durable (and no drop since)."""
        return {self.ids.get(table) or TableId.parse(table): oid for table, (oid, _shape) in self.tables.items()}

    def update(self, shapes: dict[TableId, TableShape | None]) -> None:
        """Record each table's shape; None forgets the table (it was reported as dropped)."""
        for table, entry in shapes.items():
            if entry is None:
                self.tables.pop(str(table), None)
                self.ids.pop(str(table), None)
            else:
                oid, shape = entry
                self.tables[str(table)] = (oid, dict(shape))
                self.ids[str(table)] = table

    def save(self) -> None:
        data = {}
        for t, (oid, shape) in sorted(self.tables.items()):
            entry: dict[str, object] = {"oid": oid, "columns": {str(a): n for a, n in sorted(shape.items())}}
            table = self.ids.get(t)
            if table is not None:
                entry.update(namespace=table.namespace, name=table.name)
            data[t] = entry
        # written aside, flushed to disk, then renamed: a crash leaves the old file or the new one
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps({"tables": data}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def renames_since(saved: Shape, now: dict[str, int]) -> list[tuple[str, str]] | None:
    """(old, new) for each ``attnum`` live in ``now`` (name -> attnum) under another name than in
    ``saved``, in an order they can be applied one after the other; None when they cannot (names
    swapped), [] when nothing was renamed."""
    pairs = [(saved[a], name) for name, a in now.items() if a in saved and saved[a] != name]
    live = set(now.values())
    current = {n for a, n in saved.items() if a in live}
    ordered: list[tuple[str, str]] = []
    pending = list(pairs)
    while pending:
        ready = next((p for p in pending if p[1] not in current), None)
        if ready is None:
            return None
        pending.remove(ready)
        current.discard(ready[0])
        current.add(ready[1])
        ordered.append(ready)
    return ordered


def shape_of(names: Iterable[str], attnums: dict[str, int]) -> Shape:
    """``attnum -> name`` of the columns whose ``attnum`` is known."""
    return {attnums[n]: n for n in names if n in attnums}

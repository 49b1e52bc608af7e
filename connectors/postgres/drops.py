"""Replicated tables that left the selection while zetl streamed or was stopped: dropped, dropped
and created again (another OID), renamed to a name the selection does not match, or excluded.

Postgres' logical stream carries no DDL, so the source compares what it replicates with the
catalog and reports each such table as a ``DropTable``. A drop is held until the change stream
has passed the WAL position at which the catalog was seen without the table (``DropWatch``):
the rows of the table still ahead in the WAL are delivered before their table goes.
"""

from __future__ import annotations

from dataclasses import dataclass

from zetl.events import TableId

__all__ = ["DropWatch", "PendingDrop", "gone_tables"]


@dataclass(frozen=True)
class PendingDrop:
    """A table to report as dropped once the stream reached ``lsn``.

    ``oid`` is the relation that was replicated under ``table`` (a table of the same name with
    another OID is a new table); ``lsn`` a WAL insert position read after the catalog showed the
    relation gone, so every transaction that wrote the table committed before it.
    """

    table: TableId
    oid: int
    lsn: int


def gone_tables(replicated: dict[TableId, int], selected_now: dict[TableId, int]) -> dict[TableId, int]:
    """The entries of ``replicated`` (table -> OID) that ``selected_now`` (the catalog's selected
    tables now, name -> OID) no longer has under the same name and OID, in name order."""
    return {t: oid for t, oid in sorted(replicated.items()) if selected_now.get(t) != oid}


class DropWatch:
    """The drops found and not yet handed out, in the order they were found.

    Not thread-safe: used by the reader thread only.
    """

    def __init__(self) -> None:
        self._pending: list[PendingDrop] = []

    def add(self, table: TableId, oid: int, lsn: int) -> None:
        """Hold a drop of ``table`` until ``lsn``; a table already held keeps its first entry."""
        if not any(p.table == table for p in self._pending):
            self._pending.append(PendingDrop(table, oid, lsn))

    def due(self, reached_lsn: int) -> list[PendingDrop]:
        """Remove and return the drops whose ``lsn`` the stream has reached (``reached_lsn``: the
        position of the last batch handed out), in the order they were found."""
        due = [p for p in self._pending if p.lsn <= reached_lsn]
        if due:
            self._pending = [p for p in self._pending if p.lsn > reached_lsn]
        return due

    def holds(self, table: TableId) -> bool:
        """Whether a drop of ``table`` waits: a new table of that name must not join before it."""
        return any(p.table == table for p in self._pending)

    def tables(self) -> list[TableId]:
        return [p.table for p in self._pending]

    def __bool__(self) -> bool:
        return bool(self._pending)

"""Where the Postgres source is: a snapshot step or a commit LSN of the change stream."""

from __future__ import annotations

from typing import Any, Mapping

from zetl.events import Position

__all__ = ["PostgresPosition", "format_lsn", "parse_lsn"]


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """Integer -> ``"16/B374D848"``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class PostgresPosition(Position):
    """A checkpoint of the Postgres source.

    Snapshot phase (``phase == "snapshot"``): ``lsn`` is the consistent point of the replication
    slot the snapshot belongs to (the stream resumes there once the snapshot is done);
    ``tables_done`` lists the tables completely read; ``table`` is the table being read and
    ``last_key`` the primary key (Postgres text form, one item per key column) of the last row of
    the last completed chunk (None: nothing of ``table`` is done yet); ``step`` counts completed
    chunks and orders snapshot positions.

    Stream phase (``phase == "stream"``): ``lsn`` is the commit LSN of the last transaction
    delivered (or a later WAL position known to hold no further change for this integration).
    Resuming skips every transaction whose commit LSN is <= ``lsn``.

    Tables joining while streaming (stream phase, ``joining`` not empty): ``joining`` lists, in
    copy order, the tables that were (or are about to be) added to the publication after the
    stream started and whose copy is not complete; ``table``/``last_key`` say how far the copy of
    the first of them got (same meaning as in the snapshot phase); ``step`` orders these
    positions, which all share the ``lsn`` the stream had reached. Resuming finishes the copies
    (each in a new transaction snapshot), then streams from ``lsn``.

    Order: every snapshot position < every stream position; snapshot positions by ``step``,
    stream positions by ``lsn``, then ``step`` (0 for positions without a copy).
    """

    kind = "postgres"

    __slots__ = ("phase", "lsn", "tables_done", "table", "last_key", "step", "joining")

    def __init__(
        self,
        phase: str,
        lsn: int,
        *,
        tables_done: tuple[str, ...] = (),
        table: str | None = None,
        last_key: tuple[str, ...] | None = None,
        step: int = 0,
        joining: tuple[str, ...] = (),
    ) -> None:
        if phase not in ("snapshot", "stream"):
            raise ValueError(f"phase must be 'snapshot' or 'stream', not {phase!r}")
        self.phase = phase
        self.lsn = lsn
        self.tables_done = tuple(tables_done)
        self.table = table
        self.last_key = tuple(last_key) if last_key is not None else None
        self.step = step
        self.joining = tuple(joining)

    @classmethod
    def stream(cls, lsn: int) -> PostgresPosition:
        return cls("stream", lsn)

    @property
    def in_snapshot(self) -> bool:
        return self.phase == "snapshot"

    def sort_key(self) -> tuple[int, int, int]:
        return (0, self.step, 0) if self.phase == "snapshot" else (1, self.lsn, self.step)

    def _fields_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"phase": self.phase, "lsn": format_lsn(self.lsn)}
        if self.phase == "snapshot":
            data.update(tables_done=list(self.tables_done), table=self.table, last_key=list(self.last_key) if self.last_key is not None else None, step=self.step)
        elif self.step or self.joining:
            data.update(joining=list(self.joining), table=self.table, last_key=list(self.last_key) if self.last_key is not None else None, step=self.step)
        return data

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> PostgresPosition:
        last_key = data.get("last_key")
        return cls(
            str(data["phase"]),
            parse_lsn(str(data["lsn"])),
            tables_done=tuple(data.get("tables_done") or ()),
            table=data.get("table"),
            last_key=tuple(str(v) for v in last_key) if last_key is not None else None,
            step=int(data.get("step") or 0),
            joining=tuple(data.get("joining") or ()),
        )

    def __str__(self) -> str:
        if self.phase == "stream":
            if not self.joining:
                return f"lsn {format_lsn(self.lsn)}"
            where = f" after key {list(self.last_key)}" if self.table and self.last_key else ""
            return f"lsn {format_lsn(self.lsn)}, copying {', '.join(self.joining)}{where} (step {self.step})"
        where = f", {self.table} after key {list(self.last_key)}" if self.table and self.last_key else (f", {self.table}" if self.table else "")
        return f"snapshot step {self.step} ({len(self.tables_done)} tables done{where}; slot at {format_lsn(self.lsn)})"

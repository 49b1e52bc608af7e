"""The data that flows from a source to a sink: table ids, positions, change events and batches.

Everything here is immutable. A source builds events once; filters and the planner make new ones
(``dataclasses.replace``) rather than changing them, so a batch can be re-delivered after a crash
exactly as it was first read.
"""

from __future__ import annotations

import datetime as _dt
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping

if TYPE_CHECKING:
    import pyarrow

    from zetl.schema.changes import SchemaChange

__all__ = [
    "Batch",
    "ChangeEvent",
    "Op",
    "Position",
    "RowChunk",
    "SequencePosition",
    "TableId",
    "UNCHANGED",
]


@dataclass(frozen=True, slots=True, order=True)
class TableId:
    """A table's identity: ``namespace`` (schema or database, may be empty) and ``name``.

    ``str()`` is ``namespace.name`` (or ``name`` when there is no namespace). A part that holds a
    dot or a double quote is written double-quoted, with its quotes doubled (``"we.ird"."t.x"``),
    so that every table has one rendering and ``parse(str(t)) == t``; plain names are written as
    they are. Names themselves are kept exactly as the source spells them; no case folding here.
    """

    namespace: str
    name: str

    def __str__(self) -> str:
        name = _render_part(self.name)
        return f"{_render_part(self.namespace)}.{name}" if self.namespace else name

    @property
    def unquoted(self) -> str:
        """``namespace.name`` without any quoting: how ``str()`` read before quoting existed, and
        how users write table patterns. Ambiguous when a part holds a dot, so it is only matched
        against (table patterns, names recorded by earlier versions), never parsed back."""
        return f"{self.namespace}.{self.name}" if self.namespace else self.name

    @classmethod
    def parse(cls, text: str) -> TableId:
        """``"shop.orders"`` -> ``TableId("shop", "orders")``; ``'"we.ird"."t.x"'`` ->
        ``TableId("we.ird", "t.x")``. Without quotes the last dot separates the name (so
        ``db.schema.t`` is ``TableId("db.schema", "t")``, as written before quoting existed).
        Raises ValueError for an unclosed quote."""
        if '"' not in text:
            namespace, dot, name = text.rpartition(".")
            return cls(namespace if dot else "", name)
        parts = _split_parts(text)
        if len(parts) == 1:
            return cls("", parts[0])
        return cls(".".join(parts[:-1]), parts[-1])


def _render_part(part: str) -> str:
    if "." in part or '"' in part:
        return '"' + part.replace('"', '""') + '"'
    return part


def _split_parts(text: str) -> list[str]:
    """Dot-separated parts of ``text``; a part that starts with ``"`` is quoted (``""`` inside
    stands for one quote), any other part runs to the next dot."""
    parts: list[str] = []
    i = 0
    while True:
        if i < len(text) and text[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    raise ValueError(f"cannot read table name {text!r}: a quoted part is not closed")
                chars.append(text[i:end])
                if text.startswith('""', end):
                    chars.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            parts.append("".join(chars))
            if i < len(text) and text[i] != ".":
                raise ValueError(f"cannot read table name {text!r}: a quoted part must be followed by '.' or the end")
        else:
            end = text.find(".", i)
            end = len(text) if end < 0 else end
            parts.append(text[i:end])
            i = end
        if i >= len(text):
            return parts
        i += 1  # the dot


class Op(str, Enum):
    """What happened to a row.

    READ is a row of the initial snapshot (it exists; apply as an upsert). TRUNCATE empties the
    table; its event carries neither ``before`` nor ``after``.
    """

    READ = "r"
    INSERT = "c"
    UPDATE = "u"
    DELETE = "d"
    TRUNCATE = "t"

    def __str__(self) -> str:
        return self.name


class _Unchanged:
    """Marker for a column value the source did not send because it did not change.

    Postgres sends unchanged TOASTed values this way under REPLICA IDENTITY DEFAULT. A sink must
    leave the column as it is in the target; it must never write the marker or a NULL in its place.
    """

    _instance: ClassVar[_Unchanged | None] = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


class Position(ABC):
    """Where a source is in its change stream; the unit of checkpoints.

    Each source defines one subclass with a unique ``kind``. Guarantees every subclass keeps:

    * Totally ordered within a kind (``sort_key``); comparing different kinds raises TypeError.
    * JSON round-trip: ``Position.from_json(p.to_json()) == p``; the JSON carries ``kind``, so a
      checkpoint can be decoded without knowing the source.
    * Resuming ``Source.read(p)`` yields exactly the changes after ``p``.
    """

    kind: ClassVar[str]
    _kinds: ClassVar[dict[str, type[Position]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            Position._kinds[kind] = cls

    @abstractmethod
    def sort_key(self) -> tuple[Any, ...]:
        """A tuple that orders positions of this kind."""

    @abstractmethod
    def _fields_json(self) -> dict[str, Any]:
        """The subclass's own fields as JSON-compatible values."""

    @classmethod
    @abstractmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> Position:
        """Inverse of ``_fields_json``."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._fields_json()}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Position:
        """Decode any position; raises ValueError for an unknown kind."""
        kind = data.get("kind")
        cls = Position._kinds.get(str(kind))
        if cls is None:
            raise ValueError(f"unknown position kind {kind!r}; known: {', '.join(sorted(Position._kinds))}")
        return cls._from_fields({k: v for k, v in data.items() if k != "kind"})

    def _check(self, other: object) -> Position:
        if not isinstance(other, Position):
            return NotImplemented  # type: ignore[return-value]
        if other.kind != self.kind:
            raise TypeError(f"cannot compare positions of kind {self.kind!r} and {other.kind!r}")
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Position) and other.kind == self.kind and self.sort_key() == other.sort_key()

    def __hash__(self) -> int:
        return hash((self.kind, self.sort_key()))

    def __lt__(self, other: Position) -> bool:
        return self.sort_key() < self._check(other).sort_key()

    def __le__(self, other: Position) -> bool:
        return self.sort_key() <= self._check(other).sort_key()

    def __gt__(self, other: Position) -> bool:
        return self.sort_key() > self._check(other).sort_key()

    def __ge__(self, other: Position) -> bool:
        return self.sort_key() >= self._check(other).sort_key()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields_json()})"


class SequencePosition(Position):
    """A position made of a phase (snapshot before stream) and a counter; used by simple sources.

    ``snapshot`` positions order before every ``stream`` position; ``offset`` counts items done.
    """

    kind = "sequence"

    __slots__ = ("phase", "offset")

    def __init__(self, phase: str, offset: int) -> None:
        if phase not in ("snapshot", "stream"):
            raise ValueError(f"phase must be 'snapshot' or 'stream', not {phase!r}")
        self.phase = phase
        self.offset = offset

    def sort_key(self) -> tuple[int, int]:
        return (0 if self.phase == "snapshot" else 1, self.offset)

    def _fields_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "offset": self.offset}

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> SequencePosition:
        return cls(str(data["phase"]), int(data["offset"]))

    def __str__(self) -> str:
        return f"{self.phase}:{self.offset}"


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change.

    Guarantees:
        * ``before`` is None for READ, INSERT and TRUNCATE; for UPDATE and DELETE it holds at least
          the primary-key columns (all columns when the source has them).
        * ``after`` is None for DELETE and TRUNCATE; for READ, INSERT and UPDATE it holds every
          column of the table's current schema. A value may be ``UNCHANGED`` (see there).
        * ``position`` orders events of one source; events of one transaction share ``txid``.
        * ``commit_ts`` is the source's commit time (timezone-aware UTC), None for snapshot rows
          when the source does not know it.
    Values are Python objects of the canonical types (see ``zetl.schema.types``). Never mutate
    the mappings; build a new event with ``dataclasses.replace``.
    """

    table: TableId
    op: Op
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    position: Position | None = None
    commit_ts: _dt.datetime | None = None
    txid: str | int | None = None

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row as it is after the change (``before`` for DELETE)."""
        return self.before if self.op is Op.DELETE else self.after

    def key(self, primary_key: tuple[str, ...]) -> tuple[Any, ...]:
        """The primary-key values of the row this event is about."""
        row = self.row
        if row is None:
            raise ValueError(f"{self.op} event on {self.table} has no row")
        return tuple(row[c] for c in primary_key)

    @classmethod
    def read(cls, table: TableId, row: Mapping[str, Any], position: Position | None = None) -> ChangeEvent:
        return cls(table, Op.READ, None, row, position)

    @classmethod
    def insert(cls, table: TableId, row: Mapping[str, Any], position: Position | None = None, **kw: Any) -> ChangeEvent:
        return cls(table, Op.INSERT, None, row, position, **kw)

    @classmethod
    def update(
        cls, table: TableId, before: Mapping[str, Any] | None, after: Mapping[str, Any], position: Position | None = None, **kw: Any
    ) -> ChangeEvent:
        return cls(table, Op.UPDATE, before, after, position, **kw)

    @classmethod
    def delete(cls, table: TableId, before: Mapping[str, Any], position: Position | None = None, **kw: Any) -> ChangeEvent:
        return cls(table, Op.DELETE, before, None, position, **kw)

    @classmethod
    def truncate(cls, table: TableId, position: Position | None = None, **kw: Any) -> ChangeEvent:
        return cls(table, Op.TRUNCATE, None, None, position, **kw)

    def __str__(self) -> str:
        return f"{self.op} {self.table} before={dict(self.before) if self.before else None} after={dict(self.after) if self.after else None} @ {self.position}"


@dataclass(frozen=True, slots=True)
class RowChunk:
    """Many rows of one table in columnar form (an Arrow table or record batch).

    Used for snapshot rows (``op`` READ) and bulk inserts, where building one ``ChangeEvent`` per
    row would cost more than the rest of the pipeline. Column names and types follow the table's
    canonical schema laid out as ``zetl.arrow.arrow_schema`` says (json and uuid as text).
    ``position`` is where the source is once the chunk is done.
    """

    table: TableId
    op: Op
    rows: "pyarrow.Table | pyarrow.RecordBatch"
    position: Position | None = None

    def __len__(self) -> int:
        return self.rows.num_rows

    def events(self) -> Iterator[ChangeEvent]:
        """The rows as ``ChangeEvent`` objects with canonical Python values (json as
        ``JsonText``, the same text; uuid as ``uuid.UUID``; see ``zetl.arrow``), for sinks that
        work row by row."""
        from zetl.arrow import python_converters

        converters = python_converters(self.rows.schema)
        op, table, position = self.op, self.table, self.position
        for row in self.rows.to_pylist():
            for name, convert in converters.items():
                row[name] = convert(row[name])
            yield ChangeEvent(table, op, None, row, position)


@dataclass(frozen=True, slots=True)
class Batch:
    """The unit the runner writes and checkpoints.

    Order of application: ``schema_changes`` first, then ``chunks``, then ``events`` in order.
    A source starts a new batch at every schema change, so rows are always in the shape of the
    schema in force. ``end_position`` is where reading resumes once this batch is durable (None if
    the batch does not move the source forward). A batch never ends inside a source transaction.
    """

    events: tuple[ChangeEvent, ...] = ()
    schema_changes: tuple["SchemaChange", ...] = ()
    end_position: Position | None = None
    chunks: tuple[RowChunk, ...] = ()

    @property
    def row_count(self) -> int:
        return len(self.events) + sum(len(c) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.events and not self.chunks and not self.schema_changes

    def tables(self) -> set[TableId]:
        return {e.table for e in self.events} | {c.table for c in self.chunks} | {s.table for s in self.schema_changes}

    def iter_events(self) -> Iterator[ChangeEvent]:
        """All row changes in application order, chunks expanded to events."""
        for chunk in self.chunks:
            yield from chunk.events()
        yield from self.events

"""Between source and sink: filters, flattening, the planner's decisions, and row shaping.

``SchemaPipeline`` keeps the source's schema of every table and derives from it the schema the
sink must have (``effective_schema``: the table's filters, then flattening). It plans each change
against the sink's schema with the integration's policy, applies the planned changes, records
every decision in the schema history, and reshapes rows to the target's columns.

Order of work on a batch (the same for ``ChangeEvent`` rows and Arrow chunks):

1. the source's schema changes (planned and applied first);
2. per table: row filter and column filter/masks (``zetl.filters.apply``);
3. flattening of json columns; keys seen for the first time and widened types are schema
   changes planned and applied before the rows are written;
4. rows reshaped to the target (``SchemaPlan.column_map``: values routed to another column or
   not written when the policy did not add their column).

``zetl drift`` uses ``effective_schema`` and ``plan_table`` too, so it reports exactly what the
daemon would do.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Mapping

import orjson

from zetl.config.model import IntegrationConfig
from zetl.errors import CheckpointError, SchemaError
from zetl.events import Batch, ChangeEvent, Op, Position, RowChunk, TableId
from zetl.filters.apply import TableFilter, python_value
from zetl.flatten import Flattener
from zetl.faults import FaultPoint, fault_point
from zetl.jsonvalue import as_json_text
from zetl.schema.changes import CreateTable, RenameColumn, SchemaChange, TruncateTable
from zetl.schema.planner import PlanStep, SchemaPlan, apply_change, plan
from zetl.schema.types import DataType, Field, Schema, TypeKind
from zetl.sink import Sink
from zetl.statedb import StateDB

__all__ = ["ApplyState", "LedgerEntry", "SchemaHistory", "SchemaLedger", "SchemaPipeline"]


class SchemaHistory:
    """Every schema decision of an integration: what changed, when, at which source position,
    and what was done (``zetl drift --history``). Entries are kept in insertion order."""

    def __init__(self, db: StateDB | None, integration: str) -> None:
        self.db = db
        self.integration = integration

    def record_step(self, table: TableId, step: PlanStep, position: Position | None) -> None:
        self._insert(table, str(step.detected), position, step.decision, step.reason + _applied(step))

    def record(self, table: TableId, plan_: SchemaPlan, position: Position | None) -> None:
        for step in plan_.steps:
            self.record_step(table, step, position)

    def _insert(self, table: TableId, change: str, position: Position | None, decision: str, reason: str) -> None:
        if self.db is None:
            return
        pos = orjson.dumps(position.to_json()).decode() if position is not None else None
        try:
            self.db.connect().execute(
                "INSERT INTO schema_history (integration, at, table_name, change, position, decision, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.integration, time.time(), str(table), change, pos, decision, reason),
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot record a schema decision in the state file {self.db.path}: {exc}", retryable=True) from exc

    def has(self, table: TableId, change: str, decision: str) -> bool:
        """Whether this decision about this change was recorded before."""
        if self.db is None:
            return False
        row = self.db.connect().execute(
            "SELECT 1 FROM schema_history WHERE integration = ? AND table_name = ? AND change = ? AND decision = ? LIMIT 1",
            (self.integration, str(table), change, decision),
        ).fetchone()
        return row is not None

    def entries(self, table: str | None = None) -> list[dict[str, Any]]:
        """The recorded decisions, oldest first (of one table when ``table`` is given)."""
        if self.db is None:
            return []
        query = "SELECT at, table_name, change, position, decision, reason FROM schema_history WHERE integration = ?"
        params: tuple[Any, ...] = (self.integration,)
        if table is not None:
            query += " AND table_name = ?"
            params += (table,)
        rows = self.db.connect().execute(query + " ORDER BY id", params).fetchall()
        return [dict(zip(("at", "table", "change", "position", "decision", "reason"), r)) for r in rows]


class ApplyState(str, Enum):
    """How far a plan's changes got in the target (``SchemaLedger``)."""

    PLANNED = "planned"
    """Recorded before the first change was applied: the target holds none, some or all of them."""
    APPLIED = "applied"
    """Every change is in the target; ``after`` is the target's schema as the sink reported it."""


@dataclass(frozen=True)
class LedgerEntry:
    """One plan applied (or being applied) to one table of the target."""

    id: int
    table: TableId
    position: Position | None
    """The source position of the batch whose schema the plan followed."""
    changes: tuple[str, ...]
    """The plan's changes, in order, as text (what a replay must plan again to match)."""
    renames: tuple[tuple[str, str], ...]
    """The column renames among them, (old, new) in order: how a column's values travel."""
    before: Schema | None
    """The target's schema before the first change (None: no table)."""
    after: Schema | None
    """The target's schema once every change is applied (as planned while ``state`` is planned)."""
    state: ApplyState


class SchemaLedger:
    """The schema changes zetl applied to the target, keyed by the source position they follow.

    Why: the target's schema moves at once when a change is applied, the checkpoint only when the
    next rows are durable. After a crash in between, the source replays from the checkpoint and
    describes its tables as they were *before* the change, while the target already has it.
    Planning by comparing those two schemas would invert the change (a rename would become the
    drop of the renamed column and the add of an empty one). The ledger tells the pipeline what
    the target looked like at the checkpoint, so that the replay plans exactly the changes the
    first run planned and recognises them as applied instead.

    Guarantees: an entry is written (``planned``) before the first change reaches the sink and
    marked ``applied`` after the last one; ``ahead_of(p)`` returns, per table and in order, the
    entries at positions after ``p`` and forgets the older ones (the checkpoint covers them).
    """

    def __init__(self, db: StateDB | None, integration: str) -> None:
        self.db = db
        self.integration = integration

    def planned(self, table: TableId, position: Position | None, changes: list[SchemaChange], before: Schema | None, expected: Schema | None) -> int | None:
        """Record a plan about to be applied; returns its id (None without a state file)."""
        if self.db is None:
            return None
        renames = [[c.old_name, c.new_name] for c in changes if isinstance(c, RenameColumn)]
        try:
            cursor = self.db.connect().execute(
                "INSERT INTO schema_applies (integration, at, table_id, position, changes, renames, before, after, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.integration,
                    time.time(),
                    orjson.dumps([table.namespace, table.name]).decode(),
                    orjson.dumps(position.to_json()).decode() if position is not None else None,
                    orjson.dumps([str(c) for c in changes]).decode(),
                    orjson.dumps(renames).decode(),
                    _schema_json(before),
                    _schema_json(expected),
                    ApplyState.PLANNED.value,
                ),
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot record the schema changes of {table} in the state file {self.db.path}: {exc}", retryable=True) from exc
        return cursor.lastrowid

    def applied(self, entry_id: int | None, after: Schema | None) -> None:
        """Mark an entry applied, with the target's schema as the sink now reports it."""
        if self.db is None or entry_id is None:
            return
        try:
            self.db.connect().execute(
                "UPDATE schema_applies SET state = ?, after = ? WHERE id = ?", (ApplyState.APPLIED.value, _schema_json(after), entry_id)
            )
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot record an applied schema change in the state file {self.db.path}: {exc}", retryable=True) from exc

    def ahead_of(self, checkpoint: Position | None) -> dict[TableId, list[LedgerEntry]]:
        """The entries at positions after ``checkpoint``, per table, oldest first; older ones
        (and those of another position kind, or without a position) are removed. Nothing is
        ahead of a start from the beginning (None): the tables are copied again."""
        if self.db is None or checkpoint is None:
            return {}
        conn = self.db.connect()
        rows = conn.execute(
            "SELECT id, table_id, position, changes, renames, before, after, state FROM schema_applies WHERE integration = ? ORDER BY id",
            (self.integration,),
        ).fetchall()
        ahead: dict[TableId, list[LedgerEntry]] = {}
        covered: list[int] = []
        for entry_id, table_json, position_json, changes, renames, before, after, state in rows:
            position = _position(position_json)
            try:
                is_ahead = position is not None and position > checkpoint
            except TypeError:  # another kind: the source type changed, the entry says nothing
                is_ahead = False
            if not is_ahead:
                covered.append(entry_id)
                continue
            namespace, name = orjson.loads(table_json)
            table = TableId(namespace, name)
            ahead.setdefault(table, []).append(
                LedgerEntry(
                    entry_id,
                    table,
                    position,
                    tuple(orjson.loads(changes)),
                    tuple((old, new) for old, new in orjson.loads(renames)),
                    _schema_from_json(table, before),
                    _schema_from_json(table, after),
                    ApplyState(state),
                )
            )
        if covered:
            try:
                conn.executemany("DELETE FROM schema_applies WHERE id = ?", [(i,) for i in covered])
            except sqlite3.Error as exc:  # kept for the next start; nothing depends on the removal
                logging.getLogger("zetl.pipeline").warning("cannot remove covered schema changes from %s: %s", self.db.path, exc)
        return ahead


def _position(text: str | None) -> Position | None:
    if text is None:
        return None
    try:
        return Position.from_json(orjson.loads(text))
    except ValueError:  # a position kind no installed source knows
        return None


def _schema_json(schema: Schema | None) -> str | None:
    if schema is None:
        return None
    fields = [
        {"name": f.name, "type": str(f.type), "nullable": f.nullable, "primary_key": f.primary_key, "source_type": f.source_type, "doc": f.doc}
        for f in schema.fields
    ]
    return orjson.dumps({"fields": fields, "primary_key": list(schema.primary_key), "version": schema.version}).decode()


def _schema_from_json(table: TableId, text: str | None) -> Schema | None:
    if text is None:
        return None
    data = orjson.loads(text)
    fields = tuple(
        Field(f["name"], DataType.parse(f["type"]), f["nullable"], f["primary_key"], f.get("source_type"), f.get("doc")) for f in data["fields"]
    )
    return Schema(table, fields, tuple(data["primary_key"]), int(data.get("version", 0)))


def _applied(step: PlanStep) -> str:
    if step.changes and (len(step.changes) > 1 or step.changes[0] != step.detected):
        return "; applied: " + "; ".join(str(c) for c in step.changes)
    return ""


class SchemaPipeline:
    """Applies schema changes through the planner and reshapes rows to the sink's columns."""

    def __init__(
        self,
        config: IntegrationConfig,
        sink: Sink,
        history: SchemaHistory | None = None,
        logger: logging.Logger | None = None,
        ledger: SchemaLedger | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.history = history
        self.ledger = ledger
        # Replaying over schema changes the target already has (see SchemaLedger): per table, the
        # ledger entries still ahead of the stream, and the target's schema as the stream expects
        # it at this point (what plans are made against; ``target_schemas`` stays the real one).
        self._replay: dict[TableId, deque[LedgerEntry]] = {}
        self._replay_target: dict[TableId, Schema | None] = {}
        self.unsaved_schema_changes = False
        """True once a schema change was applied (or recognised as applied) since the runner
        last cleared it on a checkpoint save."""
        self.log = logger or logging.getLogger("zetl.pipeline")
        self.source_schemas: dict[TableId, Schema] = {}
        self.target_schemas: dict[TableId, Schema | None] = {}
        self.column_maps: dict[TableId, dict[str, str | None]] = {}
        self.filters: dict[TableId, TableFilter | None] = {}
        self.flattener = Flattener(getattr(config, "flatten", None) or _default_flatten(), self.log)
        flatten = self.flattener.config
        self._flattens = flatten.unnest != "none" or any(t.unnest != "none" for t in flatten.tables.values())
        self._seeded: set[TableId] = set()
        self._target_names: dict[TableId, tuple[Schema, frozenset[str]]] = {}
        self._warned: set[str] = set()
        self.schema_changes_applied = 0
        self.rows_filtered_out = 0

    # -- schemas --------------------------------------------------------------------------
    def _sink_schema(self, table: TableId) -> Schema | None:
        """The target's schema as the stream expects it at this point: the real one, unless the
        stream replays over changes the target already has (then the one before them)."""
        if table in self._replay:
            return self._replay_target[table]
        return self._real_schema(table)

    def _real_schema(self, table: TableId) -> Schema | None:
        if table not in self.target_schemas:
            self.target_schemas[table] = self.sink.current_schema(table)
        return self.target_schemas[table]

    def _filter(self, table: TableId) -> TableFilter | None:
        if table not in self.filters:
            schema = self.source_schemas.get(table)
            self.filters[table] = TableFilter.build(self.config.filters, schema) if schema is not None else None
        return self.filters[table]

    def _filtered_schema(self, table: TableId) -> Schema | None:
        schema = self.source_schemas.get(table)
        if schema is None:
            return None
        table_filter = self._filter(table)
        return table_filter.target_schema if table_filter is not None else schema

    def effective_schema(self, table: TableId) -> Schema | None:
        """The schema the sink must have for ``table``: the source's, through the table's
        filters and flattening (None when the table is gone from the source)."""
        schema = self._filtered_schema(table)
        if schema is None:
            return None
        flattener = self.flattener.for_table(table)
        if table not in self._seeded:
            self._seeded.add(table)
            flattener.seed(schema, self._sink_schema(table))
        return flattener.schema(schema)

    def set_source_schema(self, schema: Schema) -> None:
        self.source_schemas[schema.table] = schema
        self.filters.pop(schema.table, None)

    def plan_table(self, table: TableId, hints: tuple[SchemaChange, ...] = ()) -> SchemaPlan:
        """The plan for ``table`` now (pure: nothing is applied)."""
        policy = self.config.schema_evolution.for_table(table)
        return plan(self.effective_schema(table), self._sink_schema(table), policy, can_apply=self.sink.can_apply, hints=hints)

    def _load_replay(self, checkpoint: Position | None) -> None:
        """Find the tables whose target is ahead of ``checkpoint`` (changes applied after it)."""
        if self.ledger is None:
            return
        for table, entries in self.ledger.ahead_of(checkpoint).items():
            self._replay[table] = deque(entries)
            self._replay_target[table] = entries[0].before
            self._real_schema(table)
            self.log.info(
                "table %s: the target has %d schema change(s) made after the checkpoint (%s); the stream replays up to them "
                "and they are recognised, not planned again from the older schema",
                table,
                len(entries),
                "; ".join(c for e in entries for c in e.changes),
            )

    def _leave_replay(self, table: TableId) -> None:
        self._replay.pop(table, None)
        self._replay_target.pop(table, None)

    def _replayed_entry(self, table: TableId, result: SchemaPlan, hints: tuple[SchemaChange, ...]) -> tuple[SchemaPlan, LedgerEntry | None]:
        """The ledger entry ``result`` replays (None: it replays none), and the plan to follow.

        A plan that asks for exactly the changes of the table's next entry replays it. A plan
        that asks for others means the source's history reads differently now (it changed
        again, or its state was lost): the replay is given up and the table planned against
        the target as it is, with a warning."""
        entries = self._replay.get(table)
        if not entries or not result.changes:
            return result, None
        entry = entries[0]
        if tuple(str(c) for c in result.changes) == entry.changes:
            return result, entry
        self.log.warning(
            "table %s: the replayed schema changes (%s) differ from those applied to the target before the restart (%s); "
            "planning against the target as it is now (`zetl drift` shows the outcome)",
            table,
            "; ".join(str(c) for c in result.changes),
            "; ".join(entry.changes),
        )
        self._leave_replay(table)
        return self.plan_table(table, hints), None

    def _apply_plan(self, table: TableId, result: SchemaPlan, position: Position | None, entry: LedgerEntry | None) -> bool:
        """Apply the plan's changes (recorded in the ledger around them); returns whether the
        sink was asked to change anything. The changes of an entry already applied are not
        applied again; those of an entry only planned (a crash before or during its apply) are
        applied, every sink's ``apply`` being idempotent."""
        changes = result.changes
        if not changes:
            return False
        self.unsaved_schema_changes = True
        if entry is not None and entry.state is ApplyState.APPLIED:
            for change in changes:
                self.log.info("schema: %s was applied to the target before the restart; not applied again", change)
            return False
        entry_id = entry.id if entry is not None else None
        if entry_id is None and self.ledger is not None:
            entry_id = self.ledger.planned(table, position, changes, self._real_schema(table), result.target)
        fault_point(FaultPoint.SCHEMA_BEFORE_APPLY)
        for i, change in enumerate(changes):
            self.log.info("schema: %s", change)
            self.sink.apply(change)
            self.schema_changes_applied += 1
            if i == 0 and len(changes) > 1:
                fault_point(FaultPoint.SCHEMA_BETWEEN_CHANGES)
        self.target_schemas[table] = self.sink.current_schema(table)
        if self.ledger is not None:
            self.ledger.applied(entry_id, self.target_schemas[table])
        fault_point(FaultPoint.SCHEMA_AFTER_APPLY)
        return True

    def _plan_and_apply(self, table: TableId, hints: tuple[SchemaChange, ...], position: Position | None) -> None:
        if self.effective_schema(table) is None and self._sink_schema(table) is None and self._real_schema(table) is None:
            return
        result = self.plan_table(table, hints)
        result, entry = self._replayed_entry(table, result, hints)
        if self.history is not None:
            for step in result.steps:
                # A skip repeats on every start while the difference stays (a column kept by a
                # lenient policy): record it once. Decisions that act are always recorded.
                if step.decision != "skip" or hints or not self.history.has(table, str(step.detected), "skip"):
                    self.history.record_step(table, step, position)
        result.raise_for_failures()
        replaying = table in self._replay
        applied = self._apply_plan(table, result, position, entry)
        for step in result.steps:
            if step.decision == "skip" and (hints or f"{table}:{step.detected}" not in self._warned):
                self._warned.add(f"{table}:{step.detected}")
                self.log.warning("schema: %s skipped: %s", step.detected, step.reason)
        if entry is not None:
            entries = self._replay[table]
            entries.popleft()
            if entries:
                self._replay_target[table] = entry.after
            else:
                self._leave_replay(table)
                self.log.info("table %s: the stream has replayed every schema change the target had; planning goes on as usual", table)
        if not applied and not replaying:
            self.target_schemas[table] = result.target
        self.column_maps[table] = self._column_map(table, result)
        if hints and self.history is not None and self.target_schemas[table] is not None:
            # Record what the policy keeps from now on (e.g. the old column of a lenient
            # rename), so that `zetl drift` knows these differences were decided.
            for step in self.plan_table(table).steps:
                if step.decision == "skip" and not self.history.has(table, str(step.detected), "skip"):
                    self.history.record_step(table, step, position)

    def _names(self, table: TableId, schema: Schema) -> frozenset[str]:
        """The column names of ``schema`` (the table's current target) as a set, cached."""
        cached = self._target_names.get(table)
        if cached is None or cached[0] is not schema:
            cached = (schema, frozenset(schema.names))
            self._target_names[table] = cached
        return cached[1]

    def _column_map(self, table: TableId, result: SchemaPlan) -> dict[str, str | None]:
        source, target = self.effective_schema(table), self.target_schemas.get(table)
        mapping = dict(result.column_map)
        entries = self._replay.get(table)
        if entries and source is not None:
            # The plan speaks of the target as the stream expects it; the rows go to the real
            # one, where the columns renamed by the entries still ahead have their new names.
            for f in source.fields:
                name = mapping.get(f.name, f.name)
                for entry in entries:
                    for old, new in entry.renames:
                        if name == old:
                            name = new
                mapping[f.name] = name if name is not None and (target is None or name in target) else None
        if source is not None and target is not None:
            for f in source.fields:
                if f.name not in target and f.name not in mapping:
                    mapping[f.name] = None
        return {k: v for k, v in mapping.items() if v != k}

    def prepare(self, schemas: list[Schema], position: Position | None = None) -> None:
        """Bring the sink in line with the discovered source schemas before reading, from the
        checkpoint ``position``: tables whose target holds schema changes made after it are
        planned against their schema at the checkpoint (see ``SchemaLedger``)."""
        self._load_replay(position)
        for schema in schemas:
            self.set_source_schema(schema)
            self._plan_and_apply(schema.table, (), position)

    # -- batches --------------------------------------------------------------------------
    def process(self, batch: Batch) -> Batch:
        """Apply the batch's schema changes; return the batch filtered, flattened and with rows
        in the target's shape. Row order is kept; events dropped by a row filter are counted
        in ``rows_filtered_out``."""
        if batch.schema_changes:
            self._source_changes(batch)
        if not batch.chunks and not self._flattens and not self.config.filters.tables and self._passes_through(batch.events):
            return batch
        if self.config.filters.tables:
            events = [e for e in (self._event(e, batch.end_position) for e in batch.events) if e is not None]
            chunks = [c for c in (self._chunk(c) for c in batch.chunks) if c is not None]
        else:  # no filters: only TRUNCATE events need a look
            events = [e for e in (self._event(e, batch.end_position) if e.op is Op.TRUNCATE else e for e in batch.events) if e is not None]
            chunks = list(batch.chunks)
        if self._flattens:
            for table in self._flatten(events, chunks):
                self._plan_and_apply(table, (), batch.end_position)
        events = [e for e in (self._reshape(e) for e in events) if e is not None]
        chunks = [c for c in (self._reshape_chunk(c) for c in chunks) if c is not None]
        if len(events) == len(batch.events) and len(chunks) == len(batch.chunks) and all(a is b for a, b in zip(events, batch.events)) and all(
            a is b for a, b in zip(chunks, batch.chunks)
        ):
            return batch
        return replace(batch, events=tuple(events), chunks=tuple(chunks))

    def _passes_through(self, events: tuple[ChangeEvent, ...]) -> bool:
        """Whether every event would come out of filtering and reshaping as the same object.

        Only called when no filter and no flattening is configured. True when, for every event:
        it is not a TRUNCATE (the policy may skip those), its table has no column map and is not
        known to be missing from the target, and its ``after`` row (when there is one) already
        holds every column of the target. That is exactly the case where ``_event`` and
        ``_reshape`` return the event itself, so the batch may be returned unchanged; otherwise
        the caller takes the general path, which gives the same result event by event.

        The streaming hot path: the per-table decision is taken once per run of consecutive
        events of one table object (the usual case: a decoder reuses its ``TableId``), and the
        per-event work is two identity checks and one C-level key-set comparison.
        """
        truncate = Op.TRUNCATE
        last_table: TableId | None = None
        names: frozenset[str] | None = None
        for event in events:
            table = event.table
            if table is not last_table:
                last_table = table
                names = self._pass_through_names(table)
                if names is None:
                    return False
            if event.op is truncate:
                return False
            after = event.after
            if after is not None and names and not after.keys() >= names:  # type: ignore[operator]
                return False
        return True

    def _pass_through_names(self, table: TableId) -> frozenset[str] | None:
        """The target columns every row of ``table`` must hold to pass through unchanged (empty:
        the target's shape is not known, rows are never padded), or None when rows of the table
        are reshaped or dropped. Derived from the current plan on every call (a dict lookup or
        two, and the cached name set), so it follows schema changes without invalidation."""
        if self.column_maps.get(table):
            return None
        if table not in self.target_schemas:
            return frozenset()
        target = self.target_schemas[table]
        if target is None:
            return None
        return self._names(table, target)

    def _source_changes(self, batch: Batch) -> None:
        by_table: dict[TableId, list[SchemaChange]] = {}
        for change in batch.schema_changes:
            if isinstance(change, TruncateTable):
                continue
            try:
                new = apply_change(self.source_schemas.get(change.table), change)
            except SchemaError:
                if not isinstance(change, CreateTable):
                    raise
                new = change.schema
            if new is None:
                self.source_schemas.pop(change.table, None)
                self.filters.pop(change.table, None)
            else:
                self.set_source_schema(new)
            by_table.setdefault(change.table, []).append(change)
        for table, hints in by_table.items():
            self._plan_and_apply(table, tuple(hints), batch.end_position)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message, *args)

    def _event(self, event: ChangeEvent, position: Position | None) -> ChangeEvent | None:
        if event.op is Op.TRUNCATE:
            policy = self.config.schema_evolution.for_table(event.table)
            if not policy.allows(TruncateTable.kind) or policy.behavior == "ignore":
                step = PlanStep(TruncateTable(event.table), "skip", "lossy", "truncate.table is not allowed by the policy; the target keeps its rows")
                self.log.warning("schema: %s skipped: %s", step.detected, step.reason)
                if self.history is not None:
                    self.history.record_step(event.table, step, event.position or position)
                return None
            return event
        table_filter = self._filter(event.table)
        if table_filter is None:
            return event
        result = table_filter.apply_event(event)
        if result is None:
            self.rows_filtered_out += 1
        return result

    def _chunk(self, chunk: RowChunk) -> RowChunk | None:
        table_filter = self._filter(chunk.table)
        if table_filter is None:
            return chunk
        result = table_filter.apply_chunk(chunk)
        self.rows_filtered_out += len(chunk) - (len(result) if result is not None else 0)
        return result

    # -- flattening -----------------------------------------------------------------------
    def _flatten(self, events: list[ChangeEvent], chunks: list[RowChunk]) -> set[TableId]:
        """Flatten json columns in place (lists are rebuilt); returns the tables whose
        flattened columns changed."""
        tables = {e.table for e in events if e.op is not Op.TRUNCATE} | {c.table for c in chunks}
        changed: set[TableId] = set()
        for table in tables:
            flattener = self.flattener.for_table(table)
            schema = self._filtered_schema(table)
            if flattener.unnest == "none" or schema is None or not flattener.json_columns(schema):
                continue
            self.effective_schema(table)  # seeds known columns from the sink once
            event_at = [i for i, e in enumerate(events) if e.table == table and e.op is not Op.TRUNCATE]
            chunk_at = [i for i, c in enumerate(chunks) if c.table == table]
            # Chunks come first, as in the order of application, so keys are met in data order.
            rows: list[Mapping[str, Any] | None] = []
            chunk_rows: list[int] = []
            for i in chunk_at:
                decoded = list(_decoded_rows(chunks[i].rows, schema))
                chunk_rows.append(len(decoded))
                rows += decoded
            for i in event_at:
                rows += [events[i].before, events[i].after]
            observed, did_change = flattener.observe(schema, rows)
            flat = flattener.finish(observed)
            if did_change:
                changed.add(table)
            k = 0
            target = flattener.schema(schema)
            for i, count in zip(chunk_at, chunk_rows):
                chunks[i] = replace(chunks[i], rows=_arrow_rows(flat[k : k + count], target))  # type: ignore[arg-type]
                k += count
            for i in event_at:
                events[i] = replace(events[i], before=flat[k], after=flat[k + 1])
                k += 2
        return changed

    # -- reshaping ------------------------------------------------------------------------
    def _map_row(self, mapping: dict[str, str | None], row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if row is None:
            return None
        out: dict[str, Any] = {}
        for k, v in row.items():
            target = mapping.get(k, k)
            if target is not None:
                out[target] = v
        return out

    def _reshape(self, event: ChangeEvent) -> ChangeEvent | None:
        if event.table in self.target_schemas and self.target_schemas[event.table] is None:
            self._warn_once(f"{event.table}:no-target", "rows of %s are not written: the table does not exist in the target (see the schema plan)", event.table)
            return None
        mapping = self.column_maps.get(event.table)
        if event.op is Op.TRUNCATE:
            return event
        after = self._map_row(mapping, event.after) if mapping else event.after
        target = self.target_schemas.get(event.table)
        if after is not None and target is not None and not after.keys() >= self._names(event.table, target):
            # A row holds every column of the target: the ones the source no longer fills
            # (kept by the policy, or not written) are NULL from now on.
            after = {**{n: None for n in target.names}, **after}
        if not mapping and after is event.after:
            return event
        return replace(event, before=self._map_row(mapping, event.before) if mapping else event.before, after=after)

    def _reshape_chunk(self, chunk: RowChunk) -> RowChunk | None:
        if chunk.table in self.target_schemas and self.target_schemas[chunk.table] is None:
            self._warn_once(f"{chunk.table}:no-target", "rows of %s are not written: the table does not exist in the target (see the schema plan)", chunk.table)
            return None
        mapping = self.column_maps.get(chunk.table) or {}
        target = self.target_schemas.get(chunk.table)
        rows = chunk.rows
        if mapping:
            keep = [n for n in rows.schema.names if mapping.get(n, n) is not None]
            rows = rows.select(keep)
            rows = rows.rename_columns([mapping.get(n, n) or n for n in keep])
        missing = [f for f in target.fields if f.name not in rows.schema.names] if target is not None else []
        if missing:
            import pyarrow as pa

            from zetl.arrow import arrow_field

            table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
            for f in missing:
                field_ = arrow_field(replace(f, nullable=True))
                table = table.append_column(field_, pa.nulls(table.num_rows, field_.type))
            rows = table if isinstance(chunk.rows, pa.Table) else table.combine_chunks().to_batches()[0] if table.num_rows else chunk.rows
        if rows is chunk.rows:
            return chunk
        return replace(chunk, rows=rows)


def _default_flatten() -> Any:
    from zetl.flatten import FlattenConfig

    return FlattenConfig()


def _decoded_rows(rows: Any, schema: Schema) -> Any:
    """Arrow rows as canonical Python values (json as ``JsonText``, uuid as UUID), by the
    columns' canonical types."""
    kinds = {f.name: f.type.kind for f in schema.fields if f.type.kind in (TypeKind.JSON, TypeKind.UUID)}
    for row in rows.to_pylist():
        for name, kind in kinds.items():
            if name in row:
                row[name] = python_value(row[name], kind)
        yield row


def _arrow_rows(rows: list[dict[str, Any]], schema: Schema) -> Any:
    """Flattened rows back into an Arrow table laid out per ``zetl.arrow``."""
    import pyarrow as pa

    from zetl.arrow import arrow_field

    names = [f.name for f in schema.fields if any(f.name in r for r in rows)] if rows else list(schema.names)
    fields = [schema.field(n) for n in names]
    arrays = []
    for f in fields:
        values = [r.get(f.name) for r in rows]
        if f.type.kind is TypeKind.JSON:
            values = [as_json_text(v) for v in values]
        elif f.type.kind is TypeKind.UUID:
            values = [None if v is None else str(v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))) for v in values]
        arrays.append(pa.array(values, type=arrow_field(f).type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([arrow_field(f) for f in fields]))

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
from dataclasses import replace
from typing import Any, Mapping

import orjson

from zetl.config.model import IntegrationConfig
from zetl.errors import CheckpointError, SchemaError
from zetl.events import Batch, ChangeEvent, Op, Position, RowChunk, TableId
from zetl.filters.apply import TableFilter, python_value
from zetl.flatten import Flattener
from zetl.jsonvalue import as_json_text
from zetl.schema.changes import CreateTable, SchemaChange, TruncateTable
from zetl.schema.planner import PlanStep, SchemaPlan, apply_change, plan
from zetl.schema.types import Schema, TypeKind
from zetl.sink import Sink
from zetl.statedb import StateDB

__all__ = ["SchemaHistory", "SchemaPipeline"]


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


def _applied(step: PlanStep) -> str:
    if step.changes and (len(step.changes) > 1 or step.changes[0] != step.detected):
        return "; applied: " + "; ".join(str(c) for c in step.changes)
    return ""


class SchemaPipeline:
    """Applies schema changes through the planner and reshapes rows to the sink's columns."""

    def __init__(self, config: IntegrationConfig, sink: Sink, history: SchemaHistory | None = None, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.sink = sink
        self.history = history
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

    def _plan_and_apply(self, table: TableId, hints: tuple[SchemaChange, ...], position: Position | None) -> None:
        if self.effective_schema(table) is None and self._sink_schema(table) is None:
            return
        result = self.plan_table(table, hints)
        if self.history is not None:
            for step in result.steps:
                # A skip repeats on every start while the difference stays (a column kept by a
                # lenient policy): record it once. Decisions that act are always recorded.
                if step.decision != "skip" or hints or not self.history.has(table, str(step.detected), "skip"):
                    self.history.record_step(table, step, position)
        result.raise_for_failures()
        for change in result.changes:
            self.log.info("schema: %s", change)
            self.sink.apply(change)
            self.schema_changes_applied += 1
        for step in result.steps:
            if step.decision == "skip" and (hints or f"{table}:{step.detected}" not in self._warned):
                self._warned.add(f"{table}:{step.detected}")
                self.log.warning("schema: %s skipped: %s", step.detected, step.reason)
        self.target_schemas[table] = self.sink.current_schema(table) if result.changes else result.target
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
        if source is not None and target is not None:
            for f in source.fields:
                if f.name not in target and f.name not in mapping:
                    mapping[f.name] = None
        return {k: v for k, v in mapping.items() if v != k}

    def prepare(self, schemas: list[Schema], position: Position | None = None) -> None:
        """Bring the sink in line with the discovered source schemas before reading."""
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

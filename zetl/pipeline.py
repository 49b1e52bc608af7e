"""Between source and sink: table schemas, the planner's decisions, and row shaping.

``SchemaPipeline`` keeps the source's schema of every table, plans each reported schema change
against the sink's schema with the integration's policy, applies the planned changes to the sink,
records every decision in the schema history, and reshapes rows to the target's columns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Mapping

import orjson

from zetl.config.model import IntegrationConfig
from zetl.errors import SchemaError
from zetl.events import Batch, ChangeEvent, Op, Position, RowChunk, TableId
from zetl.schema.changes import CreateTable, SchemaChange, TruncateTable
from zetl.schema.planner import SchemaPlan, apply_change, plan
from zetl.schema.types import Schema
from zetl.sink import Sink
from zetl.statedb import StateDB

__all__ = ["SchemaHistory", "SchemaPipeline"]


class SchemaHistory:
    """Every schema decision of an integration: what changed, when, at which position, what was done."""

    def __init__(self, db: StateDB | None, integration: str) -> None:
        self.db = db
        self.integration = integration

    def record(self, table: TableId, plan_: SchemaPlan, position: Position | None) -> None:
        if self.db is None:
            return
        conn = self.db.connect()
        pos = orjson.dumps(position.to_json()).decode() if position is not None else None
        for step in plan_.steps:
            conn.execute(
                "INSERT INTO schema_history (integration, at, table_name, change, position, decision, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.integration, time.time(), str(table), str(step.detected), pos, step.decision, step.reason),
            )

    def entries(self) -> list[dict[str, Any]]:
        if self.db is None:
            return []
        rows = self.db.connect().execute(
            "SELECT at, table_name, change, position, decision, reason FROM schema_history WHERE integration = ? ORDER BY id",
            (self.integration,),
        ).fetchall()
        return [dict(zip(("at", "table", "change", "position", "decision", "reason"), r)) for r in rows]


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
        self.schema_changes_applied = 0

    def _sink_schema(self, table: TableId) -> Schema | None:
        if table not in self.target_schemas:
            self.target_schemas[table] = self.sink.current_schema(table)
        return self.target_schemas[table]

    def _plan_and_apply(self, table: TableId, hints: tuple[SchemaChange, ...], position: Position | None) -> None:
        source = self.source_schemas.get(table)
        policy = self.config.schema_evolution.for_table(table)
        result = plan(source, self._sink_schema(table), policy, can_apply=self.sink.can_apply, hints=hints)
        if result.steps and self.history is not None:
            self.history.record(table, result, position)
        result.raise_for_failures()
        for change in result.changes:
            self.log.info("schema: %s", change)
            self.sink.apply(change)
            self.schema_changes_applied += 1
        for step in result.steps:
            if step.decision == "skip":
                self.log.warning("schema: %s skipped: %s", step.detected, step.reason)
        self.target_schemas[table] = self.sink.current_schema(table) if result.changes else result.target
        self.column_maps[table] = self._column_map(table, result)

    def _column_map(self, table: TableId, result: SchemaPlan) -> dict[str, str | None]:
        source, target = self.source_schemas.get(table), self.target_schemas.get(table)
        mapping = dict(result.column_map)
        if source is not None and target is not None:
            for f in source.fields:
                if f.name not in target and f.name not in mapping:
                    mapping[f.name] = None
        return {k: v for k, v in mapping.items() if v != k}

    def prepare(self, schemas: list[Schema], position: Position | None = None) -> None:
        """Bring the sink in line with the discovered source schemas before reading."""
        for schema in schemas:
            self.source_schemas[schema.table] = schema
            self._plan_and_apply(schema.table, (), position)

    def process(self, batch: Batch) -> Batch:
        """Apply the batch's schema changes; return the batch with rows in the target's shape."""
        if batch.schema_changes:
            by_table: dict[TableId, list[SchemaChange]] = {}
            for change in batch.schema_changes:
                if isinstance(change, TruncateTable):
                    continue
                try:
                    self.source_schemas[change.table] = apply_change(self.source_schemas.get(change.table), change)  # type: ignore[assignment]
                except SchemaError:
                    if not isinstance(change, CreateTable):
                        raise
                if self.source_schemas.get(change.table) is None:
                    self.source_schemas.pop(change.table, None)
                by_table.setdefault(change.table, []).append(change)
            for table, hints in by_table.items():
                self._plan_and_apply(table, tuple(hints), batch.end_position)
        if not any(self.column_maps.values()):
            return batch
        events = tuple(self._reshape(e) for e in batch.events)
        chunks = tuple(self._reshape_chunk(c) for c in batch.chunks)
        return replace(batch, events=events, chunks=chunks)

    def _map_row(self, mapping: dict[str, str | None], row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if row is None:
            return None
        out: dict[str, Any] = {}
        for k, v in row.items():
            target = mapping.get(k, k)
            if target is not None:
                out[target] = v
        return out

    def _reshape(self, event: ChangeEvent) -> ChangeEvent:
        mapping = self.column_maps.get(event.table)
        if not mapping or event.op is Op.TRUNCATE:
            return event
        return replace(event, before=self._map_row(mapping, event.before), after=self._map_row(mapping, event.after))

    def _reshape_chunk(self, chunk: RowChunk) -> RowChunk:
        mapping = self.column_maps.get(chunk.table)
        if not mapping:
            return chunk
        rows = chunk.rows
        keep = [n for n in rows.schema.names if mapping.get(n, n) is not None]
        rows = rows.select(keep)
        rows = rows.rename_columns([mapping.get(n, n) or n for n in keep])
        return replace(chunk, rows=rows)

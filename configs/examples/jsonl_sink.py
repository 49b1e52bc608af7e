"""An example custom sink: appends every change as one JSON line to a file.

Use it from YAML with ``type: jsonl_sink:JsonLinesSink`` (the module is found next to the YAML
file, or anywhere on the Python path). Its tests inherit ``zetl.testing.conformance.SinkConformance``
like every built-in sink.

It keeps a change log, not current state; ``rows()`` folds the log into current state by primary
key. Idempotent: each line carries the source position, and a re-delivered change (same table,
position and key as a line already written) is not written again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from zetl import UNCHANGED, Batch, ChangeEvent, Op, Position, Schema, SchemaChange, Sink, SinkCapabilities, SinkConfig, TableId
from zetl.schema.planner import apply_change
from zetl.schema.types import DataType, Field


class JsonLinesConfig(SinkConfig):
    path: str
    """The folder the files go in: one ``<table>.jsonl`` per table, plus ``schemas.json``."""


class JsonLinesSink(Sink[JsonLinesConfig]):
    name = "jsonl"
    config_class = JsonLinesConfig
    capabilities = SinkCapabilities(schema_changes=frozenset({"create.table", "add.column", "alter.column.type", "alter.column.nullability"}))

    def open(self) -> None:
        folder = Path(self.config.path)
        if not folder.is_absolute() and self.context.config_file is not None:
            folder = self.context.config_file.parent / folder
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.schemas_file = folder / "schemas.json"
        self.schemas: dict[str, Any] = orjson.loads(self.schemas_file.read_bytes()) if self.schemas_file.exists() else {}
        self.seen: dict[str, set[tuple[str, str]]] = {}

    def current_schema(self, table: TableId) -> Schema | None:
        data = self.schemas.get(str(table))
        if data is None:
            return None
        return Schema.of(table, [Field(f["name"], DataType.parse(f["type"]), f["nullable"]) for f in data["fields"]], data["primary_key"])

    def apply(self, change: SchemaChange) -> None:
        schema = apply_change(self.current_schema(change.table), change)
        if schema is not None:
            self.schemas[str(change.table)] = {
                "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema.fields],
                "primary_key": list(schema.primary_key),
            }
            tmp = self.schemas_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(self.schemas))
            os.replace(tmp, self.schemas_file)

    def _file(self, table: TableId) -> Path:
        return self.folder / f"{table}.jsonl"

    def _line_id(self, event: ChangeEvent, schema: Schema) -> tuple[str, str]:
        row = event.row or {}
        key = orjson.dumps([row.get(c) for c in schema.primary_key], default=str).decode()
        position = "snapshot" if event.op is Op.READ else orjson.dumps(event.position.to_json() if event.position else None).decode()
        return position, key

    def _seen(self, table: TableId, schema: Schema) -> set[tuple[str, str]]:
        if str(table) not in self.seen:
            seen: set[tuple[str, str]] = set()
            if self._file(table).exists():
                for line in self._file(table).read_bytes().splitlines():
                    record = orjson.loads(line)
                    seen.add((record["position"], record["key"]))
            self.seen[str(table)] = seen
        return self.seen[str(table)]

    def write(self, batch: Batch) -> Position | None:
        handles: dict[TableId, Any] = {}
        try:
            for event in batch.iter_events():
                schema = self.current_schema(event.table)
                if schema is None:
                    raise ValueError(f"table {event.table} was never created")
                position, key = self._line_id(event, schema)
                seen = self._seen(event.table, schema)
                if (position, key) in seen:
                    continue
                seen.add((position, key))
                row = {k: ("__unchanged__" if v is UNCHANGED else v) for k, v in (event.row or {}).items()}
                line = {"op": event.op.name, "position": position, "key": key, "row": row}
                handle = handles.get(event.table) or handles.setdefault(event.table, open(self._file(event.table), "ab"))
                handle.write(orjson.dumps(line, default=str) + b"\n")
        finally:
            for handle in handles.values():
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
        return batch.end_position

    def rows(self, table: TableId) -> list[dict[str, Any]]:
        """Current state of ``table``, folded from the log."""
        state: dict[str, dict[str, Any]] = {}
        path = self._file(table)
        if not path.exists():
            return []
        for line in path.read_bytes().splitlines():
            record = orjson.loads(line)
            if record["op"] == "TRUNCATE":
                state.clear()
            elif record["op"] == "DELETE":
                state.pop(record["key"], None)
            else:
                old = state.get(record["key"], {})
                state[record["key"]] = {k: old.get(k) if v == "__unchanged__" else v for k, v in record["row"].items()}
        return list(state.values())

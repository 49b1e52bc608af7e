"""The schema of every replicated table at every binlog position where it changed.

Rows in the binlog are in the shape of the table when they were written; a source that resumes
from a checkpoint before some DDL must decode them with the schema in force then, not with what
``information_schema`` says now. The history is a JSON-lines file in the integration's state
directory: one line per (position, table, schema), appended when a snapshot starts, when
streaming starts for a table it has never seen, and after every DDL statement.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
from zetl_connectors.mysql.position import MySQLPosition, binlog_index

from zetl.events import TableId
from zetl.schema.types import DataType, Field, Schema

__all__ = ["SchemaHistoryFile", "schema_from_json", "schema_to_json"]


def schema_to_json(schema: Schema) -> dict[str, Any]:
    return {
        "fields": [{"name": f.name, "type": str(f.type), "nullable": f.nullable, "source_type": f.source_type} for f in schema.fields],
        "primary_key": list(schema.primary_key),
    }


def schema_from_json(table: TableId, data: dict[str, Any]) -> Schema:
    fields = [Field(f["name"], DataType.parse(f["type"]), f["nullable"], source_type=f.get("source_type")) for f in data["fields"]]
    return Schema.of(table, fields, data["primary_key"])


def _coordinate(position: MySQLPosition) -> tuple[int, int]:
    return (binlog_index(position.file), position.pos)


class SchemaHistoryFile:
    """Appends schema records and answers "what was the schema of each table at position P"."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self.log = log

    def record(self, position: MySQLPosition, schemas: dict[TableId, Schema | None], *, complete: bool = False) -> None:
        """Append the schemas in force from ``position`` on (None: the table is gone). Durable on return.

        ``complete``: ``schemas`` are all the selected tables there are at ``position`` (a table
        the history does not know at a later position was created after it).
        """
        if not schemas and not complete:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = b"".join(
            orjson.dumps({"file": position.file, "pos": position.pos, "table": [t.namespace, t.name], "schema": schema_to_json(s) if s is not None else None}) + b"\n"
            for t, s in schemas.items()
        )
        if complete:
            lines += orjson.dumps({"file": position.file, "pos": position.pos, "complete": True}) + b"\n"
        with open(self.path, "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def at(self, position: MySQLPosition) -> tuple[dict[TableId, Schema | None], bool]:
        """The last recorded schema of every table at or before ``position``, and whether the
        history knows every table there is at ``position``."""
        if not self.path.exists():
            return {}, False
        limit = _coordinate(position)
        best: dict[TableId, tuple[tuple[int, int], Schema | None]] = {}
        complete = False
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                    coord = (binlog_index(rec["file"]), int(rec["pos"]))
                except (orjson.JSONDecodeError, KeyError, ValueError) as exc:
                    self.log.warning("%s:%d: unreadable schema history line skipped (%s)", self.path, number, exc)
                    continue
                if coord > limit:
                    continue
                if rec.get("complete"):
                    complete = True
                    continue
                table = TableId(*rec["table"])
                if table not in best or coord >= best[table][0]:
                    best[table] = (coord, schema_from_json(table, rec["schema"]) if rec["schema"] is not None else None)
        return {t: s for t, (_, s) in best.items()}, complete

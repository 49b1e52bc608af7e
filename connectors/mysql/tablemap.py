"""Column names (and what goes with them) for table maps logged without them.

A table map carries column names, enum/set labels and (MySQL ``MINIMAL``) signedness only when
the server logs ``binlog_row_metadata=FULL``. Binlogs written while it was ``MINIMAL`` or
``NO_LOG`` (MySQL 8 defaults to ``MINIMAL``; a server whose setting was changed after those
binlogs were written) describe columns by position alone. The source's schema history knows the
table's columns in server order at every binlog position (``ADD COLUMN ... FIRST`` / ``AFTER``
included), so the columns are named from it, by position.
"""

from __future__ import annotations

import re
from typing import Any

from zetl.errors import NeedsAttentionError
from zetl.schema.types import Schema

__all__ = ["name_columns_from_schema"]

_LABEL = re.compile(r"'((?:[^']|'')*)'")


def _labels(source_type: str, kind: str) -> list[str] | None:
    """The labels of an ``enum('a','b')`` / ``set('a','b')`` type text, in declaration order."""
    text = source_type.strip()
    if not text.lower().startswith(kind + "("):
        return None
    return [m.group(1).replace("''", "'") for m in _LABEL.finditer(text[len(kind) + 1 :])]


def name_columns_from_schema(event: Any, schema: Schema) -> bool:
    """Give the event's table map the column names of ``schema`` when the binlog logged none.

    ``schema`` must be the table's schema in force when the event was written (the tracked
    schema of the stream). Also fills what the same metadata would have carried: the unsigned
    flag (from the native type text) and enum/set labels. Columns that already have names are
    left alone (returns False, the common case, in a few attribute reads).

    Returns True when names were filled in.

    Raises:
        NeedsAttentionError: the table map has no names and a different number of columns than
            ``schema``: naming them by position would put values into the wrong columns.
    """
    table_map = getattr(event, "table_map", None)
    table = table_map.get(event.table_id) if table_map is not None else None
    if table is None:
        return False
    columns = table.columns
    if not columns or getattr(columns[0], "name", None):
        return False
    fields = schema.fields
    if len(columns) != len(fields):
        raise NeedsAttentionError(
            f"rows of {schema.table} were logged without column names (binlog_row_metadata was not FULL) and with"
            f" {len(columns)} columns, while the schema history of {schema.table} at that position has {len(fields)}"
            f" ({', '.join(schema.names)}); they cannot be matched to columns. Set binlog_row_metadata = FULL on the"
            " server and copy the tables again with `zetl reset <integration>`"
        )
    for column, field in zip(columns, fields):
        column.name = field.name
        native = (field.source_type or "").lower()
        if "unsigned" in native.split():
            column.unsigned = True
        if getattr(column, "enum_values", None) is None:
            labels = _labels(field.source_type or "", "enum")
            if labels is not None:
                column.enum_values = ["", *labels]  # index 0 is the empty value of an invalid insert
        if getattr(column, "set_values", None) is None:
            labels = _labels(field.source_type or "", "set")
            if labels is not None:
                column.set_values = labels
    return True

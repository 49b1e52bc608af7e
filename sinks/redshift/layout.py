"""A replicated table as it lies in Redshift: target names and types for every source column.

A ``TableLayout`` is computed once from the source schema and the identifier rules, stored as JSON
in the ``_zetl_tables`` metadata table (so ``current_schema`` returns the source names and the
exact canonical types, which SUPER/VARCHAR alone cannot tell), and used by every statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from zetl.errors import SchemaError
from zetl.events import TableId
from zetl.schema.types import DataType, Field, Schema, TypeKind

from .identifiers import IdentifierRules, quote
from .typemap import redshift_type

__all__ = ["HISTORY_COLUMNS", "ColumnLayout", "TableLayout"]

HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_op", "CHAR(1)"),
    ("_position", "VARCHAR(4096)"),
    ("_valid_from", "TIMESTAMPTZ"),
    ("_valid_to", "TIMESTAMPTZ"),
)
"""Columns history mode adds after the source's: operation (r/c/u/d), source position (JSON),
and the interval the version was current in (``_valid_to`` NULL: the current version)."""


@dataclass(frozen=True)
class ColumnLayout:
    source: str
    target: str
    type: DataType
    nullable: bool = True
    primary_key: bool = False

    @property
    def redshift_type(self) -> str:
        return redshift_type(self.type)

    @property
    def staged_type(self) -> str:
        """Type of the column in the staging table (binary travels as hex text)."""
        return "VARCHAR(65535)" if self.type.kind is TypeKind.BINARY else self.redshift_type

    @property
    def quoted(self) -> str:
        return quote(self.target)


@dataclass(frozen=True)
class TableLayout:
    table: TableId
    target_schema: str
    target_table: str
    columns: tuple[ColumnLayout, ...]
    primary_key: tuple[str, ...]
    history: bool = False

    @property
    def qualified(self) -> str:
        return f"{quote(self.target_schema)}.{quote(self.target_table)}"

    def column(self, source_name: str) -> ColumnLayout:
        for c in self.columns:
            if c.source == source_name:
                return c
        raise SchemaError(f"column {source_name!r} is not in target table {self.target_schema}.{self.target_table}", table=str(self.table), column=source_name)

    def get(self, source_name: str) -> ColumnLayout | None:
        return next((c for c in self.columns if c.source == source_name), None)

    @property
    def key_columns(self) -> tuple[ColumnLayout, ...]:
        return tuple(self.column(k) for k in self.primary_key)

    def schema(self) -> Schema:
        fields = [Field(c.source, c.type, nullable=c.nullable, primary_key=c.primary_key, source_type=c.redshift_type) for c in self.columns]
        return Schema(self.table, tuple(fields), self.primary_key)

    def with_columns(self, columns: list[ColumnLayout], primary_key: tuple[str, ...] | None = None) -> TableLayout:
        names = [c.target for c in columns]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            sources = [c.source for c in columns if c.target == dup]
            raise SchemaError(
                f"columns {sources} of {self.table} all map to Redshift column {dup!r} (case folding or shortening); "
                "rename one in the source or set case_sensitive_identifiers: true",
                table=str(self.table),
                column=sources[0],
            )
        reserved = {n for n, _ in HISTORY_COLUMNS} if self.history else set()
        clash = [c.source for c in columns if c.target in reserved]
        if clash:
            raise SchemaError(f"column {clash[0]!r} of {self.table} clashes with a history-mode column", table=str(self.table), column=clash[0])
        pk = self.primary_key if primary_key is None else primary_key
        pk = tuple(k for k in pk if any(c.source == k for c in columns))
        return TableLayout(self.table, self.target_schema, self.target_table, tuple(columns), pk, self.history)

    @classmethod
    def build(cls, schema: Schema, target_schema: str, target_table: str, rules: IdentifierRules, history: bool) -> TableLayout:
        columns = [ColumnLayout(f.name, rules.name(f.name), f.type, f.nullable, f.name in schema.primary_key) for f in schema.fields]
        empty = cls(schema.table, target_schema, target_table, (), (), history)
        return empty.with_columns(columns, schema.primary_key)

    # -- stored form ----------------------------------------------------------------------
    def to_json(self) -> str:
        data: dict[str, Any] = {
            "table": [self.table.namespace, self.table.name],
            "primary_key": list(self.primary_key),
            "history": self.history,
            "columns": [{"source": c.source, "target": c.target, "type": str(c.type), "nullable": c.nullable} for c in self.columns],
        }
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str, target_schema: str, target_table: str) -> TableLayout:
        data = orjson.loads(text)
        pk = tuple(data["primary_key"])
        columns = tuple(
            ColumnLayout(c["source"], c["target"], DataType.parse(c["type"]), bool(c["nullable"]), c["source"] in pk) for c in data["columns"]
        )
        return cls(TableId(*data["table"]), target_schema, target_table, columns, pk, bool(data["history"]))

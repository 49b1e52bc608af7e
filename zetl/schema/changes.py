"""Schema changes in canonical terms: what a source reports and what the planner asks a sink to do.

Each change has a ``kind`` string (the vocabulary of the ``schema_evolution`` policy's
``include``/``exclude`` lists) and a readable ``str()``. All are immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from zetl.events import TableId
from zetl.schema.types import DataType, Field, Schema

__all__ = [
    "AddColumn",
    "AlterColumnType",
    "CHANGE_KINDS",
    "CreateTable",
    "DropColumn",
    "DropTable",
    "MakeColumnNullable",
    "RenameColumn",
    "SchemaChange",
    "TruncateTable",
]


@dataclass(frozen=True, slots=True)
class CreateTable:
    """A new table with the given schema (its primary key included)."""

    kind: ClassVar[str] = "create.table"
    table: TableId
    schema: Schema

    def __str__(self) -> str:
        return f"create table {self.table} ({', '.join(str(f.name) + ' ' + str(f.type) for f in self.schema.fields)})"


@dataclass(frozen=True, slots=True)
class AddColumn:
    """A new column. ``after`` names the column it follows in the source (None: at the end)."""

    kind: ClassVar[str] = "add.column"
    table: TableId
    field: Field
    after: str | None = None

    def __str__(self) -> str:
        where = f" after {self.after}" if self.after else ""
        null = "" if self.field.nullable else " not null"
        return f"add column {self.table}.{self.field.name} {self.field.type}{null}{where}"


@dataclass(frozen=True, slots=True)
class DropColumn:
    kind: ClassVar[str] = "drop.column"
    table: TableId
    column: str

    def __str__(self) -> str:
        return f"drop column {self.table}.{self.column}"


@dataclass(frozen=True, slots=True)
class RenameColumn:
    kind: ClassVar[str] = "rename.column"
    table: TableId
    old_name: str
    new_name: str

    def __str__(self) -> str:
        return f"rename column {self.table}.{self.old_name} to {self.new_name}"


@dataclass(frozen=True, slots=True)
class AlterColumnType:
    """A column's type changes from ``old_type`` (None when the source does not know) to ``new_type``."""

    kind: ClassVar[str] = "alter.column.type"
    table: TableId
    column: str
    new_type: DataType
    old_type: DataType | None = None

    def __str__(self) -> str:
        old = f"{self.old_type} -> " if self.old_type else ""
        return f"alter column {self.table}.{self.column} type {old}{self.new_type}"


@dataclass(frozen=True, slots=True)
class MakeColumnNullable:
    """A NOT NULL column accepts NULL from now on (how a lenient policy keeps a dropped column)."""

    kind: ClassVar[str] = "alter.column.nullability"
    table: TableId
    column: str

    def __str__(self) -> str:
        return f"alter column {self.table}.{self.column} drop not null"


@dataclass(frozen=True, slots=True)
class DropTable:
    kind: ClassVar[str] = "drop.table"
    table: TableId

    def __str__(self) -> str:
        return f"drop table {self.table}"


@dataclass(frozen=True, slots=True)
class TruncateTable:
    """Sources report TRUNCATE as a ``ChangeEvent`` with ``Op.TRUNCATE``; this kind names it in policies and plans."""

    kind: ClassVar[str] = "truncate.table"
    table: TableId

    def __str__(self) -> str:
        return f"truncate table {self.table}"


SchemaChange = Union[CreateTable, AddColumn, DropColumn, RenameColumn, AlterColumnType, MakeColumnNullable, DropTable, TruncateTable]

CHANGE_KINDS: tuple[str, ...] = (
    CreateTable.kind,
    AddColumn.kind,
    DropColumn.kind,
    RenameColumn.kind,
    AlterColumnType.kind,
    MakeColumnNullable.kind,
    DropTable.kind,
    TruncateTable.kind,
)
"""Every change kind, in the order reports list them."""

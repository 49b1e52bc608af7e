"""Canonical types, schemas and schema changes."""

from zetl.schema.changes import (
    CHANGE_KINDS,
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    RenameColumn,
    SchemaChange,
    TruncateTable,
)
from zetl.schema.types import DataType, Field, Schema, T, TypeKind

__all__ = [
    "AddColumn",
    "AlterColumnType",
    "CHANGE_KINDS",
    "CreateTable",
    "DataType",
    "DropColumn",
    "DropTable",
    "Field",
    "MakeColumnNullable",
    "RenameColumn",
    "Schema",
    "SchemaChange",
    "T",
    "TruncateTable",
    "TypeKind",
]

"""Applying schema changes to Redshift tables (the part of the sink the planner talks to).

Every change is idempotent (applying one already in effect is a no-op) and commits the DDL
together with the table's stored layout (``_zetl_tables``), except ``ALTER COLUMN TYPE``, which
Redshift runs only outside a transaction block: it commits alone, then the layout follows.
"""

from __future__ import annotations

from typing import Any, Callable

from zetl.errors import SchemaError, ZetlError
from zetl.events import TableId
from zetl.schema.changes import (
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
from zetl.schema.planner import can_widen
from zetl.schema.types import Field, TypeKind
from zetl.sink import SinkCapabilities

from . import sql
from .config import RedshiftConfig
from .errors import map_driver_error
from .identifiers import IdentifierRules
from .layout import HISTORY_COLUMNS, ColumnLayout, TableLayout
from .typemap import redshift_type

__all__ = ["SchemaChangeMixin"]


class SchemaChangeMixin:
    """``can_apply`` and ``apply`` of ``RedshiftSink``; uses the sink's connection and layouts."""

    config: RedshiftConfig
    capabilities: SinkCapabilities
    rules: IdentifierRules
    schema_name: str
    _conn: Any
    _layouts: dict[TableId, TableLayout | None]
    _unmanaged: dict[TableId, tuple[Field, ...]]

    # Provided by the sink class this is mixed into:
    _layout: Callable[[TableId], TableLayout | None]
    _execute: Callable[..., Any]
    _rollback: Callable[[], None]
    _require_writable: Callable[[str], None]
    target_table_name: Callable[[TableId], str]

    def can_apply(self, change: SchemaChange) -> bool:
        if change.kind not in self.capabilities.schema_changes:
            return False
        if isinstance(change, AlterColumnType):
            layout = self._layout(change.table)
            current = layout.get(change.column) if layout else None
            old = current.type if current is not None else change.old_type
            if old is None:
                return False
            return can_widen(old, change.new_type) and self._widening_kind(old, change.new_type) is not None
        if isinstance(change, (AddColumn, RenameColumn)):
            # The new name must not land on a column that exists (case folding, shortening) or on
            # a history-mode column.
            layout = self._layout(change.table)
            if layout is None:
                return True
            source_name = change.field.name if isinstance(change, AddColumn) else change.new_name
            replaced = change.old_name if isinstance(change, RenameColumn) else None
            target = self.rules.name(source_name)
            taken = {c.target for c in layout.columns if c.source not in (source_name, replaced)}
            if layout.history:
                taken |= {name for name, _ in HISTORY_COLUMNS}
            return target not in taken
        if isinstance(change, CreateTable):
            try:
                TableLayout.build(change.schema, self.schema_name, self.target_table_name(change.table), self.rules, self.config.history_mode)
            except SchemaError:
                return False
        return True

    @staticmethod
    def _widening_kind(old: Any, new: Any) -> str | None:
        """How a widening is done: ``none`` (same Redshift type), ``varchar`` (ALTER TYPE), ``swap`` (add-copy-swap)."""
        old_rs, new_rs = redshift_type(old), redshift_type(new)
        if old_rs == new_rs:
            return "none"
        if old.kind is TypeKind.STRING and new.kind is TypeKind.STRING:
            return "varchar"
        if old_rs.startswith("VARCHAR") and new_rs.startswith("VARCHAR"):
            return "varchar"
        if new_rs in ("SUPER",) or old_rs == "SUPER":
            return None
        return "swap"

    def apply(self, change: SchemaChange) -> None:
        self._require_writable(f"apply '{change}'")
        try:
            self._fence()  # in the change's transaction: a run that another one replaced changes nothing
            self._apply(change)
        except ZetlError:
            self._rollback()
            raise
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action=f"applying '{change}'", table=str(change.table)) from exc

    def _save_layout(self, layout: TableLayout) -> None:
        text = layout.to_json()
        if len(text.encode()) > 65535:
            raise SchemaError(f"the description of {layout.table} is over 65535 bytes; too many or too long column names for the metadata table", table=str(layout.table))
        self._execute(sql.delete_metadata(layout.target_schema), (layout.target_table,))
        self._execute(sql.insert_metadata(layout.target_schema), (layout.target_table, text))

    def _apply(self, change: SchemaChange) -> None:
        table = change.table
        layout = self._layout(table)
        if isinstance(change, CreateTable):
            if layout is not None:
                return  # already there (idempotent); differences are the planner's business
            target = self.target_table_name(table)
            new = TableLayout.build(change.schema, self.schema_name, target, self.rules, self.config.history_mode)
            options = self.config.tables.get(str(table)) or self.config.tables.get(table.unquoted)
            if options is not None:
                for name in [options.distkey, *options.sortkey]:
                    if name is not None and new.get(name) is None:
                        raise SchemaError(f"sink.tables['{table}'] names column {name!r}, which {table} does not have", table=str(table), column=name)
            self._execute(sql.create_table(new, options))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
            return
        if layout is None:
            if isinstance(change, (DropTable, TruncateTable)):
                return
            raise SchemaError(f"cannot apply '{change}': table {table} does not exist in Redshift", table=str(table))
        if isinstance(change, DropTable):
            self._execute(sql.drop_table(layout))
            self._execute(sql.delete_metadata(layout.target_schema), (layout.target_table,))
            self._conn.commit()
            self._layouts[table] = None
        elif isinstance(change, TruncateTable):
            self._execute(sql.delete_all(layout))
            self._conn.commit()
        elif isinstance(change, AddColumn):
            if layout.get(change.field.name) is not None:
                return
            column = ColumnLayout(change.field.name, self.rules.name(change.field.name), change.field.type, True, False)
            new = layout.with_columns([*layout.columns, column])
            self._execute(sql.add_column(new, column))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, DropColumn):
            column = layout.get(change.column)
            if column is None:
                unmanaged = self._unmanaged.get(table, ())
                if any(f.name == change.column for f in unmanaged):
                    # A column added by hand that the policy removes (evolve): its Redshift name
                    # is its name; zetl's layout and metadata do not change.
                    self._execute(sql.drop_column(layout, change.column))
                    self._conn.commit()
                    self._unmanaged[table] = tuple(f for f in unmanaged if f.name != change.column)
                return
            if column.primary_key:
                raise SchemaError(f"cannot drop primary-key column {change.column} of {table} in Redshift", table=str(table), column=change.column)
            new = layout.with_columns([c for c in layout.columns if c.source != change.column])
            self._execute(sql.drop_column(layout, column.target))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, RenameColumn):
            column = layout.get(change.old_name)
            if column is None:
                if layout.get(change.new_name) is not None:
                    return
                raise SchemaError(f"cannot rename {change.old_name}: no such column in {table}", table=str(table), column=change.old_name)
            renamed = ColumnLayout(change.new_name, self.rules.name(change.new_name), column.type, column.nullable, column.primary_key)
            new = layout.with_columns([renamed if c.source == change.old_name else c for c in layout.columns],
                                      tuple(change.new_name if k == change.old_name else k for k in layout.primary_key))
            if renamed.target != column.target:
                self._execute(sql.rename_column(layout, column.target, renamed.target))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, MakeColumnNullable):
            column = layout.get(change.column)
            if column is None or column.nullable:
                return
            updated = ColumnLayout(column.source, column.target, column.type, True, column.primary_key)
            if column.primary_key:
                # Key columns are the only NOT NULL ones; Redshift cannot drop NOT NULL in place.
                self._swap_column(layout, updated, primary_key=tuple(k for k in layout.primary_key if k != column.source))
                return
            new = layout.with_columns([updated if c.source == column.source else c for c in layout.columns])
            self._save_layout(new)  # physically nullable already
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, AlterColumnType):
            column = layout.get(change.column)
            if column is None:
                raise SchemaError(f"cannot change the type of {change.column}: no such column in {table}", table=str(table), column=change.column)
            if column.type == change.new_type:
                return
            how = self._widening_kind(column.type, change.new_type) if can_widen(column.type, change.new_type) else None
            if how is None:
                raise SchemaError(
                    f"Redshift cannot change {table}.{change.column} from {column.type} to {change.new_type} without losing values",
                    table=str(table), column=change.column,
                )
            updated = ColumnLayout(column.source, column.target, change.new_type, column.nullable, column.primary_key)
            new = layout.with_columns([updated if c.source == column.source else c for c in layout.columns])
            if how == "varchar":
                # Redshift runs ALTER COLUMN TYPE outside a transaction block only.
                self._conn.commit()
                self._conn.autocommit = True
                try:
                    self._execute(sql.alter_varchar(new, updated))
                finally:
                    self._conn.autocommit = False
            elif how == "swap":
                self._swap_column(layout, updated)
                return
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        else:  # pragma: no cover - the capabilities list every kind handled above
            raise SchemaError(f"the Redshift sink cannot apply {change.kind}", table=str(table))

    def _swap_column(self, layout: TableLayout, updated: ColumnLayout, primary_key: tuple[str, ...] | None = None) -> None:
        """Add-copy-swap in one transaction: new column, copy values, drop the old, rename.

        The column moves to the end of the table (Redshift cannot reorder columns)."""
        temp = self.rules.name(f"zetl_swap_{updated.target}")
        staged = ColumnLayout(updated.source, temp, updated.type, updated.nullable, updated.primary_key)
        self._execute(sql.add_column(layout, staged))
        self._execute(sql.copy_column(layout, updated.target, staged))
        self._execute(sql.drop_column(layout, updated.target))
        self._execute(sql.rename_column(layout, temp, updated.target))
        if primary_key is not None:
            updated = ColumnLayout(updated.source, updated.target, updated.type, True, False)
        new = layout.with_columns([c for c in layout.columns if c.source != updated.source] + [updated], primary_key)
        self._save_layout(new)
        self._conn.commit()
        self._layouts[layout.table] = new

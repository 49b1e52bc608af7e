"""DDL statements from the binlog -> canonical schema changes.

``interpret`` reads one statement (as the server logged it, with the session's default
database) against the schemas the source tracks and says what it means for the selected
tables:

* ``changes``: canonical changes, in order, already checked against the tracked schemas;
* ``truncated``: tables emptied by TRUNCATE (reported as row events, not schema changes);
* ``reread``: selected tables whose new shape must be read from ``information_schema`` because
  the statement is not understood (it is logged with the statement; never ignored);
* ``created``: selected tables created by the statement (read from ``information_schema``, or
  from the statement when the table is gone by now).

Statements that cannot change a table's columns (indexes, views, grants, ...) give nothing.

Column positions (``FIRST`` / ``AFTER x`` of ADD, MODIFY and CHANGE COLUMN) are kept in the
tracked schemas, whose column order is the order in which row images carry the values (what
decodes binlogs logged without column names). A canonical ``AddColumn`` can only say "after x" or
"at the end": a column added ``FIRST`` reaches sinks as appended at the end, and a column moved by
MODIFY/CHANGE keeps its place in sinks (values are matched by name there).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from zetl_connectors.mysql.catalog import is_system_schema
from zetl_connectors.mysql.typemap import canonical_type

from zetl.errors import SchemaError
from zetl.events import TableId
from zetl.plugin import TableSelector, require
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    RenameColumn,
    SchemaChange,
)
from zetl.schema.planner import apply_change
from zetl.schema.types import Field, Schema

__all__ = ["DDLResult", "interpret", "strip_comments"]

log = logging.getLogger("zetl.mysql.ddl")

_COMMENTS = re.compile(r"/\*(?!!)[\s\S]*?\*/|--[^\n]*|#[^\n]*")
_VERSIONED = re.compile(r"/\*!\d*\s*([\s\S]*?)\*/")
_IDENT = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$\u0080-\uffff]+)"
_QUALIFIED = rf"({_IDENT})(?:\s*\.\s*({_IDENT}))?"
_RENAME_PAIR = re.compile(rf"{_QUALIFIED}\s+TO\s+{_QUALIFIED}", re.IGNORECASE)
# Statements that never change a table's columns.
_NO_SHAPE = re.compile(
    r"^(?:CREATE|DROP|ALTER)\s+(?:OR\s+REPLACE\s+)?(?:DEFINER\s*=\s*\S+\s+)?(?:SQL\s+SECURITY\s+\w+\s+)?(?:ALGORITHM\s*=\s*\w+\s+)?"
    r"(?:UNIQUE\s+|FULLTEXT\s+|SPATIAL\s+|AGGREGATE\s+)?(?:VIEW|INDEX|TRIGGER|PROCEDURE|FUNCTION|EVENT|USER|ROLE|SERVER|SEQUENCE|PACKAGE|LOGFILE|TABLESPACE|RESOURCE|SPATIAL)\b"
    r"|^(?:CREATE\s+(?:DATABASE|SCHEMA)|ALTER\s+(?:DATABASE|SCHEMA)|GRANT|REVOKE|SET|FLUSH|ANALYZE|OPTIMIZE|REPAIR|CHECK|SAVEPOINT|RELEASE|XA|INSTALL|UNINSTALL|RESET|PURGE|LOCK|UNLOCK)\b",
    re.IGNORECASE,
)


def strip_comments(sql: str) -> str:
    """The statement without comments (the bodies of ``/*! ... */`` version comments are kept)."""
    sql = _VERSIONED.sub(lambda m: " " + m.group(1) + " ", sql)
    return _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()


def _unquote(name: str) -> str:
    return name[1:-1].replace("``", "`") if name.startswith("`") else name


@dataclass
class DDLResult:
    changes: list[SchemaChange] = field(default_factory=list)
    truncated: list[TableId] = field(default_factory=list)
    reread: list[TableId] = field(default_factory=list)
    created: list[TableId] = field(default_factory=list)
    created_from_statement: dict[TableId, Schema] = field(default_factory=dict)
    schemas: dict[TableId, Schema] = field(default_factory=dict)
    """The tracked schemas once ``changes`` are applied."""

    @property
    def is_empty(self) -> bool:
        return not (self.changes or self.truncated or self.reread or self.created)


class _Context:
    def __init__(self, default_db: str, schemas: dict[TableId, Schema], selector: TableSelector) -> None:
        self.default_db = default_db
        self.schemas = dict(schemas)  # working copy: changes of one statement build on each other
        self.selector = selector
        self.result = DDLResult(schemas=self.schemas)

    def table(self, db: str | None, name: str) -> TableId:
        return TableId(db or self.default_db, name)

    def selected(self, table: TableId) -> bool:
        return not is_system_schema(table.namespace) and self.selector.matches(table)

    def emit(self, change: SchemaChange) -> None:
        try:
            after = apply_change(self.schemas.get(change.table), change)
        except (SchemaError, ValueError) as exc:
            log.info("schema change %s does not fit the tracked schema (%s); already applied", change, exc)
            return
        if after is None:
            self.schemas.pop(change.table, None)
        else:
            if after == self.schemas.get(change.table) and not isinstance(change, CreateTable):
                return  # the tracked schema has it already (resumed after the statement was read)
            self.schemas[change.table] = after
        self.result.changes.append(change)


def _sqlglot() -> Any:
    sqlglot = require("sqlglot", extra="mysql", what="DDL parsing for the MySQL source (sqlglot)")
    import sqlglot.expressions as exp

    return sqlglot, exp


def _column_def(coldef: Any, exp: Any) -> Field:
    name = coldef.this.name
    kind = coldef.args.get("kind")
    if kind is None:
        raise ValueError(f"column {name} has no type")
    type_text = kind.sql(dialect="mysql")
    nullable = True
    primary = False
    for constraint in coldef.args.get("constraints") or []:
        ck = constraint.args.get("kind")
        if isinstance(ck, exp.NotNullColumnConstraint) and not ck.args.get("allow_null"):
            nullable = False
        if isinstance(ck, exp.PrimaryKeyColumnConstraint):
            nullable, primary = False, True
    return Field(name, canonical_type(type_text), nullable=nullable, primary_key=primary, source_type=_lower_keywords(type_text))


_QUOTED = re.compile(r"('(?:[^']|'')*')")


def _lower_keywords(type_text: str) -> str:
    """``ENUM('Red','Blue') CHARACTER SET utf8mb4`` -> ``enum('Red','Blue') character set utf8mb4``:
    the type's words in lower case as the server writes them, enum/set labels as declared (they
    are the values rows decode to)."""
    return "".join(part if part.startswith("'") else part.lower() for part in _QUOTED.split(type_text))


def _alter(ctx: _Context, tree: Any, exp: Any, sql: str) -> None:
    target = tree.this
    table = ctx.table(target.db or None, target.name)
    if not ctx.selected(table):
        return
    schema = ctx.schemas.get(table)
    if schema is None:
        ctx.result.reread.append(table)
        return
    for action in tree.args.get("actions") or []:
        schema = ctx.schemas.get(table)
        if schema is None:
            return
        if isinstance(action, exp.ColumnDef):
            f = _column_def(action, exp)
            where, after = _position(action)
            if where == "AFTER" and after not in schema.names:
                log.warning("%r adds %s after %s, which the tracked schema of %s does not have: re-reading it", sql, f.name, after, table)
                ctx.result.reread.append(table)
                continue
            # The canonical change cannot say FIRST (after=None means "at the end"): sinks append
            # the column; the tracked schema, which decodes rows by position, puts it first.
            ctx.emit(AddColumn(table, f, after))
            if where == "FIRST":
                _place(ctx, table, f.name, where, None, sql)
        elif isinstance(action, exp.Drop) and str(action.args.get("kind") or "").upper() == "COLUMN":
            for col in action.args.get("tables") or action.expressions:
                ctx.emit(DropColumn(table, col.name))
        elif isinstance(action, exp.ModifyColumn):
            new = _column_def(action.this, exp)
            old_name = action.args.get("rename_from").name if action.args.get("rename_from") is not None else new.name
            old = schema.get(old_name)
            if old is None:
                ctx.result.reread.append(table)
                continue
            if old_name != new.name:
                ctx.emit(RenameColumn(table, old_name, new.name))
            if new.type != old.type:
                ctx.emit(AlterColumnType(table, new.name, new.type, old.type))
            if new.nullable and not old.nullable:
                ctx.emit(MakeColumnNullable(table, new.name))
            if new.source_type != old.source_type:
                # keep the native type text current (converters read enum/set labels, bit widths)
                current = ctx.schemas[table]
                ctx.schemas[table] = current.replace_fields(
                    [f if f.name != new.name else Field(f.name, f.type, f.nullable, f.primary_key, new.source_type, f.doc) for f in current.fields], bump=False
                )
            where, after = _position(action.this)
            if where is not None:
                _place(ctx, table, new.name, where, after, sql)
        elif isinstance(action, exp.RenameColumn):
            ctx.emit(RenameColumn(table, action.this.name, action.args["to"].name))
        elif isinstance(action, exp.AlterRename):
            new_table = ctx.table(action.this.db or table.namespace, action.this.name)
            _rename_table(ctx, table, new_table)
            table = new_table
        elif isinstance(action, exp.AlterColumn):
            if action.args.get("dtype") is not None or action.args.get("allow_null") is not None:
                ctx.result.reread.append(table)
            # SET/DROP DEFAULT, VISIBLE/INVISIBLE: the values written do not change shape
        elif isinstance(action, exp.AddConstraint):
            if any(isinstance(e, (exp.PrimaryKey, exp.PrimaryKeyColumnConstraint)) for e in action.walk()):
                ctx.result.reread.append(table)  # a new primary key changes the table's key
        elif isinstance(action, exp.Drop) and str(action.args.get("kind") or "").upper() in ("INDEX", "KEY", "CONSTRAINT", "FOREIGN KEY", "CHECK"):
            continue
        else:
            log.warning("ALTER TABLE action not understood (%s) in %r: re-reading %s from information_schema", type(action).__name__, sql, table)
            ctx.result.reread.append(table)


def _position(coldef: Any) -> tuple[str | None, str | None]:
    """A column definition's ``FIRST`` / ``AFTER x``: ("FIRST", None), ("AFTER", "x") or (None, None)."""
    position = coldef.args.get("position")
    if position is None:
        return None, None
    where = str(position.args.get("position") or "").upper()
    if where == "AFTER" and position.this is not None:
        return where, position.this.name
    if where == "FIRST":
        return where, None
    return None, None


def _place(ctx: _Context, table: TableId, column: str, where: str, after: str | None, sql: str) -> None:
    """Move ``column`` of the tracked schema FIRST or AFTER ``after``.

    Only the tracked schema changes (it says in which order row images carry the columns);
    there is no canonical change for a column's position, so sinks keep their own order.
    A column or anchor the tracked schema does not have means it is out of step with the
    server: the table is re-read from ``information_schema``.
    """
    schema = ctx.schemas.get(table)
    if schema is None:
        return
    names = schema.names
    if column not in names or (where == "AFTER" and after not in names):
        log.warning("%r places %s %s %s, which the tracked schema of %s does not have: re-reading it", sql, column, where, after or "", table)
        ctx.result.reread.append(table)
        return
    moved = schema.fields[names.index(column)]
    rest = [f for f in schema.fields if f.name != column]
    index = 0 if where == "FIRST" else [f.name for f in rest].index(after) + 1  # type: ignore[arg-type]
    rest.insert(index, moved)
    if [f.name for f in rest] != list(names):
        ctx.schemas[table] = schema.replace_fields(rest, bump=False)


def _rename_table(ctx: _Context, old: TableId, new: TableId) -> None:
    schema = ctx.schemas.get(old)
    if schema is not None:
        ctx.emit(DropTable(old))
    if ctx.selected(new):
        if schema is not None:
            ctx.emit(CreateTable(new, Schema.of(new, [Field(f.name, f.type, f.nullable, f.primary_key, f.source_type, f.doc) for f in schema.fields], schema.primary_key)))
        else:
            ctx.result.created.append(new)


def _create(ctx: _Context, tree: Any, exp: Any) -> None:
    target = tree.this
    table_expr = target.this if isinstance(target, exp.Schema) else target
    table = ctx.table(table_expr.db or None, table_expr.name)
    if not ctx.selected(table) or table in ctx.schemas:
        return
    ctx.result.created.append(table)
    if isinstance(target, exp.Schema):
        try:
            fields: list[Field] = []
            pk: list[str] = []
            for item in target.expressions:
                if isinstance(item, exp.ColumnDef):
                    f = _column_def(item, exp)
                    fields.append(f)
                    if f.primary_key:
                        pk.append(f.name)
                elif isinstance(item, exp.PrimaryKey):
                    pk = [e.name for e in item.expressions]
            if fields:
                ctx.result.created_from_statement[table] = Schema.of(table, fields, pk)
        except (ValueError, AttributeError) as exc:
            log.info("CREATE TABLE %s: columns not read from the statement (%s); information_schema is used", table, exc)


def interpret(sql: str, default_db: str, schemas: dict[TableId, Schema], selector: TableSelector) -> DDLResult:
    """What one logged statement means for the selected tables (see the module doc)."""
    text = strip_comments(sql)
    ctx = _Context(default_db, schemas, selector)
    head = text[:64].upper()
    if not text or _NO_SHAPE.match(text):
        return ctx.result
    if re.match(r"^RENAME\s+TABLES?\b", head):
        body = re.sub(r"^RENAME\s+TABLES?\s+", "", text, flags=re.IGNORECASE)
        pairs = list(_RENAME_PAIR.finditer(body))
        if not pairs:
            _not_understood(ctx, text, "RENAME TABLE")
        for m in pairs:
            old = ctx.table(_unquote(m.group(1)) if m.group(2) else None, _unquote(m.group(2) or m.group(1)))
            new = ctx.table(_unquote(m.group(3)) if m.group(4) else None, _unquote(m.group(4) or m.group(3)))
            _rename_table(ctx, old, new)
        return ctx.result
    if re.match(r"^DROP\s+(?:DATABASE|SCHEMA)\b", head):
        m = re.match(rf"^DROP\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+EXISTS\s+)?({_IDENT})", text, re.IGNORECASE)
        if m:
            db = _unquote(m.group(1))
            for table in sorted(t for t in ctx.schemas if t.namespace == db):
                ctx.emit(DropTable(table))
        return ctx.result
    if re.match(r"^TRUNCATE\b", head):
        m = re.match(rf"^TRUNCATE\s+(?:TABLE\s+)?{_QUALIFIED}", text, re.IGNORECASE)
        if m:
            table = ctx.table(_unquote(m.group(1)) if m.group(2) else None, _unquote(m.group(2) or m.group(1)))
            if ctx.selected(table):
                ctx.result.truncated.append(table)
        return ctx.result
    if not re.match(r"^(ALTER\s+(?:ONLINE\s+|IGNORE\s+)*TABLE|CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?TABLE|DROP\s+(?:TEMPORARY\s+)?TABLES?)\b", head):
        if re.match(r"^(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION)\b", head):
            return ctx.result
        _not_understood(ctx, text, "statement")
        return ctx.result
    if re.match(r"^(CREATE|DROP)\s+TEMPORARY\b", head):
        return ctx.result  # temporary tables are session-local and never replicated as rows
    sqlglot, exp = _sqlglot()
    try:
        normalized = re.sub(r"^ALTER\s+(?:ONLINE\s+|IGNORE\s+)+TABLE", "ALTER TABLE", text, flags=re.IGNORECASE)
        tree = sqlglot.parse_one(normalized, read="mysql")
    except Exception as exc:  # sqlglot raises several error types for unsupported syntax
        _not_understood(ctx, text, f"parse error: {exc}")
        return ctx.result
    try:
        if isinstance(tree, exp.Alter):
            _alter(ctx, tree, exp, text)
        elif isinstance(tree, exp.Create):
            _create(ctx, tree, exp)
        elif isinstance(tree, exp.Drop):
            for t in tree.args.get("tables") or tree.expressions:
                table = ctx.table(t.db or None, t.name)
                if table in ctx.schemas:
                    ctx.emit(DropTable(table))
        else:
            _not_understood(ctx, text, f"parsed as {type(tree).__name__}")
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        _not_understood(ctx, text, str(exc))
    return ctx.result


def _not_understood(ctx: _Context, text: str, why: str) -> None:
    """Re-read every tracked table the statement names; never drop the statement silently."""
    named = [t for t in ctx.schemas if re.search(rf"(?<![\w$`]){re.escape(t.name)}(?![\w$])|`{re.escape(t.name.replace('`', '``'))}`", text)]
    if named:
        log.warning("DDL not understood (%s): %r; re-reading %s from information_schema", why, text, ", ".join(map(str, named)))
        ctx.result.reread.extend(named)
    else:
        log.info("DDL not understood (%s) and naming no replicated table: %r", why, text)

"""Table schemas read from ``information_schema``, in canonical types."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from zetl_connectors.mysql.typemap import UnknownTypeError, canonical_type

from zetl.errors import SourceError
from zetl.events import TableId
from zetl.plugin import TableSelector
from zetl.schema.types import Field, Schema

__all__ = ["SYSTEM_SCHEMAS", "is_system_schema", "quote_ident", "quote_table", "read_schemas", "selected_tables"]

SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
_JSON_CHECK = re.compile(r"json_valid\(\s*`((?:[^`]|``)+)`\s*\)", re.IGNORECASE)


def is_system_schema(name: str) -> bool:
    return name.lower() in SYSTEM_SCHEMAS


def quote_ident(name: str) -> str:
    """A MySQL identifier in backticks (embedded backticks doubled)."""
    return "`" + name.replace("`", "``") + "`"


def quote_table(table: TableId) -> str:
    return f"{quote_ident(table.namespace)}.{quote_ident(table.name)}"


def _json_columns(cursor: Any, mariadb: bool, tables: Iterable[TableId]) -> set[tuple[str, str, str]]:
    """MariaDB stores JSON as longtext with a ``json_valid`` check: find those columns."""
    if not mariadb:
        return set()
    wanted = {(t.namespace, t.name) for t in tables}
    if not wanted:
        return set()
    cursor.execute("SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS")
    out: set[tuple[str, str, str]] = set()
    for db, table, clause in cursor.fetchall():
        if (db, table) in wanted:
            for m in _JSON_CHECK.finditer(clause or ""):
                out.add((db, table, m.group(1).replace("``", "`")))
    return out


def selected_tables(conn: Any, selector: TableSelector) -> list[TableId]:
    """The selected base tables that exist now (system schemas excluded), sorted; names only."""
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE'")
        found = [TableId(str(db), str(name)) for db, name in cur.fetchall() if not is_system_schema(str(db))]
    return sorted(t for t in found if selector.matches(t))


def read_schemas(conn: Any, selector: TableSelector, *, mariadb: bool, only: Iterable[TableId] | None = None) -> list[Schema]:
    """Schemas of the selected base tables (system schemas excluded), sorted by table id.

    ``only`` restricts the read to these tables (still filtered by the selector).

    Raises:
        SourceError: a column has a type with no canonical mapping (names table and column).
    """
    with conn.cursor() as cur:
        params: list[Any] = []
        where = "t.TABLE_TYPE = 'BASE TABLE'"
        only_list = list(only) if only is not None else None
        if only_list is not None:
            if not only_list:
                return []
            where += " AND (" + " OR ".join("(t.TABLE_SCHEMA = %s AND t.TABLE_NAME = %s)" for _ in only_list) + ")"
            for t in only_list:
                params += [t.namespace, t.name]
        cur.execute(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE, c.IS_NULLABLE, c.DATA_TYPE"
            " FROM information_schema.COLUMNS c JOIN information_schema.TABLES t"
            " ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME"
            f" WHERE {where} ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION",
            params,
        )
        columns: dict[TableId, list[tuple[str, str, bool, str]]] = {}
        for db, table, name, column_type, nullable, data_type in cur.fetchall():
            if is_system_schema(db):
                continue
            tid = TableId(db, table)
            if not selector.matches(tid):
                continue
            columns.setdefault(tid, []).append((name, column_type, nullable == "YES", data_type))
        if not columns:
            return []
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
            " WHERE CONSTRAINT_NAME = 'PRIMARY' ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
        )
        keys: dict[TableId, list[str]] = {}
        for db, table, name in cur.fetchall():
            tid = TableId(db, table)
            if tid in columns:
                keys.setdefault(tid, []).append(name)
        json_cols = _json_columns(cur, mariadb, columns)
    schemas = []
    for tid in sorted(columns):
        fields = []
        for name, column_type, nullable, data_type in columns[tid]:
            try:
                ctype = canonical_type(column_type, is_json=(tid.namespace, tid.name, name) in json_cols)
            except UnknownTypeError as exc:
                raise SourceError(f"table {tid}, column {name}: {exc}", retryable=False) from None
            fields.append(Field(name, ctype, nullable=nullable, source_type=column_type))
        schemas.append(Schema.of(tid, fields, keys.get(tid, ())))
    return schemas

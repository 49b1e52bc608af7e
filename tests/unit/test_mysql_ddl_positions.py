"""Column positions from DDL (FIRST / AFTER) in the MySQL source's tracked schemas, and table
maps logged without column names named from those schemas."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from zetl_connectors.mysql.ddl import interpret
from zetl_connectors.mysql.tablemap import name_columns_from_schema
from zetl_connectors.mysql.typemap import canonical_type

from zetl.errors import NeedsAttentionError
from zetl.events import TableId
from zetl.schema.changes import AddColumn, RenameColumn
from zetl.schema.types import Field, Schema
from zetl.tables import TableSelection

SHOP = TableId("shop", "items")
ALL = TableSelection.of(["shop.*"])


def _schema() -> Schema:
    columns = [("id", "int"), ("name", "varchar(64)"), ("amount", "decimal(12,2)")]
    return Schema.of(SHOP, [Field(n, canonical_type(t), nullable=n != "id", source_type=t) for n, t in columns], ["id"])


def _names(sql: str) -> tuple[list[Any], tuple[str, ...]]:
    r = interpret(sql, "shop", {SHOP: _schema()}, ALL)
    assert not r.reread, r.reread
    return r.changes, r.schemas[SHOP].names


def test_add_first_is_first_in_the_tracked_schema_and_appended_for_sinks() -> None:
    changes, names = _names("ALTER TABLE items ADD COLUMN qty int unsigned FIRST")
    assert names == ("qty", "id", "name", "amount")
    assert len(changes) == 1 and isinstance(changes[0], AddColumn) and changes[0].after is None


def test_add_after_and_several_positions_in_one_statement() -> None:
    changes, names = _names("ALTER TABLE items ADD a int FIRST, ADD b int AFTER a, ADD c int AFTER `name`, ADD d int")
    assert names == ("a", "b", "id", "name", "c", "amount", "d")
    assert [(c.field.name, c.after) for c in changes] == [("a", None), ("b", "a"), ("c", "name"), ("d", None)]


def test_modify_and_change_move_columns_without_a_canonical_change_for_the_move() -> None:
    changes, names = _names("ALTER TABLE items MODIFY COLUMN amount decimal(12,2) FIRST")
    assert names == ("amount", "id", "name") and changes == []
    changes, names = _names("ALTER TABLE items MODIFY id int NOT NULL AFTER amount")
    assert names == ("name", "amount", "id") and changes == []
    changes, names = _names("ALTER TABLE items CHANGE COLUMN name label varchar(64) FIRST")
    assert names == ("label", "id", "amount") and changes == [RenameColumn(SHOP, "name", "label")]
    changes, names = _names("ALTER TABLE items CHANGE name label varchar(64) AFTER amount")
    assert names == ("id", "amount", "label")


def test_a_move_after_a_column_the_schema_lacks_rereads_the_table() -> None:
    r = interpret("ALTER TABLE items MODIFY id int AFTER nothing_here", "shop", {SHOP: _schema()}, ALL)
    assert r.reread == [SHOP]
    r = interpret("ALTER TABLE items ADD COLUMN x int AFTER nothing_here", "shop", {SHOP: _schema()}, ALL)
    assert r.reread == [SHOP] and r.changes == []


def test_replayed_add_first_keeps_the_column_first_once() -> None:
    once = interpret("ALTER TABLE items ADD COLUMN qty int FIRST", "shop", {SHOP: _schema()}, ALL).schemas
    again = interpret("ALTER TABLE items ADD COLUMN qty int FIRST", "shop", once, ALL)
    assert again.changes == [] and again.schemas[SHOP].names == ("qty", "id", "name", "amount")


def _event(columns: list[Any]) -> Any:
    return SimpleNamespace(table_id=7, table_map={7: SimpleNamespace(columns=columns)})


def _column(name: str | None = None) -> Any:
    return SimpleNamespace(name=name, unsigned=False, enum_values=None, set_values=None)


def test_unnamed_table_map_columns_take_the_schema_names_and_metadata() -> None:
    fields = [
        Field("qty", canonical_type("bigint unsigned"), source_type="bigint(20) unsigned"),
        Field("size", canonical_type("enum('s','it''s')"), source_type="enum('s','it''s')"),
        Field("tags", canonical_type("set('x','y')"), source_type="set('x','y')"),
        Field("id", canonical_type("int"), nullable=False, source_type="int(11)"),
    ]
    schema = Schema.of(SHOP, fields, ["id"])
    columns = [_column() for _ in fields]
    assert name_columns_from_schema(_event(columns), schema) is True
    assert [c.name for c in columns] == ["qty", "size", "tags", "id"]
    assert [c.unsigned for c in columns] == [True, False, False, False]
    assert columns[1].enum_values == ["", "s", "it's"] and columns[2].set_values == ["x", "y"]
    assert name_columns_from_schema(_event(columns), schema) is False  # named now: left alone


def test_named_columns_are_left_alone_and_a_count_mismatch_needs_attention() -> None:
    named = [_column("b"), _column("a"), _column("c")]
    assert name_columns_from_schema(_event(named), _schema()) is False
    assert [c.name for c in named] == ["b", "a", "c"]
    with pytest.raises(NeedsAttentionError, match=r"binlog_row_metadata = FULL.*|without column names"):
        name_columns_from_schema(_event([_column(), _column()]), _schema())
    assert name_columns_from_schema(SimpleNamespace(table_id=1), _schema()) is False  # a recorded event without a table map


def test_enum_and_set_labels_keep_their_case_in_the_tracked_schema() -> None:
    # the labels are the values rows decode to: 'Active' must not become 'active'
    r = interpret("ALTER TABLE items ADD state ENUM('Active','On Hold') NOT NULL, ADD tags SET('Red','it''s')", "shop", {SHOP: _schema()}, ALL)
    schema = r.schemas[SHOP]
    from zetl_connectors.mysql.convert import set_labels

    assert set_labels(schema.field("state").source_type) == ["Active", "On Hold"]
    assert set_labels(schema.field("tags").source_type) == ["Red", "it's"]
    assert (schema.field("state").source_type or "").startswith("enum(")

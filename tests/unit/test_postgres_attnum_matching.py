"""Matching a pgoutput Relation message with the known columns by attnum (``renames``), and the
renames found between the saved column state and the catalog (``columnstate``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zetl.events import TableId
from zetl.schema.types import Field, Schema, T
from zetl_connectors.postgres.columnstate import ColumnState, renames_since
from zetl_connectors.postgres.renames import CatalogColumn, match_columns, renamed_schema

INT, TEXT = 23, 25


def catalog(*columns: tuple[int, str | None, int]) -> dict[int, CatalogColumn]:
    """(attnum, name or None for a dropped column, type OID)."""
    return {a: CatalogColumn(a, n or f"........pg.dropped.{a}........", t, n is None, False) for a, n, t in columns}


@pytest.mark.parametrize(
    "known, message, now, renames, attnums, ambiguous",
    [
        # plain rename; catalog as the message says
        ([("id", 1), ("a", 2)], [("id", INT), ("b", TEXT)], [(1, "id", INT), (2, "b", TEXT)], [("a", "b")], (1, 2), None),
        # renamed twice since: the live attnum fixes the position, whatever its name now
        ([("id", 1), ("a", 2)], [("id", INT), ("b", TEXT)], [(1, "id", INT), (2, "z", TEXT)], [("a", "b")], (1, 2), None),
        # drop + add of the same type at the same place: the old attnum is dropped
        ([("id", 1), ("a", 2)], [("id", INT), ("b", TEXT)], [(1, "id", INT), (2, None, TEXT), (3, "b", TEXT)], [], (1, 3), None),
        # rename, then a new column takes the old name
        ([("id", 1), ("a", 2)], [("id", INT), ("b", TEXT), ("a", INT)], [(1, "id", INT), (2, "b", TEXT), (3, "a", INT)], [("a", "b")], (1, 2, 3), None),
        # drop of an earlier column and rename of a later one: the message has no room for more
        ([("id", 1), ("x", 2), ("a", 3)], [("id", INT), ("b", TEXT)], [(1, "id", INT), (2, None, INT), (3, "b", TEXT)], [("a", "b")], (1, 3), None),
        # chain: a -> b while b -> c, applied in an order that never collides
        ([("a", 1), ("b", 2)], [("b", INT), ("c", INT)], [(1, "b", INT), (2, "c", INT)], [("b", "c"), ("a", "b")], (1, 2), None),
        # the type changed since the message: not certain
        ([("id", 1), ("a", 2)], [("id", INT), ("b", TEXT)], [(1, "id", INT), (2, "b", INT)], [], (None, None), "type changed"),
        # names swapped: not expressible as renames one after the other
        ([("a", 1), ("b", 2)], [("b", INT), ("a", INT)], [(1, "b", INT), (2, "a", INT)], [], (None, None), "swapped"),
        # a column dropped since may have held a place (renamed, then dropped): the later rename is not certain
        ([("id", 1), ("x", 2), ("a", 3)], [("id", INT), ("y", INT), ("b", INT)], [(1, "id", INT), (2, None, INT), (3, "b", INT), (4, "q", INT)], [], (None, None, None), "not certain"),
        # the attnum of a column is unknown: matched by name only
        ([("id", 1), ("a", None)], [("id", INT), ("b", INT)], [(1, "id", INT), (2, "b", INT)], [], (1, None), None),
    ],
)
def test_match_columns(
    known: list[tuple[str, int | None]],
    message: list[tuple[str, int]],
    now: list[tuple[int, str | None, int]],
    renames: list[tuple[str, str]],
    attnums: tuple[int | None, ...],
    ambiguous: str | None,
) -> None:
    match = match_columns(known, message, catalog(*now))
    assert list(match.renames) == renames
    assert match.attnums == attnums
    if ambiguous is None:
        assert match.ambiguous is None
    else:
        assert match.ambiguous is not None and ambiguous in match.ambiguous


def test_table_gone_from_catalog_is_ambiguous() -> None:
    match = match_columns([("a", 1)], [("b", INT)], None)
    assert match.renames == () and match.ambiguous == "the table is no longer in the catalog"


def test_generated_columns_take_no_place_in_the_message() -> None:
    now = catalog((1, "id", INT), (3, "b", INT))
    now[2] = CatalogColumn(2, "g", INT, False, True)
    match = match_columns([("id", 1), ("g", 2), ("a", 3)], [("id", INT), ("b", INT)], now)
    assert match.renames == (("a", "b"),) and match.ambiguous is None


def test_renamed_schema_renames_the_key_too() -> None:
    schema = Schema.of(TableId("public", "t"), [Field("id", T.int32, nullable=False), Field("a", T.string())], ("id",))
    renamed = renamed_schema(schema, [("id", "key"), ("a", "b")])
    assert renamed.names == ("key", "b") and renamed.primary_key == ("key",)


@pytest.mark.parametrize(
    "saved, now, expected",
    [
        ({1: "id", 2: "a"}, {"id": 1, "a": 2}, []),
        ({1: "id", 2: "a"}, {"id": 1, "b": 2}, [("a", "b")]),
        ({1: "id", 2: "a", 3: "b"}, {"id": 1, "b": 2}, [("a", "b")]),  # b dropped, then a renamed to b
        ({1: "a", 2: "b"}, {"b": 1, "c": 2}, [("b", "c"), ("a", "b")]),
        ({1: "a", 2: "b"}, {"b": 1, "a": 2}, None),  # swapped
        ({1: "id"}, {"id": 1, "new": 2}, []),  # added while stopped: not a rename
    ],
)
def test_renames_since(saved: dict[int, str], now: dict[str, int], expected: list[tuple[str, str]] | None) -> None:
    assert renames_since(saved, now) == expected


def test_column_state_round_trip_and_other_relation(tmp_path: Path) -> None:
    table = TableId("public", "t")
    state = ColumnState(tmp_path, "slot_a")
    state.update({table: (42, {1: "id", 2: "a"})})
    state.save()
    loaded = ColumnState(tmp_path, "slot_a").load()
    assert loaded.get(table, 42) == {1: "id", 2: "a"}
    assert loaded.get(table, 43) is None  # dropped and created again: another relation
    assert ColumnState(tmp_path, "slot_b").load().get(table, 42) is None


def test_unreadable_column_state_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "postgres_columns.slot.json").write_text("{not json")
    with pytest.raises(Exception) as info:
        ColumnState(tmp_path, "slot").load()
    assert "Delete the file" in str(info.value) and "postgres_columns.slot.json" in str(info.value)

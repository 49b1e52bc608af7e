"""Telling a renamed column from a dropped and an added one, by attribute number.

A pgoutput Relation message names a table's columns but carries no column identity, so from the
message alone ``RENAME COLUMN a TO b`` looks like ``DROP COLUMN a, ADD COLUMN b``. Postgres keeps
a column's ``attnum`` across a rename and gives an added column a new ``attnum`` greater than
every ``attnum`` the table ever had; a Relation message lists the published columns in
``attnum`` order. So the columns of a message are, in order: the known columns that still
existed when the message was written (the *survivors*, possibly renamed since), then the added
ones.

The message describes the table as it was when the change was written (historic catalog); the
catalog zetl can look up describes it now, maybe after more DDL. What is certain:

* a column whose ``attnum`` is live in the catalog now was live when the message was written
  (a dropped column never comes back), so it is a survivor;
* a column whose ``attnum`` is dropped now, or whose ``attnum`` is unknown, may or may not be.

``match_columns`` therefore matches survivors by position, and only accepts the result when it
is unambiguous: every known column with a live ``attnum`` takes the position its rank gives it;
a known column that is dropped now or has an unknown ``attnum`` is a survivor only under its own
name at the position its rank gives it, and dropped otherwise; a rename also needs the message's
type to be the catalog's current type of that ``attnum`` (a later ALTER TYPE makes it
ambiguous). Anything else (positions that do not line up, names that swap) is ambiguous: the
caller then reports drop + add, as the names alone say, and logs why. Nothing is ever guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from zetl.events import TableId
from zetl.schema.changes import RenameColumn, SchemaChange
from zetl.schema.types import Field, Schema

__all__ = ["CatalogColumn", "ColumnMatch", "match_columns", "renamed_schema", "with_renames"]


@dataclass(frozen=True, slots=True)
class CatalogColumn:
    """One ``pg_attribute`` row of a table as it is now."""

    attnum: int
    name: str
    type_oid: int
    dropped: bool
    generated: bool


@dataclass(frozen=True, slots=True)
class ColumnMatch:
    """The outcome of matching a Relation message against the known columns.

    ``renames``: (old name, new name) pairs in an order that can be applied one after the other
    (no new name is the current name of another column at its turn). ``attnums``: the ``attnum``
    of each column of the message, in its order (None: not known for certain). ``ambiguous``:
    why the message could not be matched (then ``renames`` is empty and the caller falls back
    to names).
    """

    renames: tuple[tuple[str, str], ...]
    attnums: tuple[int | None, ...]
    ambiguous: str | None = None


def match_columns(
    known: Sequence[tuple[str, int | None]],
    message: Sequence[tuple[str, int]],
    catalog: dict[int, CatalogColumn] | None,
) -> ColumnMatch:
    """Match the columns of a Relation message with the known ones (see the module docstring).

    Args:
        known: (name, attnum or None) of each known column, in ``attnum`` order.
        message: (name, type OID) of each column of the Relation message, in its order.
        catalog: the table's ``pg_attribute`` rows now, by ``attnum`` (None: the table is gone).
    """
    names = [n for n, _ in message]
    unknown: tuple[int | None, ...] = tuple(None for _ in message)
    if catalog is None:
        return ColumnMatch((), unknown, "the table is no longer in the catalog")
    in_message = set(names)
    # generated columns are never published: they take no position in a message
    candidates = [(n, a) for n, a in known if a is None or not (a in catalog and catalog[a].generated)]
    survivors: list[tuple[str, int | None, bool]] = []  # (old name, attnum, live now)
    after_gone: list[bool] = []  # a column that is dropped now and absent by name came before
    gone = False
    for name, attnum in candidates:
        column = catalog.get(attnum) if attnum is not None else None
        live = column is not None and not column.dropped
        if live or name in in_message:
            survivors.append((name, attnum, live))
            after_gone.append(gone)
        else:
            gone = True
    if len(survivors) > len(message):
        return ColumnMatch((), unknown, f"{len(survivors)} known columns still exist but the message lists {len(message)}")
    # A column dropped now may have been renamed, not dropped, when the message was written: it
    # then holds a position the survivors after it do not know about, unless the message has
    # no room for it (as many columns as survivors).
    exact = len(survivors) == len(message)
    renames: list[tuple[str, str]] = []
    attnums: list[int | None] = []
    for (old, attnum, live), shifted, (new, type_oid) in zip(survivors, after_gone, message):
        if old != new:
            if not live:
                return ColumnMatch((), unknown, f"column {old!r} is dropped now and the message lists {new!r} at its place")
            if shifted and not exact:
                return ColumnMatch((), unknown, f"a column before {old!r} was dropped since, so the place of {old!r} in the message is not certain")
            assert attnum is not None
            if catalog[attnum].type_oid != type_oid:
                return ColumnMatch((), unknown, f"column {old!r} shows as {new!r} but its type changed since")
            renames.append((old, new))
        attnums.append(attnum if live else None)
    ordered = _apply_order(renames, [s[0] for s in survivors])
    if ordered is None:
        return ColumnMatch((), unknown, "columns swapped names (" + ", ".join(f"{a} -> {b}" for a, b in renames) + ")")
    known_max = max((a for _, a in known if a is not None), default=0)
    complete = all(a is not None for _, a in known)
    attnums.extend(_added_attnums(complete, known_max, message[len(survivors):], catalog))
    return ColumnMatch(tuple(ordered), tuple(attnums))


def _apply_order(renames: list[tuple[str, str]], current: list[str]) -> list[tuple[str, str]] | None:
    """``renames`` ordered so that each new name is free at its turn; None for a cycle."""
    pending = list(renames)
    names = set(current)
    ordered: list[tuple[str, str]] = []
    while pending:
        ready = next((r for r in pending if r[1] not in names), None)
        if ready is None:
            return None
        pending.remove(ready)
        names.discard(ready[0])
        names.add(ready[1])
        ordered.append(ready)
    return ordered


def _added_attnums(
    complete: bool, known_max: int, added: Sequence[tuple[str, int]], catalog: dict[int, CatalogColumn]
) -> list[int | None]:
    """The ``attnum`` of each added column, when certain: the catalog's columns above the known
    ones are exactly the added ones (none dropped or renamed since), in order, and every known
    column's ``attnum`` is known (an unknown one may be among them)."""
    newer = [c for a, c in sorted(catalog.items()) if a > known_max]
    certain = (
        complete
        and not any(c.dropped for c in newer)
        and [c.name for c in newer if not c.generated] == [n for n, _ in added]
    )
    if not certain:
        return [None for _ in added]
    return [c.attnum for c in newer if not c.generated]


def renamed_schema(schema: Schema, renames: Sequence[tuple[str, str]]) -> Schema:
    """``schema`` with the renames applied (primary key included), version unchanged."""
    mapping = dict(renames)
    fields = [f if f.name not in mapping else _renamed(f, mapping[f.name]) for f in schema.fields]
    key = tuple(mapping.get(k, k) for k in schema.primary_key)
    return Schema.of(schema.table, fields, key, version=schema.version)


def _renamed(field: Field, name: str) -> Field:
    return replace(field, name=name)


def with_renames(table: TableId, renames: Sequence[tuple[str, str]]) -> list[SchemaChange]:
    """The ``RenameColumn`` changes of ``renames``, in order."""
    return [RenameColumn(table, old, new) for old, new in renames]

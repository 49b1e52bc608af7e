"""Flattening nested values (json columns) into columns of their own.

Per table, ``unnest`` says what becomes of each json column ``doc``:

* ``none`` (default): one json column, as in the source.
* ``top_level``: each top-level key ``k`` becomes a column ``doc.k``; deeper values stay json.
* ``full``: every path down to a scalar becomes a column (``doc.address.city``); lists stay json.

Rules:

* Types are inferred from the values (boolean, int64, float64, string; json for nested values
  kept whole). A key's type only ever widens (``zetl.schema.widening.unify``: int64 -> float64 ->
  string), so it never flips back and forth between batches; values are converted to it.
* New keys are schema changes like any other: they reach the sink as ``add.column`` through
  the planner and the integration's policy.
* The json column ``doc`` itself stays, holding what has no column of its own (NULL when
  everything was flattened), as an object of the remaining keys: a document that is not an object, a key whose
  column name is already taken (by a table column or by another path: the first one seen keeps
  it), and keys beyond ``max_columns``. Each case is logged once as a warning.
* Where the sink already has flattened columns (a restart, ``zetl drift``), they are known keys
  with the sink's types, so inference continues where it stopped.
* Documents are parsed with ``zetl.jsonvalue.parse_json``: numbers stay exact and the last of
  duplicate keys wins. A number is a float64 only when float64 holds it exactly (``1.5``, not
  ``0.1000000000000000055`` or ``1e400``), an integer an int64 only within its range; other
  numbers widen the key to a string holding the number's exact text. A document that is not an
  object (or cannot be parsed: nested too deeply) stays in the json column as the source's text.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, Field as PydField, field_validator

from zetl.events import UNCHANGED
from zetl.jsonvalue import JsonText, as_json_text, dump_json
from zetl.schema.types import DataType, Field, Schema, T, TypeKind
from zetl.schema.widening import type_suffix, unify
from zetl.tables import compile_pattern

__all__ = ["FlattenConfig", "FlattenTableConfig", "Flattener", "TableFlattener", "Unnest", "infer_type"]

Unnest = Literal["none", "top_level", "full"]


class FlattenTableConfig(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    unnest: Unnest = "none"
    """``none``: json columns stay json; ``top_level``: each top-level key a column;
    ``full``: each path down to a scalar a column (lists stay json)."""
    columns: list[str] = PydField(default_factory=list)
    """The json columns to flatten (all json columns of the table when empty)."""


class FlattenConfig(FlattenTableConfig):
    """The ``flatten`` section. Example::

        flatten:
          unnest: none                # default for every table
          separator: "."
          max_columns: 500
          tables:
            shop.events: {unnest: full, columns: [payload]}
    """

    separator: str = PydField(".", min_length=1, max_length=3)
    """Between the column name and the keys of a path (``doc.address.city``)."""
    max_columns: int = PydField(500, ge=1)
    """Most columns a table may have after flattening; further keys stay in the json column."""
    tables: dict[str, FlattenTableConfig] = PydField(default_factory=dict)
    """Table pattern -> settings; the first pattern matching a table applies."""

    @field_validator("tables")
    @classmethod
    def _patterns(cls, value: dict[str, FlattenTableConfig]) -> dict[str, FlattenTableConfig]:
        for pattern in value:
            compile_pattern(pattern)
        return value

    def for_table(self, table: object) -> FlattenTableConfig:
        for pattern, config in self.tables.items():
            if compile_pattern(pattern).matches(table):
                return config
        return FlattenTableConfig(unnest=self.unnest, columns=self.columns)


_STRING = T.string()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INFERRED: dict[type, DataType] = {bool: T.boolean, int: T.int64, float: T.float64, str: _STRING}


def _float_holds(value: Decimal) -> bool:
    """Whether float64 holds the number as written: it is not an integer (those beyond int64
    arrive as ``Decimal`` with exponent 0) and the float's shortest text has the same value."""
    if not value.is_finite() or value.as_tuple().exponent == 0:
        return False
    as_float = float(value)
    return math.isfinite(as_float) and Decimal(repr(as_float)) == value


def infer_type(value: Any) -> DataType | None:
    """The type of one JSON value (None for null: it says nothing): boolean, int64, float64,
    string, or json for objects and lists. A ``Decimal`` (an exact number from ``parse_json``)
    is a float64 when float64 holds it exactly, else a string (its exact text)."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return T.float64 if _float_holds(value) else _STRING
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
        return _STRING
    return _INFERRED.get(type(value), T.json)


def convert(value: Any, dtype: DataType) -> Any:
    """``value`` as a value of the inferred type ``dtype`` (types only widen, so this never
    loses information: ints become floats or text, scalars become text or stay as json)."""
    if value is None:
        return None
    kind = dtype.kind
    if kind is TypeKind.JSON:
        return as_json_text(value)
    if kind is TypeKind.STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            return dump_json(value)
        return str(value)  # numbers: their exact text
    if kind is TypeKind.FLOAT64 and not isinstance(value, bool) and isinstance(value, (int, float, Decimal)):
        return float(value)
    return value


@dataclass
class TableFlattener:
    """Flattening state of one table: the known flattened columns and their types."""

    table: str
    unnest: Unnest
    columns: tuple[str, ...]
    separator: str
    max_columns: int
    logger: logging.Logger
    known: dict[str, dict[str, DataType]] = field(default_factory=dict)  # json column -> name -> type
    _warned: set[str] = field(default_factory=set)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.logger.warning("flatten %s: %s", self.table, message)

    def json_columns(self, schema: Schema) -> list[str]:
        wanted = set(self.columns)
        return [f.name for f in schema.fields if f.type.kind is TypeKind.JSON and (not wanted or f.name in wanted)]

    def seed(self, schema: Schema, sink: Schema | None) -> None:
        """Learn the flattened columns the sink already has (restart, drift)."""
        if sink is None:
            return
        for column in self.json_columns(schema):
            prefix = column + self.separator
            names = {f.name: f.type for f in sink.fields if f.name.startswith(prefix)}
            known = self.known.setdefault(column, {})
            for name, dtype in names.items():
                base, _, suffix = name.rpartition("__")
                if base in names and suffix == type_suffix(dtype):
                    continue  # a column the planner added for an incompatible type change
                known.setdefault(name, dtype)

    def schema(self, schema: Schema) -> Schema:
        """``schema`` with each flattened json column replaced by its known columns (and by
        itself when it keeps a remainder)."""
        if self.unnest == "none":
            return schema
        columns = set(self.json_columns(schema))
        fields: list[Field] = []
        for f in schema.fields:
            if f.name not in columns:
                fields.append(f)
                continue
            known = self.known.get(f.name, {})
            fields.append(f)  # kept: it holds what has no column of its own (NULL otherwise)
            taken = {x.name for x in fields} | set(schema.names)
            fields += [Field(name, dtype, nullable=True, source_type=f"{f.name} json key") for name, dtype in known.items() if name not in taken]
        return Schema(schema.table, tuple(fields), schema.primary_key, schema.version)

    def _paths(self, value: Any, name: str, out: list[tuple[str, Any]]) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                child = f"{name}{self.separator}{k}"
                if self.unnest == "full" and isinstance(v, dict) and v:
                    self._paths(v, child, out)
                else:
                    out.append((child, v))
        else:
            out.append((name, value))

    def observe(self, schema: Schema, rows: Iterable[Mapping[str, Any] | None]) -> tuple[Observed, bool]:
        """Flatten ``rows`` (of the table shaped as ``schema`` before flattening).

        Returns the observed rows (values are converted by ``finish`` once the whole batch is
        observed, because a later row may widen a type) and whether the known columns changed.
        """
        observed = Observed()
        if self.unnest == "none":
            observed.rows = [dict(r) if r is not None else None for r in rows]
            observed.states = [{} for _ in observed.rows]
            return observed, False
        columns = self.json_columns(schema)
        table_columns = set(schema.names)
        changed = False
        for row in rows:
            if row is None:
                observed.rows.append(None)
                observed.states.append({})
                continue
            flat = {k: v for k, v in row.items() if k not in columns}
            states: dict[str, Any] = {}
            for column in columns:
                if column not in row:
                    continue
                document = row[column]
                known = self.known.setdefault(column, {})
                if document is None or document is UNCHANGED:
                    states[column] = document  # the whole column is NULL / unchanged
                    continue
                original = document
                if isinstance(document, JsonText):
                    try:
                        document = document.document()
                    except ValueError as exc:
                        self._warn(f"{column}:parse", f"a value of {column} cannot be flattened ({exc}); it is kept in the json column {column}")
                        flat[column] = original
                        states[column] = "rest"
                        continue
                if not isinstance(document, dict):
                    self._warn(f"{column}:root", f"a value of {column} is not an object; it is kept in the json column {column}")
                    flat[column] = original  # as the source sent it
                    states[column] = "rest"
                    continue
                states[column] = "object"
                pairs: list[tuple[str, Any]] = []
                if document:
                    self._paths(document, column, pairs)
                leftover: dict[str, Any] = {}
                for name, value in pairs:
                    key = name[len(column) + len(self.separator) :]
                    if name in flat or name in table_columns:
                        self._warn(f"{name}:collision", f"key {key!r} of {column} maps to column {name!r}, which is taken; the value stays in {column}")
                        leftover[key] = value
                        continue
                    if name not in known:
                        if value is None:
                            continue  # no type yet: the column is added with its first value
                        if len(table_columns) + sum(len(k) for k in self.known.values()) >= self.max_columns:
                            self._warn(f"{column}:max", f"more than flatten.max_columns={self.max_columns} columns; further keys of {column} stay in {column}")
                            leftover[key] = value
                            continue
                        known[name] = infer_type(value)  # type: ignore[assignment]
                        changed = True
                    else:
                        current = known[name]
                        inferred = infer_type(value)
                        if inferred is not None and inferred is not current and inferred != current:
                            widened = unify(current, inferred)
                            if widened != current:
                                known[name] = widened  # type: ignore[assignment]
                                changed = True
                    flat[name] = value
                if leftover:
                    flat[column] = JsonText(dump_json(leftover))
            observed.rows.append(flat)
            observed.states.append(states)
        return observed, changed

    def finish(self, observed: Observed) -> list[dict[str, Any] | None]:
        """The observed rows with every flattened column present and values converted to the
        final inferred types."""
        out: list[dict[str, Any] | None] = []
        for row, states in zip(observed.rows, observed.states):
            if row is None:
                out.append(None)
                continue
            for column, state in states.items():
                known = self.known.get(column, {})
                fill = state if state is None or state is UNCHANGED else None
                for name, dtype in known.items():
                    row[name] = convert(row[name], dtype) if name in row and state == "object" else fill
                if column not in row:
                    row[column] = fill
            out.append(row)
        return out


@dataclass
class Observed:
    """Rows flattened by ``TableFlattener.observe``, waiting for ``finish``."""

    rows: list[dict[str, Any] | None] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)


class Flattener:
    """The flattening state of every table of an integration."""

    def __init__(self, config: FlattenConfig, logger: logging.Logger | None = None) -> None:
        self.config = config
        self.log = logger or logging.getLogger("zetl.flatten")
        self.tables: dict[Any, TableFlattener] = {}

    def for_table(self, table: Any) -> TableFlattener:
        state = self.tables.get(table)
        if state is None:
            settings = self.config.for_table(table)
            state = TableFlattener(str(table), settings.unnest, tuple(settings.columns), self.config.separator, self.config.max_columns, self.log)
            self.tables[table] = state
        return state

"""The ``filters`` section of an integration: which columns and rows of each table reach the sink.

Example::

    filters:
      salt: ${env:ZETL_MASK_SALT}          # key of the 'hash' mask; never logged
      tables:
        shop.customers:                    # table pattern: name, glob or re:regex
          columns:
            exclude: [internal_notes]      # names or globs; 'include' keeps only those listed
            mask:
              email: hash                  # HMAC-SHA256 (hex) of the value with the salt
              ssn: null                    # replaced by NULL
          rows: "status != 'deleted' and region in ('eu', 'us')"

Table filters are matched in the order written; the first pattern that matches a table applies.
Table selection itself (which tables are read at all) is the top-level ``tables`` section.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator

from zetl.filters.expr import compile_expression
from zetl.tables import compile_pattern

__all__ = ["ColumnFilterConfig", "FiltersConfig", "MaskKind", "TableFilterConfig"]

MaskKind = Literal["hash", "null"]


class _Model(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class ColumnFilterConfig(_Model):
    include: list[str] = Field(default_factory=list)
    """Columns to keep (all when empty): exact names or globs (``addr_*``). Primary-key columns are
    always kept."""
    exclude: list[str] = Field(default_factory=list)
    """Columns to leave out: exact names or globs. A primary-key column cannot be excluded."""
    mask: dict[str, MaskKind] = Field(default_factory=dict)
    """Column -> ``hash`` (HMAC-SHA256 of the value with ``filters.salt``, as 64 hex characters;
    the target column becomes a string) or ``null`` (the value is replaced by NULL)."""

    @field_validator("mask", mode="before")
    @classmethod
    def _null_means_null(cls, value: Any) -> Any:
        # `ssn: null` in YAML arrives as None: it means the 'null' mask.
        if isinstance(value, dict):
            return {k: "null" if v is None else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _masked_columns_are_kept(self) -> ColumnFilterConfig:
        for column in self.mask:
            if any(fnmatch.fnmatchcase(column, p) for p in self.exclude):
                raise ValueError(f"column '{column}' is both excluded and masked; keep one of the two")
        return self

    def keeps(self, column: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(column, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(column, p) for p in self.exclude)


class TableFilterConfig(_Model):
    columns: ColumnFilterConfig = Field(default_factory=ColumnFilterConfig)
    """Which columns reach the sink, and which are masked."""
    rows: str | None = None
    """A row filter: only rows for which it is true reach the sink, e.g.
    ``status != 'deleted' and amount >= 100``. Comparisons, ``and``/``or``/``not``, ``in (...)``,
    ``is [not] null``, ``[not] like '%x_'``, ``+ - * /``, ``lower``, ``upper``, ``length``,
    ``coalesce``. A NULL result excludes the row, as in SQL WHERE. Dates, times and timestamps are
    written as ISO 8601 text (``updated_at >= '2026-01-01'``; a timestamptz literal without an
    offset is UTC) and checked against the column types once the table's schema is known. An
    UPDATE that moves a row out of the filter deletes it in the target; one that moves a row into
    the filter inserts it."""

    @field_validator("rows")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            compile_expression(value)  # ExpressionError is a ValueError: reported with file:line
        return value


class FiltersConfig(_Model):
    """Column and row filters per table."""

    salt: SecretStr | None = None
    """Key of the ``hash`` mask (required when a column is hashed). Keep it secret and stable:
    changing it changes every hashed value. Use ``${env:VAR}`` or ``${file:path}``."""
    tables: dict[str, TableFilterConfig] = Field(default_factory=dict)
    """Table pattern -> filters; the first pattern matching a table applies."""
    _positions: dict[str, tuple[str, int, int]] = PrivateAttr(default_factory=dict)
    """Table pattern -> (file, line, column) of its ``rows`` value, when loaded from a file."""

    @field_validator("tables")
    @classmethod
    def _patterns(cls, value: dict[str, TableFilterConfig]) -> dict[str, TableFilterConfig]:
        for pattern in value:
            compile_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _salt_for_hash(self) -> FiltersConfig:
        hashed = [f"{t}.{c}" for t, f in self.tables.items() for c, kind in f.columns.mask.items() if kind == "hash"]
        if hashed and (self.salt is None or not self.salt.get_secret_value()):
            raise ValueError(f"'salt' is required when a column is masked with 'hash' ({', '.join(hashed)}); e.g. salt: ${{env:ZETL_MASK_SALT}}")
        return self

    def for_table(self, table: object) -> TableFilterConfig | None:
        """The filters of ``table`` (first matching pattern), or None."""
        pattern = self.pattern_for(table)
        return self.tables[pattern] if pattern is not None else None

    def reads(self, table: object, column: str) -> bool:
        """Whether the pipeline needs the values of ``column`` of ``table``: False only for a
        column the table's column filter leaves out and its row filter does not name (the
        ``zetl.plugin.ColumnSelector`` sources follow, so that excluded columns are never
        decoded)."""
        tc = self.for_table(table)
        if tc is None or tc.columns.keeps(column):
            return True
        return tc.rows is not None and column in compile_expression(tc.rows).columns

    def pattern_for(self, table: object) -> str | None:
        """The first pattern of ``tables`` matching ``table``, or None."""
        for pattern in self.tables:
            if compile_pattern(pattern).matches(table):
                return pattern
        return None

    def remember_positions(self, file: str, where: Callable[[tuple[str | int, ...]], tuple[int, int]]) -> None:
        """Keep where each row filter is written (``where(path) -> (line, column)``), so errors
        found once the table's schema is known still point into the file."""
        for pattern, config in self.tables.items():
            if config.rows is not None:
                self._positions[pattern] = (file, *where(("filters", "tables", pattern, "rows")))

    def rows_position(self, pattern: str) -> tuple[str, int, int]:
        """(file, line, column) of the row filter of ``pattern``; ("", 0, 0) when unknown."""
        return self._positions.get(pattern, ("", 0, 0))

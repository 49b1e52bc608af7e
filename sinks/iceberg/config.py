"""The ``sink:`` section of an integration writing to Apache Iceberg."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from zetl.config.types import Duration
from zetl.names import URI_PATH_NAMES, check_template_text
from zetl.sink import SinkConfig
from zetl.tables import compile_pattern

__all__ = ["IcebergConfig", "IcebergTableOptions", "PARTITION_TRANSFORM"]

PARTITION_TRANSFORM = re.compile(r"^\s*(?:(identity|year|month|day|hour|void)\((\w+)\)|(bucket|truncate)\[(\d+)\]\((\w+)\)|(\w+))\s*$")
"""``column`` (identity), ``identity(col)``, ``bucket[N](col)``, ``truncate[W](col)``, ``year|month|day|hour(col)``."""

TABLE_NAME_PLACEHOLDERS = ("schema", "namespace", "table", "integration")


class IcebergTableOptions(BaseModel):
    """Settings for the tables matching one pattern."""

    model_config = {"extra": "forbid", "frozen": True}

    table_name: str | None = None
    """Iceberg table name for these tables (a template like the sink's ``table_name``)."""
    partition_by: list[str] = Field(default_factory=list)
    """Partition fields: ``col``, ``identity(col)``, ``bucket[16](col)``, ``truncate[4](col)``,
    ``year(col)``, ``month(col)``, ``day(col)``, ``hour(col)``. Used when the table is created."""
    properties: dict[str, str] = Field(default_factory=dict)
    """Iceberg table properties for these tables (added to the sink's ``properties``)."""

    @field_validator("partition_by")
    @classmethod
    def _transforms(cls, value: list[str]) -> list[str]:
        for spec in value:
            if not PARTITION_TRANSFORM.match(spec):
                raise ValueError(
                    f"partition field {spec!r} is not understood; write col, identity(col), bucket[N](col), "
                    "truncate[W](col), year(col), month(col), day(col) or hour(col)"
                )
        return value


def _check_template(value: str) -> str:
    names = re.findall(r"{([^{}]*)}", value)
    unknown = [n for n in names if n not in TABLE_NAME_PLACEHOLDERS]
    if unknown:
        raise ValueError(f"unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; use {', '.join('{' + p + '}' for p in TABLE_NAME_PLACEHOLDERS)}")
    return check_template_text(value, URI_PATH_NAMES)


class IcebergConfig(SinkConfig):
    """Writes every replicated table to an Iceberg table, exactly once."""

    catalog: dict[str, Any] = Field(default_factory=dict)
    """pyiceberg catalog properties, passed as they are to ``load_catalog`` (``type: sql`` with
    ``uri``/``warehouse``, ``type: rest`` with ``uri``, ``type: glue``, ...). Empty: an embedded SQL
    catalog in SQLite with a local warehouse under the integration's state directory. Values are
    never logged (they may hold credentials)."""
    catalog_name: str = "zetl"
    """Name given to the catalog (some catalogs, e.g. REST, use it)."""
    namespace: str = "zetl"
    """Iceberg namespace the tables are created in (dots make nested namespaces)."""
    table_name: str = "{schema}_{table}"
    """Iceberg table name template. Placeholders: ``{schema}`` (the source schema or database;
    ``{namespace}`` is the same), ``{table}`` (the source table), ``{integration}``. Underscores
    left at either end by an empty placeholder are removed."""
    mode: Literal["current", "changelog"] = "current"
    """``current``: each table equals the source's current state (primary key = Iceberg identifier
    fields). ``changelog``: every change is appended with ``_op``, ``_position`` and ``_commit_ts``
    (every version kept)."""
    commit_interval: Duration = 5.0
    """Shortest time between two commits (one Iceberg snapshot per table per commit): changes
    arriving after a quiet period are committed at once, a busy stream once per interval.
    Shorter means fresher tables under load and more, smaller files."""
    max_buffered_rows: int = Field(200_000, ge=1)
    """Commit earlier when this many changes wait (bounds memory)."""
    partition_by: list[str] = Field(default_factory=list)
    """Partition fields for every new table (see ``tables`` for per-table settings)."""
    properties: dict[str, str] = Field(default_factory=dict)
    """Iceberg table properties for every new table (e.g. ``write.parquet.compression-codec: zstd``)."""
    tables: dict[str, IcebergTableOptions] = Field(default_factory=dict)
    """Per-table settings: source table pattern (``shop.orders``, ``shop.*``) -> options; the first
    matching pattern wins."""

    @field_validator("table_name")
    @classmethod
    def _template(cls, value: str) -> str:
        return _check_template(value)

    @field_validator("tables")
    @classmethod
    def _patterns(cls, value: dict[str, IcebergTableOptions]) -> dict[str, IcebergTableOptions]:
        for pattern, options in value.items():
            compile_pattern(pattern)
            if options.table_name:
                _check_template(options.table_name)
        return value

    @field_validator("partition_by")
    @classmethod
    def _partitions(cls, value: list[str]) -> list[str]:
        return IcebergTableOptions._transforms(value)  # type: ignore[operator]

    def options_for(self, table: object) -> IcebergTableOptions:
        """The per-table options of ``table`` merged over the sink-wide ones."""
        for pattern, options in self.tables.items():
            if compile_pattern(pattern).matches(table):
                return IcebergTableOptions(
                    table_name=options.table_name or self.table_name,
                    partition_by=options.partition_by or self.partition_by,
                    properties={**self.properties, **options.properties},
                )
        return IcebergTableOptions(table_name=self.table_name, partition_by=self.partition_by, properties=dict(self.properties))

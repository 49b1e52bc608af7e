"""The Redshift sink against a Redshift-compatible target: private Postgres 15 behind the
wire-protocol proxy with the SQL shim (see tests/redshift_target/README.md), S3 staging on moto."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from decimal import Decimal
from typing import Any, Callable

import pytest
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget

from zetl.errors import SchemaError, SinkError
from zetl.events import UNCHANGED, Batch, ChangeEvent, SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, RenameColumn
from zetl.schema.types import Field, Schema, T
from zetl.testing.conformance import SinkConformance
from zetl_sinks.redshift import RedshiftConfig, RedshiftSink

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _pos(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


def make_factory(target: RedshiftTarget, integration: str = "it", **overrides: Any) -> Callable[[], RedshiftSink]:
    def factory() -> RedshiftSink:
        config = RedshiftConfig.model_validate(target.sink_config(**overrides))
        return RedshiftSink(config, PluginContext(integration=integration))

    return factory


def make_reader(target: RedshiftTarget, schema: str = "public") -> Callable[[TableId], list[dict[str, Any]]]:
    """Rows of a table read straight from Postgres, keyed by source column names."""

    def read(table: TableId) -> list[dict[str, Any]]:
        meta = target.query(f'SELECT layout FROM "{schema}"._zetl_tables WHERE target_table = %s', (table.name.lower(),))
        names = {c["target"]: c["source"] for c in json.loads(meta[0]["layout"])["columns"]} if meta else {}
        rows = target.query(f'SELECT * FROM "{schema}"."{table.name.lower()}"')
        return [{names.get(k, k): v for k, v in r.items()} for r in rows]

    return read


class TestRedshiftConformance(SinkConformance):
    @pytest.fixture
    def sink_factory(self, redshift_target: RedshiftTarget) -> Callable[[], RedshiftSink]:
        return make_factory(redshift_target)

    @pytest.fixture
    def read_rows(self, redshift_target: RedshiftTarget) -> Callable[[TableId], list[dict[str, Any]]]:
        return make_reader(redshift_target)


class TestRedshiftConformanceS3Copy(SinkConformance):
    """The same suite with every batch staged in S3 and loaded with (emulated) COPY."""

    @pytest.fixture
    def sink_factory(self, redshift_target: RedshiftTarget) -> Callable[[], RedshiftSink]:
        return make_factory(redshift_target, load="s3_copy")

    @pytest.fixture
    def read_rows(self, redshift_target: RedshiftTarget) -> Callable[[TableId], list[dict[str, Any]]]:
        return make_reader(redshift_target)

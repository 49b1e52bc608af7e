"""The Redshift sink against a real Redshift cluster or Serverless workgroup.

Runs only when ``ZETL_TEST_REDSHIFT_HOST``, ``ZETL_TEST_REDSHIFT_USER`` and
``ZETL_TEST_REDSHIFT_PASSWORD`` are set (optionally ``ZETL_TEST_REDSHIFT_DATABASE``, default
``dev``, and ``ZETL_TEST_REDSHIFT_PORT``, default 5439). Each test writes into its own schema,
dropped afterwards. Without them the tests are skipped with that reason: the Redshift-compatible
target in tests/integration/test_redshift_sink.py covers the same behaviour on every run.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Iterator

import pytest

from zetl.events import Batch, ChangeEvent, SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import CreateTable
from zetl.schema.types import Field, Schema, T
from zetl.testing.conformance import SinkConformance
from zetl_sinks.redshift import RedshiftConfig, RedshiftSink

REQUIRED = ("ZETL_TEST_REDSHIFT_HOST", "ZETL_TEST_REDSHIFT_USER", "ZETL_TEST_REDSHIFT_PASSWORD")
MISSING = [v for v in REQUIRED if not os.environ.get(v)]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(MISSING), reason=f"no real Redshift configured: set {', '.join(REQUIRED)} to run these tests"),
]


def _connection_options() -> dict[str, Any]:
    return {
        "host": os.environ.get("ZETL_TEST_REDSHIFT_HOST"),
        "port": int(os.environ.get("ZETL_TEST_REDSHIFT_PORT", "5439")),
        "database": os.environ.get("ZETL_TEST_REDSHIFT_DATABASE", "dev"),
        "user": os.environ.get("ZETL_TEST_REDSHIFT_USER"),
        "password": os.environ.get("ZETL_TEST_REDSHIFT_PASSWORD"),
    }


@pytest.fixture
def real_schema() -> Iterator[str]:
    import redshift_connector

    schema = f"zetl_test_{uuid.uuid4().hex[:10]}"
    yield schema
    options = _connection_options()
    conn = redshift_connector.connect(**options)
    conn.autocommit = True
    conn.cursor().execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    conn.close()


def _read(schema: str) -> Callable[[TableId], list[dict[str, Any]]]:
    import redshift_connector

    def read(table: TableId) -> list[dict[str, Any]]:
        conn = redshift_connector.connect(**_connection_options())
        try:
            cur = conn.cursor()
            cur.execute(f'SELECT * FROM "{schema}"."{table.name.lower()}"')
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()

    return read


class TestRealRedshiftConformance(SinkConformance):
    @pytest.fixture
    def sink_factory(self, real_schema: str) -> Callable[[], RedshiftSink]:
        return lambda: RedshiftSink(RedshiftConfig.model_validate({**_connection_options(), "schema": real_schema}), PluginContext(integration="it"))

    @pytest.fixture
    def read_rows(self, real_schema: str) -> Callable[[TableId], list[dict[str, Any]]]:
        return _read(real_schema)


def test_super_column_is_queryable_with_partiql(real_schema: str) -> None:
    import redshift_connector

    t = TableId("shop", "docs")
    schema = Schema.of(t, [Field("id", T.int64), Field("doc", T.json)], ["id"])
    sink = RedshiftSink(RedshiftConfig.model_validate({**_connection_options(), "schema": real_schema}), PluginContext(integration="it"))
    with sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "doc": {"customer": {"name": "ann"}}}, SequencePosition("stream", 1)),), end_position=SequencePosition("stream", 1)))
    conn = redshift_connector.connect(**_connection_options())
    try:
        cur = conn.cursor()
        cur.execute(f'SELECT d.doc.customer.name::varchar FROM "{real_schema}"."docs" AS d')
        assert cur.fetchall()[0][0] == "ann"
    finally:
        conn.close()

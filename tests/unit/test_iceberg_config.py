"""The Iceberg sink's YAML section: defaults, per-table options, and clear refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from zetl.events import TableId
from zetl.plugin import PluginContext
from zetl_sinks.iceberg import IcebergConfig, IcebergSink


def test_defaults_and_table_names() -> None:
    config = IcebergConfig()
    assert (config.mode, config.commit_interval, config.namespace, config.table_name) == ("current", 5.0, "zetl", "{schema}_{table}")
    sink = IcebergSink(config, PluginContext(integration="shop"))
    assert sink.table_identifier(TableId("public", "orders")) == ("zetl", "public_orders")
    assert sink.table_identifier(TableId("", "orders")) == ("zetl", "orders"), "no dangling underscore without a schema"
    custom = IcebergSink(IcebergConfig(namespace="lake.raw", table_name="{integration}__{table}", commit_interval="250ms"), PluginContext(integration="shop"))
    assert custom.table_identifier(TableId("public", "orders")) == ("lake", "raw", "shop__orders")
    assert custom.config.commit_interval == 0.25


def test_per_table_options_merge_over_the_sink_wide_ones() -> None:
    config = IcebergConfig(
        partition_by=["day(created_at)"],
        properties={"write.parquet.compression-codec": "zstd"},
        tables={"shop.orders": {"partition_by": ["bucket[8](id)"], "properties": {"commit.retry.num-retries": "10"}, "table_name": "orders"}},
    )
    orders = config.options_for(TableId("shop", "orders"))
    assert orders.partition_by == ["bucket[8](id)"] and orders.table_name == "orders"
    assert orders.properties == {"write.parquet.compression-codec": "zstd", "commit.retry.num-retries": "10"}
    other = config.options_for(TableId("shop", "items"))
    assert other.partition_by == ["day(created_at)"] and other.table_name == "{schema}_{table}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"table_name": "{db}_{table}"}, "unknown placeholder(s) {db}"),
        ({"partition_by": ["weekly(ts)"]}, "partition field 'weekly(ts)' is not understood"),
        ({"mode": "upsert"}, "'current' or 'changelog'"),
        ({"commit_intervall": "1s"}, "Extra inputs are not permitted"),
        ({"tables": {"re:[": {}}}, ""),
    ],
)
def test_wrong_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises((ValidationError, ValueError)) as info:
        IcebergConfig(**options)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_importing_the_sink_does_not_import_pyiceberg() -> None:
    import subprocess

    code = "import sys, zetl_sinks.iceberg; print(any(m.startswith('pyiceberg') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_inspection_before_the_first_run_creates_no_files(tmp_path: Path) -> None:
    # zetl drift opens sinks read-only: with the embedded catalog not created yet it sees an empty
    # target and leaves no catalog or warehouse behind
    sink = IcebergSink(IcebergConfig(), PluginContext(integration="ro", state_dir=tmp_path, read_only=True))
    sink.open()
    try:
        assert sink.current_schema(TableId("public", "items")) is None
        assert sink.stored_position() is None
    finally:
        sink.close()
    assert list(tmp_path.iterdir()) == []

"""Redshift sink, no server: type mapping, identifiers, generated SQL (golden), batch planning, config, errors."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from golden_util import GOLDEN, Case, check, params
from pydantic import ValidationError

from zetl.errors import SinkConnectionError, SinkError
from zetl.events import UNCHANGED, ChangeEvent, SequencePosition, TableId
from zetl.schema.types import DataType, Field, Schema, T, TypeKind
from zetl_sinks.redshift import RedshiftConfig, TableOptions
from zetl_sinks.redshift import sql
from zetl_sinks.redshift.errors import map_driver_error, map_s3_error
from zetl_sinks.redshift.identifiers import IdentifierRules, quote, quote_literal
from zetl_sinks.redshift.layout import ColumnLayout, TableLayout
from zetl_sinks.redshift.plan import plan_table
from zetl_sinks.redshift.typemap import TYPE_MAP, canonical_type, redshift_type


@params("redshift/typemap.txt", 2)
def test_type_mapping(case: Case) -> None:
    check(case, redshift_type(DataType.parse(case.inputs[0])))


def test_every_parameterless_kind_is_mapped() -> None:
    assert set(TYPE_MAP) == set(TypeKind) - {TypeKind.DECIMAL, TypeKind.STRING}


def test_catalog_types_map_back() -> None:
    assert canonical_type("character varying", 256) == T.string()
    assert canonical_type("numeric", None, 12, 2) == T.decimal(12, 2)
    assert canonical_type("super") == T.json and canonical_type("double precision") == T.float64
    with pytest.raises(ValueError, match="geometry"):
        canonical_type("geometry")


@params("redshift/identifiers.txt", 3)
def test_identifier_rules(case: Case) -> None:
    rules = IdentifierRules(case_sensitive=case.inputs[1] == "yes")
    name = rules.name(case.inputs[0])
    assert len(name.encode()) <= 127
    check(case, name)


def test_shortening_is_deterministic_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    long = "ü" * 100
    assert IdentifierRules().name(long) == IdentifierRules().name(long)
    assert IdentifierRules().name(long) != IdentifierRules().name(long + "x")
    rules = IdentifierRules(max_bytes=63)
    with caplog.at_level("WARNING"):
        short = rules.name(long)
        rules.name(long)
    assert len(short.encode()) <= 63
    assert len([r for r in caplog.records if "63-byte limit" in r.getMessage()]) == 1


def test_quoting() -> None:
    assert quote('a"b') == '"a""b"'
    assert quote_literal("s3://bucket/key") == "'s3://bucket/key'"
    for bad in ("it's", "back\\slash", "new\nline"):
        with pytest.raises(ValueError):
            quote_literal(bad)


ORDERS = TableId("shop", "Orders")


def _layout(history: bool = False) -> TableLayout:
    schema = Schema.of(
        ORDERS,
        [
            Field("id", T.int64),
            Field("Line", T.int32),
            Field("note", T.string(40)),
            Field("doc", T.json),
            Field("blob", T.binary),
            Field('we"ird; name', T.decimal(12, 2)),
        ],
        ["id", "Line"],
    )
    return TableLayout.build(schema, "analytics", "orders", IdentifierRules(), history)


def _statements() -> dict[str, str]:
    layout = _layout()
    history = _layout(history=True)
    stage = sql.StageLayout("zetl_stage_1", layout, (2,))
    hstage = sql.StageLayout("zetl_stage_2", history, (3,))
    return {
        "create_table": sql.create_table(layout),
        "create_table_physical": sql.create_table(layout, TableOptions(distkey="id", sortkey=["id", "Line"])),
        "create_table_even": sql.create_table(layout, TableOptions(diststyle="even")),
        "create_table_history": sql.create_table(history),
        "create_checkpoints": sql.create_checkpoint_table("analytics"),
        "create_metadata": sql.create_metadata_table("analytics"),
        "add_column": sql.add_column(layout, layout.columns[3]),
        "alter_varchar": sql.alter_varchar(layout, layout.columns[2]),
        "swap_copy_column": sql.copy_column(layout, "line", ColumnLayout("Line", "zetl_swap_line", T.int64, True, True)),
        "create_stage": sql.create_stage(stage),
        "insert_into_stage": sql.insert_into_stage(stage, 2),
        "copy_into_stage": sql.copy_into_stage(stage, "s3://bucket/zetl/it/b1/manifest.json", "s3://bucket/zetl/it/b1/jsonpaths.json", "arn:aws:iam::123456789012:role/copy", "eu-west-1"),
        "copy_into_stage_default_role": sql.copy_into_stage(stage, "s3://bucket/m", "s3://bucket/j", "default", None),
        "fill_unchanged": sql.fill_unchanged(stage, 2),
        "delete_matching": sql.delete_matching(stage),
        "merge": sql.merge(stage),
        "delete_all": sql.delete_all(layout),
        "history_fill_unchanged": sql.fill_unchanged(hstage, 3),
        "history_close_versions": sql.close_versions(hstage),
        "history_insert_versions": sql.insert_versions(hstage),
        "history_close_all": sql.close_all_versions(history),
        "checkpoint_add_epoch": sql.add_checkpoint_epoch("analytics"),
        "checkpoint_fence": sql.fence_checkpoint("analytics"),
        "checkpoint_update": sql.update_checkpoint("analytics"),
        "checkpoint_insert": sql.insert_checkpoint("analytics"),
    }


def test_generated_sql_matches_golden_file() -> None:
    path = GOLDEN / "redshift" / "statements.sql"
    actual = "".join(f"-- {name}\n{statement};\n\n" for name, statement in _statements().items())
    if os.environ.get("ZETL_UPDATE_GOLDEN") == "1":
        path.write_text(actual)
    assert actual == path.read_text(), f"generated SQL differs from {path}; review with ZETL_UPDATE_GOLDEN=1 and git diff"


# -- batch planning --------------------------------------------------------------------------

T1 = TableId("s", "t")


def _simple_layout(history: bool = False, pk: tuple[str, ...] = ("id",)) -> TableLayout:
    schema = Schema.of(T1, [Field("id", T.int64), Field("a", T.string()), Field("b", T.string())], pk)
    return TableLayout.build(schema, "public", "t", IdentifierRules(), history)


def _p(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_plan_keeps_the_last_change_per_key_and_resolves_unchanged() -> None:
    events = [
        ChangeEvent.insert(T1, {"id": 1, "a": "x", "b": "y"}, _p(1)),
        ChangeEvent.update(T1, {"id": 1}, {"id": 1, "a": UNCHANGED, "b": "y2"}, _p(2)),
        ChangeEvent.update(T1, {"id": 2}, {"id": 2, "a": UNCHANGED, "b": "z"}, _p(3)),
        ChangeEvent.delete(T1, {"id": 3}, _p(4)),
    ]
    [segment] = plan_table(_simple_layout(), events, NOW)
    rows = {r.values[0]: (r.op, r.values, r.keep) for r in segment.rows}
    assert rows == {1: ("u", [1, "x", "y2"], set()), 2: ("u", [2, None, "z"], {1}), 3: ("d", [3, None, None], set())}
    assert segment.keep_columns == (1,) and not segment.truncate


def test_plan_truncate_drops_earlier_rows_unless_history() -> None:
    events = [ChangeEvent.insert(T1, {"id": 1, "a": "x", "b": "y"}, _p(1)), ChangeEvent.truncate(T1, _p(2)), ChangeEvent.insert(T1, {"id": 2, "a": "x", "b": "y"}, _p(3))]
    plain = plan_table(_simple_layout(), events, NOW)
    assert [(s.truncate, [r.values[0] for r in s.rows]) for s in plain] == [(True, [2])]
    history = plan_table(_simple_layout(history=True), events, NOW)
    assert [(s.truncate, [r.values[0] for r in s.rows]) for s in history] == [(False, [1]), (True, [2])]


def test_plan_history_versions_chain_their_validity() -> None:
    t = [NOW + dt.timedelta(seconds=i) for i in range(5)]
    events = [
        ChangeEvent.update(T1, {"id": 1}, {"id": 1, "a": "1", "b": "1"}, _p(1), commit_ts=t[1]),
        ChangeEvent.update(T1, {"id": 1}, {"id": 1, "a": "2", "b": "2"}, _p(2), commit_ts=t[2]),
        ChangeEvent.delete(T1, {"id": 1}, _p(3), commit_ts=t[3]),
    ]
    [segment] = plan_table(_simple_layout(history=True), events, NOW)
    assert [(r.op, r.valid_from, r.valid_to, r.first) for r in segment.rows] == [
        ("u", t[1], t[2], True), ("u", t[2], t[3], False), ("d", t[3], t[3], False)
    ]


def test_plan_without_primary_key_refuses_deletes() -> None:
    with pytest.raises(SinkError, match="no primary key"):
        plan_table(_simple_layout(pk=()), [ChangeEvent.delete(T1, {"id": 1, "a": "x", "b": "y"}, _p(1))], NOW)


# -- configuration ----------------------------------------------------------------------------

BASE = {"host": "cluster.example.com", "user": "zetl", "password": "s3cret-pass"}


def test_config_defaults_and_aliases() -> None:
    config = RedshiftConfig.model_validate({**BASE, "schema": "analytics"})
    assert config.target_schema == "analytics" and config.port == 5439 and config.load == "insert" and config.ssl
    assert "s3cret-pass" not in repr(config)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"load": "s3_copy"}, "needs an 's3' section"),
        ({"password": None}, "missing password"),
        ({"table_name": "{schema}_{name}"}, "table_name may use only"),
        ({"tables": {"a.b": {"diststyle": "even", "distkey": "id"}}}, "diststyle must be 'key'"),
        ({"load": "auto", "s3": {"bucket": "my-bucket", "prefix": "it's/"}}, "must not contain quotes"),
        ({"s3": {"bucket": "Bad_Bucket"}}, "should match pattern"),
        ({"max_identifier_bytes": 200}, "less than or equal to 127"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RedshiftConfig.model_validate({**BASE, **options})


def test_iam_config_needs_no_password() -> None:
    config = RedshiftConfig.model_validate({"iam": True, "cluster_identifier": "prod", "user": "zetl", "region": "eu-west-1"})
    assert config.iam and config.password is None
    with pytest.raises(ValidationError, match="cluster_identifier, serverless_workgroup or host"):
        RedshiftConfig.model_validate({"iam": True})


# -- errors -------------------------------------------------------------------------------------


def _driver_error(code: str, message: str, detail: str | None = None) -> Exception:
    import redshift_connector

    fields = {"S": "ERROR", "C": code, "M": message}
    if detail:
        fields["D"] = detail
    return redshift_connector.ProgrammingError(fields)


def test_driver_errors_are_classified() -> None:
    import redshift_connector

    conflict = map_driver_error(_driver_error("XX000", "1023", "Serializable isolation violation on table - 123"), action="writing a batch", table="shop.orders")
    assert conflict.retryable and "zetl retries" in conflict.message and "Serializable isolation violation" in conflict.message
    serial = map_driver_error(_driver_error("40001", "could not serialize access"), action="writing a batch", table="shop.orders")
    assert serial.retryable and "shop.orders" in serial.message
    value = map_driver_error(_driver_error("22001", "value too long for type character varying(8)"), action="writing a batch", table="shop.orders")
    assert not value.retryable and "SQLSTATE 22001" in value.message and "shop.orders" in value.message
    lost = map_driver_error(redshift_connector.InterfaceError("BrokenPipe: server socket closed"), action="writing a batch")
    assert isinstance(lost, SinkConnectionError) and lost.retryable
    denied = map_driver_error(_driver_error("42501", "permission denied for schema analytics"), action="creating a table")
    assert not denied.retryable and "grant" in denied.message


def test_serializable_violation_detail_is_retryable() -> None:
    err = map_driver_error(_driver_error("XX000", "Serializable isolation violation on table - 10, transactions forming the cycle are: 1, 2"), action="writing a batch")
    assert err.retryable


def test_s3_errors_are_classified() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    down = map_s3_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), action="uploading", bucket="b")
    assert isinstance(down, SinkConnectionError)
    denied = map_s3_error(ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject"), action="uploading", bucket="b")
    assert not denied.retryable and "bucket policy" in denied.message


def test_importing_the_plugin_does_not_import_drivers() -> None:
    code = "import sys, zetl_sinks.redshift; print('redshift_connector' in sys.modules, 'boto3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]

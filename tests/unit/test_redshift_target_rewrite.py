"""The test target's statement rewriting (tests/redshift_target/rewrite.py): Redshift SQL in, Postgres SQL out."""

from __future__ import annotations

import gzip
import json

from redshift_target.rewrite import rewrite


def test_physical_design_clauses_are_stripped_outside_quotes() -> None:
    sql = (
        'CREATE TABLE "s"."t" ("id" BIGINT NOT NULL ENCODE az64, "DISTKEY" VARCHAR(10) ENCODE zstd, "b" VARBYTE(100), '
        'PRIMARY KEY ("id")) DISTSTYLE KEY DISTKEY ("id") COMPOUND SORTKEY ("id", "DISTKEY") BACKUP NO'
    )
    assert rewrite(sql) == 'CREATE TABLE "s"."t" ("id" BIGINT NOT NULL , "DISTKEY" VARCHAR(10) , "b" BYTEA, PRIMARY KEY ("id"))    '
    assert rewrite("CREATE TABLE t (a int SORTKEY, b int DISTKEY) SORTKEY AUTO") == "CREATE TABLE t (a int , b int ) "
    assert rewrite("SELECT 'DISTKEY (x)' AS \"SORTKEY\"") == "SELECT 'DISTKEY (x)' AS \"SORTKEY\""


def test_case_sensitivity_setting_is_mapped() -> None:
    assert rewrite("SET enable_case_sensitive_identifier TO true") == "SET zetl_shim.enable_case_sensitive_identifier TO true"


def _s3(objects: dict[str, bytes]):  # type: ignore[no-untyped-def]
    def read(bucket: str, key: str) -> bytes:
        return objects[f"{bucket}/{key}"]

    return read


def test_copy_from_s3_becomes_an_insert_of_the_staged_rows() -> None:
    objects = {
        "b/m.json": json.dumps({"entries": [{"url": "s3://b/p0.gz", "mandatory": True}, {"url": "s3://b/gone.gz", "mandatory": False}]}).encode(),
        "b/jp.json": json.dumps({"jsonpaths": ["$.c0", "$['c1']"]}).encode(),
        "b/p0.gz": gzip.compress(b'{"c0": 1, "c1": {"a": "$x$"}}\n{"c0": 2, "c1": null}\n'),
    }
    sql = "COPY \"stage\" (\"c0\", \"c1\") FROM 's3://b/m.json' IAM_ROLE 'arn:x' FORMAT AS JSON 's3://b/jp.json' MANIFEST GZIP TIMEFORMAT 'auto'"
    out = rewrite(sql, _s3(objects))
    assert out.startswith('INSERT INTO "stage" ("c0", "c1") SELECT "c0", "c1" FROM jsonb_populate_recordset(NULL::"stage", $zetl')
    payload = out.split("$", 2)[2].rsplit("$zetl", 1)[0]
    assert json.loads(payload) == [{"c0": 1, "c1": {"a": "$x$"}}, {"c0": 2, "c1": None}]


def test_copy_failures_fail_the_statement() -> None:
    objects = {
        "b/m.json": json.dumps({"entries": [{"url": "s3://b/missing.gz", "mandatory": True}]}).encode(),
        "b/jp.json": json.dumps({"jsonpaths": ["$.c0"]}).encode(),
    }
    sql = "COPY \"stage\" (\"c0\") FROM 's3://b/m.json' IAM_ROLE default FORMAT AS JSON 's3://b/jp.json' MANIFEST"
    out = rewrite(sql, _s3(objects))
    assert out.startswith("SELECT zetl_shim.fail(") and "mandatory manifest entry s3://b/missing.gz" in out
    assert "no S3 endpoint" in rewrite(sql, None)

"""The ``sink:`` section of an integration that writes to Amazon Redshift."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from zetl.names import check_template_text
from zetl.sink import SinkConfig

__all__ = ["RedshiftConfig", "S3StagingConfig", "TableOptions"]


class _Section(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class TableOptions(_Section):
    """Physical design of one target table (used when zetl creates it)."""

    distkey: str | None = None
    """Source column whose values distribute rows (implies ``diststyle: key``)."""
    sortkey: list[str] = Field(default_factory=list)
    """Source columns of the compound sort key, in order."""
    diststyle: Literal["auto", "even", "key", "all"] | None = None
    """Distribution style; default AUTO (KEY when ``distkey`` is set)."""

    @model_validator(mode="after")
    def _consistent(self) -> TableOptions:
        if self.distkey is not None and self.diststyle not in (None, "key"):
            raise ValueError(f"distkey is set, so diststyle must be 'key' (or left out), not {self.diststyle!r}")
        if self.diststyle == "key" and self.distkey is None:
            raise ValueError("diststyle 'key' needs a distkey column")
        return self


_SAFE_TEXT = re.compile(r"^[^'\\\x00-\x1f]*$")


class S3StagingConfig(_Section):
    """Where ``s3_copy`` stages batches before ``COPY``."""

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    """S3 bucket (in the cluster's region)."""
    prefix: str = "zetl/"
    """Key prefix; each batch goes under ``<prefix><integration>/<batch id>/`` and is deleted after the commit."""
    iam_role: str = "default"
    """IAM role ARN Redshift assumes to read the bucket (``default``: the cluster's default role)."""
    region: str | None = None
    """Bucket region when it differs from the cluster's."""
    endpoint_url: str | None = None
    """S3 endpoint for zetl's uploads (S3-compatible stores, tests); Redshift reads from AWS S3."""
    access_key_id: str | None = None
    """AWS access key for uploads (default: boto3's credential chain: env, profile, instance role)."""
    secret_access_key: SecretStr | None = None
    """Secret for ``access_key_id``."""

    @field_validator("prefix", "iam_role", "region")
    @classmethod
    def _no_quotes(cls, value: str | None) -> str | None:
        # These go into COPY as literals (COPY takes no parameters): refuse anything needing escapes.
        if value is not None and not _SAFE_TEXT.match(value):
            raise ValueError("must not contain quotes, backslashes or control characters")
        return value


class RedshiftConfig(SinkConfig):
    """Amazon Redshift (provisioned or Serverless) through ``redshift-connector``."""

    host: str | None = None
    """Cluster or workgroup endpoint host (not needed with ``iam`` and a cluster identifier/workgroup)."""
    port: int = Field(5439, ge=1, le=65535)
    """Port (Redshift's default is 5439)."""
    database: str = "dev"
    """Database to write into."""
    user: str | None = None
    """Database user (with ``iam``: the database user to get temporary credentials for)."""
    password: SecretStr | None = None
    """Password; use ``${env:REDSHIFT_PASSWORD}`` rather than writing it in the file."""
    ssl: bool = True
    """Use TLS (Redshift requires it unless the cluster allows plain connections)."""
    sslmode: Literal["verify-ca", "verify-full"] = "verify-full"
    """Certificate check with ``ssl``."""
    iam: bool = False
    """Authenticate with IAM (temporary credentials) instead of a password."""
    cluster_identifier: str | None = None
    """Provisioned cluster name for IAM authentication."""
    serverless_workgroup: str | None = None
    """Redshift Serverless workgroup for IAM authentication."""
    region: str | None = None
    """AWS region of the cluster or workgroup (IAM authentication)."""
    profile: str | None = None
    """AWS profile for IAM authentication (default: boto3's credential chain)."""
    aws_endpoint_url: str | None = None
    """Redshift (or Redshift Serverless) API endpoint for IAM authentication, e.g. a VPC endpoint (default: the region's)."""
    target_schema: str = Field("public", alias="schema")
    """Target schema; created if missing. Tables land as ``<schema>.<table_name>``."""
    table_name: str = "{name}"
    """Target table name template: ``{name}`` (source table) and ``{namespace}`` (source schema or database)."""
    case_sensitive_identifiers: bool = False
    """Keep the case of names (sets ``enable_case_sensitive_identifier``); otherwise ASCII letters fold to lowercase."""
    max_identifier_bytes: int = Field(127, ge=16, le=127)
    """Longest identifier in bytes; longer names are shortened deterministically (Redshift: 127)."""
    tables: dict[str, TableOptions] = Field(default_factory=dict)
    """Per source table (``schema.table``): ``distkey``, ``sortkey``, ``diststyle``."""
    load: Literal["insert", "s3_copy", "auto"] = "insert"
    """How batches reach the staging table: multi-row INSERT, S3 + COPY, or ``auto`` (COPY from ``copy_min_rows`` rows)."""
    copy_min_rows: int = Field(5000, ge=1)
    """With ``load: auto``, batches of at least this many rows go through S3 and COPY."""
    s3: S3StagingConfig | None = None
    """S3 staging for ``s3_copy`` / ``auto``."""
    history_mode: bool = False
    """Keep every row version with ``_op``, ``_position``, ``_valid_from``, ``_valid_to`` (current rows: ``_valid_to IS NULL``)."""
    oversize_strings: Literal["fail", "truncate"] = "fail"
    """A string over 65535 bytes: fail the batch naming table and column, or truncate it with a warning."""
    insert_rows_per_statement: int = Field(500, ge=1, le=10000)
    """Rows per multi-row INSERT into the staging table (``load: insert``)."""
    connect_timeout: int = Field(30, ge=1)
    """Seconds to wait for a connection (statements themselves have no client-side limit)."""

    model_config = {"extra": "forbid", "frozen": True, "populate_by_name": True}

    @field_validator("table_name")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(name="t", namespace="n")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"table_name may use only {{name}} and {{namespace}}: {exc}") from None
        return check_template_text(value)

    @model_validator(mode="after")
    def _consistent(self) -> RedshiftConfig:
        if self.load in ("s3_copy", "auto") and self.s3 is None:
            raise ValueError(f"load '{self.load}' needs an 's3' section (bucket, prefix, iam_role)")
        if self.iam:
            if not (self.cluster_identifier or self.serverless_workgroup or self.host):
                raise ValueError("iam: true needs cluster_identifier, serverless_workgroup or host")
        else:
            missing = [k for k in ("host", "user", "password") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"missing {', '.join(missing)} (or set iam: true for IAM authentication)")
        return self

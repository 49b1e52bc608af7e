"""The ``source:`` section of a Postgres integration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from zetl.config.types import Duration
from zetl.source import SourceConfig

__all__ = ["PostgresConfig", "default_slot_name"]


def default_slot_name(integration: str) -> str:
    """``zetl_`` + the integration name in the characters slot names allow (a-z, 0-9, _; 63 max)."""
    cleaned = re.sub(r"[^a-z0-9_]", "_", integration.lower())
    return ("zetl_" + cleaned)[:63]


class PostgresConfig(SourceConfig):
    """Connection and replication settings of a Postgres source (``type: postgres``)."""

    host: str = "localhost"
    """Server host name or address."""

    port: int = Field(5432, ge=1, le=65535)
    """Server port."""

    database: str
    """The database to replicate (a logical slot belongs to one database)."""

    user: str
    """Role to connect as; needs REPLICATION (or rds_replication) and SELECT on the tables."""

    password: SecretStr | None = None
    """Password; write ``${env:PGPASSWORD}`` or ``${file:/run/secrets/pg}`` rather than the value."""

    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    """libpq sslmode; use verify-full with ``sslrootcert`` in production."""

    sslrootcert: Path | None = None
    """CA certificate file used to verify the server (verify-ca/verify-full)."""

    sslcert: Path | None = None
    """Client certificate file, for certificate authentication."""

    sslkey: Path | None = None
    """Client private key file matching ``sslcert``."""

    slot_name: str | None = Field(None, pattern=r"^[a-z0-9_]{1,63}$")
    """Logical replication slot; default ``zetl_<integration name>``. One slot per integration."""

    publication_name: str | None = Field(None, min_length=1, max_length=63)
    """Publication listing the selected tables; default: the slot name. Created when missing."""

    snapshot: Literal["initial", "never", "initial_only"] = "initial"
    """``initial``: copy the tables, then stream; ``never``: stream changes from now on only;
    ``initial_only``: copy the tables and stop (no slot is kept)."""

    heartbeat_interval: Duration = 10.0
    """How often to write a tiny WAL message so that the slot advances while the tables are idle
    (0 disables)."""

    table_discovery_interval: Duration = 10.0
    """How often, while streaming, to look for tables created since (or renamed into) the
    ``tables:`` selection. A table found is added to zetl's publication, created in the target and
    its existing rows are copied, with no gap before its first streamed change. The same search
    notices replicated tables that were dropped, renamed out of the selection or excluded: each is
    reported as ``drop.table`` (kept or dropped in the target as the ``schema_evolution`` policy
    says) after its last streamed rows. 0 disables: both are then picked up at the next restart."""

    iam_auth: bool = False
    """Log in with an RDS IAM token (boto3 ``generate_db_auth_token``) instead of ``password``;
    a fresh token is made at every (re)connection. Needs ``region``; RDS accepts tokens over SSL
    only (``sslmode: require`` or stricter)."""

    region: str | None = None
    """AWS region of the RDS instance, for ``iam_auth``."""

    stream_in_progress: bool | None = None
    """Let the server stream large transactions while they run (pgoutput protocol 2): zetl buffers
    them (spilling to the state directory beyond 16 MiB each) and emits them at commit, so a big
    transaction no longer waits for the server to decode it from its own spill files after the
    commit. Default: on for Postgres 14 and later; ``false`` keeps protocol 1."""

    snapshot_chunk_rows: int = Field(50_000, ge=1)
    """Rows per snapshot chunk: a crashed snapshot resumes after the last completed chunk."""

    connect_timeout: Duration = 10.0
    """Seconds to wait for a connection."""

    @model_validator(mode="after")
    def _check_auth(self) -> PostgresConfig:
        if self.iam_auth and not self.region:
            raise ValueError("iam_auth: true needs `region` (the AWS region of the RDS instance)")
        if self.iam_auth and self.password is not None:
            raise ValueError("set either `password` or `iam_auth: true`, not both")
        return self

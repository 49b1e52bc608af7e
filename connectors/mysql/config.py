"""The ``source:`` section of a MySQL/MariaDB integration."""

from __future__ import annotations

import zlib
from typing import Literal

from pydantic import Field, SecretStr

from zetl.config.types import Duration
from zetl.source import SourceConfig

__all__ = ["MySQLConfig", "TLSConfig", "default_server_id"]


class TLSConfig(SourceConfig):
    """TLS to the server (required by RDS IAM authentication)."""

    enabled: bool = True
    """Use TLS."""
    ca: str | None = None
    """CA bundle file that signs the server certificate (e.g. the RDS global bundle); the
    system's CAs when absent."""
    cert: str | None = None
    """Client certificate file, for servers that require one."""
    key: str | None = None
    """Client private key file matching ``cert``."""
    verify: bool = True
    """Check the server certificate against ``ca`` (or the system's CAs). Turning it off
    encrypts without knowing who answers."""
    verify_identity: bool = True
    """Also check that the certificate names ``host``."""


class MySQLConfig(SourceConfig):
    """Connection and behaviour of the MySQL/MariaDB source.

    The user needs ``SELECT``, ``REPLICATION SLAVE`` and ``REPLICATION CLIENT``. The snapshot
    on MySQL also needs ``RELOAD`` (a global read lock for a moment) or, where that is not granted
    (RDS/Aurora), ``LOCK TABLES`` on the selected tables (only their writers wait a moment);
    MariaDB needs neither.
    """

    host: str = "127.0.0.1"
    """Server host name or address."""
    port: int = Field(3306, ge=1, le=65535)
    """Server port."""
    user: str = "root"
    """User to connect as."""
    password: SecretStr | None = None
    """Password (write ``${env:MYSQL_PASSWORD}`` rather than the secret itself)."""
    tls: TLSConfig | None = None
    """TLS settings; plain TCP when absent (IAM authentication turns TLS on)."""
    iam_auth: bool = False
    """Authenticate with an RDS/Aurora IAM token made with boto3 instead of ``password``."""
    region: str | None = None
    """AWS region for ``iam_auth`` (default: boto3's configured region)."""
    server_id: int | None = Field(None, ge=1, le=4294967295)
    """Replica id announced to the server; must differ from every server and replica id in
    the topology. Default: derived from the integration name (stable across restarts)."""
    flavor: Literal["auto", "mysql", "mariadb"] = "auto"
    """Server family; ``auto`` asks the server (``SELECT VERSION()``)."""
    snapshot: Literal["initial", "never", "initial_only", "when_needed"] = "initial"
    """``initial``: copy the tables first, then stream; ``never``: stream changes from now on;
    ``initial_only``: copy and stop; ``when_needed``: like ``initial``, and copy again when the
    binlog of the checkpoint is gone."""
    snapshot_chunk_rows: int = Field(50_000, ge=1)
    """Rows per snapshot chunk; the snapshot resumes after the last finished chunk."""
    heartbeat: Duration = 0.5
    """How often the server sends a heartbeat on an idle binlog stream (seconds)."""
    max_batch_rows: int = Field(10_000, ge=1)
    """Whole transactions are grouped into a batch until it holds this many rows."""
    min_binlog_retention: Duration = 86_400.0
    """Preflight fails when the server keeps binlogs for less than this (0 disables the check)."""
    connect_timeout: Duration = 10.0
    """Seconds to wait for a connection."""


def default_server_id(integration: str) -> int:
    """A replica id derived from the integration name: stable, and far from the small ids that
    servers usually carry (range 1_000_000 .. 4_000_999_999)."""
    return 1_000_000 + zlib.crc32(integration.encode()) % 4_000_000_000

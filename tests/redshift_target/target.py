"""Test fixtures' building blocks: a Redshift-compatible database on the private Postgres.

``RedshiftTarget`` is one test database with the shim installed, reached by the sink through the
proxy and read back by tests directly over psycopg (independent of the sink and the driver).
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg.rows import dict_row

from zetl.testing.servers import PostgresServer

from .proxy import RedshiftProxy

SHIM_SQL = Path(__file__).with_name("shim.sql")
S3_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


def install_shim(pg: PostgresServer, database: str) -> None:
    """Install the shim in ``database`` and put it on the search path of new sessions."""
    pg.psql(SHIM_SQL.read_text(), dbname=database)
    pg.psql(f'ALTER DATABASE "{database}" SET search_path = "$user", public, zetl_shim', dbname=database)


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a new self-signed certificate for 127.0.0.1, and the
    certificate's path (clients trust it as their CA)."""
    cert, key = directory / "proxy-cert.pem", directory / "proxy-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def s3_reader(endpoint_url: str) -> Callable[[str, str], bytes]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=S3_CREDENTIALS["region"],
        aws_access_key_id=S3_CREDENTIALS["access_key_id"],
        aws_secret_access_key=S3_CREDENTIALS["secret_access_key"],
    )

    def read(bucket: str, key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    return read


@dataclass
class RedshiftTarget:
    pg: PostgresServer
    database: str
    proxy: RedshiftProxy
    s3_endpoint: str | None = None
    bucket: str | None = None

    @property
    def s3_prefix(self) -> str:
        """This database's staging prefix (moto's data is shared by every server in the process)."""
        return f"staging/{self.database}/"

    def sink_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``sink:`` section (without ``type``) pointing at this target through the proxy."""
        config: dict[str, Any] = {
            "host": self.proxy.host,
            "port": self.proxy.port,
            "database": self.database,
            "user": "postgres",
            "password": "unused-with-trust-auth",
            "ssl": False,
            "max_identifier_bytes": 63,  # Postgres' limit; Redshift's 127 is covered by unit tests
        }
        if self.s3_endpoint and self.bucket:
            config["s3"] = {
                "bucket": self.bucket,
                "prefix": self.s3_prefix,
                "iam_role": "arn:aws:iam::123456789012:role/zetl-copy",
                "endpoint_url": self.s3_endpoint,
                "access_key_id": S3_CREDENTIALS["access_key_id"],
                "secret_access_key": S3_CREDENTIALS["secret_access_key"],
                "region": S3_CREDENTIALS["region"],
            }
        config.update(overrides)
        return config

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.pg.dsn(self.database), autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

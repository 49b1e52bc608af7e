"""Pytest fixtures for Redshift sink tests; test modules import them with ``from redshift_target.fixtures import *``."""

from __future__ import annotations

from typing import Iterator

import pytest

from zetl.testing.servers import PostgresServer, free_port

from .proxy import RedshiftProxy
from .target import S3_CREDENTIALS, RedshiftTarget, install_shim, s3_reader

__all__ = ["moto_s3", "redshift_proxy", "redshift_target"]

STAGING_BUCKET = "zetl-staging"


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """moto's S3 in server mode on a loopback port; yields the endpoint URL (bucket created)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_CREDENTIALS["region"],
            aws_access_key_id=S3_CREDENTIALS["access_key_id"],
            aws_secret_access_key=S3_CREDENTIALS["secret_access_key"],
        ).create_bucket(Bucket=STAGING_BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redshift_proxy(pg_server: PostgresServer, moto_s3: str) -> Iterator[RedshiftProxy]:
    proxy = RedshiftProxy(pg_server.host, pg_server.port, read_s3=s3_reader(moto_s3))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def redshift_target(pg_server: PostgresServer, pg_database: str, redshift_proxy: RedshiftProxy, moto_s3: str) -> RedshiftTarget:
    """A fresh Redshift-compatible database (shim installed) behind the proxy, with S3 staging."""
    install_shim(pg_server, pg_database)
    return RedshiftTarget(pg_server, pg_database, redshift_proxy, moto_s3, STAGING_BUCKET)

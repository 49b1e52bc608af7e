"""Connections to the server: settings for PyMySQL and pymysqlreplication, and error mapping."""

from __future__ import annotations

import ssl
from typing import Any

from zetl_connectors.mysql.config import MySQLConfig

from zetl.errors import NotInstalledError, SourceConnectionError, SourceError
from zetl.plugin import require

__all__ = ["connect", "connection_settings", "map_error", "pymysql"]

# Server error codes that mean "try again later": lock wait timeout, deadlock, too many
# connections, server shutting down.
_RETRYABLE_SERVER_CODES = frozenset({1205, 1213, 1040, 1053, 1152, 1158, 1159, 1160, 1161})


def pymysql() -> Any:
    return require("pymysql", extra="mysql", what="the MySQL source (PyMySQL)")


def _password(config: MySQLConfig) -> str:
    if config.iam_auth:
        try:
            import boto3
        except ImportError as exc:
            raise NotInstalledError(f"iam_auth needs boto3 to make RDS tokens: pip install boto3 ({exc})", extra="mysql") from exc
        client = boto3.client("rds", region_name=config.region) if config.region else boto3.client("rds")
        return str(client.generate_db_auth_token(DBHostname=config.host, Port=config.port, DBUsername=config.user))
    return config.password.get_secret_value() if config.password is not None else ""


def connection_settings(config: MySQLConfig) -> dict[str, Any]:
    """Keyword arguments for ``pymysql.connect`` (the password included: never log them)."""
    settings: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "user": config.user,
        "password": _password(config),
        "charset": "utf8mb4",
        "connect_timeout": config.connect_timeout,
        "autocommit": True,
    }
    tls = config.tls
    if tls is None and config.iam_auth:
        from zetl_connectors.mysql.config import TLSConfig

        tls = TLSConfig()  # RDS accepts IAM tokens over TLS only
    if tls is not None and tls.enabled:
        settings["ssl"] = _ssl_context(tls)
    return settings


def _ssl_context(tls: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls.ca)
    if tls.verify:
        ctx.check_hostname = tls.verify_identity
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def map_error(exc: BaseException, config: MySQLConfig, doing: str) -> SourceError:
    """A driver error as a zetl error: connection problems are retryable, the rest is not."""
    where = f"MySQL {config.host}:{config.port} ({doing})"
    driver = pymysql()
    code = exc.args[0] if getattr(exc, "args", None) and isinstance(exc.args[0], int) else None
    text = exc.args[1] if getattr(exc, "args", None) and len(exc.args) > 1 else str(exc)
    if isinstance(exc, driver.err.OperationalError):
        if code in (1045, 1044, 1142, 1227, 1698):
            return SourceError(f"{where}: access denied for user {config.user!r}: {text}; check the password and grants (SELECT, REPLICATION SLAVE, REPLICATION CLIENT)", retryable=False)
        if code is not None and code >= 2000 or code in _RETRYABLE_SERVER_CODES:
            return SourceConnectionError(f"{where}: {text} (error {code})")
        return SourceError(f"{where}: {text} (error {code})", retryable=False)
    if isinstance(exc, (driver.err.InterfaceError, ConnectionError, OSError)):
        return SourceConnectionError(f"{where}: connection lost: {exc}")
    if isinstance(exc, driver.err.MySQLError):
        return SourceError(f"{where}: {text} (error {code})", retryable=code in _RETRYABLE_SERVER_CODES)
    return SourceError(f"{where}: {type(exc).__name__}: {exc}", retryable=False)


def connect(config: MySQLConfig, doing: str, **extra: Any) -> Any:
    """A new PyMySQL connection (autocommit on)."""
    driver = pymysql()
    try:
        return driver.connect(**connection_settings(config), **extra)
    except driver.err.MySQLError as exc:
        raise map_error(exc, config, doing) from exc

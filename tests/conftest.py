"""Shared fixtures: real servers started by the tests themselves, on loopback, once per session.

Integration tests ask for ``pg_server`` / ``mariadb_server``; each test gets a fresh database via
``pg_database`` / ``mariadb_database`` so tests never see each other's tables or slots.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from zetl.testing.servers import MariaDBServer, PostgresServer

if TYPE_CHECKING:
    from pgsql import Sql

_counter = itertools.count(1)


def _database_name(request: pytest.FixtureRequest) -> str:
    """A unique database name per test, made of safe characters only (it is used in DDL)."""
    name = f"t{next(_counter)}_{request.node.name.lower()}"[:60]
    return "".join(ch if ch.isalnum() else "_" for ch in name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A private Postgres 15 with wal_level=logical for the whole session."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new empty database; yields its name. Slots in it are dropped afterwards."""
    name = _database_name(request)
    pg_server.psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        pg_server.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}' AND NOT active")
        pg_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """A private MariaDB with a ROW binlog for the whole session."""
    if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
        pytest.fail("mariadbd is not installed; `make test` installs it (apt-get install -y mariadb-server)")
    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mariadb_database(mariadb_server: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new empty database; yields its name."""
    name = _database_name(request)
    mariadb_server.sql(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        mariadb_server.sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("ZETL_HOME", str(Path(config.rootpath) / ".zetl-test"))


@pytest.fixture
def sql(pg_server: PostgresServer, pg_database: str) -> Iterator[Sql]:
    """An autocommit connection to ``pg_database`` (tests/pgsql.py)."""
    from pgsql import Sql

    connection = Sql(pg_server, pg_database)
    try:
        yield connection
    finally:
        connection.close()

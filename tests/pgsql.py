"""One autocommit psycopg connection to a test database, for the Postgres integration tests."""

from __future__ import annotations

from typing import Any

import psycopg

from zetl.testing.servers import PostgresServer


class Sql:
    """Runs statements on one autocommit connection; ``sql("...")`` returns the rows (or [])."""

    def __init__(self, server: PostgresServer, database: str) -> None:
        self.conn = psycopg.connect(server.dsn(database), autocommit=True)
        self.conn.execute("SET lock_timeout = '10s'")  # a test that blocks fails instead of hanging

    def __call__(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def published(self, publication: str) -> set[str]:
        """The names of the tables in ``publication``."""
        return {r[0] for r in self("SELECT tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))}

    def close(self) -> None:
        self.conn.close()

"""Postgres source: consistent snapshot + pgoutput logical replication (``type: postgres``).

Importing this package does not import the driver (psycopg is loaded when the source connects).
"""

from .config import PostgresConfig
from .position import PostgresPosition
from .source import PostgresSource

__all__ = ["PostgresConfig", "PostgresPosition", "PostgresSource"]

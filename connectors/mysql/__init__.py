"""MySQL 8 / MariaDB source: consistent snapshot, then binlog streaming (``type: mysql``).

Importing this package imports no driver: PyMySQL and pymysqlreplication load when the source opens.
"""

from zetl_connectors.mysql.config import MySQLConfig
from zetl_connectors.mysql.position import MySQLPosition
from zetl_connectors.mysql.source import MySQLSource

__all__ = ["MySQLConfig", "MySQLPosition", "MySQLSource"]

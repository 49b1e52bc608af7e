"""Apache Iceberg sink (``type: iceberg``): current-state or changelog tables, exactly once.

Importing this package does not import pyiceberg; the sink loads it when it opens.
"""

from zetl_sinks.iceberg.config import IcebergConfig, IcebergTableOptions
from zetl_sinks.iceberg.sink import IcebergSink

__all__ = ["IcebergConfig", "IcebergSink", "IcebergTableOptions"]

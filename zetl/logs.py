"""Logging set-up: human-readable lines by default, one JSON object per line with ``json``.

Secrets never reach the logs: configs hold them as ``SecretStr``, which prints as ``**********``.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.name.startswith("zetl.integration."):
            data["integration"] = record.name[len("zetl.integration.") :]
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def configure_logging(fmt: str = "human", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Drivers are chatty at INFO; their warnings still show.
    for noisy in ("pyiceberg", "botocore", "urllib3", "s3transfer", "redshift_connector", "pymysqlreplication"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

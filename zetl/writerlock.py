"""One writer per integration: an exclusive lock held by the process that runs it.

The lock is an ``flock`` on ``<state dir>/locks/<integration>.lock``. The kernel releases it when
the holder's process ends in any way (exit, crash, SIGKILL), so a lock is never left stale; a
process that is stopped (SIGSTOP) or hung keeps it. The file records who holds it (pid, host,
start time) so that the process refused can name the one that runs the integration.

The lock covers one state: two states of one integration (another ``ZETL_HOME``, another
machine) are kept apart by the source (a replication slot consumed past this state's checkpoint
is refused) and by the writer epoch the sinks store with the data (``Sink.stored_epoch``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

import orjson

from zetl.errors import ZetlError

__all__ = ["IntegrationLock", "IntegrationLockedError"]


class IntegrationLockedError(ZetlError):
    """Another process runs this integration on the same state."""

    def __init__(self, message: str, holder: dict[str, object]) -> None:
        super().__init__(message, retryable=False)
        self.holder = holder


class IntegrationLock:
    """The exclusive lock of one integration; ``acquire`` never waits."""

    def __init__(self, state_dir: Path, integration: str) -> None:
        self.integration = integration
        self.path = Path(state_dir) / "locks" / f"{integration}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, object]:
        """Who holds the lock, as recorded in the file ({} when unknown)."""
        try:
            data = orjson.loads(self.path.read_bytes() or b"{}")
            return data if isinstance(data, dict) else {}
        except (OSError, orjson.JSONDecodeError):
            return {}

    def acquire(self) -> None:
        """Take the lock or raise ``IntegrationLockedError`` naming the process that has it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
            since = holder.get("started_at")
            if isinstance(since, (int, float)):
                who += f", running since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
            raise IntegrationLockedError(
                f"integration {self.integration!r} is already running ({who}; lock {self.path}). "
                "One process writes an integration at a time: stop that one first (SIGTERM), or check it with `zetl status`.",
                holder,
            ) from None
        record = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:  # a full or read-only disk: the kernel still drops the lock on close
            pass
        os.close(fd)

    def __enter__(self) -> IntegrationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Buffer of one in-progress transaction the server streams before its commit (pgoutput protocol 2).

With ``streaming 'on'`` the server sends a large transaction in blocks (Stream Start ... Stream
Stop) while it is still running, and later a Stream Commit or a Stream Abort. zetl emits a
transaction only once it is committed, so the blocks are kept here until then.

Guarantees:
    * ``messages()`` yields the buffered pgoutput messages in arrival order, each with its leading
      xid removed (the layout of the same message outside a stream), except those of aborted
      subtransactions.
    * At most ``spill_bytes`` of messages are held in memory; older ones are written to an
      anonymous temporary file in ``spill_dir`` (removed by the operating system when closed, also
      after a crash).
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["SPILL_BYTES", "StreamedTransaction"]

SPILL_BYTES = 16 * 1024 * 1024
"""Bytes of pgoutput messages one streamed transaction keeps in memory before spilling to disk."""

_FRAME = struct.Struct(">II")  # subtransaction xid, message length
_XID = struct.Struct(">I").unpack_from
_DESCRIPTIONS = frozenset(b"RY")  # Relation and Type messages


class StreamedTransaction:
    """The messages of one streamed top-level transaction ``xid`` received so far."""

    __slots__ = ("xid", "spill_dir", "spill_bytes", "memory", "memory_bytes", "spill", "spilled_bytes", "aborted")

    def __init__(self, xid: int, spill_dir: Path | None, spill_bytes: int = SPILL_BYTES) -> None:
        self.xid = xid
        self.spill_dir = spill_dir
        self.spill_bytes = spill_bytes
        self.memory: list[tuple[int, bytes]] = []  # (subtransaction xid, message) newer than the spill file
        self.memory_bytes = 0
        self.spill: IO[bytes] | None = None
        self.spilled_bytes = 0
        self.aborted: set[int] = set()  # subtransactions rolled back (their spilled messages are skipped)

    def add(self, message: bytes) -> None:
        """Keep one xid-prefixed message of a stream block (kind byte, xid, body)."""
        (subxid,) = _XID(message, 1)
        if message[0] in _DESCRIPTIONS:
            # A table or type description is tagged with the subtransaction of the first change
            # that needed it, but the server tracks "described" per top-level transaction: it
            # stays with the transaction even when that subtransaction is rolled back.
            subxid = self.xid
        body = message[:1] + message[5:]
        self.memory.append((subxid, body))
        self.memory_bytes += len(body) + 16
        if self.memory_bytes > self.spill_bytes:
            self._spill()

    def abort_subtransaction(self, subxid: int) -> None:
        """Forget the changes of subtransaction ``subxid`` (ROLLBACK TO SAVEPOINT)."""
        self.aborted.add(subxid)
        kept = [m for m in self.memory if m[0] != subxid]
        if len(kept) != len(self.memory):
            self.memory = kept
            self.memory_bytes = sum(len(body) + 16 for _, body in kept)

    def _spill(self) -> None:
        if self.spill is None:
            directory = self.spill_dir if self.spill_dir is not None else Path(tempfile.gettempdir())
            directory.mkdir(parents=True, exist_ok=True)
            self.spill = tempfile.TemporaryFile(dir=directory, prefix=f"zetl-pg-xid{self.xid}-")
        frame = _FRAME.pack
        self.spill.write(b"".join(frame(subxid, len(body)) + body for subxid, body in self.memory))
        self.spilled_bytes += self.memory_bytes
        self.memory = []
        self.memory_bytes = 0

    def messages(self) -> Iterator[bytes]:
        """The kept messages in arrival order, without those of aborted subtransactions."""
        aborted = self.aborted
        if self.spill is not None:
            spill = self.spill
            spill.flush()
            spill.seek(0)
            read = spill.read
            header = _FRAME.size
            while True:
                head = read(header)
                if not head:
                    break
                subxid, length = _FRAME.unpack(head)
                body = read(length)
                if len(body) != length:
                    raise OSError(f"spill file of streamed transaction {self.xid} is truncated")
                if subxid not in aborted:
                    yield body
        for subxid, body in self.memory:
            if subxid not in aborted:
                yield body

    @property
    def spilled(self) -> bool:
        """Whether part of the transaction is on disk."""
        return self.spill is not None

    def close(self) -> None:
        """Release memory and the spill file (idempotent)."""
        self.memory = []
        self.memory_bytes = 0
        if self.spill is not None:
            try:
                self.spill.close()
            except OSError:
                pass
            self.spill = None

    def __repr__(self) -> str:
        return f"StreamedTransaction(xid={self.xid}, memory={self.memory_bytes}, spilled={self.spilled_bytes})"

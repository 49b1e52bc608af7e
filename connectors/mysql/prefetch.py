"""A binlog connection whose socket is read ahead by a thread while the events are decoded.

pymysqlreplication reads each binlog packet from the socket when it needs it, so the decoding of
one packet and the wait for the next never overlap. ``prefetching_connection_class`` gives a
PyMySQL ``Connection`` subclass (passed to the library as its ``pymysql_wrapper``) that, once the
binlog dump command is sent, hands the socket to a reader thread: it receives large blocks into a
bounded buffer (the receive releases the GIL) and the library's packet reads are served from it.

Guarantees:
    * The bytes, their order and the packet framing are exactly those of the socket; only where
      they wait changes. At most ``max_buffered`` bytes (plus one block) are held in memory; the
      reader thread stops receiving until they are consumed.
    * A receive error (timeout, reset) or the end of the stream reaches the consumer after the
      bytes received before it, as the same ``OSError`` or a short read, so PyMySQL reports it
      exactly as without read-ahead.
    * Closing the connection (or PyMySQL closing it after an error) shuts the socket down, which
      ends the reader thread; the thread never outlives the connection by more than ``join_timeout``.
    * Connections that never send a binlog dump command (the library's control connection) are
      plain PyMySQL connections.
"""

from __future__ import annotations

import collections
import socket
import threading
from typing import Any

__all__ = ["PrefetchBuffer", "prefetching_connection_class"]

# COM_BINLOG_DUMP and COM_BINLOG_DUMP_GTID: the last command of a binlog connection
_DUMP_COMMANDS = frozenset({0x12, 0x1E})
_BLOCK = 256 * 1024
_MAX_BUFFERED = 8 * 1024 * 1024
_JOIN_TIMEOUT = 5.0


class PrefetchBuffer:
    """The bytes one reader thread received, for one consumer (``read`` as a file's ``read``).

    ``receive`` is called by the reader thread with at most ``size`` wanted; it returns the
    received bytes, b"" at the end of the stream, or raises ``OSError``.
    """

    def __init__(self, receive: Any, *, close: Any = None, block: int = _BLOCK, max_buffered: int = _MAX_BUFFERED) -> None:
        self._receive = receive
        self._close = close
        self._block = block
        self._max_buffered = max_buffered
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0  # bytes in _chunks
        self._current = b""  # the chunk being consumed, from _offset on
        self._offset = 0
        self._ended = False  # no more chunks will come
        self._error: OSError | None = None
        self._stopping = False
        self._cond = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._run, name="zetl-binlog-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- reader thread --------------------------------------------------------------------
    def _run(self) -> None:
        cond = self._cond
        try:
            while True:
                with cond:
                    while self._buffered >= self._max_buffered and not self._stopping:
                        cond.wait()
                    if self._stopping:
                        return
                chunk = self._receive(self._block)
                with cond:
                    if not chunk:
                        return
                    self._chunks.append(chunk)
                    self._buffered += len(chunk)
                    cond.notify_all()
        except OSError as exc:
            with cond:
                self._error = exc
        except ValueError:
            pass  # the file was closed under the thread (a join that timed out): the end of the stream
        finally:
            with cond:
                self._ended = True
                cond.notify_all()

    # -- consumer -------------------------------------------------------------------------
    def read(self, size: int) -> bytes:
        """``size`` bytes, or fewer at the end of the stream; raises the reader's ``OSError``
        once the bytes received before it are consumed."""
        current, offset = self._current, self._offset
        end = offset + size
        if end <= len(current):
            self._offset = end
            return current[offset:end]
        parts = [current[offset:]]
        missing = end - len(current)
        cond = self._cond
        while missing > 0:
            with cond:
                while not self._chunks and not self._ended:
                    cond.wait()
                if not self._chunks:
                    self._current, self._offset = b"", 0
                    if self._error is not None and not self._stopping:
                        raise self._error
                    return b"".join(parts)  # the end of the stream: a short read
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < self._max_buffered:
                    cond.notify_all()
            if len(chunk) >= missing:
                parts.append(chunk[:missing])
                self._current, self._offset = chunk, missing
                missing = 0
            else:
                parts.append(chunk)
                missing -= len(chunk)
        return b"".join(parts)

    def stop(self, join_timeout: float = _JOIN_TIMEOUT) -> None:
        """Stop receiving (the socket must be shut down by the caller to end a blocked receive)
        and wait for the reader thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(join_timeout)

    def close(self) -> None:
        """``stop``, then close what the bytes were received from (the file's ``close``)."""
        self.stop()
        close, self._close = self._close, None
        if close is not None:
            close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


def prefetching_connection_class(connection_class: Any) -> Any:
    """A subclass of PyMySQL's ``Connection`` class (given, so that importing this module does not
    import the driver) whose reads are prefetched once it sends a binlog dump command."""

    class PrefetchingConnection(connection_class):  # type: ignore[misc, valid-type]
        _prefetch: PrefetchBuffer | None = None

        def _write_bytes(self, data: bytes) -> None:
            super()._write_bytes(data)
            # a command packet is the first of its exchange (sequence id 0); a handshake or
            # auth-switch reply that happens to start with the same byte is not
            if self._prefetch is None and len(data) > 4 and data[3] == 0 and data[4] in _DUMP_COMMANDS:
                # From here on the connection only reads: a thread receives ahead.
                rfile = self._rfile
                # read1: the bytes PyMySQL's buffered reader already holds come first
                buffer = PrefetchBuffer(rfile.read1, close=rfile.close)
                self._prefetch = buffer
                self._rfile = buffer
                buffer.start()

        def _force_close(self) -> None:
            # PyMySQL closes the reader (the buffer: it stops and joins its thread), then the socket.
            sock = self._sock
            if self._prefetch is not None and sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread's receive
                except OSError:
                    pass  # not connected any more
            self._prefetch = None
            super()._force_close()

        # PyMySQL's base class binds __del__ to its own _force_close: a connection collected
        # without close() must also wake the reader thread, or closing the reader waits on it
        __del__ = _force_close

    return PrefetchingConnection

"""The buffer of a streamed in-progress transaction (pgoutput protocol 2): order, spill, subtransaction aborts."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from zetl_connectors.postgres.streamed import StreamedTransaction

TOP = 700


def message(kind: bytes, subxid: int, body: bytes) -> bytes:
    """A change message as the server sends it inside a stream block: kind, xid, then the body."""
    return kind + struct.pack(">I", subxid) + body


def test_messages_come_back_in_order_without_their_xid_across_the_spill_file(tmp_path: Path) -> None:
    buffer = StreamedTransaction(TOP, tmp_path, spill_bytes=200)
    sent = [message(b"I", TOP, f"row {i}".encode() * 3) for i in range(50)]
    for m in sent:
        buffer.add(m)
    assert buffer.spilled and buffer.memory_bytes <= 200, "older messages went to disk"
    assert list(buffer.messages()) == [m[:1] + m[5:] for m in sent]
    assert list(tmp_path.iterdir()) == [], "the spill file is anonymous: nothing is left behind"
    buffer.close()
    assert buffer.spill is None and buffer.memory == []


def test_a_rolled_back_subtransaction_loses_only_its_own_messages(tmp_path: Path) -> None:
    buffer = StreamedTransaction(TOP, tmp_path, spill_bytes=100)
    order = [TOP, TOP, 701, 701, TOP, 702, 701, TOP]  # 701 spans the spill file and memory
    for i, xid in enumerate(order):
        buffer.add(message(b"I", xid, b"%02d-%d" % (i, xid) + b"." * 20))
    buffer.abort_subtransaction(701)
    kept = [body[1:3] for body in buffer.messages()]
    assert kept == [b"%02d" % i for i, xid in enumerate(order) if xid != 701]
    buffer.close()


def test_small_transactions_stay_in_memory(tmp_path: Path) -> None:
    buffer = StreamedTransaction(TOP, tmp_path, spill_bytes=1 << 20)
    buffer.add(message(b"R", TOP, b"relation"))
    buffer.add(message(b"I", TOP, b"row"))
    assert not buffer.spilled
    assert list(buffer.messages()) == [b"Rrelation", b"Irow"]


def test_a_truncated_spill_file_is_an_error(tmp_path: Path) -> None:
    buffer = StreamedTransaction(TOP, tmp_path, spill_bytes=10)
    buffer.add(message(b"I", TOP, b"x" * 40))
    assert buffer.spill is not None
    buffer.spill.truncate(20)
    with pytest.raises(OSError, match=f"streamed transaction {TOP}"):
        list(buffer.messages())


@pytest.mark.parametrize("spill_bytes", [10_000, 40])
def test_descriptions_outlive_the_subtransaction_that_carried_them(tmp_path: Path, spill_bytes: int) -> None:
    # the server describes a table once per top-level transaction, whichever subtransaction needed it
    buffer = StreamedTransaction(TOP, tmp_path, spill_bytes=spill_bytes)
    sent = [message(b"R", 701, b"relation items"), message(b"Y", 701, b"type mood"), message(b"I", 701, b"rolled back row"), message(b"I", 702, b"kept row")]
    for m in sent:
        buffer.add(m)
    buffer.abort_subtransaction(701)
    assert list(buffer.messages()) == [b"Rrelation items", b"Ytype mood", b"Ikept row"]
    buffer.close()

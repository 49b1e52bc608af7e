"""What this integration created on the Postgres server, recorded so that it is never guessed.

A replication slot is a cursor into the server's WAL shared by whoever connects to it: a second
zetl with another state directory (started from another working directory, by cron, by a
systemd unit), or any other program, may drop it, recreate it or consume from it, and changes
consumed by someone else never reach this integration's target. So the source records in the
integration's state directory, durably and *before* acting:

* the server's identity (``pg_control_system().system_identifier``) and the database;
* that it is about to create the slot (``creating``), then its consistent point (``created``);
* every publication it creates;
* the highest LSN it confirmed to the slot past its checkpoint (``confirmed``: an idle slot
  follows the WAL end), written before the standby status update that confirms it is sent.
  Every other confirmed LSN is an acknowledged position, checkpointed before it is confirmed.
  So the slot's ``confirmed_flush_lsn`` is never ahead of both the record and the checkpoint
  unless another consumer moved the slot.

``judge_slot`` compares that record with the slot as the server shows it. The slot may be
dropped, reused or resumed only when the record proves it is this integration's own and that
nobody else confirmed anything on it; every other case is a ``Verdict`` that the source turns
into ``needs_attention`` with a message saying what happened and what to do.

The file is ``postgres_ownership.<slot>.json`` in the state directory, one per slot name.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from zetl.durable import read_json, write_json
from zetl.errors import SourceError

from .position import format_lsn, parse_lsn

__all__ = ["FILE_PREFIX", "ServerIdentity", "SlotOwnership", "SlotState", "Verdict", "judge_slot"]

FILE_PREFIX = "postgres_ownership"
FORMAT_VERSION = 1


class SlotState(str, Enum):
    """How far the creation of the recorded slot got."""

    CREATING = "creating"  # recorded before CREATE_REPLICATION_SLOT; no consistent point yet
    CREATED = "created"  # the consistent point is recorded (or the slot was adopted)


class Verdict(str, Enum):
    """What ``judge_slot`` concluded about an existing slot."""

    OWNED = "owned"  # created by this state, nobody else confirmed anything on it
    ADOPT = "adopt"  # no record (a state from an earlier version), the slot is not past the checkpoint
    OTHER_DATABASE = "other_database"  # a slot of that name belongs to another database of the cluster
    NOT_RECORDED = "not_recorded"  # exists, but this state has no record of creating it
    CONSUMED_ELSEWHERE = "consumed_elsewhere"  # confirmed past all this state confirmed and checkpointed
    UNPROVEN = "unproven"  # no record, confirmed past the checkpoint: an earlier zetl idling, or someone else


@dataclass(frozen=True)
class ServerIdentity:
    """Which server and database a slot lives in (slot names are unique per cluster only)."""

    system_identifier: str
    database: str

    def describe(self, host: str, port: int) -> str:
        return f"Postgres {host}:{port} database {self.database!r} (system identifier {self.system_identifier})"


class SlotOwnership:
    """The ownership record of one slot name, persisted in the state directory.

    Every ``record_*`` method writes the file durably before it returns (``OSError`` when it
    cannot), so the caller acts on the server only after the record is safe. Thread-safe: the
    confirmed LSN is recorded from the stream's feedback, on the reader or the acknowledging
    thread.
    """

    def __init__(self, directory: Path, slot: str) -> None:
        self.path = directory / f"{FILE_PREFIX}.{slot}.json"
        self.slot = slot
        self.identity: ServerIdentity | None = None
        self.slot_state: SlotState | None = None
        self.consistent_point: int | None = None
        self.confirmed: int = 0
        self.adopted = False
        self.publications: list[str] = []
        self._lock = threading.Lock()

    # -- persistence -----------------------------------------------------------------------
    def load(self) -> SlotOwnership:
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"cannot read the record of what this integration created on the Postgres server, {self.path}: {exc}. "
                "Restore the file from a backup; deleting it makes zetl refuse to use the slot until it is dropped by hand.",
                retryable=False,
            ) from None
        if data is None:
            return self
        server = data.get("server")
        self.identity = ServerIdentity(str(server["system_identifier"]), str(server["database"])) if server else None
        slot = data.get("slot") or {}
        self.slot_state = SlotState(slot["state"]) if slot.get("state") else None
        self.consistent_point = parse_lsn(slot["consistent_point"]) if slot.get("consistent_point") else None
        self.confirmed = parse_lsn(slot["confirmed"]) if slot.get("confirmed") else 0
        self.adopted = bool(slot.get("adopted", False))
        self.publications = [str(p) for p in data.get("publications") or []]
        return self

    def _save(self) -> None:
        if self.identity is None and not self.publications and self.slot_state is None:
            self.path.unlink(missing_ok=True)
            return
        slot: dict[str, Any] = {"name": self.slot}
        if self.slot_state is not None:
            slot.update(
                state=self.slot_state.value,
                consistent_point=format_lsn(self.consistent_point) if self.consistent_point is not None else None,
                confirmed=format_lsn(self.confirmed) if self.confirmed else None,
                adopted=self.adopted,
            )
        data: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "server": {"system_identifier": self.identity.system_identifier, "database": self.identity.database} if self.identity else None,
            "slot": slot,
            "publications": sorted(set(self.publications)),
        }
        write_json(self.path, data)

    # -- questions -------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.identity is not None

    def is_for(self, identity: ServerIdentity) -> bool:
        return self.identity == identity

    @property
    def holds_slot(self) -> bool:
        return self.slot_state is not None

    def ceiling(self) -> int:
        """The highest LSN this state knows the slot may be confirmed up to by itself."""
        return max(self.consistent_point or 0, self.confirmed)

    def describe_slot(self) -> str:
        created = f"created at {format_lsn(self.consistent_point)}" if self.consistent_point is not None else ("adopted" if self.adopted else "being created")
        confirmed = f", confirmed by this integration up to {format_lsn(self.confirmed)}" if self.confirmed else ", never confirmed"
        return created + confirmed

    # -- records (durable on return) -------------------------------------------------------
    def start_over(self, identity: ServerIdentity) -> None:
        """Forget a record of another server (there is no checkpoint for it any more)."""
        with self._lock:
            self.identity = identity
            self.slot_state = None
            self.consistent_point = None
            self.confirmed = 0
            self.adopted = False
            self.publications = []
            self._save()

    def record_creating(self, identity: ServerIdentity) -> None:
        """Before CREATE_REPLICATION_SLOT: the slot about to exist is this state's."""
        with self._lock:
            if self.identity != identity:
                self.publications = []
            self.identity = identity
            self.slot_state = SlotState.CREATING
            self.consistent_point = None
            self.confirmed = 0
            self.adopted = False
            self._save()

    def record_created(self, consistent_point: int) -> None:
        with self._lock:
            self.slot_state = SlotState.CREATED
            self.consistent_point = consistent_point
            self._save()

    def record_adopted(self, identity: ServerIdentity, confirmed: int) -> None:
        """A slot from before records existed, proven not to be past the checkpoint."""
        with self._lock:
            self.identity = identity
            self.slot_state = SlotState.CREATED
            self.consistent_point = None
            self.confirmed = confirmed
            self.adopted = True
            self._save()

    def record_confirmed(self, lsn: int) -> None:
        """Before a status update confirming ``lsn`` is sent (no-op when not higher)."""
        with self._lock:
            if lsn <= self.confirmed:
                return
            previous, self.confirmed = self.confirmed, lsn
            try:
                self._save()
            except OSError:
                self.confirmed = previous
                raise

    def record_publication(self, identity: ServerIdentity, name: str) -> None:
        """Before CREATE PUBLICATION."""
        with self._lock:
            if self.identity != identity:
                self.slot_state, self.consistent_point, self.confirmed, self.adopted, self.publications = None, None, 0, False, []
            self.identity = identity
            if name not in self.publications:
                self.publications.append(name)
            self._save()

    def forget_slot(self) -> None:
        with self._lock:
            self.slot_state = None
            self.consistent_point = None
            self.confirmed = 0
            self.adopted = False
            self._save()

    def forget_publication(self, name: str) -> None:
        with self._lock:
            self.publications = [p for p in self.publications if p != name]
            self._save()


def judge_slot(record: SlotOwnership, identity: ServerIdentity, slot_database: str, confirmed_flush: int, checkpoint: int | None) -> Verdict:
    """Whether an existing, inactive slot may be used, and on what grounds.

    Args:
        record: this state's ownership record (loaded).
        identity: the server and database connected to.
        slot_database: the database the slot belongs to (``pg_replication_slots.database``).
        confirmed_flush: the slot's ``confirmed_flush_lsn``.
        checkpoint: the LSN of this integration's checkpoint (None: no checkpoint).

    Guarantees: ``OWNED`` only when the record says this state created the slot on this server
    and database and, with a checkpoint, the slot is not confirmed past anything this state
    confirmed or checkpointed; ``ADOPT`` only without any record, with a checkpoint, and with the slot not
    confirmed past it (nothing the target lacks was consumed).
    """
    if slot_database != identity.database:
        return Verdict.OTHER_DATABASE
    if record.is_for(identity) and record.holds_slot:
        if checkpoint is None:
            # created by this state, which has no checkpoint (never made one, crashed between
            # creating the slot and recording it, or was reset): a new copy starts over, so
            # whatever the slot was confirmed to cannot be lost, and the slot is this state's
            return Verdict.OWNED
        if confirmed_flush <= max(record.ceiling(), checkpoint or 0):
            return Verdict.OWNED
        return Verdict.CONSUMED_ELSEWHERE
    if checkpoint is None:
        return Verdict.NOT_RECORDED
    if record.exists and not record.is_for(identity):
        return Verdict.NOT_RECORDED  # the caller reports the checkpoint of another server first
    return Verdict.ADOPT if confirmed_flush <= checkpoint else Verdict.UNPROVEN

"""Runs one integration: source -> bounded queue -> schema pipeline -> sink -> checkpoint.

Guarantees:
    * A position is saved (and acknowledged to the source) only after the sink reported the data
      up to it durable; a crash at any point loses nothing, and the sink's idempotent writes absorb
      what is read again.
    * Memory is bounded: the reader thread blocks when ``batching.queue_size`` batches wait.
    * On stop: reading stops, batches already read are written, buffered rows are committed, the
      checkpoint is saved; then the source and sink are closed.
    * Retryable errors restart the integration from its checkpoint after a capped exponential
      backoff; fatal errors end it in ``failed``, ``NeedsAttentionError`` in ``needs_attention``.
    * One writer: ``run`` holds the integration's lock (``zetl.writerlock``) from start to end,
      and every attempt claims a writer epoch greater than any earlier run's and the sink's
      stored one, set in ``context.writer_epoch`` before the first write (sinks that store
      positions refuse a commit once a newer epoch wrote).
    * The status is written at least every ``STATUS_HEARTBEAT`` seconds while the integration
      runs (also while it waits to retry); when the state file cannot be written, the failure is
      logged, kept in memory and recorded in the status as soon as the file can be written again.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

from zetl.checkpoints import CheckpointStore, SQLiteCheckpointStore
from zetl.config.load import Integration
from zetl.errors import NeedsAttentionError, ZetlError
from zetl.events import Batch, Position, TableId
from zetl.faults import FaultPoint, fault_point
from zetl.pipeline import SchemaHistory, SchemaLedger, SchemaPipeline
from zetl.plugin import PluginContext
from zetl.sink import Sink
from zetl.source import Source
from zetl.statedb import StateDB
from zetl.statehome import StateLocation, StateOrigin, record_location
from zetl.status import IntegrationStatus, State, StatusStore
from zetl.writerlock import IntegrationLock

__all__ = ["IntegrationRunner", "merge_batches"]

_END = object()

STATUS_HEARTBEAT = 5.0
"""Longest time between two status saves of a running integration; ``zetl status`` calls a status
older than a few heartbeats of a live process stale."""


_commit_ts = attrgetter("commit_ts")


@dataclass
class _Failure:
    error: BaseException


_GC_TUNED = False


def tune_garbage_collector() -> None:
    """Process-wide, once: keep Python's cycle collector off the hot path.

    Change events are acyclic and freed by reference counting, but thousands of them are alive
    at a time (in the queue, in a sink's buffer), so with the default thresholds they are promoted
    and rescanned by full collections that walk every object of the process (pyarrow, pyiceberg
    and drivers included): measured at ~5 µs per streamed event. ``gc.freeze()`` moves the objects
    alive after start-up out of the collector's view, and a larger young-generation threshold lets
    batches in flight die before they are ever scanned. Cyclic garbage is still collected.
    """
    global _GC_TUNED
    if _GC_TUNED:
        return
    _GC_TUNED = True
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, 50_000), max(middle, 20), max(old, 20))


def merge_batches(batches: list[Batch]) -> Batch:
    """One batch with the rows of ``batches`` in order. Only the first may carry schema changes."""
    if len(batches) == 1:
        return batches[0]
    end: Position | None = None
    for b in batches:
        if b.end_position is not None:
            end = b.end_position
    return Batch(
        events=tuple(chain.from_iterable(b.events for b in batches)),  # copied in C, not per event in Python
        schema_changes=batches[0].schema_changes,
        end_position=end,
        chunks=tuple(c for b in batches for c in b.chunks),
    )


class IntegrationRunner:
    """Runs one integration until it is stopped, fails, or its source ends."""

    def __init__(
        self,
        integration: Integration,
        stop: threading.Event | None = None,
        *,
        state_db: StateDB | None = None,
        checkpoints: CheckpointStore | None = None,
        progress: Any = None,
        metrics: Any = None,
    ) -> None:
        self.integration = integration
        self.config = integration.config
        self.name = integration.name
        self.stop = stop or threading.Event()
        self.log = logging.getLogger(f"zetl.integration.{self.name}")
        if state_db is not None:
            self.location = StateLocation(state_db.path.absolute(), StateOrigin.CONFIGURED)
        else:
            self.location = self.config.locate_state(integration.file)
        if self.location.origin is StateOrigin.RECORDED and not self.location.path.exists():
            raise NeedsAttentionError(
                f"the state of {self.name!r} was recorded at {self.location.path}, which no longer exists. Restore it "
                f"(it holds the checkpoint), or forget it with `zetl reset {self.name}` to start over with a new copy."
            )
        self.state_db = state_db or StateDB(self.location.path)
        self.lock = IntegrationLock(self.state_db.path.parent, self.name)
        self.checkpoints = checkpoints or SQLiteCheckpointStore(self.state_db)
        self.status_store = StatusStore(self.state_db)
        self.history = SchemaHistory(self.state_db, self.name)
        self.ledger = SchemaLedger(self.state_db, self.name)
        self.status = IntegrationStatus(self.name, state_file=str(self.location.path))
        self._state_write_error: str | None = None
        self._progress_cb = progress
        self._metrics = metrics
        self._last_status_save = 0.0
        self._source: Source | None = None
        self._sink: Sink | None = None
        self._last_durable: Position | None = None
        self._pipeline: SchemaPipeline | None = None

    def acquire_lock(self) -> None:
        """Take the integration's lock (``IntegrationLockedError`` names the holder)."""
        self.lock.acquire()

    # -- status ---------------------------------------------------------------------------
    def _set_state(self, state: State, error: str | None = None) -> None:
        self.status.state = state
        if error is not None:
            self.status.last_error = error
            if self._metrics is not None:
                self._metrics.error(self.name)
        self._save_status(force=True)

    def _save_status(self, force: bool = False) -> None:
        if self._metrics is not None:
            self._metrics.observe(self.status)
        now = time.monotonic()
        if not force and now - self._last_status_save < 0.5:
            return
        self._last_status_save = now
        try:
            if self._source is not None:
                self.status.source = self._source.status()
            if self._sink is not None:
                self.status.sink = self._sink.status()
        except Exception as exc:  # figures are informative; never fail the integration for them
            self.log.debug("could not collect status figures: %s", exc)
        try:
            self.status_store.save(self.status)
        except Exception as exc:  # never fail the integration for it, but never hide it either
            self._state_unwritable(exc)
            return
        if self._state_write_error is not None:
            self.log.warning("the state file %s can be written again", self.state_db.path)
            self._state_write_error = None
            self.status.state_error_until = time.time()
            self._save_status_quietly()

    def _state_unwritable(self, exc: BaseException) -> None:
        """The state file refused a write: log it once per cause and keep it in the status, which
        is written with it as soon as the file accepts writes again."""
        text = f"{type(exc).__name__}: {exc}"
        if self._state_write_error != text:
            self.log.error(
                "cannot write the state file %s (%s); `zetl status` shows the last status saved, as stale. "
                "Checkpoints cannot be saved until it can be written (free disk space, check permissions); zetl retries.",
                self.state_db.path,
                text,
            )
            if self._state_write_error is None:
                self.status.state_error_since = time.time()
                self.status.state_error_until = None
            self._state_write_error = text
            self.status.state_error = text

    def _save_status_quietly(self) -> None:
        try:
            self.status_store.save(self.status)
        except Exception as exc:
            self._state_unwritable(exc)

    def _on_progress(self, table: TableId, done: int, total: int | None) -> None:
        snap = self.status.source.setdefault("snapshot", {})
        snap[str(table)] = {"done": done, "total": total}
        if self._progress_cb is not None:
            self._progress_cb(self.name, table, done, total)

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> State:
        """Run until stopped, failed or finished; returns the final state.

        Holds the integration's lock throughout (taken here unless ``acquire_lock`` was called);
        raises ``IntegrationLockedError`` when another process holds it."""
        acquired = not self.lock.held
        self.acquire_lock()
        try:
            if self.location.origin is StateOrigin.LEGACY:
                record_location(self.name, self.location.path)
                self.log.warning(
                    "using the state of an earlier zetl at %s (its default was .zetl/ in the current directory); "
                    "its location is now recorded, so every run finds it from any directory. "
                    "To make it explicit, set `checkpoint: {path: %s}` in the YAML file.",
                    self.location.path,
                    self.location.path,
                )
            self.log.info("state: %s", self.location.describe())
            return self._run()
        finally:
            try:
                self.state_db.checkpoint_wal()
            except Exception as exc:  # a full disk: the WAL is replayed when the file is opened again
                self.log.warning("could not fold the write-ahead log into %s: %s", self.state_db.path, exc)
            if acquired:
                self.lock.release()

    def _run(self) -> State:
        tune_garbage_collector()
        backoff = self.config.retry.initial_backoff
        failures = 0
        while not self.stop.is_set():
            self.status.attempts += 1
            wrote_before = self.status.batches_written
            try:
                self._attempt()
                self._set_state(State.STOPPED)
                return State.STOPPED
            except NeedsAttentionError as exc:
                self.log.error("needs attention: %s", exc.message)
                self._set_state(State.NEEDS_ATTENTION, exc.message)
                return State.NEEDS_ATTENTION
            except ZetlError as exc:
                if not exc.retryable:
                    self.log.error("failed: %s", exc.message)
                    self._set_state(State.FAILED, exc.message)
                    return State.FAILED
                error = exc.message
            except Exception as exc:  # a plugin bug or an unmapped driver error: do not loop on it
                text = f"{type(exc).__name__}: {exc}"
                self.log.error("failed with an unexpected error: %s\n%s", text, traceback.format_exc())
                self._set_state(State.FAILED, text)
                return State.FAILED
            if self.status.batches_written > wrote_before:
                backoff, failures = self.config.retry.initial_backoff, 0
            failures += 1
            if self.config.retry.max_attempts is not None and failures >= self.config.retry.max_attempts:
                self._set_state(State.FAILED, f"gave up after {failures} attempts: {error}")
                return State.FAILED
            self.log.warning("retryable error (attempt %d), retrying in %.1fs: %s", failures, backoff, error)
            self._set_state(State.RETRYING, error)
            self._wait(backoff)
            backoff = min(backoff * 2, self.config.retry.max_backoff)
        self._set_state(State.STOPPED)
        return State.STOPPED

    def _wait(self, seconds: float) -> None:
        """Wait to retry, still saving the status every heartbeat (it stays fresh)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, STATUS_HEARTBEAT))
            self._save_status(force=True)

    def _context(self) -> PluginContext:
        state_dir = self.state_db.path.parent / self.name
        state_dir.mkdir(parents=True, exist_ok=True)
        return PluginContext(
            integration=self.name,
            tables=self.config.tables.selection(),
            columns=self.config.filters,
            state_dir=state_dir,
            logger=self.log,
            progress=self._on_progress,
            config_file=Path(self.integration.file) if self.integration.file else None,
        )

    def _attempt(self) -> None:
        self._set_state(State.STARTING)
        context = self._context()
        source = self.integration.source_class(self.integration.source_config, context)
        sink = self.integration.sink_class(self.integration.sink_config, context)
        self._source, self._sink = source, sink
        reader: threading.Thread | None = None
        reader_stop = threading.Event()
        try:
            sink.open()
            self._claim_epoch(sink, context)
            source.open()
            start = self._start_position(sink)
            self._last_durable = start
            self.log.info("starting from %s", start if start is not None else "the beginning")
            pipeline = SchemaPipeline(self.config, sink, self.history, self.log, self.ledger)
            self._pipeline = pipeline
            pipeline.prepare(source.discover(), start)
            q: queue.Queue[Any] = queue.Queue(maxsize=self.config.batching.queue_size)
            reader = threading.Thread(target=self._read, args=(source, start, q, reader_stop), name=f"zetl-read-{self.name}", daemon=True)
            reader.start()
            self._write_loop(q, pipeline, sink, source)
        finally:
            reader_stop.set()
            self._close(source, sink)
            if reader is not None:
                reader.join(timeout=10)
            self._save_status(force=True)
            self._source = self._sink = None
            self._pipeline = None

    def _claim_epoch(self, sink: Sink, context: PluginContext) -> None:
        stored = sink.stored_epoch() if sink.capabilities.stores_checkpoint else None
        epoch = self.state_db.claim_epoch(self.name, at_least=(stored or 0) + 1)
        context.writer_epoch = epoch
        self.status.writer_epoch = epoch
        if stored is not None:
            self.log.info("writer epoch %d (the target's newest: %d)", epoch, stored)

    def _start_position(self, sink: Sink) -> Position | None:
        saved = self.checkpoints.load(self.name)
        stored = sink.stored_position() if sink.capabilities.stores_checkpoint else None
        if saved is None and stored is not None and self.checkpoints.was_reset(self.name):
            self.log.info("the integration was reset: starting over, the position the sink stored (%s) is not used", stored)
            return None
        if stored is not None and (saved is None or stored > saved):
            # The sink committed data whose checkpoint save did not happen (crash in between):
            # the sink's own record is the truth.
            self.log.info("the sink holds a newer position than the checkpoint store: %s", stored)
            self.checkpoints.save(self.name, stored)
            return stored
        return saved

    def _read(self, source: Source, start: Position | None, q: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not (self.stop.is_set() or stop.is_set()):
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for batch in source.read(start):
                if not put(batch):
                    return
            put(_END)
        except BaseException as exc:  # handed to the writer, which raises it in the runner thread
            if not (self.stop.is_set() or stop.is_set()):
                put(_Failure(exc))

    def _write_loop(self, q: queue.Queue[Any], pipeline: SchemaPipeline, sink: Sink, source: Source) -> None:
        batching = self.config.batching
        pending: list[Batch] = []
        pending_rows = 0
        first_at = 0.0
        failure: BaseException | None = None
        finished = False
        self._set_state(State.STREAMING)
        while True:
            if self.stop.is_set():
                break
            item: Any = None
            try:
                if pending:
                    wait = max(0.0, batching.max_delay - (time.monotonic() - first_at))
                    item = q.get(timeout=wait) if not q.empty() else q.get_nowait()
                else:
                    item = q.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is _END:
                finished = True
                break
            if isinstance(item, _Failure):
                failure = item.error
                break
            if isinstance(item, Batch):
                if item.schema_changes and pending:
                    self._write(pipeline, sink, source, pending)
                    pending, pending_rows = [], 0
                if not pending:
                    first_at = time.monotonic()
                pending.append(item)
                pending_rows += item.row_count
                if pending_rows < batching.max_rows and not q.empty() and time.monotonic() - first_at < batching.max_delay:
                    continue  # more is already waiting: coalesce it into this write
            if pending:
                self._write(pipeline, sink, source, pending)
                pending, pending_rows = [], 0
            else:
                self._durable(sink.flush(), source)
            self._update_phase(source)
            self._save_status()
        if pending:
            self._write(pipeline, sink, source, pending)
        self._durable(sink.flush(force=True), source)
        if failure is not None:
            raise failure
        if finished:
            self.log.info("source finished")

    def _update_phase(self, source: Source) -> None:
        phase = self.status.source.get("phase")
        if phase == "snapshot" and self.status.state is not State.SNAPSHOTTING:
            self.status.state = State.SNAPSHOTTING
        elif phase != "snapshot" and self.status.state is State.SNAPSHOTTING:
            self.status.state = State.STREAMING

    def _write(self, pipeline: SchemaPipeline, sink: Sink, source: Source, batches: list[Batch]) -> None:
        batch = pipeline.process(merge_batches(batches))
        durable = sink.write(batch)
        self.status.rows_written += batch.row_count
        self.status.batches_written += 1
        self.status.schema_changes = pipeline.schema_changes_applied
        self.status.last_write_at = time.time()
        # The newest commit time of the batch, without a Python-level step per event: attrgetter,
        # filter and max all run in C (commit times are timezone-aware datetimes, never false).
        newest = max(filter(None, map(_commit_ts, batch.events)), default=None)
        if newest is not None:
            self.status.lag_seconds = max(0.0, time.time() - newest.timestamp())
        self._durable(durable, source)

    def _durable(self, position: Position | None, source: Source) -> None:
        if position is None:
            return
        if self._last_durable is not None and position.kind == self._last_durable.kind and position <= self._last_durable:
            return  # nothing new: a checkpoint never moves backwards
        self._last_durable = position
        durable = getattr(source, "durable", None)  # a duck-typed source may not have it
        if durable is not None:
            durable(position)  # the source's own shape records first: never behind the checkpoint
        self.checkpoints.save(self.name, position)
        if self._pipeline is not None and self._pipeline.unsaved_schema_changes:
            self._pipeline.unsaved_schema_changes = False
            fault_point(FaultPoint.SCHEMA_AFTER_CHECKPOINT)
        self.status.position = str(position)
        try:
            source.ack(position)
        except Exception as exc:  # the next ack carries a later position; never lose the write for it
            self.log.warning("could not acknowledge %s to the source: %s", position, exc)

    def _close(self, source: Source, sink: Sink) -> None:
        for plugin in (source, sink):
            try:
                plugin.close()
            except Exception as exc:
                self.log.warning("error while closing %s: %s", type(plugin).__name__, exc)

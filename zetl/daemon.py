"""The daemon: runs many integrations in one process, each isolated in its own thread.

One integration failing puts it in ``failed`` (or ``needs_attention``) and leaves the others
running. SIGTERM/SIGINT stop every integration gracefully (write what was read, commit, save the
checkpoint) within ``shutdown_timeout``; a second signal exits at once.

One writer per integration: before anything starts, the daemon takes each integration's lock
(``zetl.writerlock``). An integration another process runs is skipped with an error naming that
process (its status is left alone); when that leaves nothing to run, ``run`` returns 1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from zetl.config.load import Integration
from zetl.errors import ZetlError
from zetl.runner import IntegrationRunner
from zetl.status import State
from zetl.writerlock import IntegrationLockedError

__all__ = ["Daemon"]

log = logging.getLogger("zetl.daemon")


class Daemon:
    """Runs integrations until they all end or a signal arrives.

    Exit code of ``run``: 0 when every integration stopped or finished cleanly (including after a
    signal), 1 when any ended ``failed`` or ``needs_attention``.
    """

    def __init__(
        self,
        integrations: list[Integration],
        *,
        shutdown_timeout: float = 30.0,
        progress: Callable[[str, Any, int, int | None], None] | None = None,
        metrics: Any = None,
    ) -> None:
        self.integrations = integrations
        self.shutdown_timeout = shutdown_timeout
        self.stop = threading.Event()
        self.results: dict[str, State] = {}
        self.skipped: dict[str, str] = {}
        self.runners: list[IntegrationRunner] = []
        for integration in integrations:
            try:
                self.runners.append(IntegrationRunner(integration, self.stop, progress=progress, metrics=metrics))
            except ZetlError as exc:  # e.g. its recorded state is gone: the others still run
                log.error("integration %s cannot start: %s", integration.name, exc.message)
                self.results[integration.name] = State.NEEDS_ATTENTION
        self._signals = 0

    def _acquire_locks(self) -> list[IntegrationRunner]:
        runnable = []
        for runner in self.runners:
            try:
                runner.acquire_lock()
            except IntegrationLockedError as exc:
                log.error("skipping %s: %s", runner.name, exc.message)
                self.skipped[runner.name] = exc.message
                continue
            runnable.append(runner)
        return runnable

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            log.error("second signal: exiting now without waiting")
            os._exit(130)
        log.info("received %s: stopping (write what was read, commit, save checkpoints)", signal.Signals(signum).name)
        self.stop.set()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        runnable = self._acquire_locks()
        if not runnable:
            return 1
        threads = []
        for runner in runnable:
            t = threading.Thread(target=self._run_one, args=(runner,), name=f"zetl-{runner.name}", daemon=True)
            t.start()
            threads.append(t)
        log.info("running %d integration(s): %s", len(runnable), ", ".join(r.name for r in runnable))
        while any(t.is_alive() for t in threads) and not self.stop.is_set():
            self.stop.wait(0.2)
        deadline = time.monotonic() + self.shutdown_timeout
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.error("integrations still stopping after %.0fs, exiting anyway: %s", self.shutdown_timeout, ", ".join(stuck))
        for runner in runnable:
            if runner.lock.held and not any(t.name == f"zetl-{runner.name}" for t in threads if t.is_alive()):
                runner.lock.release()
        bad = [name for name, state in self.results.items() if state in (State.FAILED, State.NEEDS_ATTENTION)]
        return 1 if bad else 0

    def _run_one(self, runner: IntegrationRunner) -> None:
        try:
            self.results[runner.name] = runner.run()
        except BaseException as exc:  # never let one integration take the daemon down
            log.exception("integration %s crashed: %s", runner.name, exc)
            self.results[runner.name] = State.FAILED

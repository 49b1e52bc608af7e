"""Named crash points for crash tests: ``ZETL_FAULT_POINT=name[:N]`` SIGKILLs the process the
N-th time (default: the first) the code passes ``fault_point(name)``.

The points sit where a crash is hardest to survive (between a schema change and the checkpoint
that covers it), so a test can kill ``zetl run`` exactly there instead of guessing a moment.
Unset, a point costs one dictionary lookup. Known points (``POINTS``) are checked, so a typo in
a test fails at once instead of never firing.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from enum import Enum

__all__ = ["ENV", "FaultPoint", "fault_point"]

ENV = "ZETL_FAULT_POINT"


class FaultPoint(str, Enum):
    """Where a crash test may kill the process."""

    SCHEMA_BEFORE_APPLY = "schema.before-apply"
    """A plan's changes are recorded as planned in the state; none is applied to the sink."""
    SCHEMA_BETWEEN_CHANGES = "schema.between-changes"
    """The first change of a plan of several is applied; the others are not."""
    SCHEMA_AFTER_APPLY = "schema.after-apply"
    """Every change of a plan is applied and recorded as applied; no row of the batch is written."""
    SCHEMA_AFTER_CHECKPOINT = "schema.after-checkpoint"
    """The first checkpoint that covers an applied schema change is saved."""


_lock = threading.Lock()
_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    text = os.environ.get(ENV)
    if not text:
        return None
    name, _, count = text.partition(":")
    known = {p.value for p in FaultPoint}
    if name not in known or (count and not count.isdigit()):
        raise ValueError(f"{ENV}={text!r} is not understood; write <point>[:N] with a point among {', '.join(sorted(known))}")
    return name, int(count) if count else 1


_TARGET = _target()


def fault_point(point: FaultPoint) -> None:
    """SIGKILL this process if ``ZETL_FAULT_POINT`` names ``point`` and this is its N-th pass."""
    if _TARGET is None or _TARGET[0] != point.value:
        return
    with _lock:
        _hits[point.value] = _hits.get(point.value, 0) + 1
        if _hits[point.value] != _TARGET[1]:
            return
    logging.getLogger("zetl.faults").warning("%s=%s:%d reached: killing the process", ENV, *_TARGET)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

"""Small files that must survive a crash intact: written aside, flushed, renamed into place.

Plugins keep such files in ``context.state_dir`` (e.g. what a source created on its server).
``write_json`` guarantees that after a crash the file holds either the old content or the new
one, never a mix, and that on return the new content is on disk (the directory entry too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably (raises ``OSError``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # the rename itself is durable only once the directory is flushed
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any | None:
    """The JSON content of ``path``; None when the file does not exist.

    Raises ``OSError`` or ``ValueError`` when it exists but cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)

"""An advisory lock per output folder, so two runs on one folder (two ingests, two builds, two
publishes of one release) never interleave: the second one stops at once with one line naming the
holder, instead of corrupting the first one's output.

The lock file sits beside the folder (``.<name>.lock``), not inside it, because several stages
replace their output folder as a whole. The holder's pid and command are written next to it so the
refusal can say who holds it. The OS releases the lock when its holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError


def lock_path(folder: Path, key: str | None = None) -> Path:
    return folder.with_name(f".{folder.name}.{key}.lock" if key else f".{folder.name}.lock")


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, *, key: str | None = None, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock of ``folder`` for the block; ``InputError`` (exit 2) when another process
    holds it for longer than ``wait`` seconds. ``key`` splits one folder's lock into several (the
    ranks of one multi-process run each hold their own; a second run's rank 0 meets the first's)."""
    folder = Path(folder).resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder, key)
    owner = path.with_name(path.name + ".owner")
    lock = FileLock(str(path), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_owner(owner)
        raise InputError(f"in use by {holder}; wait for it to finish or stop it", file=folder) from None
    try:
        atomic.write_json(owner, {"pid": os.getpid(), "what": what, "argv": sys.argv[1:3]})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _read_owner(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return f"pid {info['pid']} ({info['what']})"
    except (OSError, ValueError, KeyError):
        return "another process"


__all__ = ["folder_lock", "lock_path"]

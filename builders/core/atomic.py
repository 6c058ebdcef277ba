"""Files and folders that appear complete or not at all: written under a temporary name beside the
target and renamed into place; a failure removes the temporary and leaves the old target as it was.

Temporaries are named ``.<target>.tmp-<pid>`` so that a crashed run's leftovers are recognisable
(``remove_stale``) and never mistaken for results.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``target`` when the block ends without error."""
    target = Path(target)
    tmp = temp_path(target)
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        _name_the_file(exc, target)
        raise
    finally:
        _remove(tmp)


def _name_the_file(exc: OSError, target: Path) -> None:
    """Writers such as pyarrow report a full disk without the file's name; the user needs it."""
    if not exc.filename:
        exc.filename = str(target)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    with atomic_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, value: Any, **dump: Any) -> None:
    write_text(target, json.dumps(value, **dump))


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, keep_old: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes ``target`` when the block ends without error.

    An existing ``target`` is replaced (moved aside, then removed, so the swap is never half done);
    with ``keep_old`` the old folder is left as ``.<target>.old-<pid>`` for the caller's inspection.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(target, old)
            os.replace(tmp, target)
            if not keep_old:
                _remove(old)
        else:
            os.replace(tmp, target)
    finally:
        _remove(tmp)


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete temporaries that killed runs left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and TMP_MARK in p.name]
    for p in stale:
        _remove(p)
    return stale


__all__ = ["atomic_file", "atomic_dir", "write_bytes", "write_text", "write_json", "remove_stale", "temp_path"]

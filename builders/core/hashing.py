"""Content hashes: of files, folders and JSON-able values. The identities that reports, stamps and
the ``generator`` column record, computed one way everywhere."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(*parts: Any) -> str:
    """Digest of JSON-able values (sorted keys; paths and other objects by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def hash_tree(path: Path) -> str:
    """sha256 over every file (relative name + content) of a folder, dot-files left out: the
    identity of a checkpoint or base model."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


@lru_cache(maxsize=32)
def _tree_hash_cached(path: str) -> str:
    return hash_tree(Path(path))


def tree_hash(path: str | Path) -> str:
    """``hash_tree`` of the resolved folder, cached: real checkpoints take seconds to hash."""
    return _tree_hash_cached(str(Path(path).resolve()))


def content_hash(path: str | Path) -> str:
    """First 12 hex digits of ``tree_hash``: the row's ``generator`` column names the exact weights."""
    return tree_hash(path)[:12]


__all__ = ["sha256_file", "sha256_bytes", "sha256_json", "hash_tree", "tree_hash", "content_hash"]

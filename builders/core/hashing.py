"""Content hashes: of files, folders and JSON-able values. The identities that reports, stamps and
the ``generator`` column record, computed one way everywhere."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from mammosynth.builders.core import atomic


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


def dataset_content_hash(ds: Any, memo_file: Path | None = None) -> str:
    """The identity of a ``datasets.Dataset``'s content: blake2b over its arrow files (and its row
    count), independent of where it lies or when it was written. Per-file digests are memoized in
    ``memo_file`` by (size, mtime), so an unchanged multi-GB set is not re-read on every run."""
    memo: dict[str, Any] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text())
        except json.JSONDecodeError:
            memo = {}
    files = sorted({f["filename"] for f in ds.cache_files})
    total = hashlib.blake2b(digest_size=16)
    total.update(f"rows={ds.num_rows}".encode())
    changed = False
    for fn in files:
        st = os.stat(fn)
        key = f"{st.st_size}:{st.st_mtime_ns}"
        entry = memo.get(fn)
        if not entry or entry.get("key") != key:
            h = hashlib.blake2b(digest_size=16)
            with open(fn, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            entry = {"key": key, "digest": h.hexdigest()}
            memo[fn] = entry
            changed = True
        total.update(entry["digest"].encode())
    if not files:  # an in-memory dataset: hash the table itself
        for batch in ds.data.to_batches():
            for col in batch.columns:
                for buf in col.buffers():
                    if buf is not None:
                        total.update(memoryview(buf))
    if changed and memo_file is not None:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(memo_file, memo)
    return total.hexdigest()


__all__ = [
    "sha256_file",
    "sha256_bytes",
    "sha256_json",
    "hash_tree",
    "tree_hash",
    "content_hash",
    "dataset_content_hash",
]

"""The per-image pass: every release image decoded and analysed once (features, embedding, pHash,
thumbnail), on a process pool when the release is large enough to pay for one.

Every later check reads the result (``Analysed``) instead of the pixels.
"""

from __future__ import annotations

import atexit
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_bytes
from mammosynth.builders.core.imageio import UnreadableImage
from mammosynth.builders.core.progress import bar as progress_bar
from mammosynth.builders.core.schema import parse_birads
from mammosynth.builders.core.workers import worker_pool
from mammosynth.validation.image_features import PHASH_BYTES, ImageFeatures, analyse
from mammosynth.validation.release_io import LoadedRelease
from mammosynth.validation.thresholds import Thresholds


@dataclass
class Rows:
    """Release rows as plain columns (class labels as names)."""

    ids: list[str]
    method: list[str]
    birads: list[int]
    view: list[str]
    laterality: list[str]
    density: list[str | None]
    bbox: list[list[list[float]]]
    prompt: list[str | None]
    source: list[str | None]
    manufacturer: list[str | None]

    @classmethod
    def of(cls, rel: LoadedRelease) -> "Rows":
        """Every column but the image, read from the data files without their image bytes."""
        f = rel.dataset.features
        meta = rel.dataset.table([c for c in f if c != "image"]).to_pydict()

        def names(col: str) -> list[str | None]:
            return [f[col].int2str(int(v)) if v is not None and int(v) >= 0 else None for v in meta[col]]

        ids = [str(i) for i in meta["image_id"]]
        dup = [k for k, c in Counter(ids).items() if c > 1]
        if dup:
            raise InputError(f"image_id is not unique: {dup[:5]}", file=rel.source, field="image_id")
        return cls(
            ids=ids,
            method=names("method"),
            birads=[parse_birads(b) for b in names("birads")],
            view=names("view"),
            laterality=names("laterality"),
            density=names("density"),
            bbox=[b or [] for b in meta["bbox"]],
            prompt=meta["prompt"],
            source=meta["source_image"],
            manufacturer=meta["manufacturer"],
        )


@dataclass
class Analysed:
    """Per row: its features (None when unreadable, the error text then in ``errors``), and the
    search vectors as matrices (zero rows for unreadable images); ``row_hashes`` as
    ``LoadedRelease.row_hashes`` gives them, taken in the same pass over the bytes."""

    feats: list[ImageFeatures | None]
    errors: dict[int, str]
    emb: np.ndarray
    phash: np.ndarray
    thumbs: dict[str, np.ndarray]
    row_hashes: dict[str, str] = field(default_factory=dict)


# --- the process pool ----------------------------------------------------------------------------

ANALYSIS_WORKERS = 2  # processes for the per-image pass (the work is per-image and CPU-bound)
MIN_ROWS_FOR_POOL = 16  # below this the pool's hand-off costs more than it saves
_CHUNK = 8  # images per task handed to a worker
_BATCH = 64  # rows read from the release at a time
POOL_METHOD = "forkserver"  # safe after torch/OpenCV threads; the fork server leaves with its owner
_POOL: ProcessPoolExecutor | None = None


def _imports_ready() -> None:
    """The workers' initializer, a no-op: unpickling it imports this module (OpenCV, the analysis)
    in each worker as the pool starts, instead of with the first images."""


def analysis_pool(n_rows: int) -> ProcessPoolExecutor | None:
    """The pool for a release of ``n_rows`` images, or None when it would not pay.

    One pool per interpreter, started on first use without waiting for its workers: called early
    (before the reference index loads) their start and imports overlap that work. Its workers exit
    when this process dies, killed or not."""
    global _POOL
    if ANALYSIS_WORKERS <= 1 or n_rows < MIN_ROWS_FOR_POOL:
        return None
    if _POOL is None:
        _POOL = worker_pool(ANALYSIS_WORKERS, method=POOL_METHOD, initializer=_imports_ready, wait_ready=False)
        atexit.register(_POOL.shutdown)
    return _POOL


# --- the pass ------------------------------------------------------------------------------------


def _analyse_chunk(jobs: list[tuple]) -> list[ImageFeatures | str]:
    return [_analyse_one(j) for j in jobs]


def _analyse_one(args: tuple) -> ImageFeatures | str:
    """Worker body: features, or the error text for an unreadable image (same in every process)."""
    img, boxes, embed_size, bins, thumb_side = args
    try:
        return analyse(img, boxes=boxes, embed_size=embed_size, bins=bins, thumb_side=thumb_side)
    except (UnreadableImage, InputError, ValueError, OSError) as exc:
        return str(exc) or type(exc).__name__


def analyse_rows(
    rel: LoadedRelease, rows: Rows, th: Thresholds, thumb_rows: set[int], desc: str, progress: bool
) -> Analysed:
    """Analyse every row of ``rel`` (thumbnails for ``thumb_rows`` only), in row order."""
    n = len(rows.ids)
    d = th.dedup.embed_size**2
    emb = np.zeros((n, d), np.float32)
    ph = np.zeros((n, PHASH_BYTES), np.uint8)
    feats: list[ImageFeatures | None] = [None] * n
    errors: dict[int, str] = {}
    thumbs: dict[str, np.ndarray] = {}
    hashes: dict[str, str] = {}
    bar = progress_bar(total=n, desc=desc, unit="img", enabled=progress)
    pool = analysis_pool(n)
    pending: deque[Future] = deque()  # chunks in flight, in row order
    k = 0

    def collect(results: list) -> None:
        nonlocal k
        for res in results:
            if isinstance(res, str):
                errors[k] = res
            else:
                feats[k], emb[k], ph[k] = res, res.embedding, res.phash
                if res.thumb is not None:
                    thumbs[rows.ids[k]] = res.thumb
            k += 1
            bar.update(1)

    start = 0
    # file by file, a batch at a time: only the batches in flight hold image bytes
    for batch in rel.iter_batches(["image"], batch_size=_BATCH):
        jobs = [
            (
                img,
                rows.bbox[start + j],
                th.dedup.embed_size,
                th.stats.histogram_bins,
                th.stats.msssim_size if start + j in thumb_rows else 0,
            )
            for j, img in enumerate(batch.column("image").to_pylist())
        ]
        first, start = start, start + len(jobs)
        if pool is not None:
            # Keep the workers fed while the next batch is read: collect only the oldest chunks, and
            # only once about two batches are in flight (bounded memory, no stall between batches).
            for c in range(0, len(jobs), _CHUNK):
                pending.append(pool.submit(_analyse_chunk, jobs[c : c + _CHUNK]))
        for j, job in enumerate(jobs):  # the bytes' hashes, while the workers analyse them
            data = job[0]["bytes"]
            hashes[rows.ids[first + j]] = sha256_bytes(data) if data else ""
        if pool is None:
            collect(_analyse_chunk(jobs))
            continue
        while len(pending) > 2 * _BATCH // _CHUNK:
            collect(pending.popleft().result())
    while pending:
        collect(pending.popleft().result())
    bar.close()
    return Analysed(feats, errors, emb, ph, thumbs, hashes)


__all__ = ["Rows", "Analysed", "ANALYSIS_WORKERS", "MIN_ROWS_FOR_POOL", "POOL_METHOD", "analysis_pool", "analyse_rows"]

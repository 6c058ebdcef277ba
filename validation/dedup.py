"""Exact, perceptual-hash and nearest-neighbour matching, against the reference and within the
release, searched exhaustively with faiss flat indexes (no approximation: a missed copy is a
privacy leak)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Neighbours:
    """For each query row, its ``k`` nearest rows of the database (``-1`` = none)."""

    dist: np.ndarray  # (q, k) embedding L2 distances
    idx: np.ndarray  # (q, k)
    ham: np.ndarray  # (q, k) pHash Hamming distances
    hidx: np.ndarray  # (q, k)


def search(
    query_emb: np.ndarray,
    query_phash: np.ndarray,
    db_emb: np.ndarray,
    db_phash: np.ndarray,
    k: int = 4,
    *,
    batch: int = 8192,
) -> Neighbours:
    """Exact k-NN in both spaces. Queries go in batches to bound memory for 50k x 20k searches."""
    q = len(query_emb)
    k = max(1, min(k, len(db_emb)))
    out = Neighbours(
        np.full((q, k), np.inf, np.float32), np.full((q, k), -1, np.int64),
        np.full((q, k), 10**6, np.int32), np.full((q, k), -1, np.int64),
    )  # fmt: skip
    if q == 0 or len(db_emb) == 0:
        return out
    flat = faiss.IndexFlatL2(db_emb.shape[1])
    flat.add(np.ascontiguousarray(db_emb, dtype=np.float32))
    binary = faiss.IndexBinaryFlat(db_phash.shape[1] * 8)
    binary.add(np.ascontiguousarray(db_phash, dtype=np.uint8))
    for s in range(0, q, batch):
        e = min(q, s + batch)
        d2, i = flat.search(np.ascontiguousarray(query_emb[s:e], dtype=np.float32), k)
        out.dist[s:e] = np.sqrt(np.maximum(d2, 0))
        out.idx[s:e] = i
        hd, hi = binary.search(np.ascontiguousarray(query_phash[s:e], dtype=np.uint8), k)
        out.ham[s:e], out.hidx[s:e] = hd, hi
    return out


def first_allowed(
    dist: np.ndarray, idx: np.ndarray, allowed: np.ndarray
) -> tuple[float, int]:
    """Nearest neighbour among those ``allowed`` (a boolean per neighbour column)."""
    for d, i, ok in zip(dist, idx, allowed):
        if i >= 0 and ok:
            return float(d), int(i)
    return float("inf"), -1


def background_difference(
    image: np.ndarray, source: np.ndarray, boxes: list[list[float]], margin: float
) -> float:
    """Mean |difference| (0..1 units) between an inpainted/blended image and its own background,
    outside the lesion boxes (each grown by ``margin`` x its size, where blending may reach)."""
    import cv2

    from mammosynth.validation.image_features import dtype_max, to_gray

    a = to_gray(image).astype(np.float32) / dtype_max(to_gray(image))
    b = to_gray(source).astype(np.float32) / dtype_max(to_gray(source))
    if b.shape != a.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    keep = np.ones(a.shape, bool)
    h, w = a.shape
    for x0, y0, x1, y1 in boxes:
        mx, my = (x1 - x0) * margin, (y1 - y0) * margin
        keep[max(0, int(y0 - my)) : min(h, int(np.ceil(y1 + my))), max(0, int(x0 - mx)) : min(w, int(np.ceil(x1 + mx)))] = False
    if not keep.any():
        return 0.0
    return float(np.abs(a - b)[keep].mean())

"""Exact, perceptual-hash and nearest-neighbour matching, against the reference and within the
release, searched exhaustively with faiss flat indexes (no approximation: a missed copy is a
privacy leak)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import faiss
import numpy as np
from scipy import sparse


@dataclass
class Neighbours:
    """For each query row, its ``k`` nearest rows of the database (``-1`` = none)."""

    dist: np.ndarray  # (q, k) embedding L2 distances
    idx: np.ndarray  # (q, k)
    ham: np.ndarray  # (q, k) pHash Hamming distances
    hidx: np.ndarray  # (q, k)


# Up to this many queries, faiss searches on one thread: its OpenMP threads gain little on a small
# batch and lose badly when other processes hold the cores (400 x 20k: 0.28 s on one thread,
# 0.6 s on two with the machine loaded).
SMALL_SEARCH = 2048


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
        np.full((q, k), np.inf, np.float32),
        np.full((q, k), -1, np.int64),
        np.full((q, k), 10**6, np.int32),
        np.full((q, k), -1, np.int64),
    )
    if q == 0 or len(db_emb) == 0:
        return out
    flat = faiss.IndexFlatL2(db_emb.shape[1])
    flat.add(np.ascontiguousarray(db_emb, dtype=np.float32))
    binary = faiss.IndexBinaryFlat(db_phash.shape[1] * 8)
    binary.add(np.ascontiguousarray(db_phash, dtype=np.uint8))
    # faiss computes L2 distances query by query below 128,000 queries and with one matrix product
    # above; at 1024-d the product is ~3x faster already for a few dozen queries (a small release)
    blas_threshold, threads = faiss.cvar.distance_compute_blas_threshold, faiss.omp_get_max_threads()
    faiss.cvar.distance_compute_blas_threshold = 1
    if q <= SMALL_SEARCH:
        faiss.omp_set_num_threads(1)
    try:
        for s in range(0, q, batch):
            e = min(q, s + batch)
            d2, i = flat.search(np.ascontiguousarray(query_emb[s:e], dtype=np.float32), k)
            out.dist[s:e] = np.sqrt(np.maximum(d2, 0))
            out.idx[s:e] = i
            hd, hi = binary.search(np.ascontiguousarray(query_phash[s:e], dtype=np.uint8), k)
            out.ham[s:e], out.hidx[s:e] = hd, hi
    finally:
        faiss.cvar.distance_compute_blas_threshold = blas_threshold
        faiss.omp_set_num_threads(threads)
    return out


# Shift/scale-tolerant re-scoring. A breast touching the top and bottom image edges (most MLO
# views) has a crop whose vertical extent follows the image frame, so a shifted or cropped copy
# lands on a stretched and slid 32x32 grid. Near candidates are re-scored as the least distance
# over small scales and shifts of the query grid (cells), compared inside the overlap only.
_SCALES_Y = (0.9, 0.95, 1.0, 1.05, 1.1)
_SHIFTS_Y = (-3, -2, -1, 0, 1, 2, 3)
_SCALES_X = (0.95, 1.0, 1.05)
_SHIFTS_X = (-1, 0, 1)
_CHUNK = 16  # queries per re-scoring batch: bounds the (chunk, transforms, d) warped grids


@lru_cache(maxsize=4)
def _warps(size: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """All grid transforms as one sparse bilinear resampler ((t * d, d)) and their overlaps
    ((t, d) float32, 1 where the warped cell samples inside the source grid)."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    rows, cols, vals, overlap = [], [], [], []
    t = 0
    d = size * size
    for sy in _SCALES_Y:
        for ty in _SHIFTS_Y:
            for sx in _SCALES_X:
                for tx in _SHIFTS_X:
                    y = ((yy - c - ty) / sy + c).ravel()
                    x = ((xx - c - tx) / sx + c).ravel()
                    ok = (y >= -1e-6) & (y <= size - 1 + 1e-6) & (x >= -1e-6) & (x <= size - 1 + 1e-6)
                    y, x = np.clip(y, 0, size - 1), np.clip(x, 0, size - 1)
                    y0, x0 = (
                        np.minimum(np.floor(y).astype(int), size - 2),
                        np.minimum(np.floor(x).astype(int), size - 2),
                    )
                    fy, fx = y - y0, x - x0
                    out = np.nonzero(ok)[0]
                    for dy, dx, w in (
                        (0, 0, (1 - fy) * (1 - fx)),
                        (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)),
                        (1, 1, fy * fx),
                    ):
                        rows.append(t * d + out)
                        cols.append(((y0 + dy) * size + x0 + dx)[out])
                        vals.append(w[out])
                    overlap.append(ok.astype(np.float32))
                    t += 1
    w = sparse.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(t * d, d)
    )
    return w, np.stack(overlap)


def tolerant_distance(query: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """(n, k) least L2 distance between unit-normed ``query`` grids (n, d) and each of their
    candidates (n, k, d) over the small scales and shifts of the query grid, both sides restricted
    to the overlap and renormalized there. The identity is among them, so it never exceeds the
    plain distance."""
    n, k, d = cands.shape
    out = np.full((n, k), np.inf, np.float32)
    if n == 0 or k == 0:
        return out
    size = int(round(np.sqrt(d)))
    w, overlap = _warps(size)
    t = overlap.shape[0]
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        q = np.ascontiguousarray(query[s:e], np.float32)
        c = np.ascontiguousarray(cands[s:e], np.float32)
        a = np.ascontiguousarray((w @ q.T).reshape(t, d, e - s).transpose(2, 0, 1))  # (m, t, d)
        dot = a @ c.transpose(0, 2, 1)  # (m, t, k), batched BLAS
        na = np.einsum("mtd,mtd->mt", a, a)[:, :, None]
        nb = ((c * c).reshape(-1, d) @ overlap.T).reshape(e - s, k, t).transpose(0, 2, 1)  # candidate norms per overlap
        cos = dot / np.sqrt(np.maximum(na * nb, 1e-24))
        out[s:e] = np.sqrt(np.maximum(2.0 - 2.0 * cos.max(1), 0.0))
    return out


# Candidates re-scored: those closer than this factor x the match threshold. The worst planted
# copy (phantom MLO crop) measured 1.88x before re-scoring; ordinary nearest neighbours of other
# patients sit above ~2x by the calibration's construction, so few queries pay for re-scoring.
PRESCORE_FACTOR = 2.0


def rescore(nb: Neighbours, query_emb: np.ndarray, db_emb: np.ndarray, bound: float) -> Neighbours:
    """Embedding distances under ``bound`` replaced by ``tolerant_distance``; each touched row
    re-sorted so that its first allowed column is still its nearest."""
    near = (nb.dist < bound) & (nb.idx >= 0)
    rows = np.nonzero(near.any(1))[0]
    if not len(rows):
        return nb
    idx, dist = nb.idx[rows], nb.dist[rows]
    tol = tolerant_distance(query_emb[rows], db_emb[np.maximum(idx, 0)])
    dist = np.where(near[rows], np.minimum(tol, dist), dist)
    order = np.argsort(dist, axis=1, kind="stable")
    nb.dist[rows] = np.take_along_axis(dist, order, 1)
    nb.idx[rows] = np.take_along_axis(idx, order, 1)
    return nb


def first_allowed(dist: np.ndarray, idx: np.ndarray, allowed: np.ndarray) -> tuple[float, int]:
    """Nearest neighbour among those ``allowed`` (a boolean per neighbour column)."""
    for d, i, ok in zip(dist, idx, allowed):
        if i >= 0 and ok:
            return float(d), int(i)
    return float("inf"), -1


def background_difference(image: np.ndarray, source: np.ndarray, boxes: list[list[float]], margin: float) -> float:
    """Mean |difference| (0..1 units) between an inpainted/blended image and its own background,
    outside the lesion boxes (each grown by ``margin`` x its size, where blending may reach)."""
    import cv2

    from mammosynth.builders.core.imageio import dtype_max, grey_channel

    a = grey_channel(image).astype(np.float32) / dtype_max(grey_channel(image))
    b = grey_channel(source).astype(np.float32) / dtype_max(grey_channel(source))
    if b.shape != a.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    keep = np.ones(a.shape, bool)
    h, w = a.shape
    for x0, y0, x1, y1 in boxes:
        mx, my = (x1 - x0) * margin, (y1 - y0) * margin
        keep[
            max(0, int(y0 - my)) : min(h, int(np.ceil(y1 + my))), max(0, int(x0 - mx)) : min(w, int(np.ceil(x1 + mx)))
        ] = False
    if not keep.any():
        return 0.0
    return float(np.abs(a - b)[keep].mean())


# --- geometric verification ----------------------------------------------------------------------
# A grid embedding moves when a copy is cropped, zoomed, rotated or re-windowed; keypoints matched
# between the two breast crops and a RANSAC affine fit do not: a copy keeps dozens of consistent
# matches whatever the geometry, two different breasts (even two views of one woman) a handful.
_RATIO = 0.8  # Lowe's ratio test on the two nearest descriptors
_RANSAC_PX = 4.0  # reprojection error (pixels of the KP_HEIGHT crop) of an inlier
_RANSAC_ITERS = 200  # a copy (>= 30 % inliers) is found within 200 samples with p > 0.99
_matcher = None


def geometric_inliers(
    q_xy: np.ndarray, q_desc: np.ndarray, candidates: list[tuple[np.ndarray, np.ndarray]], need: int
) -> list[int]:
    """Per candidate crop, the keypoint matches of the query crop consistent with one affine
    transform (RANSAC, ``cv2.estimateAffine2D``). The query's descriptors are matched against all
    candidates' at once (brute-force Hamming, two nearest, ratio test), so a match must also beat
    every other candidate's keypoints. A candidate with fewer than ``need`` matches is not fitted
    (its inliers cannot reach ``need``): its count is then that number of matches, an upper bound."""
    import cv2

    global _matcher
    out = [0] * len(candidates)
    sizes = [len(d) for _, d in candidates]
    if len(q_desc) < 4 or sum(sizes) < 2:
        return out
    if _matcher is None:
        _matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    owner = np.repeat(np.arange(len(candidates)), sizes)
    db_xy = np.concatenate([xy for xy, _ in candidates]).astype(np.float32)
    db = np.ascontiguousarray(np.concatenate([d for _, d in candidates]))
    pairs = _matcher.knnMatch(np.ascontiguousarray(q_desc), db, k=2)
    good = np.array(
        [(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < _RATIO * p[1].distance],
        np.int64,
    ).reshape(-1, 2)
    for c in range(len(candidates)):
        mine = good[owner[good[:, 1]] == c]
        if len(mine) < max(need, 4):
            out[c] = len(mine)
            continue
        _, inliers = cv2.estimateAffine2D(
            q_xy[mine[:, 0]].astype(np.float32),
            db_xy[mine[:, 1]],
            method=cv2.RANSAC,
            ransacReprojThreshold=_RANSAC_PX,
            maxIters=_RANSAC_ITERS,
            refineIters=0,
        )
        out[c] = int(inliers.sum()) if inliers is not None else 0
    return out

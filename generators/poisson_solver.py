"""Poisson image editing on a region around one lesion: the numerics of the Poisson generator,
with no sampler state (so tests and benchmarks use them on bare arrays).

Blending works on a region around the lesion only (the lesion's box plus a band), never the full
frame. The default engine solves the Poisson equation exactly on that region with a discrete sine
transform, at any bit depth. ``engine: opencv`` uses OpenCV's ``seamlessClone`` instead: 8-bit
only, three channels for a grey image, its boundary on the lesion's box itself; it is several times
slower and further from Pérez et al.'s solution (the mask's outline as the boundary,
``exact_poisson_edit``). Either way the result is used as a *correction* to the background,
tapered to zero over a band of ``band_frac`` x lesion size around the lesion mask, so pixels
outside that band are the background's, bit for bit, and the seam stays smooth."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.fft import dstn, idstn, next_fast_len

from mammosynth.builders.core.errors import InputError

FIELD = "methods.poisson.poisson"
BAND_FRAC = 0.15
MIN_BAND_PX = 3
ENGINES = ("dst", "opencv")


def _grad(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.zeros_like(img), np.zeros_like(img)
    np.subtract(img[:, 1:], img[:, :-1], out=gx[:, :-1])
    np.subtract(img[1:, :], img[:-1, :], out=gy[:-1, :])
    return gx, gy


def _div(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    d = gx.copy()
    d[:, 1:] -= gx[:, :-1]
    d += gy
    d[1:, :] -= gy[:-1, :]
    return d


def _fast_len(n: int) -> int:
    """Smallest m >= n whose DST-I (an FFT of length 2(m+1)) has only small prime factors: an
    awkward region size (2 x a large prime) is otherwise several times slower."""
    return next_fast_len(n + 1, real=True) - 1


def poisson_correction(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, mixed: bool = False) -> np.ndarray:
    """Correction ``w`` (float32) such that ``dst + w`` solves Poisson image editing on the region
    (guidance: ``src`` gradients inside ``mask``, ``dst`` gradients elsewhere — or the stronger of
    the two inside the mask when ``mixed``; Dirichlet boundary: ``dst`` on the region border).

    Exact solve by DST-I, O(n log n) in the region size. The right-hand side (the divergence of the
    guidance minus ``dst``'s gradients) is zero beyond one pixel of the mask, so it is computed on
    the mask's box alone, and the region may grow by zero padding to a fast transform length: the
    boundary then lies a few pixels further out, where the caller's taper is zero anyway."""
    h, w = dst.shape
    out = np.zeros((h, w), np.float32)
    mask = np.asarray(mask, bool)
    mask = mask & np.pad(np.ones((h - 2, w - 2), bool), 1) if h > 2 and w > 2 else np.zeros_like(mask)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    # the mask's box plus one pixel each side: the support of the right-hand side (border rows and
    # columns are never masked, so the box stays inside the region)
    r0, r1, c0, c1 = rows[0] - 1, rows[-1] + 2, cols[0] - 1, cols[-1] + 2
    win = (slice(r0, r1), slice(c0, c1))
    sgx, sgy = _grad(src[win].astype(np.float32))
    dgx, dgy = _grad(dst[win].astype(np.float32))
    if mixed:
        sgx = np.where(np.abs(sgx) > np.abs(dgx), sgx, dgx)
        sgy = np.where(np.abs(sgy) > np.abs(dgy), sgy, dgy)
    m = mask[win]
    sgx -= dgx
    sgy -= dgy
    sgx[~m] = 0
    sgy[~m] = 0
    rhs = _div(sgx, sgy)  # zero outside this window: no masked pixel beyond it
    ny, nx = h - 2, w - 2  # unknowns: the region's interior
    my, mx = _fast_len(ny), _fast_len(nx)
    oy, ox = (my - ny) // 2, (mx - nx) // 2  # pad both sides alike
    padded = np.zeros((my, mx), np.float32)
    a0, a1, b0, b1 = max(r0, 1), min(r1, h - 1), max(c0, 1), min(c1, w - 1)  # the window's interior part
    padded[oy + a0 - 1 : oy + a1 - 1, ox + b0 - 1 : ox + b1 - 1] = rhs[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0]
    spec = dstn(padded, type=1, workers=1)
    ly = (2 * np.cos(np.pi * np.arange(1, my + 1) / (my + 1)) - 2).astype(np.float32)
    lx = (2 * np.cos(np.pi * np.arange(1, mx + 1) / (mx + 1)) - 2).astype(np.float32)
    spec /= np.add.outer(ly, lx)
    sol = np.zeros((my + 2, mx + 2), np.float32)  # the padded domain, its zero border included
    sol[1:-1, 1:-1] = idstn(spec, type=1, workers=1)
    return sol[oy : oy + h, ox : ox + w]  # the region: the equation holds at every interior pixel


def exact_poisson_edit(src: np.ndarray, dst: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pérez et al.'s formulation solved directly (normal mode): inside ``mask`` the result's
    5-point Laplacian equals ``src``'s, everywhere else it is ``dst`` (so the mask's outer boundary
    is the Dirichlet condition). A sparse direct solve: the reference the fast engines are measured
    against in the tests and the benchmark, far too slow for a release."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    m = np.asarray(mask, bool).copy()
    m[[0, -1], :] = m[:, [0, -1]] = False
    s, d = src.astype(np.float64), dst.astype(np.float64)
    ys, xs = np.nonzero(m)
    n = ys.size
    out = d.copy()
    if n == 0:
        return out
    index = np.full(m.shape, -1, np.int64)
    index[ys, xs] = np.arange(n)
    b = 4 * s[ys, xs]
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        yy, xx = ys + dy, xs + dx
        b -= s[yy, xx]
        inside = m[yy, xx]
        rows.append(np.flatnonzero(inside))
        cols.append(index[yy[inside], xx[inside]])
        vals.append(np.full(int(inside.sum()), -1.0))
        b[~inside] += d[yy[~inside], xx[~inside]]
    a = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    out[ys, xs] = spsolve(a, b)
    return out


def opencv_correction(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, mixed: bool) -> np.ndarray:
    """The correction from OpenCV's seamlessClone (8-bit only), which solves on the mask's box."""
    ys, xs = np.nonzero(mask)
    bx, by, bw, bh = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    centre = (int(bx + bw // 2), int(by + bh // 2))  # seamlessClone centres the mask's bounding box here
    flag = cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE
    out = cv2.seamlessClone(cv2.merge([src] * 3), cv2.merge([dst] * 3), mask.astype(np.uint8) * 255, centre, flag)
    return out[..., 0].astype(np.float32) - dst.astype(np.float32)


def band_width(lesion_shape: tuple[int, int], band_frac: float = BAND_FRAC) -> int:
    return max(MIN_BAND_PX, int(round(band_frac * max(lesion_shape))))


def blend(
    background: np.ndarray,
    crop: np.ndarray,
    mask: np.ndarray,
    x: int,
    y: int,
    *,
    mode: str = "normal",
    band_frac: float = BAND_FRAC,
    engine: str = "dst",
) -> tuple[np.ndarray, list[float]]:
    """Blend ``crop`` (its ``mask`` pixels) into ``background`` with its top-left at (x, y).

    Returns the new image (same dtype) and the placed lesion's bbox [xmin, ymin, xmax, ymax].
    ``engine``: "dst" (the exact region solve, any bit depth) or "opencv" (``seamlessClone``, 8-bit).
    """
    patch, (y0, x0), bbox = blend_region(background, crop, mask, x, y, mode=mode, band_frac=band_frac, engine=engine)
    out = background.copy()
    out[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
    return out, bbox


def blend_region(
    background: np.ndarray,
    crop: np.ndarray,
    mask: np.ndarray,
    x: int,
    y: int,
    *,
    mode: str = "normal",
    band_frac: float = BAND_FRAC,
    engine: str = "dst",
) -> tuple[np.ndarray, tuple[int, int], list[float]]:
    """``blend`` without the full-frame copy: the changed region (``patch``), its top-left (y0, x0)
    in the background, and the bbox. Everything outside the patch is the background's."""
    if crop.dtype != background.dtype:
        raise InputError(
            f"lesion crop is {crop.dtype} but the background is {background.dtype}; build the lesion bank "
            "from a prepared set of the same bit depth",
            field="lesion_bank",
        )
    if background.dtype not in (np.uint8, np.uint16):
        raise InputError(f"background must be 8- or 16-bit, got {background.dtype}", field="image")
    if mode not in ("normal", "mixed"):
        raise InputError(f"unknown blend mode {mode!r}", field=f"{FIELD}.blend")
    if engine not in ENGINES:
        raise InputError(f"unknown blend engine {engine!r} (one of {', '.join(ENGINES)})", field=f"{FIELD}.engine")
    if engine == "opencv" and background.dtype != np.uint8:
        raise InputError("OpenCV seamlessClone blends 8-bit images only; use engine: dst", field=f"{FIELD}.engine")
    mask = np.asarray(mask, bool)
    H, W = background.shape
    lh, lw = crop.shape
    if not mask.any():
        raise InputError("empty lesion mask", field="lesion_bank")
    if x < 0 or y < 0 or x + lw > W or y + lh > H:
        raise InputError(f"lesion {lw}x{lh} at ({x}, {y}) leaves the {W}x{H} image", field="placement")
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    my0, my1, mx0, mx1 = y + rows[0], y + rows[-1] + 1, x + cols[0], x + cols[-1] + 1  # the lesion's box
    band = band_width((my1 - my0, mx1 - mx0), band_frac)
    pad = band + 2  # the region: the lesion's box, the band and the boundary pixels
    y0, y1, x0, x1 = max(0, my0 - pad), min(H, my1 + pad), max(0, mx0 - pad), min(W, mx1 + pad)
    dst = background[y0:y1, x0:x1]
    src = dst.copy()
    m = np.zeros(dst.shape, bool)
    cy0, cy1, cx0, cx1 = max(y, y0), min(y + lh, y1), max(x, x0), min(x + lw, x1)  # the crop inside the region
    src[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = crop[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
    m[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = mask[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
    m[[0, -1], :] = m[:, [0, -1]] = False  # the region border is the Dirichlet boundary
    use_cv2 = engine == "opencv"
    w = opencv_correction(src, dst, m, mode == "mixed") if use_cv2 else poisson_correction(src, dst, m, mode == "mixed")
    # taper the correction to zero across the band: smooth seam; beyond it a = 0, so dst + 0 rounds
    # back to the background's value exactly (float32 holds every 16-bit integer)
    d = cv2.distanceTransform((~m).view(np.uint8), cv2.DIST_L2, 5)
    a = np.clip(1.0 - d / np.float32(band), 0.0, 1.0)
    a *= a * (3 - 2 * a)
    a *= w
    a += dst
    top = np.iinfo(background.dtype).max
    patch = np.clip(np.rint(a, out=a), 0, top, out=a).astype(background.dtype)
    return patch, (y0, x0), [float(mx0), float(my0), float(mx1), float(my1)]


__all__ = [
    "FIELD",
    "BAND_FRAC",
    "MIN_BAND_PX",
    "ENGINES",
    "poisson_correction",
    "exact_poisson_edit",
    "opencv_correction",
    "band_width",
    "blend",
    "blend_region",
]

"""Poisson-blending generator (source paper §3.2): real lesion crops (BI-RADS 5 by default) blended
into real backgrounds without findings (BI-RADS 1 by default) with Poisson image editing, at
anatomically plausible positions.

Blending works on a region around the lesion only (the lesion's box plus a band), never the full
frame. The default engine solves the Poisson equation exactly on that region with a discrete sine
transform, at any bit depth. ``engine: opencv`` uses OpenCV's ``seamlessClone`` instead: 8-bit
only, three channels for a grey image, its boundary on the lesion's box itself; it is several times
slower and further from Pérez et al.'s solution (the mask's outline as the boundary,
``exact_poisson_edit``). Either way the result is used as a *correction* to the background,
tapered to zero over a band of ``band_frac`` x lesion size around the lesion mask, so pixels
outside that band are the background's, bit for bit, and the seam stays smooth."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import cv2
import numpy as np
from scipy.fft import dstn, idstn, next_fast_len

from mammosynth.builders.core import schema
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.spec import PoissonParams, ReleaseSpec
from mammosynth.generators.engine import SampleTask, Skip
from mammosynth.generators.lesion_bank import MIN_SIDE_PX, Lesion, LesionBank, load_or_build
from mammosynth.generators.placement import BackgroundInfo, PlacementConfig, analyse_background, place
from mammosynth.builders.core.png_blocks import BlockFile, BlockPNG

FIELD = "methods.poisson.poisson"
BAND_FRAC = 0.15
MIN_BAND_PX = 3
ENGINES = ("dst", "opencv")
ALGORITHM = 5  # bump when placement, blending or encoding change their output: a resume then refuses the old shards


# --- blending --------------------------------------------------------------------------------------


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


def _cv2_correction(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, mixed: bool) -> np.ndarray:
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
    w = _cv2_correction(src, dst, m, mode == "mixed") if use_cv2 else poisson_correction(src, dst, m, mode == "mixed")
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


def lesion_size(mask: np.ndarray) -> float:
    """Equivalent diameter of a lesion mask in pixels (the disc of the same area): rotation leaves it be."""
    return float(2 * np.sqrt(np.count_nonzero(mask) / np.pi))


def transform_lesion(
    crop: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float],
    rotate: bool,
    flip: bool,
    size_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale (within ``scale``), rotation and horizontal flip, on a canvas that holds the result.
    With ``size_range`` (equivalent diameters, px) the scale is clipped so the lesion's size stays
    inside it; the random draws are the same either way."""
    s = float(rng.uniform(*scale)) if scale[1] > scale[0] else float(scale[0])
    if size_range is not None:
        d = lesion_size(mask)
        s = float(np.clip(s, size_range[0] / d, size_range[1] / d))
    angle = float(rng.uniform(0, 360)) if rotate else 0.0
    do_flip = bool(rng.integers(2)) if flip else False
    if do_flip:
        crop, mask = crop[:, ::-1], mask[:, ::-1]
    if s == 1.0 and angle == 0.0:
        return np.ascontiguousarray(crop), np.ascontiguousarray(mask)
    h, w = crop.shape
    M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, s)
    cos, sin = abs(M[0, 0]), abs(M[0, 1])
    nw, nh = max(1, int(np.ceil(h * sin + w * cos))), max(1, int(np.ceil(h * cos + w * sin)))
    M[0, 2] += (nw - 1) / 2 - (w - 1) / 2
    M[1, 2] += (nh - 1) / 2 - (h - 1) / 2
    out = cv2.warpAffine(np.ascontiguousarray(crop), M, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    m = cv2.warpAffine(np.ascontiguousarray(mask).astype(np.float32), M, (nw, nh), flags=cv2.INTER_LINEAR) > 0.5
    return out, m


# --- the sampler ----------------------------------------------------------------------------------


def choose_lesion(pool: list[Lesion], manufacturer: str | None, params: PoissonParams, rng: np.random.Generator) -> Lesion | str:
    """Manufacturer policy: same vendor by default; ``fallback`` any vendor or skip when none."""
    if not pool:
        return "no lesion of this BI-RADS class in the lesion bank"
    if params.manufacturer_policy == "same":
        same = [les for les in pool if les.manufacturer == manufacturer]
        if same:
            pool = same
        elif params.fallback == "skip":
            return f"no lesion from manufacturer {manufacturer!r} (fallback: skip)"
    return pool[int(rng.integers(len(pool)))]


@dataclass
class _Cached:
    """One background's decoded pixels, placement analysis and PNG blocks, shared by every task
    that uses it (the sampler visits a shard's tasks grouped by background)."""

    image_id: str
    image: np.ndarray
    info: BackgroundInfo
    bit_depth: int
    file: BlockFile | None = None  # the stored PNG, when it is in the block layout
    _png: BlockPNG | None = None

    def encode(self, patch: np.ndarray, y: int, x: int) -> bytes:
        """PNG of the background at the output bit depth with ``patch`` written at (y, x)."""
        from mammosynth.builders.core.imageio import as_bit_depth

        if self.file is not None and self.file.dtype.itemsize * 8 == self.bit_depth:
            # the stored file's blocks are spliced as they are; only the patch's blocks are deflated
            return self.file.encode(patch, y, x)
        if self._png is None:
            self._png = BlockPNG(as_bit_depth(self.image, self.bit_depth))
        return self._png.encode(as_bit_depth(patch, self.bit_depth), y, x)


def decode_background(encoded: dict[str, Any]) -> tuple[np.ndarray, BlockFile | None]:
    """Pixels of a stored background and, when it is in the block layout, its BlockFile (read
    block by block: ~2x faster than Pillow's full decode); any other PNG through Pillow."""
    from mammosynth.generators.inpainting import _decode

    data = encoded.get("bytes")
    f = BlockFile.parse(data) if data else None
    image = f.rows() if f is not None else None
    if image is None:
        return _decode(encoded), None
    return image, f


_WORKER: PoissonSampler | None = None  # the sampler of a pool worker process


def _exit_with_parent(parent: int) -> None:
    """A worker whose parent was killed (SIGKILL leaves no chance to stop the pool) would wait on
    its task queue forever: it leaves once it is re-parented."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_worker(recipe, parent: int) -> None:
    """Pool worker set-up: a forked worker inherits the parent's sampler (nothing to load); any
    other start method rebuilds it from (spec, placement, cache_dir)."""
    global _WORKER
    _exit_with_parent(parent)
    if isinstance(recipe, PoissonSampler):
        _WORKER = recipe
        _WORKER._cache, _WORKER._executor = None, None
    else:
        cv2.setNumThreads(1)  # never after a fork: OpenCV then waits on its parent's threads
        spec, placement, cache_dir = recipe
        _WORKER = PoissonSampler(spec, placement=placement, cache_dir=cache_dir, workers=1)
    _WORKER.workers = 1


def _ready() -> None:
    """A no-op task: waiting on one per worker makes sure the pool has started."""


def _work_group(tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]:
    assert _WORKER is not None
    return [_WORKER.make(t) for t in tasks]


class PoissonSampler:
    """Engine Sampler for ``method="poisson"``. Built from the spec, it checks its inputs at once
    (prepared set, backgrounds for every requested cell, a non-empty lesion bank of the requested
    classes) so a bad spec fails before anything is written."""

    method = "poisson"

    def __init__(
        self, spec: ReleaseSpec, *, placement: PlacementConfig | None = None, cache_dir: str | None = None, workers: int | None = None
    ) -> None:
        from mammosynth.generators.inpainting import _decode, backgrounds_by_view, load_prepared

        if "poisson" not in spec.methods:
            raise InputError("the spec has no poisson method", field="methods.poisson")
        self.spec = spec
        self.params: PoissonParams = spec.methods["poisson"].poisson or PoissonParams()
        self.placement = placement or PlacementConfig(max_tries=self.params.max_tries)
        self.bit_depth = spec.output.bit_depth
        self._decode = _decode
        prepared = spec.source.prepared
        self.ds = load_prepared(prepared)
        self.backgrounds = backgrounds_by_view(self.ds, list(self.params.background_birads))
        cells = {c: n for c, n in spec.cell_counts("poisson").items() if n > 0}
        for birads, view, lat in cells:
            if not self.backgrounds.get((view, lat)):
                raise InputError(
                    f"no background of view {view}, laterality {lat} with BI-RADS in {self.params.background_birads}",
                    file=prepared, field=f"{FIELD}.background_birads",
                )
            if birads not in self.params.lesion_birads:
                raise InputError(f"BI-RADS {birads} requested but lesion_birads is {self.params.lesion_birads}", field=f"{FIELD}.lesion_birads")
        if cache_dir is None and spec.output_dir is not None:
            cache_dir = str(spec.output_dir / "cache")
        self.bank: LesionBank = load_or_build(prepared, sorted(set(self.params.lesion_birads)), cache_dir)
        if len(self.bank) == 0:
            raise InputError(
                f"lesion bank is empty: no finding with BI-RADS in {self.params.lesion_birads} and a box",
                file=prepared, field=f"{FIELD}.lesion_birads",
            )
        self.pools = {b: [les for les in self.bank.lesions if les.birads == b] for b in self.params.lesion_birads}
        # realistic sizes: a scaled lesion stays within its class's real lesion sizes
        self.size_ranges = {
            b: (min(sizes), max(sizes))
            for b, pool in self.pools.items()
            if self.params.realistic_size and (sizes := [lesion_size(les.mask) for les in pool])
        }
        for birads, _, _ in cells:
            if not self.pools.get(birads):
                raise InputError(f"lesion bank has no BI-RADS {birads} lesion", file=prepared, field=f"{FIELD}.lesion_birads")
        dtype = self.bank.dtype
        first = next(iter(self.backgrounds.values()))[0]
        stored = self.ds[first.row]["image"]
        f = BlockFile.parse(stored["bytes"]) if stored.get("bytes") else None
        bg_dtype = f.dtype if f is not None else self._decode(stored).dtype
        if dtype != bg_dtype:
            raise InputError(f"lesion bank holds {dtype} crops but the backgrounds are {bg_dtype}", file=prepared, field="lesion_bank")
        if self.params.engine == "opencv" and dtype != np.uint8:
            raise InputError(f"engine opencv (seamlessClone) blends 8-bit images only; the prepared set is {dtype}", file=prepared, field=f"{FIELD}.engine")
        self.generator = f"poisson-blend/{_version()}+{self.fingerprint}"
        self._cache: _Cached | None = None
        # processes blending backgrounds in parallel (the output does not depend on it)
        self.workers = workers or self.params.workers or _cpu_count()
        self._recipe = (spec, self.placement, cache_dir)
        self._executor: ProcessPoolExecutor | None = None

    @property
    def fingerprint(self) -> str:
        """What the output depends on (params, placement, lesion bank); the engine keys runs on it."""
        blob = json.dumps([ALGORITHM, self.params.model_dump(mode="json", exclude={"workers"}), self.placement.model_dump(mode="json"), self.bank.fingerprint, BAND_FRAC, self.bit_depth])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def background_for(self, task: SampleTask):
        group = self.backgrounds[(task.view, task.laterality)]
        return group[task.index % len(group)]

    def _background(self, bg, view: str) -> _Cached:
        if self._cache is None or self._cache.image_id != bg.image_id:
            image, f = decode_background(self.ds[bg.row]["image"])
            self._cache = _Cached(bg.image_id, image, analyse_background(image, view, self.placement), self.bit_depth, f)
        return self._cache

    def generate(self, tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]:
        """Rows (or Skips) for ``tasks``, in order. Tasks are grouped by background so each is
        decoded and analysed once; groups go to a process pool of ``workers`` (kept for later calls).
        Every task's output depends only on the task, so the bytes do not depend on the pool."""
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            groups.setdefault(self.background_for(t).image_id, []).append(i)
        batches = [groups[k] for k in sorted(groups)]
        out: list[dict[str, Any] | Skip | None] = [None] * len(tasks)
        if min(self.workers, len(batches)) <= 1:
            results = ([self.make(tasks[i]) for i in b] for b in batches)
        else:
            results = self._pool().map(_work_group, [[tasks[i] for i in b] for b in batches])
        for b, rows in zip(batches, results):
            for i, r in zip(b, rows):
                out[i] = r
        return out  # type: ignore[return-value]

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # fork: workers inherit this sampler (open set, lesion bank) instead of rebuilding it
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            recipe = self if ctx.get_start_method() == "fork" else self._recipe
            threads = cv2.getNumThreads()
            cv2.setNumThreads(1)  # inherited by the workers: one OpenCV thread each, the processes fill the cores
            try:
                self._executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(recipe, os.getpid()))
                for f in [self._executor.submit(_ready) for _ in range(self.workers)]:
                    f.result()
            finally:
                cv2.setNumThreads(threads)
        return self._executor

    def close(self) -> None:
        """Stop the worker processes (a later ``generate`` starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> PoissonSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def shape_lesion(self, lesion: Lesion, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The lesion's crop and mask scaled, rotated and flipped as the params say."""
        p = self.params
        return transform_lesion(lesion.crop, lesion.mask, rng, tuple(p.scale), p.rotate, p.flip, self.size_ranges.get(lesion.birads))

    def make(self, task: SampleTask) -> dict[str, Any] | Skip:
        bg = self.background_for(task)
        cached = self._background(bg, task.view)
        rng = np.random.default_rng(task.seed)
        lesion = choose_lesion(self.pools.get(task.birads, []), bg.manufacturer, self.params, rng)
        if isinstance(lesion, str):
            return Skip(task.image_id, f"background {bg.image_id}: {lesion}")
        p = self.params
        crop, mask = self.shape_lesion(lesion, rng)
        side = min(np.count_nonzero(mask.any(0)), np.count_nonzero(mask.any(1)))
        if side < MIN_SIDE_PX:  # scaled below what the bank accepts: no texture left to blend
            return Skip(task.image_id, f"background {bg.image_id}, lesion {lesion.lesion_id}: {side} px across after scaling "
                        f"(under {MIN_SIDE_PX}); raise methods.poisson.poisson.scale or keep realistic_size")
        where = place(cached.info, mask, lesion.context_std, np.random.default_rng(task.mask_seed), self.placement)
        if isinstance(where, str):
            return Skip(task.image_id, f"background {bg.image_id}, lesion {lesion.lesion_id}: {where}")
        patch, (py, px), bbox = blend_region(cached.image, crop, mask, where.x, where.y, mode=p.blend, engine=p.engine)
        return {
            # encoded here: only the PNG blocks of the rows the patch touches are re-deflated
            "image": {"bytes": cached.encode(patch, py, px), "path": None},
            "image_id": task.image_id,
            "method": "poisson",
            "birads": schema.birads_label(lesion.birads),
            "view": task.view,
            "laterality": task.laterality,
            "density": bg.density,
            "bbox": [bbox],
            "seed": task.seed,
            "mask_seed": task.mask_seed,
            "prompt": None,
            "source_image": bg.image_id,
            "lesion_source": lesion.lesion_id,
            "manufacturer": bg.manufacturer,
            "generator": self.generator,
        }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _version() -> str:
    try:
        return metadata.version("mammosynth")
    except metadata.PackageNotFoundError:
        return "0+unknown"

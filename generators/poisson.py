"""Poisson-blending generator (source paper §3.2): real lesion crops (BI-RADS 5 by default) blended
into real backgrounds without findings (BI-RADS 1 by default) with Poisson image editing
(``poisson_solver``), at anatomically plausible positions (``placement``).

The sampler groups a shard's tasks by background so each is decoded and analysed once, and blends
the groups in a pool of processes; every image depends only on its task, never on the pool."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mammosynth.builders.core import schema
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.imageio import as_bit_depth, decode_grey
from mammosynth.builders.core.png_blocks import BlockFile, BlockPNG
from mammosynth.builders.core.provenance import package_version
from mammosynth.builders.core.spec import PoissonParams, ReleaseSpec
from mammosynth.builders.core.workers import cpu_count, start_method, worker_pool
from mammosynth.generators.backgrounds import Background, backgrounds_by_view, load_prepared
from mammosynth.generators.engine import SampleTask, Skip
from mammosynth.generators.lesion_bank import MIN_SIDE_PX, Lesion, LesionBank, load_or_build
from mammosynth.generators.placement import BackgroundInfo, PlacementConfig, analyse_background, place
from mammosynth.generators.poisson_solver import BAND_FRAC, FIELD, blend_region

ALGORITHM = 5  # bump when placement, blending or encoding change their output: a resume then refuses the old shards


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


def choose_lesion(
    pool: list[Lesion], manufacturer: str | None, params: PoissonParams, rng: np.random.Generator
) -> Lesion | str:
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
        if self.file is not None and self.file.dtype.itemsize * 8 == self.bit_depth:
            # the stored file's blocks are spliced as they are; only the patch's blocks are deflated
            return self.file.encode(patch, y, x)
        if self._png is None:
            self._png = BlockPNG(as_bit_depth(self.image, self.bit_depth))
        return self._png.encode(as_bit_depth(patch, self.bit_depth), y, x)


def decode_background(encoded: dict[str, Any]) -> tuple[np.ndarray, BlockFile | None]:
    """Pixels of a stored background and, when it is in the block layout, its BlockFile (read
    block by block: ~2x faster than a full decode); any other image through ``decode_grey``."""
    data = encoded.get("bytes")
    f = BlockFile.parse(data) if data else None
    image = f.rows() if f is not None else None
    if image is None:
        return decode_grey(encoded), None
    return image, f


_WORKER: PoissonSampler | None = None  # the sampler of a pool worker process


def _init_worker(recipe: PoissonSampler | tuple) -> None:
    """Pool worker set-up (after ``worker_pool``'s own: parent watch, one OpenCV thread): a forked
    worker inherits the parent's sampler (nothing to load); any other start method rebuilds it from
    (spec, placement, cache_dir)."""
    global _WORKER
    if isinstance(recipe, PoissonSampler):
        _WORKER = recipe
        _WORKER._cache, _WORKER._executor = None, None
    else:
        spec, placement, cache_dir = recipe
        _WORKER = PoissonSampler(spec, placement=placement, cache_dir=cache_dir, workers=1)
    _WORKER.workers = 1


def _work_group(tasks: list[SampleTask]) -> list[dict[str, Any] | Skip]:
    assert _WORKER is not None
    return [_WORKER.make(t) for t in tasks]


class PoissonSampler:
    """Engine Sampler for ``method="poisson"``. Built from the spec, it checks its inputs at once
    (prepared set, backgrounds for every requested cell, a non-empty lesion bank of the requested
    classes) so a bad spec fails before anything is written."""

    method = "poisson"

    def __init__(
        self,
        spec: ReleaseSpec,
        *,
        placement: PlacementConfig | None = None,
        cache_dir: str | None = None,
        workers: int | None = None,
    ) -> None:
        if "poisson" not in spec.methods:
            raise InputError("the spec has no poisson method", field="methods.poisson")
        self.spec = spec
        self.params: PoissonParams = spec.methods["poisson"].poisson or PoissonParams()
        self.placement = placement or PlacementConfig(max_tries=self.params.max_tries)
        self.bit_depth = spec.output.bit_depth
        prepared = spec.source.prepared
        self.ds = load_prepared(prepared)
        self.backgrounds = backgrounds_by_view(self.ds, list(self.params.background_birads))
        cells = {c: n for c, n in spec.cell_counts("poisson").items() if n > 0}
        for birads, view, lat in cells:
            if not self.backgrounds.get((view, lat)):
                raise InputError(
                    f"no background of view {view}, laterality {lat} with BI-RADS in {self.params.background_birads}",
                    file=prepared,
                    field=f"{FIELD}.background_birads",
                )
            if birads not in self.params.lesion_birads:
                raise InputError(
                    f"BI-RADS {birads} requested but lesion_birads is {self.params.lesion_birads}",
                    field=f"{FIELD}.lesion_birads",
                )
        if cache_dir is None and spec.output_dir is not None:
            cache_dir = str(spec.layout.cache)
        self.bank: LesionBank = load_or_build(prepared, sorted(set(self.params.lesion_birads)), cache_dir)
        if len(self.bank) == 0:
            raise InputError(
                f"lesion bank is empty: no finding with BI-RADS in {self.params.lesion_birads} and a box",
                file=prepared,
                field=f"{FIELD}.lesion_birads",
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
                raise InputError(
                    f"lesion bank has no BI-RADS {birads} lesion", file=prepared, field=f"{FIELD}.lesion_birads"
                )
        dtype = self.bank.dtype
        first = next(iter(self.backgrounds.values()))[0]
        stored = self.ds[first.row]["image"]
        f = BlockFile.parse(stored["bytes"]) if stored.get("bytes") else None
        bg_dtype = f.dtype if f is not None else decode_grey(stored).dtype
        if dtype != bg_dtype:
            raise InputError(
                f"lesion bank holds {dtype} crops but the backgrounds are {bg_dtype}",
                file=prepared,
                field="lesion_bank",
            )
        if self.params.engine == "opencv" and dtype != np.uint8:
            raise InputError(
                f"engine opencv (seamlessClone) blends 8-bit images only; the prepared set is {dtype}",
                file=prepared,
                field=f"{FIELD}.engine",
            )
        self.generator = f"poisson-blend/{package_version()}+{self.fingerprint}"
        self._cache: _Cached | None = None
        # processes blending backgrounds in parallel (the output does not depend on it)
        self.workers = workers or self.params.workers or cpu_count()
        self._recipe = (spec, self.placement, cache_dir)
        self._executor: ProcessPoolExecutor | None = None

    @property
    def fingerprint(self) -> str:
        """What the output depends on (params, placement, lesion bank); the engine keys runs on it."""
        blob = json.dumps(
            [
                ALGORITHM,
                self.params.model_dump(mode="json", exclude={"workers"}),
                self.placement.model_dump(mode="json"),
                self.bank.fingerprint,
                BAND_FRAC,
                self.bit_depth,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def background_for(self, task: SampleTask) -> Background:
        group = self.backgrounds[(task.view, task.laterality)]
        return group[task.index % len(group)]

    def _background(self, bg: Background, view: str) -> _Cached:
        if self._cache is None or self._cache.image_id != bg.image_id:
            image, f = decode_background(self.ds[bg.row]["image"])
            self._cache = _Cached(
                bg.image_id, image, analyse_background(image, view, self.placement), self.bit_depth, f
            )
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
            recipe = self if start_method("fork") == "fork" else self._recipe
            self._executor = worker_pool(self.workers, method="fork", initializer=_init_worker, initargs=(recipe,))
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
        return transform_lesion(
            lesion.crop, lesion.mask, rng, tuple(p.scale), p.rotate, p.flip, self.size_ranges.get(lesion.birads)
        )

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
            return Skip(
                task.image_id,
                f"background {bg.image_id}, lesion {lesion.lesion_id}: {side} px across after scaling "
                f"(under {MIN_SIDE_PX}); raise methods.poisson.poisson.scale or keep realistic_size",
            )
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

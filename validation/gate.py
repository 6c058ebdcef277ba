"""``validate_release``: the whole gate as one Python call (the CLI is a thin layer over it).

Order of work: thresholds -> reference index (cached) -> release rows -> one analysis pass per
image -> per-image checks (sanity, de-duplication, memorization) -> distribution statistics ->
reports. Per-image problems (including unreadable bytes) become findings for that row; only bad
inputs (reference, release schema, thresholds) raise InputError.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mammosynth.builders.core.config_io import read_mapping
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import parse_birads
from mammosynth.builders.core.spec import ReleaseSpec, load_spec
from mammosynth.validation import dedup, stats
from mammosynth.builders.core.imageio import UnreadableImage, decode, grey_channel
from mammosynth.validation.image_features import PHASH_BYTES, PIXEL_HASH, ImageFeatures, analyse
from mammosynth.validation.reference import ReferenceIndex, reference_image, reference_index
from mammosynth.validation.release_io import LoadedRelease, load_release
from mammosynth.validation.report import Flag, Gate, ValidationReport, write_json, write_markdown
from mammosynth.validation.thresholds import Thresholds, _deep_merge, validate_overrides

SANITY_CHECKS = {"unreadable", "no_breast", "blank", "saturated", "area_fraction", "laterality_side", "mode", "bit_depth", "size", "bbox_outside_image", "bbox_outside_breast", "no_dark_background", "lesion_region"}  # fmt: skip
DEDUP_CHECKS = {"exact_copy", "memorization", "training_match", "near_duplicate_phash", "background_altered", "source_missing", "duplicate_in_release"}  # fmt: skip


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


def resolve_thresholds(config: str | Path | Thresholds | None, spec: ReleaseSpec | None, spec_path: Path | None = None) -> Thresholds:
    """Defaults < the spec's ``validation:`` overrides < the ``--config`` file."""
    if isinstance(config, Thresholds):
        return config
    data: dict[str, Any] = {}
    if spec is not None and spec.validation:
        validate_overrides(spec.validation, source=spec_path)  # field errors name the spec
        data = _deep_merge({}, spec.validation)
    if config is not None:
        file_data = read_mapping(config)
        validate_overrides(file_data, source=config)  # field errors name the config file
        data = _deep_merge(data, file_data)
    return validate_overrides(data, source=config or spec_path)


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
        ds = rel.dataset
        f = ds.features
        meta = ds.remove_columns("image").to_dict()

        def names(col: str) -> list[str | None]:
            return [f[col].int2str(int(v)) if v is not None and int(v) >= 0 else None for v in meta[col]]

        ids = [str(i) for i in meta["image_id"]]
        dup = [k for k, c in Counter(ids).items() if c > 1]
        if dup:
            raise InputError(f"image_id is not unique: {dup[:5]}", file=rel.source, field="image_id")
        return cls(
            ids=ids, method=names("method"), birads=[parse_birads(b) for b in names("birads")], view=names("view"),
            laterality=names("laterality"), density=names("density"), bbox=[b or [] for b in meta["bbox"]],
            prompt=meta["prompt"], source=meta["source_image"], manufacturer=meta["manufacturer"],
        )  # fmt: skip


@dataclass
class Analysed:
    feats: list[ImageFeatures | None]
    errors: dict[int, str]
    emb: np.ndarray
    phash: np.ndarray
    thumbs: dict[str, np.ndarray]


ANALYSIS_WORKERS = 2  # processes for the per-image pass (the work is per-image and CPU-bound)
_MIN_ROWS_FOR_POOL = 16  # below this the pool's hand-off costs more than it saves
_CHUNK = 8  # images per task handed to a worker
_POOL = None


def _pool():
    """One process pool per interpreter, started lazily (forkserver: safe after torch/OpenCV threads)."""
    global _POOL
    if _POOL is None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        import atexit

        _POOL = ProcessPoolExecutor(ANALYSIS_WORKERS, mp_context=mp.get_context("forkserver"), initializer=_worker_init)
        atexit.register(_POOL.shutdown)
    return _POOL


def _worker_init() -> None:
    """One OpenCV thread per worker: the pool already keeps every core busy, and OpenCV's own
    threads would only contend with the other workers for them."""
    import cv2

    cv2.setNumThreads(1)


def _worker_ready() -> None:
    """A no-op task: unpickling it imports this module (OpenCV, the analysis) in the worker."""


def _start_pool(n_rows: int) -> None:
    """Start the workers (process start and imports take a second or more) while this process
    loads the reference index, instead of when the first images are handed out."""
    if ANALYSIS_WORKERS > 1 and n_rows >= _MIN_ROWS_FOR_POOL:
        pool = _pool()
        for _ in range(ANALYSIS_WORKERS):
            pool.submit(_worker_ready)


def _analyse_chunk(jobs: list[tuple]) -> list[ImageFeatures | str]:
    return [_analyse_one(j) for j in jobs]


def _analyse_one(args: tuple) -> ImageFeatures | str:
    """Worker body: features, or the error text for an unreadable image (same in every process)."""
    img, boxes, embed_size, bins, thumb_side = args
    try:
        return analyse(img, boxes=boxes, embed_size=embed_size, bins=bins, thumb_side=thumb_side)
    except (UnreadableImage, InputError, ValueError, OSError) as exc:
        return str(exc) or type(exc).__name__


def _analyse_rows(rel: LoadedRelease, rows: Rows, th: Thresholds, thumb_rows: set[int], desc: str, progress: bool) -> Analysed:
    n = len(rows.ids)
    d = th.dedup.embed_size**2
    emb = np.zeros((n, d), np.float32)
    ph = np.zeros((n, PHASH_BYTES), np.uint8)
    feats: list[ImageFeatures | None] = [None] * n
    errors: dict[int, str] = {}
    thumbs: dict[str, np.ndarray] = {}
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress)
    pool = _pool() if ANALYSIS_WORKERS > 1 and n >= _MIN_ROWS_FOR_POOL else None
    pending: deque = deque()  # chunks in flight, in row order
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
    for batch in rel.dataset.select_columns(["image"]).iter(batch_size=64):
        jobs = [(img, rows.bbox[start + j], th.dedup.embed_size, th.stats.histogram_bins, th.stats.msssim_size if start + j in thumb_rows else 0)
                for j, img in enumerate(batch["image"])]  # fmt: skip
        start += len(jobs)
        if pool is None:
            collect(_analyse_chunk(jobs))
            continue
        # Keep the workers fed while the next batch is read: collect only the oldest chunks, and
        # only once about two batches are in flight (bounded memory, no stall between batches).
        for c in range(0, len(jobs), _CHUNK):
            pending.append(pool.submit(_analyse_chunk, jobs[c : c + _CHUNK]))
        while len(pending) > 2 * 64 // _CHUNK:
            collect(pending.popleft().result())
    while pending:
        collect(pending.popleft().result())
    bar.close()
    return Analysed(feats, errors, emb, ph, thumbs)


def _expected_counts(spec: ReleaseSpec | None) -> dict[tuple[str, int, str, str], int] | None:
    if spec is None:
        return None
    return {(m, b, v, lat): n for m in spec.methods for (b, v, lat), n in spec.cell_counts(m).items()}


def _sanity(rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, spec: ReleaseSpec | None) -> list[Flag]:
    s = th.sanity
    flags: list[Flag] = []
    sides = index.expected_side()
    ranges = {v: index.area_range(v, *s.area_percentiles) for v in ("CC", "MLO")}
    for k, image_id in enumerate(rows.ids):
        method = rows.method[k]

        def flag(check: str, reason: str) -> None:
            flags.append(Flag(image_id=image_id, check=check, reason=reason, method=method))

        if k in an.errors:
            flag("unreadable", an.errors[k])
            continue
        f = an.feats[k]
        assert f is not None
        if f.std < s.blank_std:
            flag("blank", f"image std {f.std:.4f} < {s.blank_std}")
        if f.saturated_fraction > s.saturated_fraction:
            flag("saturated", f"{f.saturated_fraction:.0%} of pixels at the maximum value")
        if f.area_fraction < s.min_area_fraction:
            flag("no_breast", f"breast-area fraction {f.area_fraction:.3f} < {s.min_area_fraction}")
        else:
            lo, hi = ranges.get(rows.view[k], (0.0, 1.0))
            pad = max(s.area_margin * (hi - lo), s.area_min_pad)
            if not (lo - pad <= f.area_fraction <= hi + pad):
                flag("area_fraction", f"breast-area fraction {f.area_fraction:.3f} outside the reference's {rows.view[k]} range [{lo:.3f}, {hi:.3f}]")
            if f.background_ratio > s.max_background_ratio:
                flag("no_dark_background", f"background/breast intensity ratio {f.background_ratio:.2f} > {s.max_background_ratio}: no breast silhouette on dark air (texture or noise)")
            want = sides.get(rows.laterality[k])
            if f.side and want and f.side != want:
                flag("laterality_side", f"breast touches the {'left' if f.side == 'L' else 'right'} edge but laterality {rows.laterality[k]} expects {'left' if want == 'L' else 'right'} (mirrored or inverted image)")
        if f.channels != 1:
            flag("mode", f"{f.channels} channels; a mammogram is single-channel grey")
        if spec is not None:
            if f.bit_depth != spec.output.bit_depth:
                flag("bit_depth", f"{f.bit_depth}-bit, spec says {spec.output.bit_depth}-bit")
            params = getattr(spec.methods.get(method), method, None) if method in spec.methods else None
            res = getattr(params, "resolution", None)
            if res and max(f.height, f.width) != res:
                flag("size", f"{f.width}x{f.height}; spec resolution {res} (longest side)")
        tol = s.bbox_edge_tolerance_px
        for j, box in enumerate(rows.bbox[k]):
            x0, y0, x1, y1 = box
            if x1 <= x0 or y1 <= y0 or x0 < -tol or y0 < -tol or x1 > f.width + tol or y1 > f.height + tol:
                flag("bbox_outside_image", f"box {j} {[round(v, 1) for v in box]} not inside the {f.width}x{f.height} image")
            elif f.box_inside[j] < s.bbox_min_inside_mask:
                flag("bbox_outside_breast", f"box {j}: only {f.box_inside[j]:.0%} inside the breast mask (< {s.bbox_min_inside_mask:.0%})")
            if method == "inpainting" and f.box_tissue[j] is not None:
                low, high, pos = f.box_tissue[j]
                sl = s.lesion_mean_slack
                if low > s.lesion_max_outlier_share or high > s.lesion_max_outlier_share or not (-sl <= pos <= 1 + sl):
                    flag("lesion_region", f"box {j}: {low:.0%} of pixels below the breast's 1st percentile, {high:.0%} above its 99.9th, mean at {pos:.2f} of that range: not breast tissue")
    return flags


def _dedup(rows: Rows, an: Analysed, rel: LoadedRelease, index: ReferenceIndex, ref_ds, th: Thresholds, progress: bool) -> tuple[list[Flag], dict[str, Any]]:
    dd = th.dedup
    nn_thr = dd.nn_distance if dd.nn_distance is not None else index.calibrated_nn(dd.calibration_quantile, dd.calibration_factor, dd.nn_distance_max)
    radius = dd.phash_radius if dd.phash_radius is not None else index.calibrated_radius(dd.calibration_quantile, dd.calibration_factor, dd.phash_radius_default)
    ok = np.array([k not in an.errors and an.feats[k] is not None and an.feats[k].side is not None for k in range(len(rows.ids))], bool)
    ref_ok = index.side != ""
    ref_rows = np.nonzero(ref_ok)[0]
    ref_ids = index.image_ids
    row_of = index.row_of()
    by_hash: dict[str, int] = {str(h): i for i, h in enumerate(index.pixel_hashes) if h}
    flags: list[Flag] = []
    t0 = time.perf_counter()
    q = np.nonzero(ok)[0]
    every = len(ref_rows) == index.n  # then skip copying the (n, d) embeddings for the search
    db_emb, db_phash = (index.emb, index.phash) if every else (index.emb[ref_rows], index.phash[ref_rows])
    nb = dedup.search(an.emb[q], an.phash[q], db_emb, db_phash, k=4)
    # shifted or cropped copies: near candidates re-scored over small grid shifts and scales
    nb = dedup.rescore(nb, an.emb[q], db_emb, dedup.PRESCORE_FACTOR * nn_thr)
    search_s = time.perf_counter() - t0
    nearest = np.full(len(rows.ids), np.inf)
    for j, k in enumerate(q):
        image_id, method, src = rows.ids[k], rows.method[k], rows.source[k]
        own = src if method in ("inpainting", "poisson") else None
        cand = ref_rows[np.maximum(nb.idx[j], 0)]
        allowed = np.array([own is None or ref_ids[c] != own for c in cand]) & (nb.idx[j] >= 0)
        d, i = dedup.first_allowed(nb.dist[j], cand, allowed)
        nearest[k] = d
        hcand = ref_rows[np.maximum(nb.hidx[j], 0)]
        hallowed = np.array([own is None or ref_ids[c] != own for c in hcand]) & (nb.hidx[j] >= 0)
        hd, hi = dedup.first_allowed(nb.ham[j].astype(np.float64), hcand, hallowed)
        check = "memorization" if method == "text2image" else "training_match"
        if d < nn_thr:
            flags.append(Flag(image_id=image_id, check=check, method=method, nearest_training_id=str(ref_ids[i]), distance=round(d, 4),
                              reason=f"embedding distance {d:.3f} to training image < threshold {nn_thr:.3f}"))  # fmt: skip
        elif hd <= radius:
            flags.append(Flag(image_id=image_id, check="near_duplicate_phash", method=method, nearest_training_id=str(ref_ids[hi]), distance=float(hd),
                              reason=f"pHash Hamming distance {int(hd)} to training image <= radius {radius}"))  # fmt: skip
    for k, image_id in enumerate(rows.ids):  # exact pixel copies, whatever the method
        f = an.feats[k]
        if f is not None and f.pixel_hash in by_hash:
            flags.append(Flag(image_id=image_id, check="exact_copy", method=rows.method[k], nearest_training_id=str(ref_ids[by_hash[f.pixel_hash]]), distance=0.0,
                              reason="pixel-identical to a training image"))  # fmt: skip

    # inpainting / poisson: the background must be its own source image, unaltered outside the boxes
    bg_values = []
    bg_rows = [k for k in range(len(rows.ids)) if rows.method[k] in ("inpainting", "poisson") and k not in an.errors]
    for k in tqdm(bg_rows, desc="background check", unit="img", disable=not progress or not bg_rows):
        src, image_id = rows.source[k], rows.ids[k]
        if not src or src not in row_of:
            flags.append(Flag(image_id=image_id, check="source_missing", method=rows.method[k], reason=f"source_image {src!r} is not in the reference"))
            continue
        try:
            img = decode(rel.dataset[int(k)]["image"])
            mad = dedup.background_difference(img, reference_image(ref_ds, row_of[src]), rows.bbox[k], dd.background_box_margin)
        except (UnreadableImage, ValueError) as exc:
            flags.append(Flag(image_id=image_id, check="source_missing", method=rows.method[k], reason=f"source image unreadable: {exc}"))
            continue
        bg_values.append(mad)
        if mad > dd.background_max_mad:
            flags.append(Flag(image_id=image_id, check="background_altered", method=rows.method[k], nearest_training_id=src, distance=round(mad, 4),
                              reason=f"mean |difference| {mad:.4f} from source_image outside the lesion boxes > {dd.background_max_mad}"))  # fmt: skip

    # within the release: exact, embedding and pHash duplicates (pairs sharing a background are
    # expected). Plain distances only: the shift-tolerant re-scoring is kept for the training set
    # (privacy); on a release of similar synthetic images nearly every query would pay for it.
    within = 0
    if dd.within_release and len(q) > 1:
        nr = dedup.search(an.emb[q], an.phash[q], an.emb[q], an.phash[q], k=6)
        seen_hash: dict[str, int] = {}
        for j, k in enumerate(q):
            f = an.feats[k]
            partners = []
            for d, i, hd, hi in zip(nr.dist[j], nr.idx[j], nr.ham[j], nr.hidx[j]):
                for other, close in ((i, d < nn_thr), (hi, hd <= radius)):
                    if other >= 0 and close and q[other] < k and not (rows.source[k] and rows.source[k] == rows.source[q[other]]):
                        partners.append((q[other], float(d if other == i else hd)))
            if f.pixel_hash in seen_hash:
                partners.insert(0, (seen_hash[f.pixel_hash], 0.0))
            seen_hash.setdefault(f.pixel_hash, k)
            if partners:
                o, dist = partners[0]
                within += 1
                flags.append(Flag(image_id=rows.ids[k], check="duplicate_in_release", method=rows.method[k], nearest_release_id=rows.ids[o], distance=round(dist, 4),
                                  reason=f"near-duplicate of release image {rows.ids[o]}"))  # fmt: skip
    finite = nearest[np.isfinite(nearest)]
    figures = {
        "nn_threshold": round(nn_thr, 4),
        "phash_radius": radius,
        "calibration": {
            "quantile": dd.calibration_quantile,
            "factor": dd.calibration_factor,
            "reference_other_patient_nn": _quantiles(index.nn_other[np.isfinite(index.nn_other)]),
            "reference_other_patient_phash": _quantiles(index.phash_other[index.phash_other >= 0]),
            "overridden": {"nn_distance": dd.nn_distance is not None, "phash_radius": dd.phash_radius is not None},
        },
        "release_nearest_training_distance": _quantiles(finite),
        "background_mad": _quantiles(np.array(bg_values)),
        "within_release_duplicates": within,
        "search_seconds": round(search_s, 3),
        "searched": {"release": int(len(q)), "reference": int(len(ref_rows))},
    }
    return flags, figures


def _quantiles(x: np.ndarray) -> dict[str, float] | None:
    if x is None or len(x) == 0:
        return None
    qs = np.quantile(x.astype(np.float64), [0, 0.01, 0.05, 0.5])
    return {"min": round(float(qs[0]), 4), "p1": round(float(qs[1]), 4), "p5": round(float(qs[2]), 4), "median": round(float(qs[3]), 4), "n": int(len(x))}


def _distribution_gates(rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, spec, skipped, rng) -> tuple[dict[str, Gate], dict[str, list[tuple[str, str]]]]:
    st = th.stats
    gates: dict[str, Gate] = {}
    observed = Counter((rows.method[k], rows.birads[k], rows.view[k], rows.laterality[k]) for k in range(len(rows.ids)))
    c = stats.count_gate(observed, _expected_counts(spec), skipped)
    mism = len(c.get("mismatched_cells", []))
    gates["counts"] = Gate(summary=c.get("note") or f"{c['observed_total']} of {c['expected_total']} images; {mism} cell(s) differ; {c['skipped_total']} generator skip(s)", **c)

    cols = {
        "birads": ([f"BI-RADS {b}" for b in rows.birads], np.char.add("BI-RADS ", index.birads.astype(str))),
        "view": (rows.view, index.views),
        "laterality": (rows.laterality, index.lateralities),
        "density": (rows.density, index.density),
    }
    per_col = {name: stats.categorical(a, b, st.categorical, st.bootstrap, rng) for name, (a, b) in cols.items()}
    for name, fig in per_col.items():
        if name not in st.categorical_gated:
            fig["gated"] = False
            fig["status"] = "pass"
    gated = {k: v for k, v in per_col.items() if k in st.categorical_gated}
    gates["categorical"] = Gate(
        status=stats.worst(v["status"] for v in gated.values()),
        summary=", ".join(f"{k} TV {v['value']:.3f} (floor {v['noise_floor']:.3f})" for k, v in per_col.items()),
        columns=per_col,
    )

    ok = [k for k in range(len(rows.ids)) if an.feats[k] is not None]
    box = {}
    for b in sorted({rows.birads[k] for k in ok if rows.bbox[k]}):
        ws = [(x1 - x0) / an.feats[k].width for k in ok if rows.birads[k] == b for x0, y0, x1, y1 in rows.bbox[k]]
        hs = [(y1 - y0) / an.feats[k].height for k in ok if rows.birads[k] == b for x0, y0, x1, y1 in rows.bbox[k]]
        sel = index.box_birads == b
        box[f"BI-RADS {b}"] = {
            "width": stats.continuous(np.array(ws), index.box_w[sel], st.box_size, st.bootstrap, rng),
            "height": stats.continuous(np.array(hs), index.box_h[sel], st.box_size, st.bootstrap, rng),
        }
    gates["box_size"] = Gate(
        status=stats.worst(d["status"] for v in box.values() for d in v.values()),
        summary="; ".join(f"{k}: W/std w {v['width'].get('value', '-')}, h {v['height'].get('value', '-')}" for k, v in box.items()) or "no boxes in the release",
        per_birads=box,
    )

    hist_by_method = {}
    for m in sorted({rows.method[k] for k in ok}):
        idx = [k for k in ok if rows.method[k] == m]
        hist_by_method[m] = stats.histograms(np.stack([an.feats[k].hist for k in idx]), index.hist[index.side != ""], st.intensity, st.bootstrap, rng)
    gates["intensity"] = Gate(
        status=stats.worst(v["status"] for v in hist_by_method.values()),
        summary=", ".join(f"{m} JS {v.get('value', '-')} (floor {v.get('noise_floor', '-')})" for m, v in hist_by_method.items()),
        per_method=hist_by_method,
    )

    area = {}
    for view in ("CC", "MLO"):
        x = np.array([an.feats[k].area_fraction for k in ok if rows.view[k] == view])
        if len(x):
            area[view] = stats.continuous(x, index.area[(index.views == view) & (index.side != "")], st.area, st.bootstrap, rng)
    gates["area"] = Gate(
        status=stats.worst(v["status"] for v in area.values()),
        summary=", ".join(f"{v_}: W/std {d.get('value', '-')}" for v_, d in area.items()),
        per_view=area,
    )

    groups: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for k in ok:
        if rows.ids[k] in an.thumbs:
            groups[rows.prompt[k] or "(no prompt)"].append((rows.ids[k], rows.source[k]))
    # MS-SSIM itself runs on a thread (see validate_release); the pairs are drawn here, in the
    # same order of random draws as the other statistics
    return gates, stats.diversity_pairs(groups, st.msssim_max_pairs, rng)


def _diversity_gate(div: dict[str, Any], th: Thresholds) -> Gate:
    if "mean_msssim" in div:
        div["status"] = th.stats.diversity_msssim.status(div["mean_msssim"])
        div["summary"] = f"mean MS-SSIM within prompt groups {div['mean_msssim']:.3f} (MAM-E reports 0.29-0.60)"
    else:
        div["summary"] = div["note"]
    return Gate(**div)


def _drift_gate(rows: Rows, an: Analysed, base_rows: Rows, base: Analysed, th: Thresholds, rng) -> Gate:
    st = th.stats
    out: dict[str, Any] = {}
    cols = {"birads": (rows.birads, base_rows.birads), "view": (rows.view, base_rows.view), "laterality": (rows.laterality, base_rows.laterality),
            "density": (rows.density, base_rows.density), "method": (rows.method, base_rows.method)}  # fmt: skip
    out["categorical"] = {k: stats.categorical(a, b, st.drift, st.bootstrap, rng) for k, (a, b) in cols.items()}
    for v in out["categorical"].values():  # spec-driven shares may change on purpose: reported, not gated
        v["status"] = "pass"
    ok = [k for k in range(len(rows.ids)) if an.feats[k] is not None]
    bok = [k for k in range(len(base_rows.ids)) if base.feats[k] is not None]
    out["intensity"] = stats.histograms(np.stack([an.feats[k].hist for k in ok]) if ok else np.zeros((0, 1)),
                                        np.stack([base.feats[k].hist for k in bok]) if bok else np.zeros((0, 1)), st.drift, st.bootstrap, rng)  # fmt: skip
    out["area"] = stats.continuous(np.array([an.feats[k].area_fraction for k in ok]), np.array([base.feats[k].area_fraction for k in bok]), st.drift, st.bootstrap, rng)
    rw = np.array([(x1 - x0) / an.feats[k].width for k in ok for x0, _, x1, _ in rows.bbox[k]])
    bw = np.array([(x1 - x0) / base.feats[k].width for k in bok for x0, _, x1, _ in base_rows.bbox[k]])
    out["box_width"] = stats.continuous(rw, bw, st.drift, st.bootstrap, rng)
    status = stats.worst([out["intensity"]["status"], out["area"]["status"], out["box_width"]["status"]])
    return Gate(status=status, summary=f"vs baseline: intensity JS {out['intensity'].get('value', '-')}, area W/std {out['area'].get('value', '-')}, box width W/std {out['box_width'].get('value', '-')}", **out)


def _thumb_rows(rows: Rows, th: Thresholds, rng: np.random.Generator) -> set[int]:
    """Rows whose thumbnails the diversity check needs: a bounded random subset per prompt group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, p in enumerate(rows.prompt):
        groups[p or "(no prompt)"].append(k)
    keep = int(np.ceil(np.sqrt(2 * th.stats.msssim_max_pairs))) + 2
    out: set[int] = set()
    for members in groups.values():
        out.update(members if len(members) <= keep else rng.choice(members, keep, replace=False).tolist())
    return out


def validate_release(
    release: str | Path | LoadedRelease,
    reference: str | Path,
    *,
    baseline: str | Path | None = None,
    spec: str | Path | ReleaseSpec | None = None,
    config: str | Path | Thresholds | None = None,
    report_dir: str | Path | None = None,
    progress: bool = True,
    plots: bool = True,
) -> ValidationReport:
    """Run every check; write report.json/report.md/PNGs to ``report_dir`` when given."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    rel = release if isinstance(release, LoadedRelease) else load_release(release)
    _start_pool(rel.dataset.num_rows)
    spec_path: Path | None = None
    if spec is None and rel.spec_path is not None:
        spec = rel.spec_path
    if isinstance(spec, (str, Path)):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    th = resolve_thresholds(config, spec, spec_path)
    rng = np.random.default_rng(th.seed)
    index, ref_ds = reference_index(reference, embed_size=th.dedup.embed_size, bins=th.stats.histogram_bins, progress=progress)
    timings["reference_index"] = time.perf_counter() - t

    t = time.perf_counter()
    rows = Rows.of(rel)
    # a bad baseline is bad input: fail before the long analysis and before any report file exists
    base_rel = load_release(baseline) if baseline is not None else None
    base_rows = Rows.of(base_rel) if base_rel is not None else None
    an = _analyse_rows(rel, rows, th, _thumb_rows(rows, th, rng), "validate", progress)
    timings["analysis"] = time.perf_counter() - t
    started = None
    if report_dir is not None and plots and _POOL is not None and len(rows.ids) >= _MIN_ROWS_FOR_POOL:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        started = _Plots(_data_plots(rows, an, index, spec, Path(report_dir)), _POOL)

    t = time.perf_counter()
    sanity_flags = _sanity(rows, an, index, th, spec)
    checks_s = time.perf_counter() - t
    # Distribution statistics before the de-duplication search (it draws no random numbers, so
    # the figures are the same), so that MS-SSIM runs on a thread while faiss searches here.
    t = time.perf_counter()
    dist_gates, div_pairs = _distribution_gates(rows, an, index, th, spec, rel.skipped, rng)
    with ThreadPoolExecutor(1) as ex:
        div_future = ex.submit(stats.diversity, an.thumbs, div_pairs)
        stats_s = time.perf_counter() - t
        t = time.perf_counter()
        dedup_flags, dedup_fig = _dedup(rows, an, rel, index, ref_ds, th, progress)
        timings["per_image_checks"] = checks_s + time.perf_counter() - t
        t = time.perf_counter()
        diversity_gate = _diversity_gate(div_future.result(), th)

    n = max(1, len(rows.ids))
    gates: dict[str, Gate] = {}
    for name, fl, checks in (("sanity", sanity_flags, SANITY_CHECKS), ("memorization", dedup_flags, DEDUP_CHECKS)):
        ids = {f.image_id for f in fl}
        frac = len(ids) / n
        by_check = dict(Counter(f.check for f in fl))
        status = "fail" if frac > th.max_flagged_fraction else "pass"
        summary = f"{len(ids)} image(s) flagged ({frac:.1%})" + (f": {by_check}" if by_check else "")
        cal = dedup_fig["calibration"]
        if name == "memorization" and cal["reference_other_patient_nn"] is None and not cal["overridden"]["nn_distance"]:
            # A reference of one patient has no other-patient distances: the ceiling is a guess.
            status = "warn" if status == "pass" else status
            summary += f"; UNCALIBRATED (reference has < 2 patients): distance ceiling {th.dedup.nn_distance_max} used"
        gates[name] = Gate(status=status, summary=summary,
                           flagged_images=len(ids), flagged_fraction=round(frac, 4), by_check=by_check, checks=sorted(checks),
                           **(dedup_fig if name == "memorization" else {}))  # fmt: skip

    gates.update(dist_gates)
    gates["diversity"] = diversity_gate
    base_info = None
    if base_rel is not None and base_rows is not None:
        base_an = _analyse_rows(base_rel, base_rows, th, set(), "baseline", progress)
        gates["drift"] = _drift_gate(rows, an, base_rows, base_an, th, rng)
        base_info = {"source": base_rel.source, "kind": base_rel.kind, "n": len(base_rows.ids)}
    timings["statistics"] = stats_s + time.perf_counter() - t

    flags = sanity_flags + dedup_flags
    failed = sorted({f.image_id for f in flags})
    report = ValidationReport(
        passed=all(g.status != "fail" for g in gates.values()),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        release={"source": rel.source, "kind": rel.kind, "spec": str(spec_path) if spec_path else None, "skipped": rel.skipped},
        reference={"source": str(reference), "n": index.n, "content_hash": index.meta.get("content_hash"), "cache_key": index.meta.get("key"),
                   "area_ranges": {v: index.area_range(v, *th.sanity.area_percentiles) for v in ("CC", "MLO")}, "expected_side": index.expected_side()},  # fmt: skip
        baseline=base_info,
        implementations={
            "mammosynth": _v("mammosynth"), "ms-ssim": f"pytorch-msssim=={_v('pytorch-msssim')}", "search": f"faiss-cpu=={_v('faiss-cpu')} IndexFlatL2 + IndexBinaryFlat (exact)",
            "phash": "256-bit DCT pHash of the breast crop (scipy.fft)", "pixel hash": f"{PIXEL_HASH} (xxhash=={_v('xxhash')}) of shape, dtype and pixels", "breast mask": "mammosynth.builders.core.breast_mask.breast_mask (Otsu)",
            "embedding": f"{th.dedup.embed_size}x{th.dedup.embed_size} standardized, one-cell-blurred grid of the stable breast crop, chest wall left; "
                         f"training-set candidates under {dedup.PRESCORE_FACTOR:g}x the threshold re-scored over small grid shifts and scales",
        },  # fmt: skip
        thresholds=th.model_dump(mode="json"),
        n_rows=len(rows.ids),
        gates=gates,
        flagged=flags,
        failed_image_ids=failed,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    if report_dir is not None:
        write_reports(report, Path(report_dir), rows=rows, an=an, index=index, ref_ds=ref_ds, rel=rel, spec=spec, plots=plots, started=started)
    return report


def _data_plots(rows: Rows, an: Analysed, index: ReferenceIndex, spec, out: Path) -> list[tuple[str, tuple, Path]]:
    """The plots that need only the analysis (not the findings): (plots function, args, file)."""
    ok = [k for k in range(len(rows.ids)) if an.feats[k] is not None]
    per_m = defaultdict(lambda: np.zeros(an.feats[ok[0]].hist.shape if ok else 1))
    for k in ok:
        per_m[rows.method[k]] = per_m[rows.method[k]] + an.feats[k].hist
    rb: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in sorted({rows.birads[k] for k in ok if rows.bbox[k]}):
        bx = [(x1 - x0) / an.feats[k].width for k in ok if rows.birads[k] == b for x0, _, x1, _ in rows.bbox[k]]
        by = [(y1 - y0) / an.feats[k].height for k in ok if rows.birads[k] == b for _, y0, _, y1 in rows.bbox[k]]
        rb[b] = (np.array(bx), np.array(by))
    refb = {int(b): (index.box_w[index.box_birads == b], index.box_h[index.box_birads == b]) for b in np.unique(index.box_birads)}
    label = lambda c: f"{c[0]} B{c[1]} {c[2]} {c[3]}"  # noqa: E731
    obs = Counter(label((rows.method[k], rows.birads[k], rows.view[k], rows.laterality[k])) for k in range(len(rows.ids)))
    exp = {label(c): v for c, v in _expected_counts(spec).items()} if spec is not None else None
    return [
        ("intensity_histograms", (dict(per_m), index.hist[index.side != ""].sum(0)), out / "intensity_histograms.png"),
        ("box_sizes", (rb, refb), out / "box_sizes.png"),
        ("class_counts", (dict(obs), exp), out / "class_counts.png"),
    ]


def _render(name: str, args: tuple, path: Path) -> str:
    from mammosynth.validation import plots as P

    return getattr(P, name)(*args, path)


class _Plots:
    """Data plots started early: on the analysis pool when it is running (they then draw while
    this process runs the checks and statistics), else drawn here when asked for."""

    def __init__(self, jobs: list[tuple[str, tuple, Path]], pool) -> None:
        self.jobs = jobs
        # absolute paths: a worker's working directory is the one its pool started in
        self.futures = [pool.submit(_render, name, args, path.resolve()) for name, args, path in jobs] if pool is not None else None

    def files(self) -> list[str]:
        if self.futures is None:
            return [_render(*j) for j in self.jobs]
        for f in self.futures:
            f.result()
        return [str(path) for _, _, path in self.jobs]


def write_reports(report: ValidationReport, out: Path, *, rows: Rows, an: Analysed, index: ReferenceIndex, ref_ds, rel: LoadedRelease, spec,
                  plots: bool = True, started: _Plots | None = None) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        from mammosynth.validation import plots as P

        pairs = []
        row_of, pos = index.row_of(), {i: k for k, i in enumerate(rows.ids)}
        seen = set()
        for f in report.flagged:
            if f.image_id in seen or len(pairs) >= 12:
                continue
            seen.add(f.image_id)
            try:
                img = grey_channel(decode(rel.dataset[pos[f.image_id]]["image"]))
            except (UnreadableImage, ValueError):
                continue
            ref = None
            if f.nearest_training_id and row_of.get(f.nearest_training_id, ref_ds.num_rows) < ref_ds.num_rows:
                ref = grey_channel(reference_image(ref_ds, row_of[f.nearest_training_id]))
            pairs.append((f"{f.image_id}\n{f.check}", img, f.nearest_training_id, ref))
        grid = P.flagged_grid(pairs, out / "flagged.png") if pairs else None
        files = (started or _Plots(_data_plots(rows, an, index, spec, out), None)).files()
        report.plots = files + ([grid] if grid else [])
    write_json(report, out / "report.json")
    write_markdown(report, out / "report.md")

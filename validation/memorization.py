"""The de-duplication / memorization policy: which release images are copies of training images
(or of each other), and which inpainted/blended images altered their own background.

``dedup`` does the searching; here is what counts as a match: the thresholds calibrated on the
reference's distances between different patients, an inpainted image's own background not
counting as a copy, and the figures the report keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from mammosynth.builders.core.imageio import UnreadableImage, decode
from mammosynth.validation import checks as C
from mammosynth.validation import dedup, rules
from mammosynth.validation.analysis import Analysed, Rows
from mammosynth.validation.reference import ReferenceIndex, reference_image
from mammosynth.validation.release_io import LoadedRelease
from mammosynth.validation.report import Flag, Gate
from mammosynth.validation.stats import quantiles
from mammosynth.validation.thresholds import DedupThresholds, Thresholds

ON_OWN_BACKGROUND = ("inpainting", "poisson")  # methods whose row keeps its source (training) image


@dataclass
class MatchLimits:
    """How close is a copy: embedding distance and pHash radius (given, or calibrated)."""

    nn_distance: float
    phash_radius: int


def match_limits(index: ReferenceIndex, dd: DedupThresholds) -> MatchLimits:
    """The configured limits, or where unset the reference's calibration."""
    nn = (
        dd.nn_distance
        if dd.nn_distance is not None
        else index.calibrated_nn(dd.calibration_quantile, dd.calibration_factor, dd.nn_distance_max)
    )
    radius = (
        dd.phash_radius
        if dd.phash_radius is not None
        else index.calibrated_radius(dd.calibration_quantile, dd.calibration_factor, dd.phash_radius_default)
    )
    return MatchLimits(nn, radius)


def searchable_rows(rows: Rows, an: Analysed) -> np.ndarray:
    """Rows with a breast (an embedding to search with), as row numbers."""
    ok = [k not in an.errors and an.feats[k] is not None and an.feats[k].side is not None for k in range(len(rows.ids))]
    return np.nonzero(np.array(ok, bool))[0]


@dataclass
class TrainingSearch:
    """The nearest training image of each searched row, and what the search cost."""

    nearest: np.ndarray  # per release row: embedding distance to its nearest allowed training image (inf = none)
    reference_rows: int
    seconds: float


def _nearest_allowed(
    dist: np.ndarray, idx: np.ndarray, ref_rows: np.ndarray, ref_ids: np.ndarray, own: str | None
) -> tuple[float, int]:
    """Nearest training image that is not the row's own background."""
    cand = ref_rows[np.maximum(idx, 0)]
    allowed = np.array([own is None or ref_ids[c] != own for c in cand]) & (idx >= 0)
    return dedup.first_allowed(dist, cand, allowed)


def training_matches(
    rows: Rows, an: Analysed, q: np.ndarray, index: ReferenceIndex, limits: MatchLimits, flags: list[Flag]
) -> TrainingSearch:
    """Rows ``q`` closer to a training image than the limits: by embedding (shift-tolerant), else by pHash."""
    t0 = time.perf_counter()
    ref_rows = np.nonzero(index.side != "")[0]
    ref_ids = index.image_ids
    every = len(ref_rows) == index.n  # then skip copying the (n, d) embeddings for the search
    db_emb, db_phash = (index.emb, index.phash) if every else (index.emb[ref_rows], index.phash[ref_rows])
    nb = dedup.search(an.emb[q], an.phash[q], db_emb, db_phash, k=4)
    # shifted or cropped copies: near candidates re-scored over small grid shifts and scales
    nb = dedup.rescore(nb, an.emb[q], db_emb, dedup.PRESCORE_FACTOR * limits.nn_distance)
    seconds = time.perf_counter() - t0
    nearest = np.full(len(rows.ids), np.inf)
    for j, k in enumerate(q):
        image_id, method = rows.ids[k], rows.method[k]
        own = rows.source[k] if method in ON_OWN_BACKGROUND else None
        d, i = _nearest_allowed(nb.dist[j], nb.idx[j], ref_rows, ref_ids, own)
        nearest[k] = d
        hd, hi = _nearest_allowed(nb.ham[j].astype(np.float64), nb.hidx[j], ref_rows, ref_ids, own)
        check = C.MEMORIZATION if method == "text2image" else C.TRAINING_MATCH
        if d < limits.nn_distance:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=check,
                    method=method,
                    nearest_training_id=str(ref_ids[i]),
                    distance=round(d, 4),
                    reason=f"embedding distance {d:.3f} to training image < threshold {limits.nn_distance:.3f}",
                )
            )
        elif hd <= limits.phash_radius:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=C.NEAR_DUPLICATE_PHASH,
                    method=method,
                    nearest_training_id=str(ref_ids[hi]),
                    distance=float(hd),
                    reason=f"pHash Hamming distance {int(hd)} to training image <= radius {limits.phash_radius}",
                )
            )
    return TrainingSearch(nearest, len(ref_rows), seconds)


def exact_copies(rows: Rows, an: Analysed, index: ReferenceIndex, flags: list[Flag]) -> None:
    """Pixel-identical copies of training images, whatever the method."""
    by_hash: dict[str, int] = {str(h): i for i, h in enumerate(index.pixel_hashes) if h}
    for k, image_id in enumerate(rows.ids):
        f = an.feats[k]
        if f is not None and f.pixel_hash in by_hash:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=C.EXACT_COPY,
                    method=rows.method[k],
                    nearest_training_id=str(index.image_ids[by_hash[f.pixel_hash]]),
                    distance=0.0,
                    reason="pixel-identical to a training image",
                )
            )


def background_checks(
    rows: Rows,
    an: Analysed,
    rel: LoadedRelease,
    index: ReferenceIndex,
    ref_ds: datasets.Dataset,
    dd: DedupThresholds,
    progress: bool,
    flags: list[Flag],
) -> list[float]:
    """Inpainting / poisson rows: the background must be their own source image, unaltered outside
    the boxes. Returns the measured differences."""
    row_of = index.row_of()
    values: list[float] = []
    bg_rows = [k for k in range(len(rows.ids)) if rows.method[k] in ON_OWN_BACKGROUND and k not in an.errors]
    for k in tqdm(bg_rows, desc="background check", unit="img", disable=not progress or not bg_rows):
        src, image_id, method = rows.source[k], rows.ids[k], rows.method[k]
        if not src or src not in row_of:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=C.SOURCE_MISSING,
                    method=method,
                    reason=f"source_image {src!r} is not in the reference",
                )
            )
            continue
        try:
            img = decode(rel.dataset[int(k)]["image"])
            mad = dedup.background_difference(
                img, reference_image(ref_ds, row_of[src]), rows.bbox[k], dd.background_box_margin
            )
        except (UnreadableImage, ValueError) as exc:
            flags.append(
                Flag(image_id=image_id, check=C.SOURCE_MISSING, method=method, reason=f"source image unreadable: {exc}")
            )
            continue
        values.append(mad)
        if mad > dd.background_max_mad:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=C.BACKGROUND_ALTERED,
                    method=method,
                    nearest_training_id=src,
                    distance=round(mad, 4),
                    reason=f"mean |difference| {mad:.4f} from source_image outside the lesion boxes > {dd.background_max_mad}",
                )
            )
    return values


def release_duplicates(rows: Rows, an: Analysed, q: np.ndarray, limits: MatchLimits, flags: list[Flag]) -> int:
    """Exact, embedding and pHash duplicates within the release (pairs sharing a background are
    expected), each row flagged against an earlier one. Plain distances only: the shift-tolerant
    re-scoring is kept for the training set (privacy); on a release of similar synthetic images
    nearly every query would pay for it. Returns the number of rows flagged."""
    if len(q) <= 1:
        return 0
    nr = dedup.search(an.emb[q], an.phash[q], an.emb[q], an.phash[q], k=6)
    seen_hash: dict[str, int] = {}
    within = 0
    for j, k in enumerate(q):
        f = an.feats[k]
        partners = []
        for d, i, hd, hi in zip(nr.dist[j], nr.idx[j], nr.ham[j], nr.hidx[j]):
            for other, close in ((i, d < limits.nn_distance), (hi, hd <= limits.phash_radius)):
                if (
                    other >= 0
                    and close
                    and q[other] < k
                    and not (rows.source[k] and rows.source[k] == rows.source[q[other]])
                ):
                    partners.append((q[other], float(d if other == i else hd)))
        if f.pixel_hash in seen_hash:
            partners.insert(0, (seen_hash[f.pixel_hash], 0.0))
        seen_hash.setdefault(f.pixel_hash, k)
        if partners:
            o, dist = partners[0]
            within += 1
            flags.append(
                Flag(
                    image_id=rows.ids[k],
                    check=C.DUPLICATE_IN_RELEASE,
                    method=rows.method[k],
                    nearest_release_id=rows.ids[o],
                    distance=round(dist, 4),
                    reason=f"near-duplicate of release image {rows.ids[o]}",
                )
            )
    return within


def memorization_flags(
    rows: Rows,
    an: Analysed,
    rel: LoadedRelease,
    index: ReferenceIndex,
    ref_ds: datasets.Dataset,
    th: Thresholds,
    progress: bool,
) -> tuple[list[Flag], dict[str, Any]]:
    """Every de-duplication finding, and the figures the memorization gate reports."""
    dd = th.dedup
    limits = match_limits(index, dd)
    q = searchable_rows(rows, an)
    flags: list[Flag] = []
    search = training_matches(rows, an, q, index, limits, flags)
    exact_copies(rows, an, index, flags)
    bg_values = background_checks(rows, an, rel, index, ref_ds, dd, progress, flags)
    within = release_duplicates(rows, an, q, limits, flags) if dd.within_release else 0
    figures = {
        "nn_threshold": round(limits.nn_distance, 4),
        "phash_radius": limits.phash_radius,
        "calibration": {
            "quantile": dd.calibration_quantile,
            "factor": dd.calibration_factor,
            "reference_other_patient_nn": quantiles(index.nn_other[np.isfinite(index.nn_other)]),
            "reference_other_patient_phash": quantiles(index.phash_other[index.phash_other >= 0]),
            "overridden": {"nn_distance": dd.nn_distance is not None, "phash_radius": dd.phash_radius is not None},
        },
        "release_nearest_training_distance": quantiles(search.nearest[np.isfinite(search.nearest)]),
        "background_mad": quantiles(np.array(bg_values)),
        "within_release_duplicates": within,
        "search_seconds": round(search.seconds, 3),
        "searched": {"release": int(len(q)), "reference": int(search.reference_rows)},
    }
    return flags, figures


def memorization_gate(flags: list[Flag], figures: dict[str, Any], n_rows: int, th: Thresholds) -> Gate:
    """The per-image gate over the de-duplication findings; a warning at best when the distance
    ceiling could not be calibrated (a reference of one patient has no other-patient distances)."""
    gate = rules.flagged_gate(C.GATE_MEMORIZATION, flags, C.MEMORIZATION_CHECKS, n_rows, th, **figures)
    if rules.uncalibrated(figures):
        gate.summary += f"; UNCALIBRATED (reference has < 2 patients): distance ceiling {th.dedup.nn_distance_max} used"
    return gate


__all__ = [
    "ON_OWN_BACKGROUND",
    "MatchLimits",
    "match_limits",
    "searchable_rows",
    "TrainingSearch",
    "training_matches",
    "exact_copies",
    "background_checks",
    "release_duplicates",
    "memorization_flags",
    "memorization_gate",
]

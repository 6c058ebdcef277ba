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
class Queries:
    """Images searched against the training set: release rows, or the canary self-test's planted
    copies and held-out real images. Both go through ``training_matches``, so the canaries measure
    the very check the release is judged by."""

    ids: list[str]
    methods: list[str]
    own: list[str | None]  # the row's own background (a training image id it may match), or None
    emb: np.ndarray  # (q, d)
    phash: np.ndarray  # (q, PHASH_BYTES)
    keypoints: list[tuple[np.ndarray, np.ndarray] | None]
    pixel_hashes: list[str]
    densities: list[str | None]

    @classmethod
    def of_release(cls, rows: Rows, an: Analysed, q: np.ndarray) -> "Queries":
        """The searchable rows ``q`` of the release."""
        feats = [an.feats[k] for k in q]
        return cls(
            ids=[rows.ids[k] for k in q],
            methods=[rows.method[k] for k in q],
            own=[rows.source[k] if rows.method[k] in ON_OWN_BACKGROUND else None for k in q],
            emb=an.emb[q],
            phash=an.phash[q],
            keypoints=[(f.kp_xy, f.kp_desc) if f is not None and f.kp_desc is not None else None for f in feats],
            pixel_hashes=[f.pixel_hash if f is not None else "" for f in feats],
            densities=[rows.density[k] for k in q],
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TrainingSearch:
    """Per query: its nearest allowed training image and what matched; and what the search cost."""

    nearest: np.ndarray  # embedding distance to the nearest allowed training image (inf = none)
    nearest_row: np.ndarray  # its index row (-1 = none)
    matched_row: np.ndarray  # index row of the training image it was flagged against (-1 = none)
    # most RANSAC inliers of a verified candidate (-1 = none verified); for a candidate not fitted
    # (fewer matches than needed) its number of matches, an upper bound
    inliers: np.ndarray
    verified: int  # candidate pairs geometrically verified
    reference_rows: int
    seconds: float


def _allowed(
    idx: np.ndarray, db_rows: np.ndarray, ref_ids: np.ndarray, own: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Index rows of the candidate columns, and which of them are not the query's own background."""
    cand = db_rows[np.maximum(idx, 0)]
    ok = (idx >= 0) & np.array([own is None or ref_ids[c] != own for c in cand], bool)
    return cand, ok


def _verify(
    query_kp: tuple[np.ndarray, np.ndarray] | None, rows: list[int], index: ReferenceIndex, need: int
) -> tuple[int, int]:
    """(most inliers, its index row) over the candidate ``rows``; (-1, -1) when nothing verified."""
    if query_kp is None or not rows:
        return -1, -1
    counts = dedup.geometric_inliers(*query_kp, [index.keypoints(r) for r in rows], need)
    best = int(np.argmax(counts))
    return counts[best], rows[best]


def training_matches(
    queries: Queries,
    index: ReferenceIndex,
    limits: MatchLimits,
    dd: DedupThresholds,
    flags: list[Flag],
    db_rows: np.ndarray | None = None,
    exact_inliers: bool = False,
) -> TrainingSearch:
    """Queries closer to a training image (of ``db_rows``; default every image with a breast) than
    the limits: by embedding (shift-tolerant), by pHash, or, for near candidates, by geometric
    verification (keypoints + RANSAC). ``exact_inliers`` fits every verified pair (the same
    findings; ``inliers`` then never holds the upper bound of a pair not fitted)."""
    t0 = time.perf_counter()
    if db_rows is None:
        db_rows = np.nonzero(index.side != "")[0]
    ref_ids, patients = index.image_ids, index.patients
    every = len(db_rows) == index.n  # then skip copying the (n, d) embeddings for the search
    db_emb, db_phash = (index.emb, index.phash) if every else (index.emb[db_rows], index.phash[db_rows])
    n = len(queries)
    nb = dedup.search(queries.emb, queries.phash, db_emb, db_phash, k=4)
    # shifted or cropped copies: near candidates re-scored over small grid shifts and scales
    nb = dedup.rescore(nb, queries.emb, db_emb, dedup.PRESCORE_FACTOR * limits.nn_distance)
    nearest, nearest_row = np.full(n, np.inf), np.full(n, -1, np.int64)
    matched, inliers = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    bound = dd.geometric_bound_factor * limits.nn_distance
    verified = 0
    own_patient = {str(ref_ids[r]): str(patients[r]) for r in range(index.n)} if any(queries.own) else {}
    for j in range(n):
        image_id, method, own = queries.ids[j], queries.methods[j], queries.own[j]
        cand, ok = _allowed(nb.idx[j], db_rows, ref_ids, own)
        d, i = dedup.first_allowed(nb.dist[j], cand, ok)
        hcand, hok = _allowed(nb.hidx[j], db_rows, ref_ids, own)
        hd, hi = dedup.first_allowed(nb.ham[j].astype(np.float64), hcand, hok)
        nearest[j], nearest_row[j] = d, i
        check = C.MEMORIZATION if method == "text2image" else C.TRAINING_MATCH
        hit: tuple[int, str, float, str] | None = None  # (row, check, distance, reason)
        if d < limits.nn_distance:
            hit = (i, check, d, f"embedding distance {d:.3f} to training image < threshold {limits.nn_distance:.3f}")
        elif hd <= limits.phash_radius:
            hit = (
                hi,
                C.NEAR_DUPLICATE_PHASH,
                hd,
                f"pHash Hamming distance {int(hd)} to training image <= radius {limits.phash_radius}",
            )
        elif dd.geometric_verification:
            near = [int(c) for c, good, dist in zip(cand, ok, nb.dist[j]) if good and dist < bound]
            near = near[: dd.geometric_candidates]
            if hi >= 0 and hd <= 2 * limits.phash_radius and hi not in near:
                near.append(hi)
            verified += len(near)
            inliers[j], r = _verify(queries.keypoints[j], near, index, 0 if exact_inliers else dd.geometric_min_inliers)
            if inliers[j] >= dd.geometric_min_inliers:
                dist = float(np.linalg.norm(queries.emb[j] - index.emb[r]))
                hit = (
                    r,
                    check,
                    dist,
                    f"{inliers[j]} keypoint matches consistent with one affine transform (>= "
                    f"{dd.geometric_min_inliers}) to training image at embedding distance {dist:.3f}",
                )
        if hit is None:
            continue
        r, chk, dist, reason = hit
        if own is not None and own_patient.get(own) == str(patients[r]):
            chk = C.SAME_PATIENT_OTHER_VIEW
            reason += "; another image of the patient whose image is this row's background"
        matched[j] = r
        flags.append(
            Flag(
                image_id=image_id,
                check=chk,
                method=method,
                nearest_training_id=str(ref_ids[r]),
                nearest_training_patient=str(patients[r]),
                distance=round(float(dist), 4),
                reason=reason,
            )
        )
    return TrainingSearch(nearest, nearest_row, matched, inliers, verified, len(db_rows), time.perf_counter() - t0)


def exact_copies(queries: Queries, index: ReferenceIndex, flags: list[Flag], db_rows: np.ndarray | None = None) -> None:
    """Pixel-identical copies of training images (of ``db_rows``; default all), whatever the method."""
    rows = range(index.n) if db_rows is None else db_rows
    by_hash: dict[str, int] = {str(index.pixel_hashes[i]): int(i) for i in rows if index.pixel_hashes[i]}
    for j, image_id in enumerate(queries.ids):
        r = by_hash.get(queries.pixel_hashes[j])
        if r is not None:
            flags.append(
                Flag(
                    image_id=image_id,
                    check=C.EXACT_COPY,
                    method=queries.methods[j],
                    nearest_training_id=str(index.image_ids[r]),
                    nearest_training_patient=str(index.patients[r]),
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
            img = decode(rel.image(int(k)))
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


@dataclass
class MemorizationResult:
    flags: list[Flag]
    figures: dict[str, Any]  # the memorization gate's
    queries: Queries  # the searched release rows
    search: TrainingSearch


def match_figures(limits: MatchLimits, dd: DedupThresholds) -> dict[str, Any]:
    """How a match is decided: limits and geometric verification settings, as the report keeps them."""
    return {
        "nn_threshold": round(limits.nn_distance, 4),
        "phash_radius": limits.phash_radius,
        "geometric_verification": {
            "enabled": dd.geometric_verification,
            "min_inliers": dd.geometric_min_inliers,
            "candidates": dd.geometric_candidates,
            "bound": round(dd.geometric_bound_factor * limits.nn_distance, 4),
        },
    }


def memorization_flags(
    rows: Rows,
    an: Analysed,
    rel: LoadedRelease,
    index: ReferenceIndex,
    ref_ds: datasets.Dataset,
    th: Thresholds,
    progress: bool,
) -> MemorizationResult:
    """Every de-duplication finding, and the figures the memorization gate reports."""
    dd = th.dedup
    limits = match_limits(index, dd)
    q = searchable_rows(rows, an)
    flags: list[Flag] = []
    queries = Queries.of_release(rows, an, q)
    search = training_matches(queries, index, limits, dd, flags)
    readable = np.array([k for k in range(len(rows.ids)) if an.feats[k] is not None], np.int64)
    exact_copies(Queries.of_release(rows, an, readable), index, flags)
    bg_values = background_checks(rows, an, rel, index, ref_ds, dd, progress, flags)
    within = release_duplicates(rows, an, q, limits, flags) if dd.within_release else 0
    figures = {
        **match_figures(limits, dd),
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
        "searched": {
            "release": int(len(q)),
            "reference": int(search.reference_rows),
            "geometric_pairs": int(search.verified),
        },
    }
    return MemorizationResult(flags, figures, queries, search)


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
    "Queries",
    "TrainingSearch",
    "training_matches",
    "MemorizationResult",
    "match_figures",
    "exact_copies",
    "background_checks",
    "release_duplicates",
    "memorization_flags",
    "memorization_gate",
]

"""The canary self-test: every validation measures the memorization check's own recall.

K reference images (seeded) are perturbed in every way of ``perturbations.PERTURBATIONS`` (shift,
crop/zoom, stretch, half size, rotation, intensity changes, JPEG, noise, flip, a pasted box) and the
copies run through the release's own check (``memorization.training_matches`` and
``exact_copies``) as extra queries, never added to the release. A copy is caught when it is flagged
against the very image it was made from. The false-positive rate is measured on real images of
patients held out of the index: searched against every other patient, they must not be flagged.

The figures depend on the reference, the thresholds and the detector only (not on the release), so
they are cached beside the reference index, keyed by all three (``CANARY_VERSION`` for the code).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_json
from mammosynth.builders.core.imageio import UnreadableImage, decode, grey_channel
from mammosynth.builders.core.provenance import package_version
from mammosynth.validation import checks as C
from mammosynth.validation import rules
from mammosynth.validation.image_features import ImageFeatures, analyse
from mammosynth.validation.memorization import Queries, exact_copies, match_figures, match_limits, training_matches
from mammosynth.validation.perturbations import PERTURBATIONS
from mammosynth.validation.reference import ReferenceIndex, cache_dir_for
from mammosynth.validation.report import Flag, Gate, canary_sentence
from mammosynth.validation.stats import quantiles
from mammosynth.validation.thresholds import Thresholds

CANARY_VERSION = 1  # bump when planting or scoring changes: cached figures are then measured again
_SEED_STREAM = 0xCA7A  # the canaries' random stream, apart from the statistics' (their figures stay put)
# findings that say "this query is a copy of that training image"
CAUGHT_CHECKS = frozenset({C.EXACT_COPY, C.MEMORIZATION, C.NEAR_DUPLICATE_PHASH})
MISSED_LISTED = 20  # missed copies named in the report


def perturbation_names(th: Thresholds) -> list[str]:
    return list(th.canaries.perturbations or PERTURBATIONS)


def _rng(th: Thresholds, *tail: int) -> np.random.Generator:
    return np.random.default_rng([th.seed, _SEED_STREAM, *tail])


def held_out_rows(index: ReferenceIndex, th: Thresholds) -> tuple[list[str], np.ndarray]:
    """(patients held out, their searchable index rows, at most ``held_out_images``): drawn seeded
    among the patients with a breast image, never all of them (the rest is what they are searched
    against)."""
    ok = index.side != ""
    patients = sorted({str(p) for p in index.patients[ok]})
    if len(patients) < 2:
        return [], np.zeros(0, np.int64)
    k = min(th.canaries.held_out_patients, len(patients) // 2 or 1)
    chosen = sorted(_rng(th, 1).choice(patients, size=k, replace=False).tolist())
    rows = np.nonzero(ok & np.isin(index.patients, chosen))[0]
    if len(rows) > th.canaries.held_out_images:
        rows = np.sort(_rng(th, 2).choice(rows, size=th.canaries.held_out_images, replace=False))
    return chosen, rows


def canary_rows(index: ReferenceIndex, th: Thresholds) -> np.ndarray:
    """The reference rows planted, seeded: images with a breast and keypoints to match."""
    ok = np.nonzero((index.side != "") & (index.kp_n > 0))[0]
    k = min(th.canaries.images, len(ok))
    return np.sort(_rng(th, 3).choice(ok, size=k, replace=False)) if k else ok


def plant(image: Any, names: list[str], seed: list[int], embed_size: int, bins: int) -> list[ImageFeatures | str]:
    """One reference image's perturbed copies, analysed as release rows are (features, or the
    error text); a pool task."""
    try:
        img = grey_channel(decode(image))
    except (UnreadableImage, ValueError) as exc:
        return [f"reference image unreadable: {exc}"] * len(names)
    rng = np.random.default_rng(seed)
    out: list[ImageFeatures | str] = []
    for name in names:
        try:
            out.append(analyse(PERTURBATIONS[name](img, rng), embed_size=embed_size, bins=bins))
        except (UnreadableImage, ValueError) as exc:
            out.append(str(exc) or type(exc).__name__)
    return out


def _cache_key(index: ReferenceIndex, th: Thresholds) -> str:
    import cv2
    import faiss

    return sha256_json(
        {
            "index": index.meta.get("key"),
            "content": index.meta.get("content_hash"),
            "dedup": th.dedup.model_dump(mode="json"),
            "canaries": th.canaries.model_dump(mode="json"),
            "stats_bins": th.stats.histogram_bins,
            "seed": th.seed,
            "version": CANARY_VERSION,
            "mammosynth": package_version("mammosynth", missing="unknown"),
            "opencv": cv2.__version__,
            "faiss": faiss.__version__,
        }
    )[:24]


def _cache_file(index: ReferenceIndex, th: Thresholds) -> Path | None:
    ref = index.meta.get("reference")
    if not ref or not index.meta.get("key"):
        return None
    return cache_dir_for(Path(ref)) / f"canaries-{_cache_key(index, th)}.json"


class CanaryRun:
    """The self-test, started early: its copies are analysed on the pool (when given) while the
    release is read; ``figures()`` searches them and returns the gate's figures."""

    def __init__(
        self,
        index: ReferenceIndex,
        ref_ds: datasets.Dataset,
        th: Thresholds,
        pool: Callable[[int], Executor | None] | None = None,
    ) -> None:
        """``pool``: called with the number of copies to analyse, returns the executor to analyse
        them on (or None: here); not called when the figures are cached."""
        self.index, self.th = index, th
        self.names = perturbation_names(th)
        self.cache = _cache_file(index, th)
        self.cached: dict[str, Any] | None = None
        if self.cache is not None and self.cache.is_file():
            try:
                self.cached = json.loads(self.cache.read_text())
            except (OSError, ValueError):
                self.cached = None  # a damaged cache is measured again
        self.rows = canary_rows(index, th)
        self.futures: list[Future | list] = []
        if self.cached is not None:
            return
        executor = pool(len(self.rows) * len(self.names)) if pool is not None else None
        for r in self.rows:  # index rows are the reference's rows, in order
            row = ref_ds[int(r)] if r < ref_ds.num_rows else None
            if row is None or str(row["image_id"]) != str(index.image_ids[r]):
                raise InputError(
                    "the cached reference index does not describe this reference",
                    file=index.meta.get("reference"),
                    field="image_id",
                )
            args = (
                row["image"],
                self.names,
                [th.seed, _SEED_STREAM, 4, int(r)],
                th.dedup.embed_size,
                th.stats.histogram_bins,
            )
            self.futures.append(executor.submit(plant, *args) if executor is not None else plant(*args))

    def figures(self) -> dict[str, Any]:
        if self.cached is not None:
            return {**self.cached, "from_cache": True}
        planted = [f.result() if isinstance(f, Future) else f for f in self.futures]
        out = score(self.index, self.th, self.rows, self.names, planted)
        if self.cache is not None:
            try:
                atomic.write_json(self.cache, out, indent=1)
            except OSError:
                pass  # a read-only cache only costs the next run the measurement
        return {**out, "from_cache": False}


def _queries_of(feats: list[ImageFeatures], ids: list[str], densities: list[str | None]) -> Queries:
    d = feats[0].embedding.shape[0] if feats else 0
    return Queries(
        ids=ids,
        methods=["text2image"] * len(ids),
        own=[None] * len(ids),
        emb=np.stack([f.embedding for f in feats]) if feats else np.zeros((0, d), np.float32),
        phash=np.stack([f.phash for f in feats]) if feats else np.zeros((0, 32), np.uint8),
        keypoints=[(f.kp_xy, f.kp_desc) if f.kp_desc is not None else None for f in feats],
        pixel_hashes=[f.pixel_hash for f in feats],
        densities=densities,
    )


def _tally(keys: list[str], caught: list[bool]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"caught": 0, "planted": 0})
    for k, c in zip(keys, caught):
        out[k]["planted"] += 1
        out[k]["caught"] += int(c)
    for v in out.values():
        v["recall"] = round(v["caught"] / v["planted"], 4)
    return dict(out)


def score(
    index: ReferenceIndex,
    th: Thresholds,
    rows: np.ndarray,
    names: list[str],
    planted: list[list[ImageFeatures | str]],
) -> dict[str, Any]:
    """The canaries' figures: the planted copies searched against the whole index, the held-out
    images against the index without their patients, both by the release's check."""
    dd = th.dedup
    limits = match_limits(index, dd)
    searchable = np.nonzero(index.side != "")[0]
    feats, ids, origin, kinds, dens, errors = [], [], [], [], [], []
    for r, copies in zip(rows, planted):
        for name, f in zip(names, copies):
            qid = f"canary:{index.image_ids[r]}:{name}"
            if isinstance(f, str) or f.side is None:  # no breast found: searched as nothing, so missed
                errors.append(qid)
                f = None
            feats.append(f)
            ids.append(qid)
            origin.append(str(index.image_ids[r]))
            kinds.append(name)
            dens.append(str(index.density[r]) or "unknown")
    ok = [j for j, f in enumerate(feats) if f is not None]
    q = _queries_of([feats[j] for j in ok], [ids[j] for j in ok], [dens[j] for j in ok])
    flags: list[Flag] = []
    search = training_matches(q, index, limits, dd, flags)
    exact_copies(q, index, flags)
    hits = {(f.image_id, f.nearest_training_id) for f in flags if f.check in CAUGHT_CHECKS}
    caught = [(ids[j], origin[j]) in hits for j in range(len(ids))]
    pos = {ids[j]: n for n, j in enumerate(ok)}
    missed = [
        {
            "image_id": origin[j],
            "perturbation": kinds[j],
            "nearest_distance": round(float(search.nearest[pos[ids[j]]]), 4) if ids[j] in pos else None,
            "inliers": int(search.inliers[pos[ids[j]]]) if ids[j] in pos else None,
            "flagged_against": sorted({f.nearest_training_id or "" for f in flags if f.image_id == ids[j]}),
        }
        for j in range(len(ids))
        if not caught[j]
    ]

    patients, held = held_out_rows(index, th)
    held_fig: dict[str, Any] = {"patients": len(patients), "images": int(len(held))}
    if len(held):
        db = searchable[~np.isin(index.patients[searchable], patients)]
        hq = Queries(
            ids=[f"held-out:{index.image_ids[r]}" for r in held],
            methods=["text2image"] * len(held),
            own=[None] * len(held),
            emb=index.emb[held],
            phash=index.phash[held],
            keypoints=[index.keypoints(int(r)) for r in held],
            pixel_hashes=[str(index.pixel_hashes[r]) for r in held],
            densities=[str(index.density[r]) or "unknown" for r in held],
        )
        hflags: list[Flag] = []
        hs = training_matches(hq, index, limits, dd, hflags, db_rows=db, exact_inliers=True)
        exact_copies(hq, index, hflags, db_rows=db)
        fp = sorted({f.image_id.split(":", 1)[1] for f in hflags})
        held_fig.update(
            {
                "false_positives": len(fp),
                "false_positive_rate": round(len(fp) / len(held), 4),
                "false_positive_ids": fp,
                "nearest_distance": quantiles(hs.nearest[np.isfinite(hs.nearest)]),
                "max_inliers": int(hs.inliers.max()) if len(hs.inliers) else -1,
            }
        )
    n_caught = int(sum(caught))
    return {
        **match_figures(limits, dd),
        "images": int(len(rows)),
        "planted": len(ids),
        "caught": n_caught,
        "recall": round(n_caught / len(ids), 4) if ids else None,
        "min_recall": th.canaries.min_recall,
        "max_false_positive_rate": th.canaries.max_false_positive_rate,
        "per_perturbation": {k: v for k, v in sorted(_tally(kinds, caught).items(), key=lambda kv: names.index(kv[0]))},
        "per_density": dict(sorted(_tally(dens, caught).items())),
        "unanalysable": len(errors),
        "missed": missed[:MISSED_LISTED],
        "held_out": held_fig,
        "canary_inliers": quantiles(search.inliers[search.inliers >= 0].astype(float)),
    }


def canary_gate(figures: dict[str, Any], th: Thresholds) -> Gate:
    held = figures["held_out"]
    summary = (
        f"caught {figures['caught']}/{figures['planted']} planted copies"
        + (f" (recall {figures['recall']:.1%}, minimum {th.canaries.min_recall:.0%})" if figures["planted"] else "")
        + (
            f"; {held['false_positives']}/{held['images']} held-out real images of {held['patients']} other patients "
            "flagged"
            if held["images"]
            else "; no patients to hold out (reference of one patient): false-positive rate not measured"
        )
    )
    return rules.judged_gate(C.GATE_CANARIES, th, summary, figures)


__all__ = [
    "CANARY_VERSION",
    "CAUGHT_CHECKS",
    "perturbation_names",
    "held_out_rows",
    "canary_rows",
    "plant",
    "CanaryRun",
    "score",
    "canary_gate",
    "canary_sentence",  # defined beside the report (light to import for the card), named here too
]

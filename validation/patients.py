"""The patient-level view of the memorization audit: which training patient each released image
sits nearest to (over all of that patient's views), and how many released images sit near each
patient (exposure).

A patient is the prepared set's pseudonymous ``study_id`` (ingest stores the patient key there).
Memorization is a risk per woman, not per image: two released images near two views of one
patient expose her twice.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from mammosynth.validation import checks as C
from mammosynth.validation.memorization import ON_OWN_BACKGROUND, Queries, TrainingSearch
from mammosynth.validation.reference import ReferenceIndex
from mammosynth.validation.report import Flag

EXPOSURE_LISTED = 20  # most exposed patients listed in the report (all are counted)
# findings that tie a released image to one training image (and so to its patient)
_MATCH_CHECKS = frozenset(
    {C.EXACT_COPY, C.MEMORIZATION, C.TRAINING_MATCH, C.NEAR_DUPLICATE_PHASH, C.SAME_PATIENT_OTHER_VIEW}
)


def patient_audit(
    queries: Queries,
    search: TrainingSearch,
    index: ReferenceIndex,
    flags: list[Flag],
    near_distance: float,
    methods: list[str],
    sources: list[str | None],
) -> dict[str, Any]:
    """The audit's figures (report.json ``patients``).

    ``nearest``: image_id -> [nearest training patient, embedding distance] for every searched
    image; ``exposure``: per patient, released images ``near`` it (nearest patient within
    ``near_distance``), ``matched`` to one of its images (a finding), and used as ``backgrounds``
    (inpainting/poisson rows built on its images; ``methods``/``sources`` are the release's)."""
    patients = index.patients
    nearest: dict[str, list[Any]] = {}
    near: Counter[str] = Counter()
    for j, image_id in enumerate(queries.ids):
        r = int(search.nearest_row[j])
        if r < 0:
            continue
        p = str(patients[r])
        nearest[image_id] = [p, round(float(search.nearest[j]), 4)]
        if search.nearest[j] < near_distance:
            near[p] += 1
    row_of = index.row_of()
    matched: dict[str, set[str]] = defaultdict(set)
    for f in flags:
        if f.check in _MATCH_CHECKS and f.nearest_training_id in row_of:
            matched[str(patients[row_of[f.nearest_training_id]])].add(f.image_id)
    backgrounds: Counter[str] = Counter(
        str(patients[row_of[s]]) for m, s in zip(methods, sources) if m in ON_OWN_BACKGROUND and s in row_of
    )
    every = set(near) | set(matched) | set(backgrounds)
    exposure = sorted(
        (
            {"patient": p, "matched": len(matched.get(p, ())), "near": near[p], "backgrounds": backgrounds[p]}
            for p in every
        ),
        key=lambda e: (-e["matched"], -e["near"], -e["backgrounds"], e["patient"]),
    )
    n_patients = len({str(p) for p, s in zip(patients, index.side) if s})
    return {
        "patients_in_reference": n_patients,
        "near_distance": round(near_distance, 4),
        "patients_matched": sum(1 for e in exposure if e["matched"]),
        "patients_near": sum(1 for e in exposure if e["near"]),
        "max_near": max((e["near"] for e in exposure), default=0),
        "same_patient_other_view": sum(1 for f in flags if f.check == C.SAME_PATIENT_OTHER_VIEW),
        "exposure": exposure[:EXPOSURE_LISTED],
        "exposure_listed": min(len(exposure), EXPOSURE_LISTED),
        "exposure_total": len(exposure),
        "nearest": nearest,
    }


def per_density(
    densities: list[str | None], flags: list[Flag], checks: frozenset[str], ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Rows and rows flagged by ``checks`` per density category (A-D; "unknown" for none): the
    equity view of a per-image gate."""
    flagged = {f.image_id for f in flags if f.check in checks}
    out: dict[str, dict[str, Any]] = {}
    for image_id, d in zip(ids, densities):
        cell = out.setdefault(d or "unknown", {"rows": 0, "flagged": 0})
        cell["rows"] += 1
        cell["flagged"] += image_id in flagged
    for cell in out.values():
        cell["flagged_fraction"] = round(cell["flagged"] / max(1, cell["rows"]), 4)
    return dict(sorted(out.items()))


__all__ = ["EXPOSURE_LISTED", "patient_audit", "per_density"]

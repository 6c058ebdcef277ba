"""The patient-level audit: nearest training patient of every released image, exposure per patient,
matches to another view of an inpainted row's own patient; and the per-density (equity) figures."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from helpers import synthetic as S
from mammosynth.builders.core.imageio import decode
from mammosynth.validation import checks as C
from mammosynth.validation.gate import validate_release
from mammosynth.validation.perturbations import PERTURBATIONS


def _rows(path):
    return datasets.load_from_disk(str(path)).cast_column("image", datasets.Image(decode=False))


def _row(r, image_id, img=None, method="text2image", source=None, bbox=None, density="keep"):
    return S.release_row(
        decode(r["image"]) if img is None else img,
        image_id,
        method,
        int(r["birads"]),
        r["view"],
        r["laterality"],
        density=(r["density"] or None) if density == "keep" else density,
        bbox=bbox,
        source_image=source,
    )


@pytest.fixture(scope="module")
def audited(prepared_set, tmp_path_factory):
    """Two copies of two views of one patient, one copy of another patient's image, novel images
    (another phantom), an inpainted row built on its own background, one that copies another
    view of its background's patient, and a blank image."""
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
    from mammosynth.builders.sources.phantom import write_phantom

    tmp = tmp_path_factory.mktemp("audit")
    other = _rows(
        ingest_vindr(
            write_phantom(tmp / "src", 2, 4242, size_scale=0.125),
            tmp / "prep",
            IngestOptions(size=256, bit_depth=8),
            progress=False,
        )
    )
    ref = _rows(prepared_set)
    by_patient: dict[str, list[int]] = {}
    for k, p in enumerate(ref["study_id"]):
        by_patient.setdefault(p, []).append(k)
    p1, p2 = sorted(by_patient)[:2]
    a, b, c, d = by_patient[p1][:4]
    rng = np.random.default_rng(0)
    rows = [
        _row(ref[a], "copy-a", PERTURBATIONS["zoom_5pct"](decode(ref[a]["image"]), rng)),
        _row(ref[b], "copy-b", PERTURBATIONS["rotate_+3deg"](decode(ref[b]["image"]), rng)),
        _row(
            ref[by_patient[p2][0]], "copy-c", PERTURBATIONS["half_size"](decode(ref[by_patient[p2][0]]["image"]), rng)
        ),
    ]
    rows += [_row(r, f"novel-{k}") for k, r in enumerate(other)]
    # inpainting: on its own background c (allowed), and one claiming background c while its pixels
    # are patient p1's other view d (a lesion added): a match to another view of its own patient
    img = decode(ref[c]["image"])
    box = S.lesion_box(img, rng, 0.12)
    rows.append(_row(ref[c], "inp-own", S.add_lesion(img, box, rng), "inpainting", ref[c]["image_id"], [box]))
    img_d = decode(ref[d]["image"])
    box_d = S.lesion_box(img_d, rng, 0.12)
    rows.append(
        _row(ref[d], "inp-other-view", S.add_lesion(img_d, box_d, rng), "inpainting", ref[c]["image_id"], [box_d])
    )
    blank = np.full_like(decode(other[0]["image"]), 3)
    used = {r["density"] for r in rows}
    lone = next(d for d in "ABCD" if d not in used)  # a density only the blank image has
    rows.append(_row(other[0], "blank", blank, density=lone))
    rel = S.write_generated(tmp / "out", {"text2image": rows[:-3] + rows[-1:], "inpainting": rows[-3:-1]})
    rep = validate_release(rel, prepared_set, report_dir=tmp / "validation", progress=False, plots=False)
    return (
        rep,
        tmp / "validation",
        {"p1": p1, "p2": p2, "a": ref[a]["image_id"], "b": ref[b]["image_id"], "d": ref[d]["image_id"], "lone": lone},
        other,
    )


def test_nearest_patient_of_every_image(audited):
    rep, _, ids, other = audited
    nearest = rep.patients["nearest"]
    searched = rep.gates["memorization"].searched["release"]
    assert len(nearest) == searched == rep.n_rows - 1  # the blank image has no breast to search with
    assert nearest["copy-a"][0] == ids["p1"] and nearest["copy-b"][0] == ids["p1"]
    assert nearest["copy-c"][0] == ids["p2"]
    copies = {f.image_id: f for f in rep.flagged if f.check == "memorization"}
    assert copies["copy-a"].nearest_training_patient == ids["p1"] and copies["copy-a"].nearest_training_id == ids["a"]
    assert copies["copy-b"].nearest_training_id == ids["b"]


def test_exposure_counts_released_images_per_patient(audited):
    rep, *_ = audited
    ids = audited[2]
    exposure = {e["patient"]: e for e in rep.patients["exposure"]}
    # p1: copy-a, copy-b, and the inpainted row that copies view d; both inpainted rows claim p1's view c
    assert exposure[ids["p1"]]["matched"] == 3 and exposure[ids["p1"]]["backgrounds"] == 2
    assert exposure[ids["p2"]]["matched"] == 1
    assert rep.patients["patients_matched"] == 2
    assert rep.patients["exposure"][0]["patient"] == ids["p1"]  # most exposed first
    novel = [f for f in rep.flagged if f.image_id.startswith("novel-")]
    assert not novel, [(f.image_id, f.check, f.reason) for f in novel]


def test_inpainting_keeps_its_background_but_not_another_view(audited):
    rep, *_ = audited
    ids = audited[2]
    # the method-aware rule: its own background is no memorization finding
    assert not [f for f in rep.flagged if f.image_id == "inp-own" and f.check in C.MEMORIZATION_CHECKS]
    other_view = [f for f in rep.flagged if f.image_id == "inp-other-view" and f.check == "same_patient_other_view"]
    assert other_view and other_view[0].nearest_training_id == ids["d"]
    assert rep.patients["same_patient_other_view"] == 1


def test_per_density_figures(audited):
    rep, folder, ids, _ = audited
    sanity = rep.gates["sanity"].per_density
    lone = ids["lone"]
    assert sanity[lone] == {"rows": 1, "flagged": 1, "flagged_fraction": 1.0}  # the blank image
    assert sum(c["flagged"] for c in sanity.values()) == rep.gates["sanity"].flagged_images
    memo = rep.gates["memorization"].per_density
    assert sum(c["flagged"] for c in memo.values()) == rep.gates["memorization"].flagged_images
    assert sum(c["rows"] for c in memo.values()) == rep.n_rows
    md = (folder / "report.md").read_text()
    assert "### Per density category" in md and f"| {lone} | 1 | 1 | 0 |" in md
    assert "### Patient-level audit" in md
    data = json.loads((folder / "report.json").read_text())
    assert data["patients"]["nearest"]["copy-a"][0] == audited[2]["p1"]

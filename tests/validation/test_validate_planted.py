"""Planted problems must be caught; clean images of other phantoms must pass (phantom data)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from helpers import synthetic as S
from mammosynth.builders.core.imageio import decode
from mammosynth.validation.gate import validate_release
from mammosynth.validation.image_features import analyse


def _ref_rows(path):
    return datasets.load_from_disk(str(path)).cast_column("image", datasets.Image(decode=False))


def _as_release_row(r, image_id, img=None, method="text2image", laterality=None, bbox=None, source=None):
    img = decode(r["image"]) if img is None else img
    return S.release_row(
        img,
        image_id,
        method,
        int(r["birads"]),
        r["view"],
        laterality or r["laterality"],
        density=r["density"] or None,
        bbox=bbox,
        source_image=source,
    )


@pytest.fixture(scope="module")
def other_phantom(tmp_path_factory):
    """A phantom of another seed (other patients), ingested like the reference."""
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
    from mammosynth.builders.sources.phantom import write_phantom

    tmp = tmp_path_factory.mktemp("other")
    src = write_phantom(tmp / "src", 6, 4242, size_scale=0.125)
    return ingest_vindr(src, tmp / "prep", IngestOptions(size=256, bit_depth=8), progress=False)


PLANTS = {
    "exact": lambda im: im,
    "shift": S.shift,
    "crop": S.crop,
    "contrast": S.contrast,
    "jpeg": S.jpeg,
    "noise": S.noise,
    "mirror_copy": S.mirror,  # a mirrored copy with a consistent label is still a copy
}


@pytest.fixture(scope="module")
def planted_report(prepared_set, other_phantom, tmp_path_factory):
    ref = _ref_rows(prepared_set)
    other = _ref_rows(other_phantom)
    rows, clean_ids = [], []
    for k in range(len(other)):
        r = other[k]
        rows.append(_as_release_row(r, f"clean-{k}", bbox=[f["bbox"] for f in r["findings"]]))
        clean_ids.append(f"clean-{k}")
    targets = {}
    for j, (name, fn) in enumerate(PLANTS.items()):
        r = ref[3 * j]
        lat = r["laterality"] if name != "mirror_copy" else {"L": "R", "R": "L"}[r["laterality"]]
        rows.append(_as_release_row(r, f"plant-{name}", img=fn(decode(r["image"])), laterality=lat))
        targets[f"plant-{name}"] = r["image_id"]
    o = other[0]
    rows.append(_as_release_row(o, "plant-invert", img=S.invert(decode(o["image"]))))
    o = other[1]
    rows.append(_as_release_row(o, "plant-mirror-wrong-label", img=S.mirror(decode(o["image"]))))
    o = other[2]
    img = decode(o["image"])
    rows.append(_as_release_row(o, "plant-blank", img=np.full_like(img, 3)))
    h, w = img.shape
    # a box in the empty corner away from the chest wall: inside the image, outside the breast
    corner = [w * 0.85, 2.0, w - 2.0, h * 0.1] if o["laterality"] == "L" else [2.0, 2.0, w * 0.15, h * 0.1]
    rows.append(_as_release_row(o, "plant-box-outside-breast", bbox=[corner]))
    rows.append(_as_release_row(other[3], "plant-box-outside-image", bbox=[[w - 10.0, h - 10.0, w + 40.0, h + 40.0]]))
    rel = S.write_generated(tmp_path_factory.mktemp("rel") / "out", {"text2image": rows})
    report = validate_release(rel, prepared_set, report_dir=rel / "validation", progress=False)
    return report, targets, clean_ids, rel


def _checks(report, image_id):
    return {f.check for f in report.flagged if f.image_id == image_id}


@pytest.mark.parametrize("name", list(PLANTS))
def test_planted_copy_is_memorization(planted_report, name):
    report, targets, *_ = planted_report
    flags = [
        f
        for f in report.flagged
        if f.image_id == f"plant-{name}" and f.check in ("memorization", "exact_copy", "near_duplicate_phash")
    ]
    assert flags, f"plant-{name} not caught: {_checks(report, 'plant-' + name)}"
    assert flags[0].nearest_training_id == targets[f"plant-{name}"]
    assert f"plant-{name}" in report.failed_image_ids


def test_exact_copy_is_pixel_identical(planted_report):
    report, *_ = planted_report
    assert "exact_copy" in _checks(report, "plant-exact")


@pytest.mark.parametrize(
    "image_id,check",
    [
        ("plant-invert", "laterality_side"),
        ("plant-mirror-wrong-label", "laterality_side"),
        ("plant-blank", "blank"),
        ("plant-box-outside-breast", "bbox_outside_breast"),
        ("plant-box-outside-image", "bbox_outside_image"),
    ],
)
def test_planted_sanity_problem_caught(planted_report, image_id, check):
    report, *_ = planted_report
    assert check in _checks(report, image_id)


def test_clean_other_phantom_passes(planted_report):
    report, _, clean, _ = planted_report
    flagged = [f for f in report.flagged if f.image_id in clean]
    fpr = len({f.image_id for f in flagged}) / len(clean)
    print(
        f"false-positive rate on {len(clean)} clean images of another phantom: {fpr:.3f}", [f.reason for f in flagged]
    )
    assert fpr == 0.0, [(f.image_id, f.check, f.reason) for f in flagged]


def test_report_gates_and_files(planted_report):
    """The report folder holds the report and the statistics plots; the panel of flagged rows beside
    their nearest training images (restricted pixels) lies only in the local-only sibling."""
    import json

    from mammosynth.validation.report import FLAGGED_PANEL, LOCAL_MARKER, SHIPPABLE_PLOTS, local_dir

    report, *_, rel = planted_report
    assert not report.passed
    assert report.gates["sanity"].status == "fail" and report.gates["memorization"].status == "fail"
    out, local = rel / "validation", local_dir(rel / "validation")
    for name in ("report.json", "report.md", *SHIPPABLE_PLOTS):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in out.glob("*.png")) == sorted(SHIPPABLE_PLOTS)
    assert not (out / FLAGGED_PANEL).exists()
    assert (local / FLAGGED_PANEL).stat().st_size > 0 and (local / LOCAL_MARKER).is_file()
    assert local.name == "validation-local" and local.parent == out.parent
    assert report.plots == list(SHIPPABLE_PLOTS) and report.local_plots == [FLAGGED_PANEL]
    data = json.loads((out / "report.json").read_text())
    assert data["passed"] is False and set(data["failed_image_ids"]) == set(report.failed_image_ids)
    assert {"image_id", "check", "reason", "nearest_training_id"} <= set(data["flagged"][0])
    assert "pytorch-msssim" in data["implementations"]["ms-ssim"]


def test_clean_release_passes_every_gate(prepared_set, other_phantom, tmp_path):
    other = _ref_rows(other_phantom)
    rows = [
        _as_release_row(other[k], f"clean-{k}", bbox=[f["bbox"] for f in other[k]["findings"]])
        for k in range(len(other))
    ]
    rel = S.write_generated(tmp_path / "out", {"text2image": rows})
    report = validate_release(rel, prepared_set, progress=False)
    assert report.flagged == []
    bad = {k: g.summary for k, g in report.gates.items() if g.status == "fail"}
    assert report.passed, bad


def test_mlo_shift_and_crop_copies_caught(prepared_set, tmp_path):
    """Phantom MLO breasts touch the top and bottom edges: a shift or crop stretches and slides the
    embedding grid, which the shift-tolerant re-scoring of near candidates must absorb."""
    from mammosynth.validation.reference import reference_index

    ref = _ref_rows(prepared_set)
    mlo = [k for k in range(len(ref)) if ref[k]["view"] == "MLO"][:4]
    index, _ = reference_index(prepared_set, embed_size=32, progress=False)
    rows, targets, plain = [], {}, []
    for k in mlo:
        r = ref[k]
        for fn in (S.shift, S.crop):
            img = fn(decode(r["image"]))
            rows.append(_as_release_row(r, f"{r['image_id']}-{fn.__name__}", img=img))
            targets[f"{r['image_id']}-{fn.__name__}"] = r["image_id"]
            plain.append(float(np.linalg.norm(analyse(img, embed_size=32).embedding - index.emb[k])))
    rel = S.write_generated(tmp_path / "out", {"text2image": rows})
    report = validate_release(rel, prepared_set, progress=False, plots=False)
    thr = report.gates["memorization"].nn_threshold
    assert max(plain) > thr, (plain, thr)  # the plain grid distance alone would miss some of them
    for image_id, target in targets.items():
        hits = [
            f for f in report.flagged if f.image_id == image_id and f.check in ("memorization", "near_duplicate_phash")
        ]
        assert hits and hits[0].nearest_training_id == target, (image_id, _checks(report, image_id), plain, thr)


def test_inpainting_is_method_aware(prepared_set, tmp_path):
    ref = _ref_rows(prepared_set)
    rng = np.random.default_rng(1)
    rows = []
    for k, name in ((0, "good"), (4, "altered"), (8, "wrong-source")):
        r = ref[k]
        img = decode(r["image"])
        box = S.lesion_box(img, rng, 0.15)
        out = S.add_lesion(img, box, rng)
        src = r["image_id"]
        if name == "altered":
            out = S.contrast(out, 1.0, 40)  # background brightened everywhere
        if name == "wrong-source":
            src = ref[12]["image_id"]  # claims another background than the one it uses
        rows.append(_as_release_row(r, f"inp-{name}", img=out, method="inpainting", bbox=[box], source=src))
    rel = S.write_generated(tmp_path / "out", {"inpainting": rows})
    report = validate_release(rel, prepared_set, progress=False)
    assert _checks(report, "inp-good") == set(), [f.reason for f in report.flagged if f.image_id == "inp-good"]
    assert "background_altered" in _checks(report, "inp-altered")
    wrong = [f for f in report.flagged if f.image_id == "inp-wrong-source"]
    assert {"background_altered", "training_match"} <= {f.check for f in wrong}
    assert any(f.check == "training_match" and f.nearest_training_id == ref[8]["image_id"] for f in wrong)

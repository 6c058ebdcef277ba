"""croissant.json: every config's records load with mlcroissant, and they are the release's rows:
images decode to the stored pixels (16-bit included), ClassLabels map to their names through the
enumeration record sets, nulls stay null."""

from __future__ import annotations

import json

import datasets
import mlcroissant as mlc
import numpy as np
import pytest

from mammosynth.builders.core.schema import release_features
from mammosynth.dataset_cards.croissant import REPO, names_record_set

CLASS_LABELS = [k for k, f in release_features().items() if isinstance(f, datasets.ClassLabel)]


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


@pytest.fixture(scope="module")
def croissant(small_release):
    path = small_release.folder / "croissant.json"
    return json.loads(path.read_text()), mlc.Dataset(jsonld=str(path), mapping={REPO: str(small_release.folder)})


def test_every_config_loads_and_matches_the_rows(small_release, croissant, tmp_path) -> None:
    meta, ds = croissant
    names = {
        col: {
            r[f"{names_record_set(col)}/index"]: _text(r[f"{names_record_set(col)}/name"])
            for r in ds.records(names_record_set(col))
        }
        for col in CLASS_LABELS
    }
    features = release_features()
    for col in CLASS_LABELS:
        assert names[col] == dict(enumerate(features[col].names))
    assert names["birads"][4] == "BI-RADS 5"
    configs = [rs["@id"] for rs in meta["recordSet"] if not rs["@id"].endswith("_names")]
    assert configs == ["text2image", "inpainting", "poisson", "all"]
    seen_16bit = seen_null_density = 0
    for cfg in configs:
        rows = datasets.load_dataset(str(small_release.folder), cfg, split="train", cache_dir=str(tmp_path / "c"))
        by_id = {r["image_id"]: r for r in rows}
        records = list(ds.records(cfg))
        assert len(records) == len(rows) > 0
        for rec in records:
            rec = {k.split("/", 1)[1]: v for k, v in rec.items()}
            want = by_id[_text(rec["image_id"])]
            pixels = np.asarray(rec["image"])
            assert pixels.shape == np.asarray(want["image"]).shape
            assert np.array_equal(pixels, np.asarray(want["image"]))  # 16-bit values survive
            seen_16bit += pixels.dtype == np.uint16 and int(pixels.max()) > 255
            for col in CLASS_LABELS:
                value = rec[col]
                if want[col] is None:
                    assert value is None, (cfg, col, value)  # unknown density: null, never -1
                    seen_null_density += 1
                    continue
                assert names[col][int(value)] == features[col].int2str(want[col]), (cfg, col)
            for col in ("prompt", "source_image", "lesion_source", "manufacturer", "generator"):
                assert _text(rec[col]) == want[col], (cfg, col)
            assert [list(map(float, b)) for b in rec["bbox"]] == want["bbox"]
    assert seen_16bit and seen_null_density

from __future__ import annotations

import pytest

from mammosynth.builders.core import schema, seeds


def test_seed_follows_the_paper_formula() -> None:
    import hashlib

    name = "background_0001.png"
    expected = (int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) + 700) % 2**32
    assert seeds.mask_seed(name) == expected
    assert seeds.sampling_seed(name) == (expected - 700 + 1337) % 2**32
    assert seeds.mask_seed(name) != seeds.mask_seed("background_0002.png")


def test_label_vocabularies_match_features() -> None:
    f = schema.release_features()
    assert f["birads"].names == ["BI-RADS 1", "BI-RADS 2", "BI-RADS 3", "BI-RADS 4", "BI-RADS 5"]
    assert f["method"].names == ["text2image", "inpainting", "poisson"]
    assert f["view"].names == ["CC", "MLO"] and f["laterality"].names == ["L", "R"]
    assert f["density"].names == ["A", "B", "C", "D"]
    assert list(f) == list(schema.RELEASE_COLUMNS)


@pytest.mark.parametrize("raw,expected", [("BI-RADS 4", 4), ("4", 4), (4, 4), ("birads 2", 2), ("3.0", 3)])
def test_parse_birads(raw: object, expected: int) -> None:
    assert schema.parse_birads(raw) == expected


@pytest.mark.parametrize("raw", ["BI-RADS 6", "BI-RADS 0", "x", ""])
def test_parse_birads_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        schema.parse_birads(raw)


def test_parse_density() -> None:
    assert schema.parse_density("DENSITY C") == "C"
    assert schema.parse_density("") is None
    with pytest.raises(ValueError):
        schema.parse_density("DENSITY E")


def test_prompts_carry_the_labels() -> None:
    p = schema.text2image_prompt("R", "MLO", "B", 4, manufacturer="SIEMENS")
    for token in ["right", "MLO", "density B", "BI-RADS 4", "SIEMENS"]:
        assert token in p
    assert schema.inpainting_prompt(5) == "A mammogram with BI-RADS 5 lesion."

"""Noise textures have no breast silhouette on dark air; inpainted boxes must hold breast tissue."""

from __future__ import annotations

import cv2
import datasets
import numpy as np
import pytest

from helpers import synthetic as S
from mammosynth.builders.core.imageio import decode
from mammosynth.validation.gate import validate_release
from mammosynth.validation.image_features import analyse
from mammosynth.validation.thresholds import SanityThresholds

LIMIT = SanityThresholds().max_background_ratio


def _rows(path):
    return datasets.load_from_disk(str(path)).cast_column("image", datasets.Image(decode=False))


def _power_law(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    f = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None] ** 2)
    f[0, 0] = 1.0
    x = np.real(np.fft.ifft2((rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f**alpha))
    return np.round(255 * (x - x.min()) / (x.max() - x.min())).astype(np.uint8)


def _noise_images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    out = [_power_law(rng, 128, a) for a in (1.0, 1.5, 2.0, 2.5, 3.0) for _ in range(3)]
    out += [rng.integers(0, 256, (128, 128), dtype=np.uint8) for _ in range(2)]
    out += [np.clip(rng.normal(128, 30, (128, 128)), 0, 255).astype(np.uint8)]
    return out


def test_noise_has_no_dark_background():
    ratios = [analyse(img).background_ratio for img in _noise_images()]
    assert min(ratios) > LIMIT, ratios


@pytest.mark.slow
def test_reference_images_have_dark_background(prepared_set, cbis_prepared):
    for path in (prepared_set, cbis_prepared):
        ratios = {r["image_id"]: analyse(r["image"]).background_ratio for r in _rows(path)}
        assert max(ratios.values()) < LIMIT, sorted(ratios.items(), key=lambda kv: -kv[1])[:3]


def _fill(img: np.ndarray, box: list[float], how: str, rng: np.random.Generator) -> np.ndarray:
    out = img.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    region = out[y0:y1, x0:x1]
    if how == "black":
        region[:] = 0
    elif how == "salt":
        region[:] = rng.choice(np.array([0, 255], np.uint8), region.shape)
    elif how == "blurred":
        region[:] = cv2.GaussianBlur(img, (0, 0), 3)[y0:y1, x0:x1]
    return out


@pytest.mark.slow
def test_gate_flags_noise_and_implausible_inpainting(prepared_set, tmp_path):
    ref = _rows(prepared_set)
    rng = np.random.default_rng(3)
    t2i = []
    for k, img in enumerate(_noise_images()[::3]):
        t2i.append(S.release_row(img, f"noise-{k}", "text2image", 1, "CC", "L"))
    inp, expect = [], {}
    for j, how in enumerate(("black", "salt", "original", "blurred")):
        r = ref[4 * j + 1]
        img = decode(r["image"])
        box = S.lesion_box(img, rng)
        inp.append(
            S.release_row(
                _fill(img, box, how, rng),
                f"inp-{how}",
                "inpainting",
                int(r["birads"]),
                r["view"],
                r["laterality"],
                density=r["density"] or None,
                bbox=[box],
                source_image=r["image_id"],
            )
        )
        expect[f"inp-{how}"] = how in ("black", "salt")
    for k in range(3):  # real phantom images as text2image rows: a silhouette on dark air
        r = ref[4 * k + 2]
        t2i.append(
            S.release_row(
                decode(r["image"]),
                f"real-{k}",
                "text2image",
                int(r["birads"]),
                r["view"],
                r["laterality"],
                density=r["density"] or None,
            )
        )
    rel = S.write_generated(tmp_path / "out", {"text2image": t2i, "inpainting": inp})
    rep = validate_release(rel, prepared_set, progress=False, plots=False)
    checks: dict[str, set[str]] = {}
    for f in rep.flagged:
        checks.setdefault(f.image_id, set()).add(f.check)
    for k in range(len(t2i) - 3):
        # a noise field whose Otsu mask falls apart is already "no_breast"; otherwise it has no dark air
        assert checks.get(f"noise-{k}", set()) & {"no_dark_background", "no_breast"}, checks.get(f"noise-{k}")
    for k in range(3):
        assert "no_dark_background" not in checks.get(f"real-{k}", set())
    for image_id, bad in expect.items():
        assert ("lesion_region" in checks.get(image_id, set())) == bad, (image_id, checks.get(image_id))
    assert "no_dark_background" in rep.gates["sanity"].by_check

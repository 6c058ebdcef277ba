"""Lesion bank: crops and lesion-shaped masks from the prepared set, saved once and reused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.generators.lesion_bank import LesionBank, build_lesion_bank, lesion_mask, load_or_build


def test_bank_from_phantom(prepared_set):
    bank = build_lesion_bank(prepared_set, [5])
    assert len(bank) >= 4
    for les in bank.lesions:
        assert les.birads == 5 and les.crop.dtype == np.uint8 and les.mask.shape == les.crop.shape
        assert les.manufacturer and les.source_image and les.lesion_id.startswith(les.source_image)
        assert 0.03 < les.mask.mean() < 0.9  # a lesion shape inside a padded crop, not the crop
        assert les.context_std > 0
    assert {les.manufacturer for les in bank.lesions} >= {"SIEMENS"}


def test_mask_follows_the_lesion_not_the_box():
    crop = np.full((60, 60), 60, np.uint8)
    cv2.circle(crop, (30, 30), 12, 200, -1)
    cv2.rectangle(crop, (10, 10), (16, 16), 220, -1)  # bright tissue at the box edge: not the lesion
    m = lesion_mask(crop, (10, 10, 50, 50))
    disk = np.zeros_like(crop)
    cv2.circle(disk, (30, 30), 12, 1, -1)
    iou = (m & (disk > 0)).sum() / (m | (disk > 0)).sum()
    assert iou > 0.85 and not m[10:17, 10:17].any()
    flat = lesion_mask(np.full((40, 40), 9, np.uint8), (5, 5, 35, 35))  # no contrast: inscribed ellipse
    assert flat[20, 20] and not flat[5, 5]


def test_saved_once_and_reused(prepared_set, tmp_path):
    bank = load_or_build(prepared_set, [5], tmp_path)
    (folder,) = tmp_path.glob("lesion_bank-*")
    stamp = (folder / "bank.npz").stat().st_mtime_ns
    again = load_or_build(prepared_set, [5], tmp_path)
    assert (folder / "bank.npz").stat().st_mtime_ns == stamp
    assert [x.lesion_id for x in again.lesions] == [x.lesion_id for x in bank.lesions]
    for a, b in zip(bank.lesions, again.lesions):
        assert np.array_equal(a.crop, b.crop) and np.array_equal(a.mask, b.mask)
        assert a.context_std == pytest.approx(b.context_std)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_unreadable_bank(tmp_path):
    (tmp_path / "bank.json").write_text("{not json")
    with pytest.raises(InputError, match="lesion bank"):
        LesionBank.load(tmp_path)

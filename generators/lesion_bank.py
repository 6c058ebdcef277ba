"""Lesion bank for Poisson blending: crops of annotated lesions with masks, vendor and source id.

Built once from the prepared training set (BI-RADS 5 boxes by default) and saved beside the run
(``bank.npz`` + ``bank.json``, written to a temporary folder and renamed), keyed by a fingerprint of
the prepared set and the options, so later runs and other processes reuse it.

A crop's mask comes from the lesion itself, not the bare rectangle: Otsu within the box, the
bright component nearest the box centre, closed and smoothed, holes filled. Each lesion also keeps
the texture of its original surroundings (local standard deviation in a ring around the mask,
relative to the source image's intensity window) so placement can look for similar tissue.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from mammosynth.builders.core import schema
from mammosynth.builders.core.atomic import temp_path
from mammosynth.builders.core.breast_mask import poisson_mask
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import dataset_content_hash
from mammosynth.generators.backgrounds import decode_row, load_prepared

BANK_VERSION = 1
MIN_SIDE_PX = 6  # boxes smaller than this (in prepared pixels) carry no usable lesion texture


@dataclass
class Lesion:
    lesion_id: str  # "<source image_id>-f<k>": pseudonymous, like the prepared ids
    source_image: str
    manufacturer: str | None
    birads: int
    view: str
    laterality: str
    context_std: float  # ring local std / (p98 - p10) of the source image's breast
    crop: np.ndarray  # grey, dtype of the prepared set
    mask: np.ndarray  # bool, same shape as crop

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("crop"), d.pop("mask")
        return d


def local_std(image: np.ndarray, ksize: int) -> np.ndarray:
    """Standard deviation over a ``ksize`` box at every pixel (float32), via two box filters."""
    f = image.astype(np.float32)
    k = (max(1, ksize), max(1, ksize))
    mean = cv2.blur(f, k)
    return np.sqrt(np.maximum(cv2.blur(f * f, k) - mean * mean, 0))


def intensity_window(image: np.ndarray, mask: np.ndarray, lo: float = 10, hi: float = 98) -> tuple[float, float]:
    """The image's brightness profile: ``lo``-th and ``hi``-th percentile inside the breast mask."""
    values = image[mask] if mask.any() else image.ravel()
    a, b = np.percentile(values, [lo, hi])
    return float(a), float(b)


def lesion_mask(crop: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Mask of the lesion inside ``box`` (x0, y0, x1, y1 in crop pixels): Otsu within the box,
    the component nearest the box centre, closed, smoothed, holes filled. Falls back to the
    inscribed ellipse when the box has no contrast."""
    x0, y0, x1, y1 = box
    inner = crop[y0:y1, x0:x1].astype(np.float32)
    h, w = inner.shape
    ellipse = np.zeros(crop.shape, np.uint8)
    cv2.ellipse(ellipse, ((x0 + x1) // 2, (y0 + y1) // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1, -1)
    if inner.size == 0 or inner.min() == inner.max():
        return ellipse > 0
    bright = inner > threshold_otsu(inner)
    labels, n = ndimage.label(bright)
    if n == 0:
        return ellipse > 0
    # the component nearest the box centre (a lesion is centred in its box; bright tissue at an
    # edge of the box is not the lesion); ties go to the larger one
    centre = np.ones((h, w), bool)
    centre[h // 2, w // 2] = False
    to_centre = ndimage.distance_transform_edt(centre)
    best, best_key = 0, (np.inf, 0)
    for k in range(1, n + 1):
        comp = labels == k
        area = int(comp.sum())
        if area < 0.02 * h * w:
            continue
        key = (float(to_centre[comp].min()), -area)
        if key < best_key:
            best, best_key = k, key
    if best == 0:
        return ellipse > 0
    m = np.zeros(crop.shape, np.uint8)
    m[y0:y1, x0:x1] = labels == best
    r = max(1, min(h, w) // 12)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, disk)
    m = cv2.GaussianBlur(m.astype(np.float32), (0, 0), max(1.0, r / 2)) > 0.5
    m = ndimage.binary_fill_holes(m)
    return m if m.sum() >= 0.05 * h * w else ellipse > 0


def _context_std(image: np.ndarray, mask_full: np.ndarray, window: tuple[float, float]) -> float:
    """Local std in a ring around the lesion, relative to the window width (comparable across images)."""
    ys, xs = np.nonzero(mask_full)
    size = int(max(np.ptp(ys), np.ptp(xs))) + 1
    ksize = max(3, size // 4)
    ring = (cv2.dilate(mask_full.astype(np.uint8), np.ones((size // 2 + 1,) * 2, np.uint8)) > 0) & ~mask_full
    std = local_std(image, ksize)
    width = max(window[1] - window[0], 1e-6)
    return float(np.median(std[ring]) / width) if ring.any() else 0.0


@dataclass
class LesionBank:
    lesions: list[Lesion]
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.lesions)

    @property
    def dtype(self) -> np.dtype | None:
        return self.lesions[0].crop.dtype if self.lesions else None

    def save(self, folder: str | Path) -> Path:
        """Write ``folder`` atomically (temporary folder, then rename); an existing bank is kept.

        Not ``atomic_dir``, which replaces an existing target: the first process to finish
        publishes the bank, others may be reading it already, and a later one's is identical."""
        folder = Path(folder)
        if (folder / "bank.json").exists():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        arrays = {}
        for i, les in enumerate(self.lesions):
            arrays[f"crop_{i}"] = les.crop
            arrays[f"mask_{i}"] = les.mask
        np.savez_compressed(tmp / "bank.npz", **arrays)
        meta = {
            "version": BANK_VERSION,
            "fingerprint": self.fingerprint,
            "lesions": [lesion.meta() for lesion in self.lesions],
        }
        (tmp / "bank.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LesionBank":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bank.json").read_text())
            arrays = np.load(folder / "bank.npz")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read lesion bank: {exc}", file=folder) from None
        if meta.get("version") != BANK_VERSION:
            raise InputError(f"lesion bank version {meta.get('version')} != {BANK_VERSION}; rebuild it", file=folder)
        lesions = [
            Lesion(**m, crop=arrays[f"crop_{i}"], mask=arrays[f"mask_{i}"].astype(bool))
            for i, m in enumerate(meta["lesions"])
        ]
        return cls(lesions, meta.get("fingerprint", ""))


def bank_fingerprint(prepared: str | Path, birads: list[int], pad_frac: float, memo_file: Path | None = None) -> str:
    """Content key: the prepared set's content hash and the bank options (not file times, which
    change on every ingest of the same data and would change the Poisson rows' ``generator``)."""
    blob = json.dumps(
        [BANK_VERSION, dataset_content_hash(load_prepared(prepared), memo_file), sorted(birads), pad_frac]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_lesion_bank(
    prepared: str | Path, birads: list[int] | tuple[int, ...] = (5,), pad_frac: float = 0.25
) -> LesionBank:
    """Crop every finding of the given BI-RADS classes (with ``pad_frac`` context around the box)."""
    ds = load_prepared(prepared)
    meta = ds.select_columns(["image_id", "manufacturer", "view", "laterality", "findings"])[:]
    lesions: list[Lesion] = []
    for row, findings in enumerate(meta["findings"]):
        wanted = [(k, f) for k, f in enumerate(findings or []) if f.get("finding_birads") in birads and f.get("bbox")]
        if not wanted:
            continue
        image = decode_row(ds, row)
        breast = poisson_mask(image)
        window = intensity_window(image, breast)
        h, w = image.shape
        for k, f in wanted:
            x0, y0, x1, y1 = (float(v) for v in f["bbox"])
            if min(x1 - x0, y1 - y0) < MIN_SIDE_PX:
                continue
            pad = pad_frac * max(x1 - x0, y1 - y0)
            cx0, cy0 = max(0, int(x0 - pad)), max(0, int(y0 - pad))
            cx1, cy1 = min(w, int(np.ceil(x1 + pad))), min(h, int(np.ceil(y1 + pad)))
            crop = image[cy0:cy1, cx0:cx1].copy()
            box = (int(x0) - cx0, int(y0) - cy0, int(np.ceil(x1)) - cx0, int(np.ceil(y1)) - cy0)
            m = lesion_mask(crop, box)
            full = np.zeros(image.shape, bool)
            full[cy0:cy1, cx0:cx1] = m
            lesions.append(
                Lesion(
                    lesion_id=schema.lesion_id(meta["image_id"][row], k),
                    source_image=meta["image_id"][row],
                    manufacturer=meta["manufacturer"][row],
                    birads=int(f["finding_birads"]),
                    view=meta["view"][row],
                    laterality=meta["laterality"][row],
                    context_std=_context_std(image, full, window),
                    crop=crop,
                    mask=m,
                )
            )
    return LesionBank(lesions, bank_fingerprint(prepared, list(birads), pad_frac))


def load_or_build(
    prepared: str | Path, birads: list[int], cache_dir: str | Path | None, pad_frac: float = 0.25
) -> LesionBank:
    """The bank for ``prepared`` and ``birads``: loaded from ``cache_dir`` when saved there before."""
    if cache_dir is None:
        return build_lesion_bank(prepared, birads, pad_frac)
    key = bank_fingerprint(prepared, birads, pad_frac, Path(cache_dir) / "prepared-digests.json")
    folder = Path(cache_dir) / f"lesion_bank-{key}"
    if (folder / "bank.json").exists():
        return LesionBank.load(folder)
    bank = build_lesion_bank(prepared, birads, pad_frac)
    bank.save(folder)
    return bank

"""A synthetic source in the exact VinDr-Mammo layout, so the pipeline, the tests and the demo run
without credentialed data.

`write_phantom` writes ``images/<study_id>/<image_id>.dicom`` (uncompressed 16-bit) plus
``breast-level_annotations.csv``, ``finding_annotations.csv`` and ``metadata.csv`` with VinDr's
column names, value formats and quirks (design.md §6): Python-list-string categories, empty cells
on No Finding rows, empty BI-RADS on lymph-node findings, boxes a little outside the image,
IMS five-value window lists, Planmed MONOCHROME1 with Pixel Padding Value 10000, right breasts on
the right edge, burned-in laterality labels.

Images are built at a low working resolution (shape, power-law parenchyma) and upsampled, then
lesions, quantum noise and the label are added at full resolution: full-size phantoms stay cheap.
BI-RADS and density follow phantom weights (not VinDr's skewed counts) so that a dozen studies
already contain every class; both are arguments.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.schema import DENSITIES
from mammosynth.builders.sources.vindr import (
    BREAST_COLUMNS,
    BREAST_CSV,
    FINDING_COLUMNS,
    FINDING_CSV,
    METADATA_COLUMNS,
    METADATA_CSV,
    PHANTOM_MARKER,
)

PHANTOM_BIRADS_WEIGHTS = (0.40, 0.20, 0.15, 0.15, 0.10)
PHANTOM_DENSITY_WEIGHTS = (0.10, 0.25, 0.40, 0.25)
# Fraction of the breast covered by fibroglandular tissue per density class.
DENSE_FRACTION = {"A": 0.08, "B": 0.25, "C": 0.50, "D": 0.78}


@dataclass(frozen=True)
class Vendor:
    manufacturer: str
    model_name: str
    rows: int
    columns: tuple[int, int]  # min, max (IMS widths vary)
    bits: int
    photometric: str
    padding: int | None
    windows: int  # how many window centre/width values the header lists
    weight: float


VENDORS: tuple[Vendor, ...] = (
    Vendor("SIEMENS", "MAMMOMAT Inspiration", 3518, (2800, 2800), 12, "MONOCHROME2", None, 1, 0.76),
    Vendor("Planmed", "Planmed Nuance", 2812, (2012, 2012), 14, "MONOCHROME1", 10000, 1, 0.19),
    Vendor("IMS GIOTTO S.p.A.", "GIOTTO IMAGE 3DL", 3580, (2600, 2800), 14, "MONOCHROME2", None, 5, 0.03),
    Vendor("IMS s.r.l.", "GIOTTO CLASS", 3580, (2600, 2800), 14, "MONOCHROME2", None, 5, 0.02),
)
WORK_LONG_SIDE = 320  # resolution of the low-frequency content before upsampling


def _hex_id(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def power_law_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float = 3.0) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum (the usual breast-parenchyma model), unit std."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    field = np.fft.irfft2(spec, s=shape).astype(np.float32)
    return field / (field.std() + 1e-8)


def _breast_shape(rng: np.random.Generator, h: int, w: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Left-breast silhouette (chest wall at x=0) and pectoral-muscle mask at working resolution."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h * rng.uniform(0.45, 0.55)
    depth = w * rng.uniform(0.62, 0.85)
    half = h * (rng.uniform(0.36, 0.44) if view == "CC" else rng.uniform(0.44, 0.5))
    if view == "MLO":
        cy = h * rng.uniform(0.48, 0.56)
    t = (yy - cy) / half
    # Wobbly boundary: a few low-frequency harmonics along the contour.
    k = rng.uniform(0, 2 * np.pi, 3)
    wobble = 1 + 0.04 * np.sin(3 * t + k[0]) + 0.03 * np.sin(5 * t + k[1])
    reach = depth * np.sqrt(np.clip(1 - np.abs(t) ** 2.2, 0, 1)) * wobble
    mask = xx < reach
    if view == "MLO":
        # The MLO view keeps the axillary tail: tissue up to the top along the chest wall.
        mask |= (xx < depth * 0.45 * (1 - yy / (cy + half))) & (yy < cy)
    pect = np.zeros_like(mask)
    if view == "MLO":
        px, py = w * rng.uniform(0.3, 0.45), h * rng.uniform(0.35, 0.5)
        pect = (xx / px + yy / py) < 1
        pect &= mask
    return mask, pect


def _render(rng: np.random.Generator, rows: int, cols: int, view: str, density: str) -> tuple[np.ndarray, np.ndarray]:
    """Display-intensity image in [0, 1] (left breast) and its full-resolution breast mask."""
    scale = WORK_LONG_SIDE / max(rows, cols)
    h, w = max(16, round(rows * scale)), max(12, round(cols * scale))
    mask, pect = _breast_shape(rng, h, w, view)
    mask_u8 = mask.astype(np.uint8)
    dist = cv2.distanceTransform(mask_u8, cv2.DIST_L2, 3)
    # Compressed-breast thickness falls off towards the skin: darker periphery.
    thickness = 1 - np.exp(-dist / (0.06 * w))
    tex = power_law_noise(rng, (h, w), beta=3.0)
    frac = DENSE_FRACTION[density]
    inside = tex[mask] if mask.any() else tex.ravel()
    thr = np.quantile(inside, 1 - frac)
    dense = 1 / (1 + np.exp(-(tex - thr) * 4.0))  # soft fibroglandular map, area ~ frac
    fine = power_law_noise(rng, (h, w), beta=2.0)
    img = (0.30 + 0.38 * dense + 0.03 * fine) * thickness
    img = np.where(pect, 0.78 + 0.04 * fine, img)
    skin = (dist > 0) & (dist < 1.6)
    img = np.where(skin, 0.55, img)
    img = np.where(mask, img, 0.0).astype(np.float32)
    full = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_LINEAR)
    full_mask = cv2.resize(mask_u8, (cols, rows), interpolation=cv2.INTER_NEAREST).astype(bool)
    return full, full_mask


def _add_mass(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, box_px: float, spiculated: bool
) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask[::8, ::8])
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    cy, cx = ys[i] * 8, xs[i] * 8
    ry = box_px * rng.uniform(0.35, 0.5)
    rx = box_px * rng.uniform(0.35, 0.5)
    y0, y1 = int(max(cy - 2 * ry, 0)), int(min(cy + 2 * ry, img.shape[0]))
    x0, x1 = int(max(cx - 2 * rx, 0)), int(min(cx + 2 * rx, img.shape[1]))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ang = np.arctan2(yy - cy, xx - cx)
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    if spiculated:
        r = r / (1 + 0.25 * np.maximum(np.sin(ang * rng.integers(7, 13)), 0) ** 4)
    blob = np.clip(1.2 - r, 0, 1) ** 0.7
    img[y0:y1, x0:x1] += 0.22 * blob * mask[y0:y1, x0:x1]
    return (cx - rx * 1.1, cy - ry * 1.1, cx + rx * 1.1, cy + ry * 1.1)


def _add_calcifications(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, box_px: float
) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask[::8, ::8])
    if len(ys) == 0:
        return None
    i = rng.integers(len(ys))
    cy, cx = ys[i] * 8, xs[i] * 8
    n = int(rng.integers(6, 20))
    py = cy + rng.normal(0, box_px / 5, n)
    px = cx + rng.normal(0, box_px / 5, n)
    radius = max(1, round(box_px / 90))
    for y, x in zip(py, px):
        cv2.circle(img, (int(x), int(y)), radius, 0.95, -1)
    pad = 2 * radius
    return (px.min() - pad, py.min() - pad, px.max() + pad, py.max() + pad)


def _burn_label(img: np.ndarray, text: str, right: bool) -> None:
    """Burned-in label in the top corner away from the chest wall (survives into the pixels)."""
    rows, cols = img.shape
    scale = rows / 1200
    thickness = max(1, round(rows / 500))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    margin = round(rows * 0.03)
    x = margin if right else cols - tw - margin
    y0, y1 = 0, min(rows, 2 * margin + th + thickness)
    canvas = np.zeros((y1 - y0, cols), np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(canvas, text, (x, margin + th), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    np.maximum(img[y0:y1], canvas.astype(np.float32) / 255.0, out=img[y0:y1])


def _to_stored(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, vendor: Vendor
) -> tuple[np.ndarray, float, float]:
    """Display intensity -> stored values per vendor; returns (pixels, window centre, width)."""
    top = (1 << vendor.bits) - 1
    lo, hi = 0.12 * top, 0.85 * top
    stored = lo + img * (hi - lo)
    stored += rng.standard_normal(img.shape, dtype=np.float32) * (0.006 * top)  # quantum noise
    center, width = (lo + hi) / 2 + 0.05 * top, (hi - lo) * 0.95
    if vendor.photometric == "MONOCHROME1":
        stored = top - stored  # high stored value = dark
        center = top - center
    stored = np.clip(np.round(stored), 0, top)
    background = img <= 0
    if vendor.padding is not None:
        stored[background] = vendor.padding
    else:
        stored[background] = np.clip(rng.normal(0.02 * top, 0.003 * top, int(background.sum())), 0, top)
    return stored.astype(np.uint16), round(center, 1), round(width, 1)


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    vendor: Vendor,
    study_id: str,
    series_id: str,
    image_id: str,
    laterality: str,
    view: str,
    center: float,
    width: float,
    age: str,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography, presentation
    meta.MediaStorageSOPInstanceUID = "2.25." + str(int(image_id, 16))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "2.25." + str(int(study_id, 16))
    ds.SeriesInstanceUID = "2.25." + str(int(series_id, 16))
    ds.Modality = "MG"
    ds.Manufacturer = vendor.manufacturer
    ds.ManufacturerModelName = vendor.model_name
    ds.PatientAge = age
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = vendor.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = vendor.bits
    ds.HighBit = vendor.bits - 1
    ds.PixelRepresentation = 0
    if vendor.padding is not None:
        ds.PixelPaddingValue = vendor.padding
    if vendor.windows > 1:
        # IMS lists several presets; the first is the primary window.
        ds.WindowCenter = [center + 150 * i for i in range(vendor.windows)]
        ds.WindowWidth = [width - 300 * i for i in range(vendor.windows)]
    else:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _window_cell(values: list[float]) -> str:
    return str(values[0]) if len(values) == 1 else str([str(v) for v in values])


def write_phantom(
    out_dir: str | Path,
    studies: int,
    seed: int = 0,
    *,
    size_scale: float = 1.0,
    birads_weights: tuple[float, ...] = PHANTOM_BIRADS_WEIGHTS,
    density_weights: tuple[float, ...] = PHANTOM_DENSITY_WEIGHTS,
    test_fraction: float = 0.2,
    vendors: tuple[str, ...] | None = None,
    progress: bool = False,
) -> Path:
    """Write `studies` four-view studies in VinDr-Mammo layout to `out_dir` (created atomically).

    `size_scale` shrinks every vendor's image size (1.0 = real sizes, 0.125 for tests).
    `vendors` restricts the manufacturers drawn (e.g. ``("Planmed",)``); the default mixes them
    in roughly VinDr's proportions. The same seed always gives the same ids, labels, boxes, pixels.
    """
    out_dir = Path(out_dir)
    if studies < 1:
        raise InputError("need at least one study", field="studies")
    if not 0 < size_scale <= 1.0:
        raise InputError("must be in (0, 1]", field="size_scale")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError("output directory exists and is not empty", file=out_dir)
    unknown = set(vendors or ()) - {v.manufacturer for v in VENDORS}
    if unknown:
        raise InputError(
            f"unknown vendor(s) {sorted(unknown)}; known: {[v.manufacturer for v in VENDORS]}", field="vendors"
        )
    vendor_p = np.array([v.weight if not vendors or v.manufacturer in vendors else 0.0 for v in VENDORS])
    rng = np.random.default_rng(seed)
    with atomic_dir(out_dir) as tmp:  # an existing out_dir is empty (checked above)
        (tmp / "images").mkdir(parents=True)
        breast_rows: list[dict] = []
        finding_rows: list[dict] = []
        meta_rows: list[dict] = []
        iterator = range(studies)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="phantom", unit="study")
        for s in iterator:
            study_id = _hex_id(rng)
            vendor = VENDORS[rng.choice(len(VENDORS), p=vendor_p / vendor_p.sum())]
            rows = max(64, round(vendor.rows * size_scale))
            cols = max(48, round(int(rng.integers(vendor.columns[0], vendor.columns[1] + 1)) * size_scale))
            density = DENSITIES[rng.choice(4, p=np.asarray(density_weights) / sum(density_weights))]
            split = "test" if rng.random() < test_fraction else "training"
            age = f"{int(rng.integers(35, 80)):03d}Y" if rng.random() < 0.6 else ""
            (tmp / "images" / study_id).mkdir()
            for lat in ("L", "R"):
                series_id = _hex_id(rng)
                birads = int(rng.choice(5, p=np.asarray(birads_weights) / sum(birads_weights))) + 1
                if s < 3 and lat == "L" and studies >= 3:
                    birads = 5 - s  # guarantee BI-RADS 5, 4 and 3 in any phantom of three studies or more
                for view in ("CC", "MLO"):
                    image_id = _hex_id(rng)
                    img, mask = _render(rng, rows, cols, view, density)
                    findings = []
                    median_box = 0.08 * cols
                    if birads >= 3:
                        kinds = ["Mass"] if rng.random() < 0.6 else ["Suspicious Calcification"]
                        if birads == 5 and rng.random() < 0.4:
                            kinds = ["Mass", "Suspicious Calcification"]
                        box_px = median_box * (1.0 + 0.6 * (birads - 3)) * rng.uniform(0.7, 1.3)
                        box = (
                            _add_mass(rng, img, mask, box_px, birads == 5)
                            if "Mass" in kinds
                            else _add_calcifications(rng, img, mask, box_px)
                        )
                        if box is not None:
                            findings.append((kinds, birads, box))
                    elif birads == 2 and rng.random() < 0.5:
                        box = _add_mass(rng, img, mask, median_box * 0.5, False)
                        if box is not None:  # lymph nodes carry no finding BI-RADS in VinDr
                            findings.append((["Suspicious Lymph Node"], None, box))
                    label = f"{lat}{view}"
                    if lat == "R":
                        img = img[:, ::-1].copy()
                        mask = mask[:, ::-1]
                        findings = [(k, b, (cols - x1, y0, cols - x0, y1)) for k, b, (x0, y0, x1, y1) in findings]
                    _burn_label(img, label, right=lat == "R")
                    pixels, center, width = _to_stored(rng, img, mask, vendor)
                    windows_c = [center + 150 * i for i in range(vendor.windows)]
                    windows_w = [width - 300 * i for i in range(vendor.windows)]
                    _write_dicom(
                        tmp / "images" / study_id / f"{image_id}.dicom",
                        pixels,
                        vendor=vendor,
                        study_id=study_id,
                        series_id=series_id,
                        image_id=image_id,
                        laterality=lat,
                        view=view,
                        center=center,
                        width=width,
                        age=age,
                    )
                    base = {
                        "study_id": study_id,
                        "series_id": series_id,
                        "image_id": image_id,
                        "laterality": lat,
                        "view_position": view,
                        "height": rows,
                        "width": cols,
                        "breast_birads": f"BI-RADS {birads}",
                        "breast_density": f"DENSITY {density}",
                    }
                    breast_rows.append({**base, "split": split})
                    if not findings:
                        finding_rows.append(
                            {
                                **base,
                                "finding_categories": "['No Finding']",
                                "finding_birads": "",
                                "xmin": "",
                                "ymin": "",
                                "xmax": "",
                                "ymax": "",
                                "split": split,
                            }
                        )
                    for kinds, fb, (x0, y0, x1, y1) in findings:
                        # VinDr quirk: boxes of lesions near the edge spill up to ~40 px past it.
                        over = float(rng.uniform(5, 40)) * size_scale
                        x0 = -over if x0 < 3 * over else x0
                        y0 = -over if y0 < 3 * over else y0
                        x1 = cols + over if x1 > cols - 3 * over else x1
                        y1 = rows + over if y1 > rows - 3 * over else y1
                        finding_rows.append(
                            {
                                **base,
                                "finding_categories": str(kinds),
                                "finding_birads": f"BI-RADS {fb}" if fb else "",
                                "xmin": f"{x0:.2f}",
                                "ymin": f"{y0:.2f}",
                                "xmax": f"{x1:.2f}",
                                "ymax": f"{y1:.2f}",
                                "split": split,
                            }
                        )
                    meta_rows.append(
                        {
                            "SOP Instance UID": image_id,
                            "Series Instance UID": series_id,
                            "Patient's Age": age,
                            "Rows": rows,
                            "Columns": cols,
                            "Photometric Interpretation": vendor.photometric,
                            "Pixel Padding Value": vendor.padding if vendor.padding is not None else "",
                            "Window Center": _window_cell(windows_c),
                            "Window Width": _window_cell(windows_w),
                            "Manufacturer": vendor.manufacturer,
                            "Manufacturer's Model Name": vendor.model_name,
                        }
                    )
        for name, columns, rows_ in (
            (BREAST_CSV, BREAST_COLUMNS, breast_rows),
            (FINDING_CSV, FINDING_COLUMNS, finding_rows),
            (METADATA_CSV, METADATA_COLUMNS, meta_rows),
        ):
            with open(tmp / name, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows_)
        # Tells `ingest vindr` that these are synthetic images (their own licence, not VinDr's).
        (tmp / PHANTOM_MARKER).write_text(
            json.dumps(
                {
                    "generator": "mammosynth phantom",
                    "studies": studies,
                    "seed": seed,
                    "size_scale": size_scale,
                    "note": "synthetic images in the VinDr-Mammo layout; no patient data",
                },
                indent=2,
            )
            + "\n"
        )
    return out_dir

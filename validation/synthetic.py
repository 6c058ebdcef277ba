"""Small synthetic mammograms, prepared sets and releases for the gate's tests and benchmark, plus
the planted perturbations (shift, crop, contrast, JPEG, noise, inversion, mirroring) it must catch.

Textures use the phantom source's parenchyma model (``builders.phantom.power_law_noise``) so that
images of different seeds look alike in statistics but not in pixels, as real patients do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import datasets
import numpy as np

from mammosynth.builders.sources.phantom import power_law_noise
from mammosynth.builders.core.schema import inpainting_prompt, prepared_features, text2image_prompt
from mammosynth.builders.core.imageio import encode_png
from mammosynth.builders.core.shard_writer import ShardWriter


def mammogram(rng: np.random.Generator, h: int = 320, w: int = 256, laterality: str = "L", view: str = "CC") -> np.ndarray:
    """uint8 grey image: textured half-ellipse breast on the chest-wall side, black background."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h * rng.uniform(0.45, 0.55)
    half = h * (rng.uniform(0.34, 0.42) if view == "CC" else rng.uniform(0.42, 0.48))
    depth = w * rng.uniform(0.6, 0.8)
    t = (yy - cy) / half
    mask = xx < depth * np.sqrt(np.clip(1 - np.abs(t) ** 2.2, 0, 1))
    if view == "MLO":
        mask |= (xx < depth * 0.4 * (1 - yy / (cy + half))) & (yy < cy)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    thickness = 1 - np.exp(-dist / (0.06 * w))
    tex = power_law_noise(rng, (h, w), beta=3.0)
    fine = power_law_noise(rng, (h, w), beta=2.0)
    img = (0.35 + 0.12 * tex + 0.03 * fine) * thickness
    img = np.clip(np.where(mask, img + 0.1, 0.02), 0, 1)
    out = np.clip(img * 255 + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8)
    return out[:, ::-1].copy() if laterality == "R" else out


def lesion_box(img: np.ndarray, rng: np.random.Generator, frac: float = 0.12) -> list[float]:
    """A box well inside the breast (for BI-RADS 3-5 rows)."""
    from mammosynth.builders.core.breast_mask import allowed_region

    h, w = img.shape
    bw, bh = w * frac * rng.uniform(0.8, 1.2), h * frac * rng.uniform(0.8, 1.2)
    ys, xs = np.nonzero(allowed_region(img, 2, int(max(bw, bh) / 2) + 2))
    j = rng.integers(len(xs))
    cx, cy = np.clip(xs[j], bw / 2 + 1, w - bw / 2 - 1), np.clip(ys[j], bh / 2 + 1, h - bh / 2 - 1)
    return [float(cx - bw / 2), float(cy - bh / 2), float(cx + bw / 2), float(cy + bh / 2)]


def add_lesion(img: np.ndarray, box: list[float], rng: np.random.Generator) -> np.ndarray:
    """Paint a bright blob inside ``box`` (a stand-in for an inpainted lesion)."""
    out = img.astype(np.float32)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2.5, (y1 - y0) / 2.5
    blob = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) * 2)
    return np.clip(out + 70 * blob, 0, 255).astype(np.uint8)


# --- prepared reference ------------------------------------------------------------------------


def prepared_rows(n_studies: int, seed: int, h: int = 320, w: int = 256, prefix: str = "ref") -> list[dict[str, Any]]:
    """Four views per study (L/R x CC/MLO), BI-RADS cycling 1..5, boxes on BI-RADS >= 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        birads = 1 + (s % 5)
        density = "ABCD"[s % 4]
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                img = mammogram(rng, h, w, lat, view)
                findings = []
                if birads >= 3:
                    box = lesion_box(img, rng)
                    img = add_lesion(img, box, rng)
                    findings.append({"bbox": box, "categories": ["Mass"], "finding_birads": birads})
                rows.append({
                    "image": {"bytes": encode_png(img), "path": None},
                    "image_id": f"{prefix}{seed}-{s:04d}-{lat}{view}", "study_id": f"{prefix}{seed}-study{s:04d}",
                    "laterality": lat, "view": view, "birads": birads, "density": density,
                    "manufacturer": "PHANTOM", "model_name": "synthetic", "split": "training",
                    "orig_height": h, "orig_width": w, "findings": findings, "flipped": False,
                })
    return rows


def write_prepared(out: str | Path, n_studies: int = 10, seed: int = 0, h: int = 320, w: int = 256) -> Path:
    out = Path(out)
    datasets.Dataset.from_list(prepared_rows(n_studies, seed, h, w), features=prepared_features()).save_to_disk(str(out))
    return out


# --- releases ----------------------------------------------------------------------------------


def release_row(img: np.ndarray, image_id: str, method: str, birads: int, view: str, laterality: str, *,
                density: str | None = "C", bbox: list[list[float]] | None = None, source_image: str | None = None,
                prompt: str | None = None) -> dict[str, Any]:
    if prompt is None:
        prompt = text2image_prompt(laterality, view, density, birads) if method == "text2image" else inpainting_prompt(birads)
    return {
        "image": {"bytes": encode_png(img) if isinstance(img, np.ndarray) else img, "path": None},
        "image_id": image_id, "method": method, "birads": f"BI-RADS {birads}", "view": view, "laterality": laterality,
        "density": density, "bbox": bbox or [], "seed": 1, "mask_seed": 2, "prompt": prompt,
        "source_image": source_image, "lesion_source": None, "manufacturer": "PHANTOM", "generator": "test",
    }


def write_generated(out: str | Path, rows_by_method: dict[str, list[dict[str, Any]]], skipped: dict[str, list[dict[str, str]]] | None = None) -> Path:
    """A generation output folder ``out/generated/<method>/shard-00000.parquet`` (+ stats JSON)."""
    out = Path(out)
    for method, rows in rows_by_method.items():
        ShardWriter(out / "generated" / method).write(0, rows, (skipped or {}).get(method, []), 0.0)
    return out


# --- planted perturbations ---------------------------------------------------------------------


def shift(img: np.ndarray, dx: int = 4, dy: int = 8) -> np.ndarray:
    """Translate by (dx away from the chest wall, dy down). A shift into the chest wall cuts tissue
    off and is a crop, which ``crop`` plants."""
    from mammosynth.builders.core.breast_mask import breast_mask, chest_wall_side

    if chest_wall_side(breast_mask(np.sqrt(img / float(np.iinfo(img.dtype).max)))) == "R":
        dx = -dx
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_CONSTANT, borderValue=int(img.min()))


def crop(img: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Cut ``frac`` off every border except the chest wall, resized back to the original size."""
    from mammosynth.builders.core.breast_mask import breast_mask, chest_wall_side

    h, w = img.shape
    left_wall = chest_wall_side(breast_mask(np.sqrt(img / 255.0))) == "L"
    dy, dx = int(h * frac), int(w * frac)
    c = img[dy : h - dy, : w - dx] if left_wall else img[dy : h - dy, dx:]
    return cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)


def contrast(img: np.ndarray, gain: float = 1.2, bias: float = 10) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int = 70) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def noise(img: np.ndarray, sigma: float = 6.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def invert(img: np.ndarray) -> np.ndarray:
    return (np.iinfo(img.dtype).max - img).astype(img.dtype)


def mirror(img: np.ndarray) -> np.ndarray:
    return img[:, ::-1].copy()

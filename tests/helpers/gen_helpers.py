"""Small builders for the generation tests: a synthetic prepared set and release specs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mammosynth.builders.core.schema import prepared_features
from mammosynth.builders.core.spec import ReleaseSpec

# per class: reference box sizes (w, h) in prepared-image pixels; the last one is an outlier the
# IQR step must drop
REFERENCE_BOXES = {
    3: [(10, 12), (12, 14), (14, 12), (12, 10), (60, 64)],
    4: [(14, 16), (16, 18), (18, 16), (16, 14)],
    5: [(18, 20), (20, 22), (22, 20), (20, 18)],
}
SIZE = (96, 128)  # prepared images: width, height (not square, so scaling is exercised)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def breast_image(rng: np.random.Generator, side: str) -> np.ndarray:
    """Textured half-ellipse on black touching the chest-wall edge (left for ``side='L'``)."""
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    cx = 0 if side == "L" else w - 1
    inside = ((xx - cx) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1
    img = np.where(inside, 150 + rng.normal(0, 20, (h, w)), 5 + rng.normal(0, 2, (h, w)))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_prepared(path: Path, n_backgrounds: int = 3, seed: int = 0) -> Path:
    """A prepared set: ``n_backgrounds`` BI-RADS 1 images per view × laterality (one R image
    stored mirrored with ``flipped=True``) and BI-RADS 3–5 images carrying the reference boxes."""
    import datasets

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    k = 0
    for view in ("CC", "MLO"):
        for lat in ("L", "R"):
            for i in range(n_backgrounds):
                flipped = lat == "R" and i == 0
                img = breast_image(rng, "L" if flipped else lat)
                rows.append(_row(f"bg-{view}-{lat}-{i}", img, view, lat, 1, "BCD"[i % 3], [], flipped))
                k += 1
    for b, boxes in REFERENCE_BOXES.items():
        for j, (bw, bh) in enumerate(boxes):
            img = breast_image(rng, "L")
            findings = [{"bbox": [20.0, 40.0, 20.0 + bw, 40.0 + bh], "categories": ["Mass"], "finding_birads": b}]
            rows.append(_row(f"lesion-{b}-{j}", img, "CC", "L", b, "C", findings, False))
    ds = datasets.Dataset.from_list(rows, features=prepared_features())
    ds.save_to_disk(str(path))
    return path


def _row(image_id, img, view, lat, birads, density, findings, flipped) -> dict[str, Any]:
    return {
        "image": {"bytes": _png(img), "path": None},
        "image_id": image_id,
        "study_id": "s-" + image_id,
        "laterality": lat,
        "view": view,
        "birads": birads,
        "density": density,
        "manufacturer": "SIEMENS",
        "model_name": "Mammomat",
        "split": "training",
        "orig_height": SIZE[1] * 10,
        "orig_width": SIZE[0] * 10,
        "findings": findings,
        "flipped": flipped,
    }


def spec_dict(tmp: Path, methods: dict[str, Any], *, prepared: Path, shard_size: int = 3) -> dict[str, Any]:
    return {
        "name": "test",
        "version": "1.0",
        "pretty_name": "Test",
        "description": "test release",
        "authors": ["tester"],
        "source": {"name": "synthetic", "prepared": str(prepared), "license": "other", "redistribution_allowed": True},
        "methods": methods,
        "output": {"shard_size": shard_size},
        "output_dir": str(tmp / "release"),
    }


def make_spec(tmp: Path, methods: dict[str, Any], *, prepared: Path, shard_size: int = 3, out: str = "release") -> ReleaseSpec:
    d = spec_dict(tmp, methods, prepared=prepared, shard_size=shard_size)
    d["output_dir"] = str(tmp / out)
    return ReleaseSpec.model_validate(d)


def inpainting_method(checkpoint: Path, counts: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    p = {
        "checkpoints": {3: str(checkpoint), 4: str(checkpoint), 5: str(checkpoint)},
        "steps": 2,
        "resolution": 64,
        "erosion_px": 1,
        "margin_px": 2,
        "batch_size": 2,
    }
    p.update(params)
    return {"counts": counts, "inpainting": p}


def text2image_method(base: Path, counts: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    p = {"base_model": str(base), "steps": 2, "resolution": 64, "batch_size": 2}
    p.update(params)
    return {"counts": counts, "text2image": p}

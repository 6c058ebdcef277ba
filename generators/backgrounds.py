"""What a background is, for inpainting, Poisson blending and the lesion bank: a row of the prepared
set, opened with its images left encoded (a release touches a few backgrounds many times, so each
is decoded on demand, one at a time), grouped by view and laterality in image_id order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from mammosynth.builders.core.imageio import decode_grey, image_size
from mammosynth.builders.core.prepared import open_prepared
from mammosynth.generators.box_sampling import SizeRange, scaled_box_size, size_range


@dataclass(frozen=True)
class Background:
    row: int
    image_id: str
    density: str | None
    manufacturer: str | None
    flipped: bool


def load_prepared(path: str | Path) -> datasets.Dataset:
    """The prepared training set with images left encoded (``{"bytes", "path"}`` dicts)."""
    return open_prepared(path, field="source.prepared").cast_column("image", datasets.Image(decode=False))


def decode_row(ds: datasets.Dataset, row: int) -> np.ndarray:
    """The grey pixels (uint8/uint16, as stored) of row ``row`` of a set from ``load_prepared``."""
    return decode_grey(ds[row]["image"])


def backgrounds_by_view(ds: datasets.Dataset, birads: list[int]) -> dict[tuple[str, str], list[Background]]:
    """(view, laterality) -> backgrounds of the given BI-RADS, sorted by image_id."""
    cols = ds.select_columns(["image_id", "view", "laterality", "birads", "density", "manufacturer", "flipped"])[:]
    groups: dict[tuple[str, str], list[Background]] = defaultdict(list)
    for row in range(len(ds)):
        if cols["birads"][row] in birads:
            groups[(cols["view"][row], cols["laterality"][row])].append(
                Background(
                    row,
                    cols["image_id"][row],
                    cols["density"][row],
                    cols["manufacturer"][row],
                    bool(cols["flipped"][row]),
                )
            )
    return {k: sorted(v, key=lambda b: b.image_id) for k, v in groups.items()}


def class_size_ranges(ds: datasets.Dataset, classes: list[int], resolution: int) -> dict[int, SizeRange | None]:
    """Per class, the real box-size range (IQR-trimmed) scaled to ``resolution``² output."""
    findings = ds.select_columns(["findings"])["findings"]
    sizes: dict[int, tuple[list[float], list[float]]] = {b: ([], []) for b in classes}
    for row, fs in enumerate(findings):
        boxes = [
            (f["bbox"], f["finding_birads"]) for f in fs or [] if f.get("finding_birads") in sizes and f.get("bbox")
        ]
        if not boxes:
            continue
        size = image_size(ds[row]["image"])
        for bbox, b in boxes:
            w, h = scaled_box_size(bbox, size, (resolution, resolution))
            if w > 0 and h > 0:
                sizes[b][0].append(w)
                sizes[b][1].append(h)
    return {b: size_range(*sizes[b]) for b in classes}


__all__ = ["Background", "load_prepared", "decode_row", "backgrounds_by_view", "class_size_ranges"]

"""Lesion box size and position for inpainting (source paper §3.3.2).

Sizes: width and height are drawn uniformly within the class's real range, taken from the
reference boxes of the prepared set after IQR outlier removal and scaled to the output size.
Position: rejection sampling inside the allowed region (breast, eroded, minus a margin), seeded by
the image's mask seed, so a box depends only on the image's file name and the background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

Box = tuple[int, int, int, int]  # xmin, ymin, xmax (exclusive), ymax (exclusive), output pixels


@dataclass(frozen=True)
class SizeRange:
    """Inclusive box width/height bounds in output pixels, and how many reference boxes made them."""

    w_min: float
    w_max: float
    h_min: float
    h_max: float
    n_boxes: int

    def contains(self, w: float, h: float) -> bool:
        # a sampled size is rounded to whole pixels, hence the half-pixel slack
        return self.w_min - 0.5 <= w <= self.w_max + 0.5 and self.h_min - 0.5 <= h <= self.h_max + 0.5


def iqr_inliers(values: Iterable[float], k: float = 1.5) -> np.ndarray:
    """Values inside [Q1 - k·IQR, Q3 + k·IQR] (Tukey's fences)."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        return v
    q1, q3 = np.percentile(v, [25, 75])
    iqr = q3 - q1
    return v[(v >= q1 - k * iqr) & (v <= q3 + k * iqr)]


def size_range(widths: Iterable[float], heights: Iterable[float]) -> SizeRange | None:
    """Range of widths and heights after outlier removal on each; None without reference boxes."""
    w, h = np.asarray(list(widths), np.float64), np.asarray(list(heights), np.float64)
    if w.size == 0:
        return None
    wi, hi = iqr_inliers(w), iqr_inliers(h)
    return SizeRange(float(wi.min()), float(wi.max()), float(hi.min()), float(hi.max()), int(w.size))


def scaled_box_size(
    bbox: Iterable[float], image_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[float, float]:
    """Width and height of ``bbox`` (in an image of (width, height) ``image_size``) at ``out_size``."""
    x0, y0, x1, y1 = (float(c) for c in bbox)
    (iw, ih), (ow, oh) = image_size, out_size
    return (x1 - x0) * ow / iw, (y1 - y0) * oh / ih


def box_fits(integral: np.ndarray, box: Box) -> bool:
    """All pixels of ``box`` inside the region, via the summed-area table (O(1) per test)."""
    x0, y0, x1, y1 = box
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return int(total) == (x1 - x0) * (y1 - y0)


def summed_area(region: np.ndarray) -> np.ndarray:
    table = np.zeros((region.shape[0] + 1, region.shape[1] + 1), np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(np.asarray(region, bool), axis=0), axis=1)
    return table


def sample_box(region: np.ndarray, sizes: SizeRange, seed: int, max_tries: int = 200) -> Box | None:
    """Draw (w, h) uniformly in ``sizes`` and a centre uniformly among region pixels; accept the
    first box lying wholly inside ``region``. None when ``max_tries`` draws all fail."""
    region = np.asarray(region, bool)
    ys, xs = np.nonzero(region)
    if xs.size == 0:
        return None
    height, width = region.shape
    integral = summed_area(region)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        w = max(1, int(round(rng.uniform(sizes.w_min, sizes.w_max))))
        h = max(1, int(round(rng.uniform(sizes.h_min, sizes.h_max))))
        k = int(rng.integers(xs.size))
        x0, y0 = int(xs[k]) - w // 2, int(ys[k]) - h // 2
        box = (x0, y0, x0 + w, y0 + h)
        if x0 < 0 or y0 < 0 or box[2] > width or box[3] > height:
            continue
        if box_fits(integral, box):
            return box
    return None

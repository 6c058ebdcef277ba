"""Anatomically guided lesion placement for Poisson blending (source paper §3.2.1).

Per background: the Poisson breast mask, its intensity window (10th-98th percentile inside the
mask), and the pectoral muscle on MLO views. Per lesion: a candidate map of centres where the
lesion lies fully inside the breast and ``margin_px`` away from the skin line, off the pectoral
muscle, where the surrounding ring's mean intensity lies inside the window and its local texture is
close to the lesion's original surroundings. The maps are computed once on a reduced grid (box
filters, a distance transform), so each rejection-sampling draw — seeded by the task's mask seed —
is a lookup; the accepted position is re-checked against the full-resolution mask. When no
position qualifies the caller gets a reason, never a forced placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammosynth.builders.core.breast_mask import chest_wall_side, distance_to_edge, mask_to_full, poisson_mask_work
from mammosynth.builders.core.config_io import StrictModel
from mammosynth.generators.lesion_bank import intensity_window, local_std

WORK_SIZE = 512


class PlacementConfig(StrictModel):
    window_percentiles: tuple[float, float] = (10.0, 98.0)
    margin_px: float = 24.0  # at 1024-px images; scaled with the image's long side
    texture_ratio: float = 2.0  # accepted ratio between background and lesion ring textures
    max_tries: int = 500


@dataclass
class BackgroundInfo:
    """Everything placement needs about one background, computed once."""

    wmask: np.ndarray  # work resolution, bool: the breast mask
    shape: tuple[int, int]  # full resolution (h, w)
    window: tuple[float, float]
    side: str
    pectoral: np.ndarray  # work resolution, bool (all False on CC)
    factor: float  # full px per work px
    work: np.ndarray  # float32 work-resolution image
    dist: np.ndarray  # work resolution: distance to the skin line in *full* pixels
    pectoral_dist: np.ndarray | None = None  # work resolution: distance to the muscle in work px
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # breast's y0, y1, x0, x1 (full px, from the work mask)
    area: int = 0  # breast pixels (full resolution, estimated from the work mask)
    full_mask: np.ndarray | None = None  # full resolution, when the caller gave it

    @property
    def mask(self) -> np.ndarray:
        """The full-resolution mask (``mask_to_full`` of the work mask), made on first use only."""
        if self.full_mask is None:
            self.full_mask = mask_to_full(self.wmask, self.shape)
        return self.full_mask

    def mask_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``mask[y0:y1, x0:x1]`` without upsampling the whole frame: the work mask bilinearly
        interpolated on that region alone, with ``mask_to_full``'s pixel-centre geometry and
        threshold (it may differ from OpenCV's fixed-point result only where the interpolated
        value is within ~1/2048 of the threshold)."""
        if self.full_mask is not None:
            return self.full_mask[y0:y1, x0:x1]
        if self.wmask.shape == self.shape:
            return self.wmask[y0:y1, x0:x1]
        m = self.wmask.astype(np.float32)

        def axis(lo: int, hi: int, n_work: int, n_full: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            f = (np.arange(lo, hi) + 0.5) * (n_work / n_full) - 0.5
            i = np.floor(f).astype(np.intp)
            t = (f - i).astype(np.float32)
            t[i < 0], i[i < 0] = 0, 0
            t[i >= n_work - 1], i[i >= n_work - 1] = 0, n_work - 1
            return i, np.minimum(i + 1, n_work - 1), t

        iy, iy1, ty = axis(y0, y1, *m.shape[:1], self.shape[0])
        ix, ix1, tx = axis(x0, x1, m.shape[1], self.shape[1])
        rows = m[iy] * (1 - ty)[:, None] + m[iy1] * ty[:, None]
        return rows[:, ix] * (1 - tx) + rows[:, ix1] * tx > 0.5


@dataclass
class Placement:
    x: int  # top-left of the lesion crop in the background
    y: int
    tries: int


def pectoral_region(work: np.ndarray, mask: np.ndarray, side: str) -> np.ndarray:
    """Pectoral muscle on an MLO view: the bright region in the top chest-wall corner, grown to its
    convex hull; a triangle (40% of the breast width along the top, 45% of the height down the
    chest wall) when the intensity cue finds nothing."""
    h, w = work.shape
    vals = work[mask]
    out = np.zeros((h, w), bool)
    if vals.size == 0:
        return out
    smooth = cv2.GaussianBlur(work, (0, 0), 2)
    bright = (smooth > np.percentile(vals, 85)) & mask
    n, labels = cv2.connectedComponents(bright.astype(np.uint8))
    corner_x = 0 if side == "L" else w - 1
    cols = np.nonzero(mask.any(0))[0]
    breast_w = int(np.ptp(cols)) + 1 if cols.size else w
    for k in range(1, n):
        comp = labels == k
        ys, xs = np.nonzero(comp)
        touches_top = ys.min() <= h * 0.02
        near_wall = np.abs(xs - corner_x).min() <= w * 0.03
        if touches_top and near_wall and comp.sum() > 0.01 * mask.sum():
            hull = cv2.convexHull(np.stack([xs, ys], 1).astype(np.int32))
            cv2.fillConvexPoly(out.view(np.uint8), hull, 1)
    if not out.any():
        dx = int(0.4 * breast_w)
        tri = np.array(
            [[corner_x, 0], [corner_x + (dx if side == "L" else -dx), 0], [corner_x, int(0.45 * h)]], np.int32
        )
        cv2.fillConvexPoly(out.view(np.uint8), tri, 1)
    return out & mask


def work_copy(image: np.ndarray) -> np.ndarray:
    """The image area-averaged to long side ``WORK_SIZE`` (float32), in two steps: block means over
    an integer factor k on the integer image (OpenCV's fast path; the last < k rows/columns, under
    one work pixel, are dropped), then area resampling of that small copy. ~5x cheaper than one
    fractional area resize of the full frame, which dominated the per-background analysis."""
    h, w = image.shape
    scale = WORK_SIZE / max(h, w)
    if scale >= 1:
        return image.astype(np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    k = int(1 / scale)
    if k >= 2:
        hh, ww = h - h % k, w - w % k
        image = cv2.resize(image[:hh, :ww], (ww // k, hh // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def analyse_background(
    image: np.ndarray, view: str, cfg: PlacementConfig, mask: np.ndarray | None = None
) -> BackgroundInfo:
    """Once per background. Everything but the exact containment mask is computed on the work copy
    (long side ``WORK_SIZE``) the breast mask is made from: no second full-frame pass."""
    h, w = image.shape
    factor = max(1.0, max(h, w) / WORK_SIZE)
    if mask is None:
        wmask, work = poisson_mask_work(work_copy(image), work_size=WORK_SIZE)
        work = work.astype(np.float32, copy=False)
    else:
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        work = (
            cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            if factor > 1
            else image.astype(np.float32)
        )
        wmask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 if factor > 1 else mask
    rows, cols = np.nonzero(wmask.any(1))[0], np.nonzero(wmask.any(0))[0]
    if rows.size == 0:
        side, bbox = "L", (0, 0, 0, 0)
    else:  # the work mask's box in full pixels, one work pixel wider each side (a superset: draws only)
        sy, sx = h / wmask.shape[0], w / wmask.shape[1]
        bbox = (
            max(0, int((rows[0] - 1) * sy)),
            min(h, int(np.ceil((rows[-1] + 2) * sy))),
            max(0, int((cols[0] - 1) * sx)),
            min(w, int(np.ceil((cols[-1] + 2) * sx))),
        )
        side = chest_wall_side(wmask)
    pect = pectoral_region(work, wmask, side) if view == "MLO" else np.zeros(wmask.shape, bool)
    pect_dist = (
        cv2.distanceTransform((~pect).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) if pect.any() else None
    )
    dist = distance_to_edge(wmask) * factor
    window = intensity_window(work, wmask, *cfg.window_percentiles)  # work copy: same profile, 1/factor² the cost
    area = int(round(np.count_nonzero(wmask) * (h * w) / wmask.size))
    return BackgroundInfo(wmask, (h, w), window, side, pect, factor, work, dist, pect_dist, bbox, area, mask)


def candidate_map(
    info: BackgroundInfo, lesion_mask: np.ndarray, context_std: float, cfg: PlacementConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Work-resolution map of acceptable lesion *centres*, and how many survive each constraint."""
    lh, lw = lesion_mask.shape
    ys, xs = np.nonzero(lesion_mask)
    cy, cx = (lh - 1) / 2, (lw - 1) / 2
    radius = float(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max()) + 1 if ys.size else max(lh, lw) / 2
    margin = cfg.margin_px * max(info.shape) / 1024
    counts = {"breast": info.area}
    ok = info.dist >= radius + margin
    counts["inside_with_margin"] = int(ok.sum())
    if info.pectoral_dist is not None:
        # keep the whole lesion off the muscle: centres farther than the lesion radius from it
        ok &= info.pectoral_dist > max(1, int(np.ceil(radius / info.factor)))
    counts["off_pectoral"] = int(ok.sum())
    # ring statistics: box of twice the lesion size minus the lesion box (integral images)
    k_in = max(1, int(round(2 * radius / info.factor)))
    k_out = 2 * k_in + 1
    f = info.work
    s_out, s_in = (
        cv2.boxFilter(f, -1, (k_out, k_out), normalize=False),
        cv2.boxFilter(f, -1, (k_in, k_in), normalize=False),
    )
    ring_mean = (s_out - s_in) / max(1, k_out * k_out - k_in * k_in)
    lo, hi = info.window
    ok &= (ring_mean >= lo) & (ring_mean <= hi)
    counts["intensity_window"] = int(ok.sum())
    if context_std > 0 and cfg.texture_ratio > 0:
        tex = local_std(f, max(3, k_in // 2)) / max(hi - lo, 1e-6)
        ratio = np.maximum(tex, 1e-9) / context_std
        ok &= (ratio <= cfg.texture_ratio) & (ratio >= 1 / cfg.texture_ratio)
    counts["texture"] = int(ok.sum())
    return ok, counts


def place(
    info: BackgroundInfo, lesion_mask: np.ndarray, context_std: float, rng: np.random.Generator, cfg: PlacementConfig
) -> Placement | str:
    """Rejection-sample a position; a string (the reason) when none qualifies."""
    lh, lw = lesion_mask.shape
    H, W = info.shape
    if lh >= H or lw >= W:
        return f"lesion {lw}x{lh} px larger than the background {W}x{H}"
    ok, counts = candidate_map(info, lesion_mask, context_std, cfg)
    if not ok.any():
        lost = next((k for k, v in counts.items() if v == 0), "texture")
        return f"no position qualifies (constraint '{lost}' left none; survivors {counts})"
    y_lo, y_hi, x_lo, x_hi = info.bbox  # the breast's bounding box
    for t in range(1, cfg.max_tries + 1):
        cy, cx = rng.uniform(y_lo, y_hi), rng.uniform(x_lo, x_hi)
        wy, wx = min(int(cy / info.factor), ok.shape[0] - 1), min(int(cx / info.factor), ok.shape[1] - 1)
        if not ok[wy, wx]:
            continue
        y, x = int(round(cy - (lh - 1) / 2)), int(round(cx - (lw - 1) / 2))
        if y < 0 or x < 0 or y + lh > H or x + lw > W:
            continue
        if not info.mask_region(y, y + lh, x, x + lw)[lesion_mask].all():  # full-resolution check, this region only
            continue
        return Placement(x, y, t)
    return f"no accepted position in {cfg.max_tries} draws ({counts['texture']} candidate cells)"

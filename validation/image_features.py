"""Everything the gate needs from one image, computed in a single pass over its pixels.

Release and reference images go through the same function, so thresholds calibrated on the
reference apply unchanged to the release. Work happens on a copy whose longest side is at most
``ANALYSIS_SIDE``: area fractions, sides and box coverage are scale-free, and the embeddings are
far smaller than that anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import xxhash
from scipy.fft import dctn

from mammosynth.builders.core import breast_mask as bm
from mammosynth.builders.core.imageio import decode, dtype_max, grey_channel

ANALYSIS_SIDE = 512
PHASH_BITS = 256  # 16 x 16 low-frequency DCT coefficients
PHASH_BYTES = PHASH_BITS // 8
# Exact-copy hash (32 hex digits): part of the reference cache key and named in the report, so
# hashes of two algorithms are never compared. xxh3 is ~30x faster than blake2b; collisions among
# honest images are what matters here (128 bits), not resistance to a forger.
PIXEL_HASH = "xxh3_128"
# Keypoints for the geometric verification of near candidates: ORB on the breast crop (chest wall
# left) at a fixed height, so that half-size, cropped or stretched copies are described at the
# same scale as their originals. 192 keypoints at 256 px separate copies (>= 46 RANSAC inliers for
# every canary perturbation, phantom and CBIS-DDSM, 256-px references) from other patients (<= 8).
KP_COUNT = 192
KP_HEIGHT = 256
_ORB = None


@dataclass
class ImageFeatures:
    height: int
    width: int
    channels: int
    bit_depth: int
    area_fraction: float
    side: str | None  # chest-wall side of the breast mask, "L"/"R"; None when no breast
    std: float  # whole image, 0..1 units
    saturated_fraction: float  # pixels at the dtype maximum
    pixel_hash: str
    phash: np.ndarray  # (PHASH_BYTES,) uint8, packed bits
    embedding: np.ndarray  # (embed_size**2,) float32, unit norm (zeros when no breast)
    hist: np.ndarray  # in-breast intensity histogram, counts, 0..1 range
    # median background / median breast intensity (square-root units): a mammogram's breast lies on
    # near-black air; textures and noise filling the frame have a grey "background" (1.0 = none)
    background_ratio: float = 1.0
    box_inside: list[float] = field(default_factory=list)  # share of each box inside the breast
    # per box: (share below the breast's 1st percentile, share above its 99.9th, in-box mean as a
    # position in [p1, p99.9]); the breast percentiles leave the boxes out. None = empty box or no breast
    box_tissue: list[tuple[float, float, float] | None] = field(default_factory=list)
    thumb: np.ndarray | None = None  # (thumb_side, thumb_side) uint8, for MS-SSIM diversity
    kp_xy: np.ndarray | None = None  # (m, 2) float16 ORB keypoint positions in the KP_HEIGHT crop
    kp_desc: np.ndarray | None = None  # (m, 32) uint8 ORB descriptors


def pixel_hash(arr: np.ndarray) -> str:
    """``PIXEL_HASH`` hex digest of the shape, dtype and pixels."""
    h = xxhash.xxh3_128(f"{arr.shape}{arr.dtype}".encode())
    h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return h.hexdigest()


def phash256(crop: np.ndarray) -> np.ndarray:
    """256-bit perceptual hash: sign of the 16x16 lowest DCT frequencies against their median."""
    small = cv2.resize(crop.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    coeffs = dctn(small, norm="ortho")[:16, :16]
    return np.packbits((coeffs > np.median(coeffs)).ravel())


# De-duplication crop. The Otsu mask's edge sits inside the soft skin line and moves with
# contrast, noise or JPEG; a thin film border or the faint tail below an MLO breast joins it or
# not. Either way the raw bounding box (and with it every cell of the embedding) slides. The crop
# below is stable: its mask reaches out to the skin line (a low threshold on a lightly smoothed
# copy, only near the Otsu mask, scaled between the air and breast levels so gain and bias cancel),
# and its rows are those at least ``_CROP_ROW_FRACTION`` as wide as the widest, which drops strips
# and tails.
_CROP_LOW = 0.15  # tissue threshold, as a share of the way from the air level to the breast level
_CROP_SMOOTH = 0.7  # px, Gaussian sigma before that threshold (noise, JPEG blocks)
_CROP_REACH = 4  # px the crop mask may extend beyond the Otsu mask
_CROP_ROW_FRACTION = 0.2


def dedup_crop(unit: np.ndarray, mask: np.ndarray, side: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(crop, crop mask) of the breast, chest wall on the left, for the embedding and pHash."""
    m8 = mask.view(np.uint8)
    n_in, n = int(cv2.countNonZero(m8)), mask.size
    breast = cv2.mean(unit, m8)[0]  # masked means: several times faster than boolean indexing
    air = (float(unit.mean()) * n - breast * n_in) / (n - n_in) if n > n_in else 0.0
    level = air + _CROP_LOW * (breast - air)
    near = cv2.dilate(m8, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _CROP_REACH + 1,) * 2)) > 0
    full = ((cv2.GaussianBlur(unit, (0, 0), _CROP_SMOOTH) > level) & near) | mask
    if side == "R":  # canonical orientation: mirrored copies must match their originals
        unit, full = unit[:, ::-1], full[:, ::-1]
    widths = full.sum(1)
    rows = np.nonzero(widths >= _CROP_ROW_FRACTION * widths.max())[0]
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.nonzero(full[y0:y1].any(0))[0]
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return unit[y0:y1, x0:x1], full[y0:y1, x0:x1]


def breast_embedding(crop: np.ndarray, crop_mask: np.ndarray, size: int) -> np.ndarray:
    """Breast crop at ``size`` x ``size``, standardized with the breast's mean/std, lightly
    blurred, unit norm.

    Standardizing removes brightness/contrast changes; cropping to the breast removes shifts and
    padding; the small size averages out noise and re-encoding artefacts; the blur (one cell at
    size 32) makes a crop that slid by a fraction of a cell still match. The background is kept
    (not zeroed) so that a skin-line pixel flipping in or out of the mask barely moves the vector.
    """
    small = cv2.resize(crop.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    m = cv2.resize(crop_mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0.5
    if m.sum() < 4:
        return np.zeros(size * size, np.float32)
    vals = small[m]
    z = cv2.GaussianBlur((small - vals.mean()) / (vals.std() + 1e-6), (0, 0), size / 32.0)
    z = z.astype(np.float32).ravel()
    return z / (np.linalg.norm(z) + 1e-12)


def crop_keypoints(crop: np.ndarray, crop_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORB keypoints ((m, 2) float16 positions, (m, 32) uint8 descriptors) of the breast crop,
    standardized with the breast's mean/std (gain, bias and windowing cancel) and resized to
    ``KP_HEIGHT`` rows."""
    global _ORB
    if _ORB is None:  # one per process; ORB objects are not picklable
        _ORB = cv2.ORB_create(
            nfeatures=KP_COUNT, scaleFactor=1.2, nlevels=4, edgeThreshold=15, patchSize=15, fastThreshold=10
        )
    crop = np.ascontiguousarray(crop, np.float32)
    mean, std = cv2.meanStdDev(crop, mask=np.ascontiguousarray(crop_mask, np.uint8))
    gain = 40.0 / max(float(std[0, 0]), 1e-6)  # breast mean at 128, +-3.2 std inside 0..255
    c8 = cv2.convertScaleAbs(crop, alpha=gain, beta=128.0 - gain * float(mean[0, 0]))
    scale = KP_HEIGHT / c8.shape[0]
    size = (max(16, round(c8.shape[1] * scale)), KP_HEIGHT)
    c8 = cv2.resize(c8, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    kp, desc = _ORB.detectAndCompute(c8, None)
    if desc is None or not kp:
        return np.zeros((0, 2), np.float16), np.zeros((0, 32), np.uint8)
    return np.array([k.pt for k in kp], np.float16), desc


def _box_tissue(
    unit: np.ndarray, mask: np.ndarray, slices: list[tuple[slice, slice]]
) -> list[tuple[float, float, float] | None]:
    """How breast-like the pixels inside each box are, against the breast outside the boxes."""
    rest = mask.copy()
    for sl in slices:
        rest[sl] = False
    if rest.sum() < 16:
        return [None] * len(slices)
    p1, p999 = np.percentile(unit[rest], [1.0, 99.9])
    out: list[tuple[float, float, float] | None] = []
    for sl in slices:
        vals = unit[sl].ravel()  # all of it: a black or noisy fill can break the mask around it
        if vals.size == 0:
            out.append(None)
            continue
        pos = (float(vals.mean()) - p1) / max(float(p999 - p1), 1e-6)
        out.append((float((vals < p1).mean()), float((vals > p999).mean()), pos))
    return out


_OTSU_BINS = 256  # skimage.filters.threshold_otsu's default, which breast_mask uses


def _levels(small: np.ndarray, top: float) -> np.ndarray | None:
    """The distinct values ``unit`` can take (integer images only): lets histograms and medians
    count grey levels with one ``bincount`` instead of sorting or binning every pixel."""
    if small.dtype not in (np.uint8, np.uint16):
        return None
    return np.arange(int(top) + 1, dtype=np.float32) / np.float32(top)


def _level_counts(small: np.ndarray, levels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels per grey level (in ``mask`` when given); OpenCV's histogram for 8-bit images (exact
    integer counts, ~3x faster than bincount, which first widens every pixel)."""
    if small.dtype == np.uint8:
        m = None if mask is None else mask.view(np.uint8)
        return cv2.calcHist([small], [0], m, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(small.ravel() if mask is None else small[mask], minlength=levels.size)


def _histogram(
    unit: np.ndarray, mask: np.ndarray, levels: np.ndarray | None, counts: np.ndarray | None, bins: int
) -> np.ndarray:
    """``np.histogram(unit[mask], bins, (0, 1))``; for integer images by weighting each grey level
    with its in-mask pixel count (the same float32 values are binned, so the counts are identical)."""
    if levels is None or counts is None:
        return np.histogram(unit[mask], bins=bins, range=(0.0, 1.0))[0].astype(np.float64)
    return np.histogram(levels, bins=bins, range=(0.0, 1.0), weights=counts)[0].astype(np.float64)


def _otsu_hist(levels: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``skimage.exposure.histogram(sqrt(unit))`` as ``threshold_otsu`` computes it (256 bins
    between the image's min and max), from grey-level counts: np.histogram bins each value on
    its own, so binning the distinct values with their counts as weights gives the same counts."""
    present = counts > 0
    c, edges = np.histogram(np.sqrt(levels[present]), bins=_OTSU_BINS, weights=counts[present])
    return c, (edges[:-1] + edges[1:]) / 2.0


def _median(root: np.ndarray, sel: np.ndarray, levels: np.ndarray | None, counts: np.ndarray | None) -> float:
    """``np.median(root[sel])`` (root = sqrt of unit); for integer images from the grey-level
    counts of ``sel``: sqrt is monotonic, so the middle pixel(s) in grey level are the middle ones."""
    if levels is None or counts is None:
        return float(np.median(root[sel]))
    cum = np.cumsum(counts)
    n = int(cum[-1])
    lo, hi = np.searchsorted(cum, [(n - 1) // 2, n // 2], side="right")  # 0-based ranks -> levels
    r = np.sqrt(levels[[lo, hi]])
    return float(r[0]) if lo == hi else float(np.mean(r))


def analyse(
    image: dict | bytes | np.ndarray,
    *,
    boxes: list[list[float]] | None = None,
    embed_size: int = 64,
    bins: int = 64,
    thumb_side: int = 0,
    keypoints: bool = True,
) -> ImageFeatures:
    """All per-image figures. ``boxes`` are [xmin, ymin, xmax, ymax] in full-image pixels."""
    raw = decode(image)
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    gray = grey_channel(raw)
    h, w = gray.shape
    top = dtype_max(gray)
    bit_depth = 16 if gray.dtype == np.uint16 else 8 if gray.dtype == np.uint8 else int(gray.dtype.itemsize * 8)
    scale = min(1.0, ANALYSIS_SIDE / max(h, w))
    small = (
        cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray
    )
    unit = small.astype(np.float32) / top

    # The square root lifts fatty tissue away from the air before the shared Otsu mask runs: on
    # linear intensities Otsu often splits dense from fatty tissue and loses most of the breast.
    # It is monotonic, so an inverted image still puts its "breast" on the air side.
    root = np.sqrt(unit)
    # Integer images: grey-level counts (one bincount) stand in for per-pixel histograms, sorts and
    # medians below, and give the mask's Otsu histogram without binning every float pixel.
    levels = _levels(small, top)
    counts = _level_counts(small, levels) if levels is not None else None
    otsu_hist = _otsu_hist(levels, counts) if counts is not None and max(root.shape) <= bm.WORK_SIZE else None
    mask = np.asarray(bm.breast_mask(root, otsu_hist=otsu_hist), dtype=bool)
    in_counts = _level_counts(small, levels, mask) if levels is not None else None
    area = float(bm.area_fraction(mask))
    has_breast = bool(mask.any())
    side = bm.chest_wall_side(mask) if has_breast else None

    hist = np.zeros(bins, np.float64)
    if has_breast:
        hist = _histogram(unit, mask, levels, in_counts, bins)
        crop, crop_mask = dedup_crop(unit, mask, side)
        emb = breast_embedding(crop, crop_mask, embed_size)
        ph = phash256(crop)
        kp_xy, kp_desc = crop_keypoints(crop, crop_mask) if keypoints else (None, None)
    else:
        emb = np.zeros(embed_size * embed_size, np.float32)
        ph = phash256(unit)
        kp_xy = kp_desc = None

    background_ratio = 1.0
    if has_breast and not mask.all():
        out_counts = counts - in_counts if counts is not None and in_counts is not None else None
        background_ratio = float(
            _median(root, ~mask, levels, out_counts) / max(float(_median(root, mask, levels, in_counts)), 1e-6)
        )

    inside, slices = [], []
    for box in boxes or []:
        x0b, y0b, x1b, y1b = (float(v) * scale for v in box)
        xa, xb = int(np.clip(np.floor(x0b), 0, mask.shape[1])), int(np.clip(np.ceil(x1b), 0, mask.shape[1]))
        ya, yb = int(np.clip(np.floor(y0b), 0, mask.shape[0])), int(np.clip(np.ceil(y1b), 0, mask.shape[0]))
        full = max((x1b - x0b) * (y1b - y0b), 1e-6)
        inside.append(float(mask[ya:yb, xa:xb].sum()) / max(full, 1.0) if xb > xa and yb > ya else 0.0)
        slices.append((slice(ya, yb), slice(xa, xb)))
    tissue = _box_tissue(unit, mask, slices) if slices else []

    th = None
    if thumb_side:
        th = cv2.resize(unit, (thumb_side, thumb_side), interpolation=cv2.INTER_AREA)
        th = np.clip(th * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return ImageFeatures(
        height=h,
        width=w,
        channels=channels,
        bit_depth=bit_depth,
        area_fraction=area,
        side=side,
        std=float(unit.std()),
        saturated_fraction=np.count_nonzero(gray >= top) / gray.size if top > 1 else 0.0,
        pixel_hash=pixel_hash(raw),
        phash=ph,
        embedding=emb,
        hist=hist,
        background_ratio=background_ratio,
        box_inside=inside,
        box_tissue=tissue,
        thumb=th,
        kp_xy=kp_xy,
        kp_desc=kp_desc,
    )

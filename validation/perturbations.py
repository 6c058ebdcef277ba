"""The planted copies of the canary self-test: each perturbation turns a training image into the
kind of copy a generator (or someone laundering a training image) could publish.

Every function takes a grey image (uint8 or uint16, chest wall on either side) and a seeded
generator, and returns a grey image of the same dtype (the size may change: half size, stretch).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from mammosynth.builders.core import breast_mask as bm
from mammosynth.builders.core.imageio import dtype_max

Perturbation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _unit(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / dtype_max(img)


def _back(unit: np.ndarray, like: np.ndarray) -> np.ndarray:
    top = dtype_max(like)
    return np.clip(unit * top + 0.5, 0, top).astype(like.dtype)


def _chest_wall_left(img: np.ndarray) -> bool:
    mask = bm.breast_mask(np.sqrt(_unit(img)))
    return not mask.any() or bm.chest_wall_side(mask) != "R"


def _air(img: np.ndarray) -> int:
    return int(np.percentile(img, 1))


def shift(img: np.ndarray, rng: np.random.Generator, frac: float = 0.03) -> np.ndarray:
    """Translated by ``frac`` of the size, away from the chest wall and down (air fills in)."""
    h, w = img.shape
    dx = frac * w if _chest_wall_left(img) else -frac * w
    m = np.float32([[1, 0, dx], [0, 1, frac * h]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=_air(img))


def zoom(img: np.ndarray, rng: np.random.Generator, frac: float = 0.05) -> np.ndarray:
    """The central ``1 - frac`` of each side (tissue at the chest wall cut off too), resized back
    to the original size."""
    h, w = img.shape
    dy, dx = int(round(h * frac / 2)), int(round(w * frac / 2))
    return cv2.resize(img[dy : h - dy, dx : w - dx], (w, h), interpolation=cv2.INTER_LINEAR)


def stretch(img: np.ndarray, rng: np.random.Generator, factor: float = 1.15) -> np.ndarray:
    """Another aspect ratio: the width scaled by ``factor``, the height kept."""
    h, w = img.shape
    return cv2.resize(img, (int(round(w * factor)), h), interpolation=cv2.INTER_LINEAR)


def half_size(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    return cv2.resize(img, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)


def rotate(img: np.ndarray, rng: np.random.Generator, degrees: float = 3.0) -> np.ndarray:
    """Rotated about the centre, same size, air filling the corners."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=_air(img))


def brightness(img: np.ndarray, rng: np.random.Generator, offset: float = 0.08) -> np.ndarray:
    return _back(_unit(img) + offset, img)


def contrast(img: np.ndarray, rng: np.random.Generator, gain: float = 1.3) -> np.ndarray:
    u = _unit(img)
    return _back((u - u.mean()) * gain + u.mean(), img)


def gamma(img: np.ndarray, rng: np.random.Generator, g: float = 0.7) -> np.ndarray:
    return _back(_unit(img) ** g, img)


def window(img: np.ndarray, rng: np.random.Generator, lo_pct: float = 2.0, hi_pct: float = 99.5) -> np.ndarray:
    """Re-windowed: the grey levels between two percentiles stretched over the full range."""
    u = _unit(img)
    lo, hi = np.percentile(u, [lo_pct, hi_pct])
    return _back((u - lo) / max(float(hi - lo), 1e-6), img)


def jpeg(img: np.ndarray, rng: np.random.Generator, quality: int = 70) -> np.ndarray:
    """JPEG round trip (16-bit images through their 8-bit view, as a JPEG holds 8 bits)."""
    eight = img if img.dtype == np.uint8 else _back(_unit(img), np.zeros(1, np.uint8))
    ok, buf = cv2.imencode(".jpg", eight, [cv2.IMWRITE_JPEG_QUALITY, quality])
    out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out if img.dtype == np.uint8 else _back(_unit(out), img)


def noise(img: np.ndarray, rng: np.random.Generator, sigma: float = 0.02) -> np.ndarray:
    return _back(_unit(img) + rng.normal(0, sigma, img.shape).astype(np.float32), img)


def flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrored left to right (the breast on the other side)."""
    return np.ascontiguousarray(img[:, ::-1])


def pasted_box(img: np.ndarray, rng: np.random.Generator, side: float = 0.2) -> np.ndarray:
    """An inpainting-style edit: a square of ``side`` x the breast's size inside the breast
    replaced by smooth noise at the breast's level (a "lesion" pasted over the copy)."""
    u = _unit(img)
    small = cv2.resize(u, (128, max(1, round(128 * u.shape[0] / u.shape[1]))), interpolation=cv2.INTER_AREA)
    mask = bm.breast_mask(np.sqrt(small))
    if not mask.any():
        return img.copy()
    ys, xs = np.nonzero(cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) if mask.sum() > 200 else mask)
    if not len(ys):
        ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    sy, sx = u.shape[0] / small.shape[0], u.shape[1] / small.shape[1]
    bh = bw = int(round(side * min(np.ptp(np.nonzero(mask)[0]) * sy + 1, np.ptp(np.nonzero(mask)[1]) * sx + 1)))
    cy, cx = int(ys[j] * sy), int(xs[j] * sx)
    y0, x0 = max(0, cy - bh // 2), max(0, cx - bw // 2)
    y1, x1 = min(u.shape[0], y0 + bh), min(u.shape[1], x0 + bw)
    level = float(small[mask].mean())
    patch = cv2.GaussianBlur(rng.normal(0, 1, (y1 - y0, x1 - x0)).astype(np.float32), (0, 0), max(1.0, bw / 12))
    patch = level + 0.1 * patch / (patch.std() + 1e-6)
    out = u.copy()
    out[y0:y1, x0:x1] = patch
    return _back(out, img)


def _with(fn: Callable[..., np.ndarray], **kw: float) -> Perturbation:
    return lambda img, rng: fn(img, rng, **kw)


# name -> perturbation, in the report's order
PERTURBATIONS: dict[str, Perturbation] = {
    "exact": lambda img, rng: img.copy(),
    "shift_3pct": shift,
    "zoom_3pct": _with(zoom, frac=0.03),
    "zoom_5pct": _with(zoom, frac=0.05),
    "zoom_10pct": _with(zoom, frac=0.10),
    "stretch_x1.15": stretch,
    "half_size": half_size,
    "rotate_+3deg": _with(rotate, degrees=3.0),
    "rotate_-3deg": _with(rotate, degrees=-3.0),
    "brightness": brightness,
    "contrast": contrast,
    "gamma_0.7": gamma,
    "rewindow": window,
    "jpeg_q70": jpeg,
    "noise": noise,
    "flip": flip,
    "pasted_box": pasted_box,
}

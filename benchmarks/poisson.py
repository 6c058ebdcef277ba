"""Poisson generator throughput: region-only blending + precomputed placement maps, against the
naive way (full-frame seamlessClone per image, plain uniform rejection sampling checked on the
full-resolution mask), in the same process, at 1024 px and full size (3518x2800), 8-bit.

Run: python benchmarks/poisson.py [--n N]   -> benchmarks/results/poisson.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from mammosynth.generators.breast_mask import poisson_mask
from mammosynth.generators.placement import PlacementConfig, analyse_background, place
from mammosynth.generators.poisson import blend


def background(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.resize(rng.normal(0, 1, (h // 16, w // 16)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.zeros((h, w), np.float32)
    cv2.ellipse(img, (0, h // 2), (int(w * 0.75), int(h * 0.42)), 0, -90, 90, 1.0, -1)
    return np.clip(img * (140 + 25 * tex), 0, 255).astype(np.uint8)


def lesion(size: int) -> tuple[np.ndarray, np.ndarray]:
    crop = np.full((size, size), 150, np.float32)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), int(size * 0.4), 1, -1)
    crop += 60 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), size / 12)
    return crop.astype(np.uint8), mask > 0


def ours(img, crop, mask, seed, cfg):
    info = analyse_background(img, "CC", cfg)
    pl = place(info, mask, 0.0, np.random.default_rng(seed), cfg)
    return blend(img, crop, mask, pl.x, pl.y)[0]


def naive(img, crop, mask, seed):
    breast = poisson_mask(img)
    rng = np.random.default_rng(seed)
    H, W = img.shape
    lh, lw = mask.shape
    while True:  # plain uniform rejection sampling, full-resolution containment check
        y, x = int(rng.integers(0, H - lh)), int(rng.integers(0, W - lw))
        if breast[y : y + lh, x : x + lw][mask].all():
            break
    src = np.zeros_like(img)
    src[y : y + lh, x : x + lw] = crop
    full = np.zeros_like(img)
    full[y : y + lh, x : x + lw] = mask * 255
    centre = (x + lw // 2, y + lh // 2)
    out = cv2.seamlessClone(cv2.merge([src] * 3), cv2.merge([img] * 3), full, centre, cv2.NORMAL_CLONE)
    return out[..., 0]


def bench(h, w, lesion_px, n):
    imgs = [background(h, w, s) for s in range(n)]
    crop, mask = lesion(lesion_px)
    cfg = PlacementConfig(texture_ratio=0)  # synthetic lesion has no recorded surroundings
    t0 = time.perf_counter()
    for i, img in enumerate(imgs):
        ours(img, crop, mask, i, cfg)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, img in enumerate(imgs):
        naive(img, crop, mask, i)
    t_naive = time.perf_counter() - t0
    return {"size": [h, w], "lesion_px": lesion_px, "images": n, "ours_img_per_s": n / t_ours,
            "naive_img_per_s": n / t_naive, "speedup": t_naive / t_ours}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    cv2.setNumThreads(2)
    results = [bench(1024, 816, 112, args.n * 2), bench(3518, 2800, 390, args.n)]
    import scipy, skimage
    out = {"benchmark": "poisson", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
           "cpu_count": __import__("os").cpu_count(), "python": platform.python_version(),
           "versions": {"opencv": cv2.__version__, "numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__},
           "note": "8-bit, one process; ours = precomputed placement maps + seamlessClone on the lesion region; naive = full-frame seamlessClone + uniform rejection sampling",
           "results": results}
    path = Path(__file__).parent / "results" / "poisson.json"
    path.write_text(json.dumps(out, indent=1))
    for r in results:
        print(f"{r['size']}: ours {r['ours_img_per_s']:.2f} img/s, naive {r['naive_img_per_s']:.2f} img/s, x{r['speedup']:.1f}")


if __name__ == "__main__":
    main()

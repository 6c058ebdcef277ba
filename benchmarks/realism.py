"""Realism metrics throughput: feature extraction plus FID / KID / precision-recall between a
release and a reference, ours (``validation.realism``) against the plain way a user would write it
(per-image transformers image processor and model calls, FID with numpy/scipy, KID with a numpy
loop over subsets, precision/recall from a full scipy ``cdist`` matrix), on the same images and the
same encoder, in interleaved rounds on this machine. The figure that matters is the ratio.

The encoder is a randomly initialised DINOv2-small-sized ViT (no weights can be downloaded here;
the compute per image is that of the real model). Images: phantom-like mammograms from the tests'
synthetic helpers.

    .venv/bin/python benchmarks/realism.py [--images 300] [--size 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic data lives in the tests' helpers


def _encoder(folder: Path, layers: int) -> None:
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=layers, num_attention_heads=6)
    Dinov2Model(cfg).eval().save_pretrained(folder)
    # DINOv2's own processor settings: resize shortest edge 256, centre crop 224, ImageNet mean/std
    BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def _images(n: int, seed: int, size: int) -> list[np.ndarray]:
    from helpers import synthetic as S

    rng = np.random.default_rng(seed)
    h, w = size, int(size * 0.8)
    return [S.mammogram(rng, h, w, "LR"[k % 2], ("CC", "MLO")[k % 2]) for k in range(n)]


# --- the baseline: the way a user would write it -----------------------------------------------------


def _baseline(folder: Path, rel: list[np.ndarray], ref: list[np.ndarray], k: int, subsets: int, m: int) -> dict:
    import scipy.linalg
    import torch
    from PIL import Image
    from scipy.spatial.distance import cdist
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(folder).eval()
    proc = AutoImageProcessor.from_pretrained(folder)

    def feats(images):
        out = []
        with torch.no_grad():
            for im in images:
                x = proc(images=Image.fromarray(im).convert("RGB"), return_tensors="pt")
                out.append(model(**x).pooler_output[0].numpy())
        return np.array(out, np.float64)

    t = time.perf_counter()
    a, b = feats(rel), feats(ref)
    extract = time.perf_counter() - t
    t = time.perf_counter()
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    fid = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))
    rng = np.random.default_rng(0)
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )
    r_real = np.sort(cdist(b, b), axis=1)[:, k]
    r_fake = np.sort(cdist(a, a), axis=1)[:, k]
    cross = cdist(a, b)
    precision = float((cross <= r_real[None, :]).any(1).mean())
    recall = float((cross.T <= r_fake[None, :]).any(1).mean())
    metrics = time.perf_counter() - t
    return {
        "extract_s": extract,
        "metrics_s": metrics,
        "fid": fid,
        "kid": float(np.mean(vals)),
        "precision": precision,
        "recall": recall,
    }


# --- ours -------------------------------------------------------------------------------------------


def _ours(folder: Path, rel: list[np.ndarray], ref: list[np.ndarray], k: int, subsets: int, m: int) -> dict:
    from mammosynth.validation import realism as R
    from mammosynth.validation.feature_extractor import RealismConfig, load_extractor

    cfg = RealismConfig(extractor=str(folder), k=k, kid_subsets=subsets, kid_subset_size=m, batch_size=32, min_images=2)
    ext = load_extractor(cfg)
    t = time.perf_counter()
    a, b = ext.extract(rel), ext.extract(ref)
    extract = time.perf_counter() - t
    t = time.perf_counter()
    overall = R.compare(a, b, cfg, 0, "reference")
    metrics = time.perf_counter() - t
    return {
        "extract_s": extract,
        "metrics_s": metrics,
        **{key: overall[key] for key in ("fid", "kid", "precision", "recall")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="release images (and as many reference images)")
    ap.add_argument("--size", type=int, default=512, help="image height in pixels (width 0.8x)")
    ap.add_argument("--layers", type=int, default=12, help="encoder depth (DINOv2-small: 12)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    k, subsets, m = 3, 100, min(1000, args.images)
    rel, ref = _images(args.images, 1, args.size), _images(args.images, 2, args.size)
    load = {"before": list(os.getloadavg())}
    runs: dict[str, list[dict]] = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dinov2-small-random"
        _encoder(folder, args.layers)
        for _ in range(args.rounds):  # interleaved: both see the same load on a shared machine
            runs["ours"].append(_ours(folder, rel, ref, k, subsets, m))
            runs["baseline"].append(_baseline(folder, rel, ref, k, subsets, m))
    load["after"] = list(os.getloadavg())

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    total = {s: med(s, "extract_s") + med(s, "metrics_s") for s in runs}
    result = {
        "benchmark": "realism",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "load_average": {**load, "note": "1/5/15-min; the CPU is shared, so rounds are interleaved and medians kept"},
        "versions": {p: version(p) for p in ("torch", "transformers", "numpy", "scipy", "faiss-cpu")},
        "setup": {
            "release_images": args.images,
            "reference_images": args.images,
            "image_size": f"{args.size}x{int(args.size * 0.8)} 8-bit grey",
            "encoder": f"random DINOv2 ViT, hidden 384, {args.layers} layers, patch 14, 224 px input",
            "kid": f"{subsets} subsets of {m}",
            "k": k,
            "ours": "validation.realism: batched extraction (batch 32, cv2 area resize), faiss kNN radii",
            "baseline": "per-image AutoImageProcessor + model call; numpy FID/KID; scipy cdist precision/recall",
            "rounds": args.rounds,
        },
        "timings_s": {s: {"extract": med(s, "extract_s"), "metrics": med(s, "metrics_s")} for s in runs},
        "ratio_extract": med("baseline", "extract_s") / med("ours", "extract_s"),
        "ratio_metrics": med("baseline", "metrics_s") / med("ours", "metrics_s"),
        "ratio_total": total["baseline"] / total["ours"],
        "figures_last_round": {s: {k2: runs[s][-1][k2] for k2 in ("fid", "kid", "precision", "recall")} for s in runs},
        "note": "the baseline's processor crops to the centre (shortest edge 256, crop 224) where ours resizes the whole "
        "image, so the figures differ; the timing compares the same work per image",
    }
    out = Path(__file__).parent / "results" / f"realism-{args.images}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps({k2: result[k2] for k2 in ("ratio_extract", "ratio_metrics", "ratio_total", "timings_s")}, indent=1)
    )


if __name__ == "__main__":
    main()

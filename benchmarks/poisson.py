"""Poisson generator throughput, end to end, against the naive way, in the same process.

Both paths do the same job per output image, from the prepared set's stored PNG to the output
PNG bytes: decode the background, breast mask, choose and transform the lesion (same lesion, same
random draws), place it, blend it, encode the result.

- ours: ``PoissonSampler.generate`` as the engine calls it (a fresh sampler each round, its one-off
  set-up excluded; starting and stopping its process pool included): tasks grouped by background,
  groups spread over ``workers`` processes (default: the CPU count); each background decoded
  block by block (the prepared set is in the block PNG layout ingest writes) and analysed once;
  placement maps on the work copy (plus pectoral and texture constraints the naive loop does not
  even check); the default DST engine on the lesion region; the output PNG spliced from the stored
  blocks with only the touched ones re-deflated. Also timed with one worker (no pool) and with
  ``engine: opencv`` (seamlessClone on the lesion region, pool).
- naive: what a user would write per image: decode, ``poisson_mask`` at full resolution,
  uniform rejection sampling over the image with the full-resolution mask test, full-frame
  ``cv2.seamlessClone``, the shard writer's ``encode_png``.

Accuracy: for the first placements at 1024 px, the mean absolute difference inside the lesion
mask from Pérez et al.'s solution (``exact_poisson_edit``, sparse direct solve), for the DST engine,
the opencv engine and the naive full-frame seamlessClone, with "nothing" (the untouched background)
as the scale.

Backgrounds are a full-size phantom (BI-RADS 1-2) ingested at 1024 px and at 3518 px (long
side; the vendors' aspect ratios give 3518x2800 and 3518x2517 frames, counted in
``background_hw``). Two workloads: one task per background (no reuse) and three tasks per background (e.g.
BI-RADS 3/4/5 of one background). Rounds are interleaved (ours, naive, naive, ours, ...).

Run: python benchmarks/poisson.py [--rounds R]   -> benchmarks/results/poisson.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mammosynth.builders.core.breast_mask import poisson_mask
from mammosynth.builders.core.imageio import as_bit_depth, encode_png, image_size
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.generators import engine
from mammosynth.generators.placement import place
from mammosynth.generators.poisson import PoissonSampler, choose_lesion
from mammosynth.generators.poisson_solver import blend, exact_poisson_edit

BACKGROUND_BIRADS = [1, 2]


def make_spec(prepared: Path, out: Path, per_cell: int) -> ReleaseSpec:
    return ReleaseSpec.model_validate(
        dict(
            name="bench",
            version="1.0",
            pretty_name="bench",
            description="d",
            authors=["a"],
            source=dict(name="phantom", prepared=str(prepared), license="x", redistribution_allowed=False),
            methods={
                "poisson": {
                    "counts": [{"birads": 5, "n": per_cell}],
                    "poisson": {"background_birads": BACKGROUND_BIRADS},
                }
            },
            output_dir=str(out),
        )
    )


def pillow_decode(encoded: dict) -> np.ndarray:
    """The baseline decodes the whole PNG with Pillow, as ``datasets`` does by default."""
    with Image.open(io.BytesIO(encoded["bytes"])) as im:
        arr = np.asarray(im)
    return arr.astype(np.uint16) if arr.dtype.itemsize > 1 else arr.astype(np.uint8)


def naive(sampler: PoissonSampler, tasks: list[engine.SampleTask]) -> tuple[list[bytes], int]:
    out, skipped = [], 0
    p = sampler.params
    for task in tasks:
        bg = sampler.background_for(task)
        img = pillow_decode(sampler.ds[bg.row]["image"])
        breast = poisson_mask(img)
        rng = np.random.default_rng(task.seed)
        lesion = choose_lesion(sampler.pools[task.birads], bg.manufacturer, p, rng)
        crop, mask = sampler.shape_lesion(lesion, rng)
        H, W = img.shape
        lh, lw = mask.shape
        rs = np.random.default_rng(task.mask_seed)
        for _ in range(10_000):  # plain uniform rejection sampling, full-resolution containment check
            y, x = int(rs.integers(0, H - lh)), int(rs.integers(0, W - lw))
            if breast[y : y + lh, x : x + lw][mask].all():
                break
        else:
            skipped += 1
            continue
        src = np.zeros_like(img)
        src[y : y + lh, x : x + lw] = crop
        full = np.zeros_like(img)
        full[y : y + lh, x : x + lw] = mask * 255
        ys, xs = np.nonzero(mask)  # seamlessClone centres the mask's bounding box on ``centre``
        centre = (x + (xs.min() + xs.max() + 1) // 2, y + (ys.min() + ys.max() + 1) // 2)
        flag = cv2.MIXED_CLONE if p.blend == "mixed" else cv2.NORMAL_CLONE
        res = cv2.seamlessClone(cv2.merge([src] * 3), cv2.merge([img] * 3), full, centre, flag)[..., 0]
        out.append(encode_png(as_bit_depth(res, sampler.bit_depth)))
    return out, skipped


def ours(
    spec: ReleaseSpec, tasks: list[engine.SampleTask], workers: int | None = None, **params
) -> tuple[float, int, int]:
    if params:
        spec = spec.model_copy(deep=True)
        spec.methods["poisson"].poisson = spec.methods["poisson"].poisson.model_copy(update=params)
    sampler = PoissonSampler(spec, workers=workers)  # set-up (open the set, load the cached lesion bank) not timed
    t0 = time.perf_counter()
    res = sampler.generate(tasks)
    sampler.close()  # the pool's start and stop are timed too
    dt = time.perf_counter() - t0
    skipped = sum(isinstance(r, engine.Skip) for r in res)
    return dt, len(res) - skipped, skipped


def bench(prepared: Path, work: Path, size: int, tasks_per_bg: int, rounds: int) -> dict:
    probe = PoissonSampler(make_spec(prepared, work / "probe", 1))
    spec = make_spec(prepared, work / "run", tasks_per_bg * max(len(g) for g in probe.backgrounds.values()))
    ref = PoissonSampler(spec)
    # keep, per (view, laterality) cell, k x its backgrounds' count: every background used exactly k times
    tasks = [
        t for t in engine.plan(spec, "poisson") if t.index < tasks_per_bg * len(ref.backgrounds[(t.view, t.laterality)])
    ]
    n_bg = len({ref.background_for(t).image_id for t in tasks})
    ours(spec, tasks[:1])  # warm: lesion bank cache, imports
    t_ours, t_naive, t_one, t_cv = [], [], [], []
    for r in range(rounds):
        for which in ("ours", "naive", "one", "opencv") if r % 2 == 0 else ("opencv", "one", "naive", "ours"):
            if which == "ours":
                dt, rows_ours, skip_ours = ours(spec, tasks)
                t_ours.append(dt)
            elif which == "one":
                t_one.append(ours(spec, tasks, workers=1)[0])
            elif which == "opencv":
                t_cv.append(ours(spec, tasks, engine="opencv")[0])
            else:
                t0 = time.perf_counter()
                outs, skip_naive = naive(ref, tasks)
                t_naive.append(time.perf_counter() - t0)
    to, tn, t1, tc = (float(np.median(t)) for t in (t_ours, t_naive, t_one, t_cv))
    used = {ref.background_for(t).row for t in tasks}
    shapes = Counter("x".join(map(str, image_size(ref.ds[row]["image"])[::-1])) for row in sorted(used))
    return {
        "long_side": size,
        "background_hw": dict(shapes.most_common()),
        "tasks": len(tasks),
        "backgrounds": n_bg,
        "rounds": rounds,
        "workers": ref.workers,
        "ours_rows": rows_ours,
        "ours_skipped": skip_ours,
        "naive_rows": len(outs),
        "naive_skipped": skip_naive,
        "ours_s": t_ours,
        "ours_1_worker_s": t_one,
        "ours_opencv_s": t_cv,
        "naive_s": t_naive,
        "ours_img_per_s": len(tasks) / to,
        "ours_1_worker_img_per_s": len(tasks) / t1,
        "ours_opencv_img_per_s": len(tasks) / tc,
        "naive_img_per_s": len(tasks) / tn,
        "speedup": tn / to,
        "speedup_1_worker": tn / t1,
        "speedup_opencv_engine": tn / tc,
    }


def accuracy(prepared: Path, work: Path, n: int = 8) -> dict:
    """Mean |result - exact| inside the lesion mask, per placement, against Pérez et al.'s solution."""
    sampler = PoissonSampler(make_spec(prepared, work, 3), workers=1)
    errs: dict[str, list[float]] = {"dst": [], "opencv": [], "naive_full_frame": [], "nothing": []}
    for task in engine.plan(sampler.spec, "poisson"):
        if len(errs["dst"]) == n:
            break
        bg = sampler.background_for(task)
        cached = sampler._background(bg, task.view)
        rng = np.random.default_rng(task.seed)
        lesion = choose_lesion(sampler.pools[task.birads], bg.manufacturer, sampler.params, rng)
        crop, mask = sampler.shape_lesion(lesion, rng)
        where = place(cached.info, mask, lesion.context_std, np.random.default_rng(task.mask_seed), sampler.placement)
        if isinstance(where, str):
            continue
        img, (lh, lw), (x, y) = cached.image, crop.shape, (where.x, where.y)
        full_src, full_mask = img.copy(), np.zeros(img.shape, bool)
        full_src[y : y + lh, x : x + lw] = crop
        full_mask[y : y + lh, x : x + lw] = mask
        pad = lh // 3 + lw // 3  # a window around the lesion for the sparse solve
        win = (slice(max(0, y - pad), y + lh + pad), slice(max(0, x - pad), x + lw + pad))
        exact = exact_poisson_edit(full_src[win], img[win], full_mask[win])
        m = full_mask[win]
        for eng in ("dst", "opencv"):
            out, _ = blend(img, crop, mask, x, y, engine=eng)
            errs[eng].append(float(np.abs(out[win] - exact)[m].mean()))
        ys, xs = np.nonzero(mask)
        centre = (x + (xs.min() + xs.max() + 1) // 2, y + (ys.min() + ys.max() + 1) // 2)
        naive_out = cv2.seamlessClone(
            cv2.merge([full_src] * 3), cv2.merge([img] * 3), full_mask.astype(np.uint8) * 255, centre, cv2.NORMAL_CLONE
        )[..., 0]
        errs["naive_full_frame"].append(float(np.abs(naive_out[win] - exact)[m].mean()))
        errs["nothing"].append(float(np.abs(img[win] - exact)[m].mean()))
    return {
        "long_side": 1024,
        "placements": len(errs["dst"]),
        "mean_abs_error_in_mask": errs,
        "median": {k: float(np.median(v)) for k, v in errs.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--studies", type=int, default=12, help="phantom studies (12 give 28 BI-RADS 1-2 backgrounds)")
    args = ap.parse_args()
    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
    from mammosynth.builders.sources.phantom import write_phantom

    results = []
    print(f"{args.studies} phantom studies, {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_phantom(Path(tmp) / "src", args.studies, 7, size_scale=0.5)
        for size in (1024, 3518):
            prepared = ingest_vindr(
                src, Path(tmp) / f"prep{size}", IngestOptions(size=size, bit_depth=8), progress=False
            )
            if size == 1024:
                acc = accuracy(prepared, Path(tmp) / "acc")
                print(
                    f"accuracy vs exact Poisson editing (median mean |error| in the mask): {acc['median']}", flush=True
                )
            for k in (1, 3):
                r = bench(prepared, Path(tmp) / f"w{size}-{k}", size, k, args.rounds)
                results.append(r)
                print(
                    f"{r['background_hw']} {r['tasks']} tasks / {r['backgrounds']} backgrounds: ours {r['ours_img_per_s']:.2f} img/s "
                    f"({r['workers']} workers; 1 worker {r['ours_1_worker_img_per_s']:.2f}), naive {r['naive_img_per_s']:.2f} img/s, "
                    f"x{r['speedup']:.2f} (1 worker x{r['speedup_1_worker']:.2f}; engine opencv x{r['speedup_opencv_engine']:.2f})",
                    flush=True,
                )
    import PIL
    import scipy

    out = {
        "benchmark": "poisson",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pillow": PIL.__version__,
            "isal": metadata.version("isal"),
        },
        "note": "end to end per output image, PNG in -> PNG bytes out, 8-bit; interleaved rounds, medians; speedup = naive time / "
        "ours time for the same tasks. naive is the issue's serial loop (one process; OpenCV may use its 2 threads). ours "
        "is the default configuration (DST engine) with its process pool (workers = CPU count, one OpenCV thread each; "
        "pool start and stop timed); speedup_1_worker is ours in one process without the pool; speedup_opencv_engine is "
        "ours with engine: opencv (seamlessClone on the lesion region) and the pool. The prepared sets come from ingest, "
        "so both paths read block-layout PNGs. accuracy: mean |result - exact| in the lesion mask against Pérez et al.'s "
        "solution (sparse direct solve), 1024 px.",
        "results": results,
        "accuracy": acc,
    }
    path = Path(__file__).parent / "results" / "poisson.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    if "where_the_time_goes" in prev:  # written from the profile, kept across reruns
        out["where_the_time_goes"] = prev["where_the_time_goes"]
    if prev.get("results"):  # earlier runs stay on record, newest first
        keep = (
            "long_side",
            "tasks",
            "backgrounds",
            "speedup",
            "speedup_1_worker",
            "speedup_opencv_engine",
            "ours_img_per_s",
            "naive_img_per_s",
        )
        earlier = {
            "date": prev.get("date"),
            "load_average_at_end": prev.get("load_average_at_end"),
            "results": [{k: r[k] for k in keep if k in r} for r in prev["results"]],
        }
        out["other_runs"] = [earlier, *prev.get("other_runs", [])]
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

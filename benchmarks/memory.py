"""Peak memory of `validate` (and of the card and package steps) against release size.

A release of N 1024-px rows (64-row shards, as `output.shard_size` defaults) is validated in a
fresh process per (size, mode); the process's peak RSS (``getrusage``) is read after the run, and so
is the peak of its analysis workers. Two modes, in the same run:

- ``streaming``: the product as it is: rows stay in their shards and are read a batch at a time;
- ``whole-release``: the baseline, the previous loader's code (``whole_release`` below: every shard
  read with ``pq.read_table``, cast, ``pa.concat_tables``, wrapped in a ``datasets.Dataset``), its
  result held for the whole run as that loader's ``LoadedRelease`` held it.

The claim is the slope, MB of peak RSS per 1k rows (a least-squares fit over the sizes), and the
ratio of the two slopes; absolute seconds on a shared CPU mean little. The card and package steps
are measured the same way, for the release as their commands see it (spec + validated report).

Images: a 256-px synthetic mammogram (`tests/helpers/synthetic.mammogram`) scaled to 1024x820 with
full-resolution sensor noise, so every row is distinct and its PNG is about the size of a real
one (0.34 MB). They are generated once into a temporary folder (or ``--data DIR``, kept and reused:
the images depend only on the row number); smaller releases are the first shards of the largest.

Run: python benchmarks/memory.py [--sizes 1024 2048 4096] [--data DIR]
     -> benchmarks/results/memory-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic data lives in the tests' helpers

SHARD_ROWS = 64  # the spec's default output.shard_size
HEIGHT, WIDTH = 1024, 820
MODES = ("streaming", "whole-release")


# --- the data --------------------------------------------------------------------------------------


def _image(seed: int, laterality: str, view: str) -> np.ndarray:
    import cv2

    from helpers import synthetic as S

    rng = np.random.default_rng(seed)
    small = S.mammogram(rng, HEIGHT // 4, WIDTH // 4, laterality, view).astype(np.float32)
    img = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 1.5, img.shape).astype(np.float32) * (img > 8)  # sensor noise inside the breast
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_shard(args: tuple[Path, int]) -> None:
    from helpers import synthetic as S
    from mammosynth.builders.core.shard_writer import ShardWriter

    out, index = args
    rows = []
    for k in range(index * SHARD_ROWS, (index + 1) * SHARD_ROWS):
        lat, view, birads = "LR"[k % 2], ("CC", "MLO")[(k // 2) % 2], 1 + (k // 4) % 2
        image_id = f"text2image-b{birads}-{view.lower()}-{lat.lower()}-{k:05d}"
        rows.append(S.release_row(_image(k, lat, view), image_id, "text2image", birads, view, lat))
    ShardWriter(out).write(index, rows, [], 0.0)


def make_releases(tmp: Path, shards: Path, sizes: list[int], workers: int) -> dict[int, Path]:
    """Shards for the largest size (those not in ``shards`` yet); each size is a run folder in
    ``tmp`` linking its first shards (and their records)."""
    n_shards = max(sizes) // SHARD_ROWS
    missing = [i for i in range(n_shards) if not (shards / f"shard-{i:05d}.parquet").is_file()]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_shard, [(shards, i) for i in missing]))
    out = {}
    for n in sizes:
        folder = tmp / f"release-{n}"
        method_dir = folder / "generated" / "text2image"
        method_dir.mkdir(parents=True)
        for i in range(n // SHARD_ROWS):
            for suffix in (".parquet", ".json"):
                name = f"shard-{i:05d}{suffix}"
                (method_dir / name).symlink_to(shards / name)
        (folder / "spec.yaml").write_text(_spec_yaml(n, tmp / "reference"))
        out[n] = folder
    return out


def _spec_yaml(n: int, prepared: Path) -> str:
    import yaml

    spec = {
        "name": "memory-benchmark",
        "version": "1.0",
        "pretty_name": "Memory benchmark",
        "description": "Synthetic rows for the memory benchmark.",
        "authors": ["Benchmark"],
        "license": "cc-by-4.0",
        "source": {
            "name": "synthetic",
            "prepared": str(prepared),
            "license": "cc0-1.0",
            "redistribution_allowed": True,
        },
        "methods": {
            "text2image": {
                "counts": [{"birads": [1, 2], "n": n // 8}],
                "text2image": {"base_model": "none", "resolution": HEIGHT},
            }
        },
        "output": {"shard_size": SHARD_ROWS},
        "output_dir": ".",
    }
    return yaml.safe_dump(spec, sort_keys=False)


# --- one measured run (a child process) ------------------------------------------------------------


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def whole_release(release: Path):
    """The previous loader (before rows were streamed), verbatim in what it held: every shard read
    whole, cast to the release features, concatenated, as one in-memory ``datasets.Dataset``."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mammosynth.builders.core.schema import release_features

    features = release_features()
    files = sorted((release / "generated" / "text2image").glob("shard-*.parquet"))
    tables = [pq.read_table(f, columns=list(features)).cast(features.arrow_schema) for f in files]
    return datasets.Dataset(pa.concat_tables(tables)).cast_column("image", datasets.Image(decode=False))


def child(step: str, mode: str, release: Path, reference: Path) -> dict:
    """Run ``step`` on ``release`` in this (fresh) process; peak RSS before and after."""
    from mammosynth.builders.core.spec import load_spec
    from mammosynth.validation import analysis
    from mammosynth.validation.gate import validate_release
    from mammosynth.validation.release_io import load_release

    spec_path = release / "spec.yaml"
    floor = _peak_mb(resource.RUSAGE_SELF)  # after the imports
    held = None
    t = time.perf_counter()
    if step == "validate":
        rel = load_release(release)
        if mode == "whole-release":
            held = whole_release(release)
        report = validate_release(
            rel, reference, report_dir=load_spec(spec_path).layout.validation, progress=False, plots=False
        )
        extra = {"n_rows": report.n_rows, "passed": report.passed}
        pool = analysis.analysis_pool(report.n_rows)
        if pool is not None:
            pool.shutdown()  # its workers' peaks become readable below
    elif step == "card":
        from mammosynth.dataset_cards.commands import card_for_spec

        extra = {"card": card_for_spec(spec_path).name}
    elif step == "package":
        from mammosynth.builders.core.release_data import load_release_data
        from mammosynth.builders.release.package import package

        spec = load_spec(spec_path)
        out = package(
            spec,
            load_release_data(spec),
            card_dir=spec.layout.card,
            report_dir=spec.layout.validation,
            progress=False,
        )
        extra = {"release": out.name}
    else:
        raise SystemExit(f"unknown step {step}")
    seconds = time.perf_counter() - t
    del held
    return {
        "peak_rss_mb": round(_peak_mb(resource.RUSAGE_SELF), 1),
        "rss_after_imports_mb": round(floor, 1),
        "workers_peak_rss_mb": round(_peak_mb(resource.RUSAGE_CHILDREN), 1),
        "seconds": round(seconds, 2),
        **extra,
    }


def measure(step: str, mode: str, release: Path, reference: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", step, mode, str(release), str(reference)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=release)
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": tail}
    return json.loads(run.stdout.strip().splitlines()[-1])


def slope(points: list[tuple[int, float]]) -> float | None:
    """MB of peak RSS per 1k rows: least-squares slope over (rows, MB)."""
    if len(points) < 2:
        return None
    x, y = np.array([p[0] for p in points], float) / 1000, np.array([p[1] for p in points], float)
    return round(float(np.polyfit(x, y, 1)[0]), 2)


def summarise(results: dict[str, dict[str, list[dict]]]) -> tuple[dict, dict, float | None]:
    """Per step and mode: the slope (MB per 1k rows) and the spread of the peaks (max - min, MB);
    the ratio of validate's two slopes. A slope times the sizes' range smaller than the spread is
    noise: the peak does not grow with the release."""
    slopes: dict[str, dict[str, float | None]] = {}
    spread: dict[str, dict[str, float | None]] = {}
    for step, by_mode in results.items():
        for mode, runs in by_mode.items():
            peaks = [(r["rows"], r["peak_rss_mb"]) for r in runs if "peak_rss_mb" in r]
            slopes.setdefault(step, {})[mode] = slope(peaks)
            spread.setdefault(step, {})[mode] = (
                round(max(p for _, p in peaks) - min(p for _, p in peaks), 1) if peaks else None
            )
    v = slopes.get("validate", {})
    ratio = round(v["whole-release"] / v["streaming"], 1) if v.get("streaming") and v.get("whole-release") else None
    return slopes, spread, ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="release rows")
    ap.add_argument("--workers", type=int, default=2, help="processes writing the synthetic shards")
    ap.add_argument("--steps", nargs="+", default=["validate", "card", "package"])
    ap.add_argument("--data", type=Path, default=None, help="folder for the synthetic shards, kept and reused")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="validate modes to run")
    ap.add_argument("--out", type=Path, default=None, help="result file (default results/memory-<date>.json)")
    ap.add_argument("--child", nargs=4, metavar=("STEP", "MODE", "RELEASE", "REFERENCE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, mode, release, reference = args.child
        print(json.dumps(child(step, mode, Path(release), Path(reference))))
        return

    from helpers import synthetic as S

    sizes = sorted({n - n % SHARD_ROWS for n in args.sizes})
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="mammosynth-memory-") as tmp:
        tmp = Path(tmp)
        reference = S.write_reference_set(tmp / "reference", n_studies=10, seed=0)
        t = time.perf_counter()
        shards = args.data.resolve() / "shards" if args.data else tmp / "shards"
        releases = make_releases(tmp, shards, sizes, args.workers)
        data_seconds = time.perf_counter() - t
        release_mb = {
            n: round(sum(f.stat().st_size for f in (r / "generated" / "text2image").glob("*.parquet")) / 1e6, 1)
            for n, r in releases.items()
        }
        for step in args.steps:
            modes = args.modes if step == "validate" else ("streaming",)
            for mode in modes:
                for n in sizes:
                    res = measure(step, mode, releases[n], reference)
                    res["rows"] = n
                    results.setdefault(step, {}).setdefault(mode, []).append(res)
                    print(step, mode, n, res, flush=True)
    slopes, spread, ratio = summarise(results)
    record = {
        "benchmark": "memory",
        "date": started,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {
            p: version(p) for p in ("mammosynth", "pyarrow", "datasets", "huggingface-hub", "numpy", "faiss-cpu")
        },
        "setup": {
            "sizes": sizes,
            "image": f"{WIDTH}x{HEIGHT} 8-bit PNG, distinct per row",
            "shard_rows": SHARD_ROWS,
            "release_mb": release_mb,
            "release_mb_per_1k_rows": slope(list(release_mb.items())),
            "synthetic_data_seconds": round(data_seconds, 1),  # 0-ish when --data held them already
            "measure": "ru_maxrss of a fresh process per (step, mode, size); workers: ru_maxrss of its children",
            "modes": {
                "streaming": "the product: rows read from their shards a batch at a time",
                "whole-release": "baseline: the previous loader (pq.read_table of every shard, cast, "
                "pa.concat_tables, datasets.Dataset) held for the run",
            },
        },
        "results": results,
        "slope_mb_per_1k_rows": slopes,
        "peak_spread_mb": spread,
        "validate_slope_ratio_whole_vs_streaming": ratio,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"memory-{started[:10]}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"slopes": slopes, "ratio": ratio, "written": str(out)}, indent=1))


if __name__ == "__main__":
    main()

"""Ingest throughput: full-size (3518x2800, 16-bit) phantom DICOMs -> 1024-px 16-bit PNG prepared set.

Baseline: the loop a user would write (pydicom read + apply_voi_lut + PIL resize + PNG save, one
process). Ours: `ingest_vindr` with --num-proc 2 (LUT windowing, cv2 INTER_AREA, block-layout PNG
at level 1 deflated with ISA-L), including building the HF dataset. Runs are interleaved (baseline, ours, baseline, ours, ...) so
that load from other users of the shared CPU hits both alike; the ratio of medians is reported.

    .venv/bin/python benchmarks/ingest.py [--studies 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_voi_lut

from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
from mammosynth.builders.sources.phantom import write_phantom


def naive(files: list[Path], out: Path, size: int = 1024) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        ds = pydicom.dcmread(f)
        arr = apply_voi_lut(ds.pixel_array, ds).astype(np.float64)
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = 1 - arr
        img = Image.fromarray((arr * 65535).astype(np.uint16))
        h, w = arr.shape
        s = size / max(h, w)
        img = img.resize((round(w * s), round(h * s)))
        img.save(out / f"{f.stem}.png")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        src = write_phantom(work / "src", args.studies, seed=0, vendors=("SIEMENS",), progress=True)
        files = sorted((src / "images").rglob("*.dicom"))
        n = len(files)
        opts = IngestOptions(size=1024, bit_depth=16, num_proc=args.num_proc)
        base_t, ours_t = [], []
        for i in range(args.repeats):
            t = time.perf_counter()
            naive(files, work / f"naive{i}")
            base_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            ingest_vindr(src, work / f"ours{i}", opts, progress=False)
            ours_t.append(time.perf_counter() - t)
            print(f"repeat {i}: naive {n / base_t[-1]:.2f} img/s, ours {n / ours_t[-1]:.2f} img/s")
        import cv2
        import datasets

        result = {
            "benchmark": "ingest full-size phantom DICOM -> 1024-px 16-bit PNG",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "note": "2 CPU cores shared with other concurrent work; interleaved runs, ratio of medians",
            },
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "pydicom": pydicom.__version__,
                "opencv": cv2.__version__,
                "pillow": Image.__version__,
                "datasets": datasets.__version__,
                "isal": metadata.version("isal"),
            },
            "images": n,
            "image_size": [3518, 2800],
            "repeats": args.repeats,
            "baseline": "pydicom dcmread + apply_voi_lut + PIL resize (bicubic) + PNG save (level 6), 1 process",
            "ours": f"ingest_vindr num_proc={args.num_proc}: LUT windowing, cv2 INTER_AREA, block-layout PNG level 1 (ISA-L), "
            "plus the HF dataset build",
            "baseline_images_per_s": [round(n / t, 3) for t in base_t],
            "ours_images_per_s": [round(n / t, 3) for t in ours_t],
            "speedup": round(statistics.median(base_t) / statistics.median(ours_t), 2),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

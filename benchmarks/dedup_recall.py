"""De-duplication recall and false-positive rate on phantom data, through the real gate.

Release = every perturbation (tests/helpers/synthetic.py: jpeg, shift, noise, contrast, crop, mirror) of
every image of a 12-study phantom (the reference), plus every image of another phantom (seed
4242, other patients: these must pass). Thresholds are the calibrated defaults. A copy counts as
caught when it is flagged as a copy (exact, pHash or embedding) of its own original.

Run: python benchmarks/dedup_recall.py   -> benchmarks/results/dedup_recall.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic data lives in the tests' helpers

from helpers import synthetic as S  # noqa: E402
from mammosynth.builders.core.imageio import decode
from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr
from mammosynth.builders.sources.phantom import write_phantom
from mammosynth.validation.checks import COPY_CHECKS
from mammosynth.validation.gate import validate_release

PERTURBATIONS = (S.jpeg, S.shift, S.noise, S.contrast, S.crop, S.mirror)


def _rows(path: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(path)).cast_column("image", datasets.Image(decode=False))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        opts = IngestOptions(size=256, bit_depth=8)
        ref_path = ingest_vindr(write_phantom(tmp / "src", 12, 7, size_scale=0.125), tmp / "ref", opts, progress=False)
        other_path = ingest_vindr(
            write_phantom(tmp / "osrc", 6, 4242, size_scale=0.125), tmp / "other", opts, progress=False
        )
        ref, other = _rows(ref_path), _rows(other_path)
        rows, targets, clean = [], {}, set()
        for k, r in enumerate(other):
            iid = f"clean-{k}"
            rows.append(
                S.release_row(decode(r["image"]), iid, "text2image", int(r["birads"]), r["view"], r["laterality"])
            )
            clean.add(iid)
        for j, r in enumerate(ref):
            for fn in PERTURBATIONS:
                iid = f"copy{j}-{fn.__name__}"
                rows.append(
                    S.release_row(
                        fn(decode(r["image"])), iid, "text2image", int(r["birads"]), r["view"], r["laterality"]
                    )
                )
                targets[iid] = (r["image_id"], r["view"], fn.__name__)
        rel = S.write_generated(tmp / "rel", {"text2image": rows})
        t0 = time.perf_counter()
        rep = validate_release(rel, ref_path, progress=False, plots=False)
        seconds = time.perf_counter() - t0

    caught, total = Counter(), Counter()
    for iid, (target, view, fn) in targets.items():
        total[(view, fn)] += 1
        hits = [f for f in rep.flagged if f.image_id == iid and f.check in COPY_CHECKS]
        caught[(view, fn)] += bool(hits) and hits[0].nearest_training_id == target
    fp = sorted({f.image_id for f in rep.flagged if f.image_id in clean and f.check in COPY_CHECKS})
    mem = rep.gates["memorization"]
    per = {f"{view} {fn}": f"{caught[(view, fn)]}/{total[(view, fn)]}" for view, fn in sorted(total)}
    out = {
        "benchmark": "dedup_recall",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.platform(),
        "setup": f"reference: 12-study phantom ({len(ref)} images, 256 px); release: {len(targets)} perturbed copies + "
        f"{len(clean)} clean images of another phantom; calibrated thresholds",
        "nn_threshold": mem.nn_threshold,
        "caught": sum(caught.values()),
        "copies": len(targets),
        "per_perturbation": per,
        "false_positives": len(fp),
        "clean_images": len(clean),
        "false_positive_ids": fp,
        "gate_seconds": round(seconds, 2),
    }
    for key, val in per.items():
        print(f"{key:>14}: {val}")
    print(
        f"caught {out['caught']}/{out['copies']}, false positives {len(fp)}/{len(clean)}, threshold {mem.nn_threshold}"
    )
    (Path(__file__).parent / "results" / "dedup_recall.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

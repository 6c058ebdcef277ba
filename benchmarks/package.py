"""Packaging throughput: mammosynth's package writer against datasets' own paths, same rows, same run.

Rows are greyscale PNGs (a smooth breast-like ramp plus noise, so they compress about as badly as
real mammograms: PNG size is an upper bound), 8- or 16-bit, at 1024 px or at full detector size
(2800 x 3518, the VinDr SIEMENS size). Each case writes the same rows four ways, interleaved over
``--repeats`` rounds (medians):

- ``datasets_to_parquet``: ``Dataset.from_dict(rows, features).to_parquet`` (a user's way);
- ``datasets_push_to_hub``: what ``push_to_hub`` does for each shard before uploading it
  (``embed_table_storage`` map, then ``to_parquet`` with its writer batch size), without the upload;
- ``mammosynth``: ``package.write_parquet_shards``: the generated shards streamed one at a time
  through datasets' ``ParquetWriter`` (what the release holds);
- ``pyarrow_same_settings``: ``pyarrow.parquet.ParquetWriter`` given datasets' settings, to see
  whether the library's writer costs anything over plain pyarrow.

Also: ``load_release_data`` (read + hash every row), the layout of the files (row groups, their
largest uncompressed size, page index), and the peak memory of packaging in a fresh process
against the release's size (``--peak`` measures one case only). Writes
``benchmarks/results/package-<px>-<bits>bit.json``.

    python benchmarks/package.py [--cases 1024-8,1024-16,full-8,full-16] [--rows N] [--repeats 3]
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
from importlib.metadata import version
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import config as ds_config
from datasets.arrow_writer import get_parquet_column_options, get_writer_batch_size_from_data_size
from datasets.table import embed_table_storage

from mammosynth.builders.core.imageio import encode_png
from mammosynth.builders.core.release_data import ReleaseData, load_release_data
from mammosynth.builders.core.schema import release_features
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.release.package import write_parquet_shards

FULL = (3518, 2800)  # (height, width) of a VinDr SIEMENS image
SHARD_ROWS = 8  # rows per generated shard (the streaming unit)
MAX_SHARD = 500_000_000


def make_image(rng: np.random.Generator, shape: tuple[int, int], bits: int) -> bytes:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.exp(-((xx / (0.6 * w)) ** 2 + ((yy - h / 2) / (0.5 * h)) ** 2))
    peak = 4000.0 if bits == 16 else 200.0
    img = base * peak + rng.normal(0, peak * 0.03, base.shape)
    return encode_png(np.clip(img, 0, peak * 1.1).astype(np.uint16 if bits == 16 else np.uint8))


def make_rows(n: int, shape: tuple[int, int], bits: int) -> list[dict]:
    rng = np.random.default_rng(0)
    first = make_image(rng, shape, bits)  # noise differs per row only slightly in size: reuse bytes
    rows = []
    for i in range(n):
        data = first if i % 2 else make_image(rng, shape, bits)
        rows.append(
            {
                "image": {"bytes": data, "path": None},
                "image_id": f"text2image-b{i % 5 + 1}-cc-l-{i:05d}",
                "method": "text2image",
                "birads": f"BI-RADS {i % 5 + 1}",
                "view": "CC",
                "laterality": "L",
                "density": "ABCD"[i % 4] if i % 3 else None,
                "bbox": [],
                "seed": i,
                "mask_seed": i,
                "prompt": "p",
                "source_image": None,
                "lesion_source": None,
                "manufacturer": "SIEMENS",
                "generator": "g@sha256:00",
            }
        )
    return rows


class FakeSpec:
    """What ``load_release_data`` reads of a spec: the methods and where their shards are."""

    def __init__(self, root: Path) -> None:
        from mammosynth.builders.core.run_layout import RunLayout

        self.layout = RunLayout(root)
        self.methods = {"text2image": None}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def layout(path: Path) -> dict:
    md = pq.ParquetFile(path).metadata
    return {
        "row_groups": md.num_row_groups,
        "rows_per_group": sorted({md.row_group(g).num_rows for g in range(md.num_row_groups)}),
        "largest_group_mb": round(max(md.row_group(g).total_byte_size for g in range(md.num_row_groups)) / 1e6, 1),
        "page_index": all(md.row_group(0).column(c).has_offset_index for c in range(md.num_columns)),
        "file_mb": round(path.stat().st_size / 1e6, 1),
    }


def pyarrow_same_settings(data: ReleaseData, out: Path) -> None:
    """Plain pyarrow with the settings datasets uses (no datasets writer object)."""
    features = release_features()
    schema = features.arrow_schema
    rows = data.rows["text2image"]
    group = get_writer_batch_size_from_data_size(len(rows.image_sizes), rows.nbytes)
    with pq.ParquetWriter(
        out,
        schema,
        use_content_defined_chunking=ds_config.DEFAULT_CDC_OPTIONS,
        write_page_index=True,
        **get_parquet_column_options(features, schema),
    ) as writer:
        buf: list[pa.Table] = []
        for table in rows.iter_tables():
            buf.append(table.cast(schema))
            if sum(t.num_rows for t in buf) >= group:
                merged = pa.concat_tables(buf)
                writer.write_table(merged.slice(0, group), row_group_size=group)
                buf = [merged.slice(group)]
        if buf and sum(t.num_rows for t in buf):
            writer.write_table(pa.concat_tables(buf), row_group_size=group)


def push_to_hub_files(ds: datasets.Dataset, out: Path) -> None:
    """``Dataset._push_parquet_shards_to_hub`` up to the upload: shards by MAX_SHARD_SIZE, each
    embedded and written with the writer batch size push_to_hub computes."""
    from datasets.arrow_writer import get_writer_batch_size_from_features

    nbytes = ds._estimate_nbytes()
    batch = get_writer_batch_size_from_features(ds.features) or get_writer_batch_size_from_data_size(len(ds), nbytes)
    num_shards = int(nbytes / MAX_SHARD) + 1
    for index in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True).with_format("arrow")
        shard = shard.map(embed_table_storage, batched=True, batch_size=batch, keep_in_memory=True)
        shard.with_format(None).to_parquet(
            str(out / f"train-{index:05d}-of-{num_shards:05d}.parquet"), batch_size=batch
        )


def peak_child(root: Path, out: Path) -> dict:
    """Peak memory (VmHWM; ru_maxrss would carry the parent's over exec) of ``load_release_data`` +
    ``write_parquet_shards`` in a fresh process, above what its imports take."""
    code = (
        "import json, re, sys\nfrom pathlib import Path\nimport pyarrow as pa\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "from package import FakeSpec\n"
        "from mammosynth.builders.core.release_data import load_release_data\n"
        "from mammosynth.builders.release.package import write_parquet_shards\n"
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024\n"
        "base = hwm()\n"
        "data = load_release_data(FakeSpec(Path(sys.argv[1])))\n"
        "loaded = hwm()\n"
        "write_parquet_shards(data, 'text2image', Path(sys.argv[2]), 500_000_000)\n"
        "print(json.dumps({'imports_mb': base, 'load_release_data_mb': loaded - base, "
        "'load_and_write_mb': hwm() - base, 'arrow_pool_peak_mb': pa.default_memory_pool().max_memory() / 1e6}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(root), str(out), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: round(v, 1) for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def grow(writer: ShardWriter, rows: list[dict], times: int) -> None:
    """Write ``rows`` ``times`` more times as new shards (new ids): the release grows, shards do not."""
    n = len(writer.shard_files())
    for t in range(1, times + 1):
        copy = [{**r, "image_id": f"{r['image_id']}-copy{t}"} for r in rows]
        for k in range(0, len(copy), SHARD_ROWS):
            writer.write(n, copy[k : k + SHARD_ROWS], [], 0.0)
            n += 1


def run_case(px: str, bits: int, n: int, repeats: int) -> dict:
    shape = (1024, 1024) if px == "1024" else FULL
    rows = make_rows(n, shape, bits)
    mb = sum(len(r["image"]["bytes"]) for r in rows) / 1e6
    features = release_features()
    out: dict = {"rows": n, "image_px": f"{shape[1]}x{shape[0]}", "bit_depth": bits, "png_mb": round(mb, 1)}
    with tempfile.TemporaryDirectory(prefix="bench-package-") as tmp:
        tmp = Path(tmp)
        writer = ShardWriter(tmp / "run" / "generated" / "text2image")
        for k in range(0, n, SHARD_ROWS):
            writer.write(k // SHARD_ROWS, [dict(r) for r in rows[k : k + SHARD_ROWS]], [], 0.0)
        spec = FakeSpec(tmp / "run")
        load_t = [timed(lambda: load_release_data(spec))]
        data = load_release_data(spec)
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        times: dict[str, list[float]] = {"datasets_to_parquet": [], "datasets_push_to_hub": [], "mammosynth": []}
        times["pyarrow_same_settings"] = []
        for k in range(repeats):
            d = tmp / f"r{k}"
            for name in times:
                (d / name).mkdir(parents=True)
            ds = datasets.Dataset.from_dict(cols, features=features)
            times["datasets_to_parquet"].append(
                timed(
                    lambda d=d: datasets.Dataset.from_dict(cols, features=features).to_parquet(
                        str(d / "datasets_to_parquet" / "train.parquet")
                    )
                )
            )
            times["datasets_push_to_hub"].append(
                timed(lambda d=d, ds=ds: push_to_hub_files(ds, d / "datasets_push_to_hub"))
            )
            times["mammosynth"].append(
                timed(lambda d=d: write_parquet_shards(data, "text2image", d / "mammosynth", MAX_SHARD))
            )
            times["pyarrow_same_settings"].append(
                timed(lambda d=d: pyarrow_same_settings(data, d / "pyarrow_same_settings" / "train.parquet"))
            )
            if k + 1 < repeats:
                for name in times:
                    for f in (d / name).glob("*.parquet"):
                        f.unlink()
            load_t.append(timed(lambda: load_release_data(spec)))
        last = tmp / f"r{repeats - 1}"
        out["layout"] = {name: layout(sorted((last / name).glob("*.parquet"))[0]) for name in times}
        med = {name: float(np.median(v)) for name, v in times.items()}
        out["seconds"] = {name: round(v, 3) for name, v in med.items()}
        out["seconds_each_repeat"] = {name: [round(x, 3) for x in v] for name, v in times.items()}
        out["MBps"] = {name: round(mb / v, 1) for name, v in med.items()}
        out["ratio_mammosynth_vs"] = {
            name: round(v / med["mammosynth"], 2) for name, v in med.items() if name != "mammosynth"
        }
        out["load_release_data_s"] = round(float(np.median(load_t)), 3)
        (last / "mammosynth" / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files: '*.parquet'\n---\n"
        )
        out["load_dataset_s"] = round(
            timed(lambda: datasets.load_dataset(str(last / "mammosynth"), split="train", cache_dir=str(tmp / "c"))), 3
        )
        # where datasets' paths spend their time
        ds = datasets.Dataset.from_dict(cols, features=features)
        out["breakdown_s"] = {
            "from_dict_with_features": round(timed(lambda: datasets.Dataset.from_dict(cols, features=features)), 3),
            "to_parquet_of_that_dataset": round(timed(lambda: ds.to_parquet(str(tmp / "b.parquet"))), 3),
            "embed_table_storage_map": round(
                timed(lambda: ds.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)), 3
            ),
        }
        # peak memory of packaging, by release size: one generated shard is SHARD_ROWS rows
        peaks = {}
        for times in (0, 3):
            grow(writer, rows, times)
            key = f"{n * (times + 1)}_rows_{round(mb * (times + 1))}_mb"
            peaks[key] = peak_child(tmp / "run", tmp / f"peak-{times}")
        out["peak_memory_mb"] = {"generated_shard_mb": round(mb * SHARD_ROWS / n, 1), **peaks}
    return out


def explain(f: dict) -> str:
    """What the figures of one case say, in words (stored beside them)."""
    sec, b, mem = f["seconds"], f["breakdown_s"], f["peak_memory_mb"]
    same = len({json.dumps(v, sort_keys=True) for v in f["layout"].values()}) == 1
    peaks = ", ".join(
        f"{k.replace('_', ' ')}: {v['load_and_write_mb']:.0f} MB" for k, v in mem.items() if isinstance(v, dict)
    )
    return (
        ("All four paths wrote the same file layout" if same else "The paths' file layouts differ")
        + " (row groups capped at datasets.config.MAX_ROW_GROUP_SIZE, page index, PNG bytes uncompressed and "
        "plain-encoded, as datasets.arrow_writer.get_parquet_column_options sets them: datasets does not "
        "snappy-compress PNG bytes). "
        f"from_dict + to_parquet took {sec['datasets_to_parquet']:.2f} s (timed apart, once: building the Dataset "
        f"with the Image feature {b['from_dict_with_features']:.2f} s, writing it {b['to_parquet_of_that_dataset']:.2f} s); "
        f"the push_to_hub path ({sec['datasets_push_to_hub']:.2f} s) runs an embed_table_storage map "
        f"({b['embed_table_storage_map']:.2f} s apart) before to_parquet. mammosynth ({sec['mammosynth']:.2f} s) starts from "
        "the Arrow tables the generator wrote (bytes already embedded) and streams them through datasets' own "
        f"ParquetWriter, {sec['mammosynth'] / sec['pyarrow_same_settings']:.2f}x the time of plain pyarrow with the "
        f"same settings. Packaging memory above imports, by release size: {peaks} (generated shards of "
        f"{mem['generated_shard_mb']:.0f} MB; up to one row group is buffered)."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="1024-8,1024-16,full-8,full-16")
    ap.add_argument("--rows", type=int, default=None, help="rows per case (default: about 300 MB of PNG)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    datasets.disable_progress_bars()
    for case in args.cases.split(","):
        px, bits = case.split("-")
        default_rows = {("1024", "8"): 320, ("1024", "16"): 160, ("full", "8"): 40, ("full", "16"): 20}[(px, bits)]
        figures = run_case(px, int(bits), args.rows or default_rows, args.repeats)
        result = {
            "benchmark": "package",
            "case": case,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            "versions": {p: version(p) for p in ("datasets", "pyarrow", "huggingface_hub", "Pillow")},
            "figures": figures,
            "where_the_time_goes": explain(figures),
            "notes": "CPU only, shared 2-core machine under other work (load average recorded); ratios are "
            "same-run comparisons, medians of interleaved repeats. No GPU figures apply to this stage.",
            "max_rss_of_this_process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        path = Path(__file__).parent / "results" / f"package-{px}-{bits}bit.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(case, json.dumps(figures["seconds"]), json.dumps(figures["ratio_mammosynth_vs"]), flush=True)


if __name__ == "__main__":
    main()

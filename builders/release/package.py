"""Package a release: a Hub-layout folder that is its own git repository.

Layout (design.md §3): ``data/<method>/train-NNNNN-of-NNNNN.parquet`` (embedded PNG bytes, declared
features, shards <= ``output.max_shard_mb``), ``README.md`` (card) and ``croissant.json``,
``validation/`` (the report), ``spec.yaml``, ``checksums.sha256``. The `all` config lists the three
method folders in the card instead of storing the rows twice. The folder is built under a
temporary name, loaded back with ``load_dataset`` (fresh cache) and only then renamed into place,
so a failed round trip never leaves a half-made release behind.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import yaml

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import GateFailed, InputError
from mammosynth.builders.core.hashing import sha256_file
from mammosynth.builders.core.licensing import SOURCES_FILE, source_uses, write_sources
from mammosynth.builders.core.progress import bar as progress_bar
from mammosynth.builders.core.provenance import strip_local_paths
from mammosynth.builders.core.release_data import ReleaseData
from mammosynth.builders.core.run_layout import CANDIDATE_DIR, CARD_FILE, CROISSANT_FILE, REPORT_JSON, REPORT_MD
from mammosynth.builders.core.schema import release_features
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.builders.release.parquet_io import shard_bounds, write_shards

CHECKSUMS = "checksums.sha256"


def write_parquet_shards(data: ReleaseData, method: str, out_dir: Path, max_bytes: int) -> list[Path]:
    """``method``'s rows as ``train-NNNNN-of-NNNNN.parquet`` in ``out_dir``, streamed shard by shard
    through datasets' writer (``parquet_io``); PNG bytes go in as they are."""
    rows = data.rows[method]
    return write_shards(rows.iter_tables(), rows.image_sizes, rows.nbytes, out_dir, max_bytes)


def release_files(folder: Path) -> list[Path]:
    """Files that belong to the release (no git internals, no manifest itself), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(folder).parts and p.name != CHECKSUMS
    )


def _hashed(files: list[Path]) -> Iterator[tuple[Path, str]]:
    """(file, sha256) with a byte-counting bar: hashing a release of many GB takes a while."""
    with progress_bar(desc="checksums", total=sum(p.stat().st_size for p in files), unit="B") as bar:
        for p in files:
            yield p, sha256_file(p)
            bar.update(p.stat().st_size)


def write_checksums(folder: Path) -> Path:
    """`sha256sum -c` compatible manifest of every file in the release."""
    lines = [f"{digest}  {p.relative_to(folder).as_posix()}" for p, digest in _hashed(release_files(folder))]
    path = folder / CHECKSUMS
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def verify_checksums(folder: Path) -> None:
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        raise InputError("release has no checksum manifest", file=manifest)
    listed = {}
    for line in manifest.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    actual = {p.relative_to(folder).as_posix(): p for p in release_files(folder)}
    if set(listed) != set(actual):
        raise InputError(f"files differ from the manifest: {sorted(set(listed) ^ set(actual))[:5]}", file=manifest)
    for p, digest in _hashed([actual[rel] for rel in listed]):
        if listed[p.relative_to(folder).as_posix()] != digest:
            raise InputError("checksum mismatch (file changed after packaging)", file=p)


def git(folder: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "mammosynth",
        "GIT_AUTHOR_EMAIL": "release@mammosynth.invalid",
        "GIT_COMMITTER_NAME": "mammosynth",
        "GIT_COMMITTER_EMAIL": "release@mammosynth.invalid",
    }
    out = subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True, env=env)
    return out.stdout.strip()


def git_commit_release(folder: Path, tag: str, message: str) -> str:
    """One commit holding the whole release and an annotated ``tag`` on it; returns the commit id."""
    if not (folder / ".git").exists():
        git(folder, "-c", "init.defaultBranch=main", "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", message)
    git(folder, "tag", "-a", "-f", tag, "-m", message)
    return git(folder, "rev-parse", "HEAD")


def check_images(data: ReleaseData, *, progress: bool = True) -> int:
    """Decode every row's image before anything is packaged: a truncated or corrupt PNG is refused
    (exit 2, naming the row), whatever validation said. Threads: OpenCV decodes without the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    from mammosynth.builders.core.imageio import UnreadableImage, decode

    def bad(item: tuple[str, bytes]) -> str | None:
        try:
            decode(item[1])
        except UnreadableImage as exc:
            return f"{item[0]}: {exc}"
        return None

    n = 0
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for m in data.methods:
            bar = progress_bar(total=data.num_examples(m), desc=f"check {m} images", unit="img", enabled=progress)
            for table in data.iter_tables(m):  # one generated shard in memory at a time
                ids = table.column("image_id").to_pylist()
                images = table.column("image").combine_chunks().field("bytes").to_pylist()
                for problem in pool.map(bad, zip(ids, images), chunksize=16):
                    if problem is not None:
                        image_id, _, why = problem.partition(": ")
                        raise InputError(
                            f"image does not decode ({why}); regenerate or drop the row", record=image_id, field="image"
                        )
                bar.update(len(ids))
                n += len(ids)
            bar.close()
    return n


def verify_release(
    folder: Path, data: ReleaseData, *, sample: int = 8, seed: int = 0, progress: bool = True
) -> dict[str, int]:
    """Load every config with ``load_dataset`` from a fresh cache and compare with ``data``.

    Checks row counts (the card's split sizes are checked by datasets itself), features and label
    names, and the SHA-256 of a random sample of images per method. Raises GateFailed on mismatch.
    """
    expected = release_features()
    rng = random.Random(seed)
    counts = {}
    with tempfile.TemporaryDirectory(prefix="mammosynth-roundtrip-") as cache:
        for cfg in progress_bar(data.configs, desc="load round trip", unit="config", enabled=progress):
            try:
                ds = datasets.load_dataset(str(folder), cfg, split="train", cache_dir=cache)
            except Exception as exc:  # any loader error means consumers cannot load it either
                raise GateFailed(f"round trip: load_dataset({folder.name!r}, {cfg!r}) failed: {exc}") from exc
            if len(ds) != data.num_examples(cfg):
                raise GateFailed(f"round trip: config {cfg} has {len(ds)} rows, expected {data.num_examples(cfg)}")
            if ds.features != expected:
                raise GateFailed(f"round trip: config {cfg} features differ: {ds.features}")
            for col in ("method", "birads", "view", "laterality", "density"):
                if ds.features[col].names != expected[col].names:
                    raise GateFailed(f"round trip: config {cfg} lost label names of {col}")
            raw = ds.cast_column("image", datasets.Image(decode=False))
            index = {iid: i for i, iid in enumerate(raw["image_id"])}
            for m in data.methods if cfg == "all" else [cfg]:
                hashes = data.image_hashes(m)
                for iid in rng.sample(sorted(hashes), min(sample, len(hashes))):
                    if iid not in index:
                        raise GateFailed(f"round trip: config {cfg} lacks row {iid}")
                    got = hashlib.sha256(raw[index[iid]]["image"]["bytes"]).hexdigest()
                    if got != hashes[iid]:
                        raise GateFailed(f"round trip: config {cfg} row {iid} image bytes differ")
            counts[cfg] = len(ds)
    return counts


def spec_yaml(spec: ReleaseSpec) -> str:
    """The spec as released: local folders reduced to their names (no machine paths in a release)."""
    data = spec.model_dump(mode="json", exclude={"output_dir"})
    data["source"]["prepared"] = Path(data["source"]["prepared"]).name
    for m in data["methods"].values():  # JSON mode turned the BI-RADS keys into strings
        if m.get("inpainting"):
            m["inpainting"]["checkpoints"] = {int(k): v for k, v in m["inpainting"]["checkpoints"].items()}
    return yaml.safe_dump(strip_local_paths(data), sort_keys=False, allow_unicode=True)


def package(
    spec: ReleaseSpec,
    data: ReleaseData,
    *,
    card_dir: Path,
    report_dir: Path | None,
    out: Path | None = None,
    verify: bool = True,
    progress: bool = True,
    candidate_dir: Path | None = None,
) -> Path:
    """Build the release folder ``out`` (default ``<output_dir>/release``) and return it.
    ``report_dir`` is the report of exactly ``data``'s rows; ``candidate_dir``, when rows were
    dropped, the report they were dropped on (its report.json and report.md ship beside it)."""
    out = Path(out) if out else spec.layout.release
    for name in (CARD_FILE, CROISSANT_FILE):
        if not (card_dir / name).is_file():
            raise InputError("card not rendered; run `mammosynth card` first", file=card_dir / name)
    check_images(data, progress=progress)
    # a failure anywhere (including the load_dataset round trip) leaves the previous release intact
    with atomic.atomic_dir(out) as tmp:
        max_bytes = int(spec.output.max_shard_mb * 1_000_000)
        for m in progress_bar(data.methods, desc="package", unit="config", enabled=progress):
            write_parquet_shards(data, m, tmp / "data" / m, max_bytes)
        for name in (CARD_FILE, CROISSANT_FILE):
            shutil.copy2(card_dir / name, tmp / name)
        if report_dir is not None and (report_dir / REPORT_JSON).is_file():
            shutil.copytree(report_dir, tmp / "validation", ignore=shutil.ignore_patterns(".*", "*.tmp*"))
            if candidate_dir is not None:
                (tmp / "validation" / CANDIDATE_DIR).mkdir()
                for name in (REPORT_JSON, REPORT_MD):
                    if (candidate_dir / name).is_file():
                        shutil.copy2(candidate_dir / name, tmp / "validation" / CANDIDATE_DIR / name)
        (tmp / "spec.yaml").write_text(spec_yaml(spec), encoding="utf-8")
        write_sources(tmp / SOURCES_FILE, source_uses(spec, data.tables))
        (tmp / ".gitattributes").write_text("*.parquet binary\n*.png binary\n")
        write_checksums(tmp)
        if verify:
            verify_release(tmp, data, progress=progress)
        git_commit_release(tmp, spec.tag(), f"Release {spec.tag()}: {spec.pretty_name}")
    return out


__all__ = [
    "package",
    "verify_release",
    "write_checksums",
    "verify_checksums",
    "shard_bounds",
    "write_parquet_shards",
    "git",
]

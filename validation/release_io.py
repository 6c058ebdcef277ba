"""Open whatever a user calls a release: a generation output folder, a Hub-layout release folder, a
``save_to_disk`` dataset, or a Hub repo ``ORG/NAME@revision``. One loader, one result type.

The result also says what exactly was loaded (each data file's name, rows, size and sha256, and
each row's image hash), so that a report can name the data it judged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_bytes, sha256_file
from mammosynth.builders.core.run_layout import RunLayout
from mammosynth.builders.core.schema import METHODS, RELEASE_COLUMNS, release_features
from mammosynth.builders.core.shard_writer import SHARD_GLOB
from mammosynth.builders.core.spec import REPO_ID

DataFile = dict[str, Any]  # {"name", "rows", "bytes", "sha256"}; rows None where the format hides it


@dataclass
class LoadedRelease:
    dataset: datasets.Dataset  # release features, ``image`` not decoded ({"bytes", "path"})
    kind: str  # generated | hub-folder | saved | hub
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # generator skips with reasons
    spec_path: Path | None = None
    files: dict[str, list[DataFile]] = field(default_factory=dict)  # method (or config) -> its data files

    @property
    def name(self) -> str:
        """``source`` without the machine's path: a Hub id as given, a folder by its name (with the
        run folder's name in front of ``generated`` and method folders)."""
        return shipped_name(self.source) if self.kind != "hub" else self.source

    def row_hashes(self) -> dict[str, str]:
        """image_id -> sha256 of the row's image bytes ("" for a row without bytes)."""
        out: dict[str, str] = {}
        table = self.dataset.select_columns(["image_id", "image"]).with_format("arrow")
        for batch in table.iter(batch_size=1024):
            images = batch.column("image").combine_chunks().field("bytes").to_pylist()
            for image_id, data in zip(batch.column("image_id").to_pylist(), images):
                out[str(image_id)] = sha256_bytes(data) if data else ""
        return out


def shipped_name(path: str | Path) -> str:
    """A local folder's name, with its parents' names while they are generic (``generated``, a
    method): ``run/generated/text2image``, never the machine's path."""
    p = Path(path).resolve()
    parts = [p.name]
    while parts[0] in ("generated", *METHODS) and p.parent.name:
        p = p.parent
        parts.insert(0, p.name)
    return "/".join(parts)


def data_file(path: Path, record: dict[str, Any] | None = None) -> DataFile:
    """A parquet or arrow file's identity; a shard's record (``ShardWriter``) supplies its rows and
    sha256 when it describes this file (same size), else they are computed."""
    size = path.stat().st_size
    if record and record.get("bytes") == size and isinstance(record.get("sha256"), str) and "rows" in record:
        return {"name": path.name, "rows": record["rows"], "bytes": size, "sha256": record["sha256"]}
    rows = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else None
    return {"name": path.name, "rows": rows, "bytes": size, "sha256": sha256_file(path)}


def load_release(ref: str | Path) -> LoadedRelease:
    """Load ``ref`` as one Dataset with the release features; bad layout or schema -> InputError."""
    text = str(ref)
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise InputError("a release must be a folder or ORG/NAME@revision", file=path)
        return _load_folder(path)
    repo, _, rev = text.partition("@")
    if REPO_ID.match(repo):
        return _load_hub(repo, rev or None, text)
    raise InputError("no such folder, and not a Hub repo id (ORG/NAME[@revision])", file=text)


def _spec_beside(path: Path) -> Path | None:
    p = path / "spec.yaml"
    return p if p.is_file() else None


def _load_folder(path: Path) -> LoadedRelease:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _load_saved(path)
    gen = _generated_shards(path)
    if gen:
        files, skipped, records = gen
        ds = _from_parquet(files)
        listed: dict[str, list[DataFile]] = {}
        for f in files:
            listed.setdefault(f.parent.name, []).append(data_file(f, records.get(f)))
        return LoadedRelease(ds, "generated", str(path), skipped, _spec_beside(path), listed)
    data = path / "data"
    if data.is_dir():
        configs = {p.name: sorted(p.glob("*.parquet")) for p in data.iterdir() if p.is_dir()}
        configs = {k: v for k, v in configs.items() if v}
        # "all" repeats the per-method configs; use it only when they are absent.
        chosen = [f for m in METHODS for f in configs.get(m, [])] or configs.get("all", [])
        if not chosen:
            raise InputError("no parquet files under data/<config>/", file=data)
        ds = _from_parquet(chosen)
        listed = {}
        for f in chosen:
            listed.setdefault(f.parent.name, []).append(data_file(f))
        return LoadedRelease(ds, "hub-folder", str(path), [], _spec_beside(path), listed)
    raise InputError(
        "not a release: expected generated/<method>/shard-*.parquet, data/<config>/*.parquet or a save_to_disk dataset",
        file=path,
    )


def _shard_record(path: Path) -> dict[str, Any]:
    """A shard's statistics record (``ShardWriter``); unreadable or malformed -> InputError."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise InputError(f"unreadable shard statistics: {exc}".splitlines()[0], file=path) from None
    skipped = record.get("skipped") if isinstance(record, dict) else None
    if not isinstance(skipped, list) or not all(
        isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in skipped
    ):
        raise InputError(
            "unreadable shard statistics: expected a list of {image_id, reason}", file=path, field="skipped"
        )
    return record


def _generated_shards(
    path: Path,
) -> tuple[list[Path], list[dict[str, str]], dict[Path, dict[str, Any]]] | None:
    """Shards of ``path`` = <out>/generated/<method>, <out>/generated or <out>, their generator
    skips, and their records."""
    if list(path.glob(SHARD_GLOB)):
        method_dirs = [path]
    else:
        run = RunLayout(path)
        in_run = run.generated().is_dir()  # else ``path`` is the generated folder itself
        candidates = [run.generated(m) if in_run else path / m for m in METHODS]
        method_dirs = [d for d in candidates if list(d.glob(SHARD_GLOB))]
    if not method_dirs:
        return None
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    records: dict[Path, dict[str, Any]] = {}
    for d in method_dirs:
        for shard in sorted(d.glob(SHARD_GLOB)):
            files.append(shard)
            stats = shard.with_suffix(".json")
            if stats.is_file():
                records[shard] = _shard_record(stats)
                skipped.extend(records[shard]["skipped"])
    return files, skipped, records


def _check_columns(names: list[str], where: str | Path) -> None:
    missing = [c for c in RELEASE_COLUMNS if c not in names]
    extra = [c for c in names if c not in RELEASE_COLUMNS]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unexpected {extra}")
        raise InputError("columns do not match the release schema: " + "; ".join(detail), file=where)


def _undecoded(ds: datasets.Dataset, where: str | Path) -> datasets.Dataset:
    _check_columns(list(ds.column_names), where)
    want = release_features()
    for name, feat in want.items():
        have = ds.features[name]
        if name == "image":
            if not isinstance(have, datasets.Image):
                raise InputError(f"expected an Image feature, got {type(have).__name__}", file=where, field="image")
            continue
        if repr(have) != repr(feat):
            raise InputError(f"feature type {have!r} does not match the schema's {feat!r}", file=where, field=name)
    return ds.cast_column("image", datasets.Image(decode=False))


def _from_parquet(files: list[Path]) -> datasets.Dataset:
    """The files' rows as one in-memory Dataset: read by pyarrow (no datasets cache, no progress
    bars), each file cast to the release features."""
    features = release_features()
    tables = []
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"unreadable parquet: {exc}", file=f) from None
        _check_columns(names, f)
        try:
            table = pq.read_table(f, columns=list(features))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"unreadable parquet: {exc}".splitlines()[0], file=f) from None
        try:
            tables.append(table.cast(features.arrow_schema))
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise InputError(f"parquet does not match the release features: {exc}".splitlines()[0], file=f) from None
    return datasets.Dataset(pa.concat_tables(tables)).cast_column("image", datasets.Image(decode=False))


def _load_saved(path: Path) -> LoadedRelease:
    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load the saved dataset: {exc}".splitlines()[0], file=path) from None
    if isinstance(obj, datasets.DatasetDict):
        obj = datasets.concatenate_datasets(list(obj.values()))
    return LoadedRelease(_undecoded(obj, path), "saved", str(path), [], _spec_beside(path), _cache_files(obj, "saved"))


def _cache_files(ds: datasets.Dataset, key: str) -> dict[str, list[DataFile]]:
    """The arrow (or parquet) files behind a loaded dataset."""
    files = sorted({Path(f["filename"]) for f in ds.cache_files})
    return {key: [data_file(f) for f in files]} if files else {}


def _load_hub(repo: str, revision: str | None, text: str) -> LoadedRelease:
    try:
        obj = datasets.load_dataset(repo, revision=revision, split="train")
    except Exception as exc:  # noqa: BLE001 - network, missing repo, bad revision ... one message
        raise InputError(f"cannot load from the Hub: {exc}".splitlines()[0], file=text) from None
    return LoadedRelease(_undecoded(obj, text), "hub", text, [], None, _cache_files(obj, "hub"))

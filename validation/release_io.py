"""Open whatever a user calls a release: a generation output folder, a Hub-layout release folder, a
``save_to_disk`` dataset, or a Hub repo ``ORG/NAME@revision``. One loader, one result type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.run_layout import RunLayout
from mammosynth.builders.core.schema import METHODS, RELEASE_COLUMNS, release_features
from mammosynth.builders.core.shard_writer import SHARD_GLOB
from mammosynth.builders.core.spec import REPO_ID


@dataclass
class LoadedRelease:
    dataset: datasets.Dataset  # release features, ``image`` not decoded ({"bytes", "path"})
    kind: str  # generated | hub-folder | saved | hub
    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # generator skips with reasons
    spec_path: Path | None = None


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
        files, skipped = gen
        return LoadedRelease(_from_parquet(files), "generated", str(path), skipped, _spec_beside(path))
    data = path / "data"
    if data.is_dir():
        configs = {p.name: sorted(p.glob("*.parquet")) for p in data.iterdir() if p.is_dir()}
        configs = {k: v for k, v in configs.items() if v}
        # "all" repeats the per-method configs; use it only when they are absent.
        chosen = [f for m in METHODS for f in configs.get(m, [])] or configs.get("all", [])
        if not chosen:
            raise InputError("no parquet files under data/<config>/", file=data)
        return LoadedRelease(_from_parquet(chosen), "hub-folder", str(path), [], _spec_beside(path))
    raise InputError(
        "not a release: expected generated/<method>/shard-*.parquet, data/<config>/*.parquet or a save_to_disk dataset",
        file=path,
    )


def _generated_shards(path: Path) -> tuple[list[Path], list[dict[str, str]]] | None:
    """Shards of ``path`` = <out>/generated/<method>, <out>/generated or <out>."""
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
    for d in method_dirs:
        for shard in sorted(d.glob(SHARD_GLOB)):
            files.append(shard)
            stats = shard.with_suffix(".json")
            if stats.is_file():
                try:
                    skipped.extend(json.loads(stats.read_text())["skipped"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError("unreadable shard statistics", file=stats, field="skipped") from None
    return files, skipped


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
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"unreadable parquet: {exc}", file=f) from None
        _check_columns(names, f)
    try:
        ds = datasets.concatenate_datasets(
            [datasets.Dataset.from_parquet(str(f), features=release_features(), keep_in_memory=True) for f in files]
        )
    except (ValueError, TypeError) as exc:
        raise InputError(f"parquet does not match the release features: {exc}".splitlines()[0], file=files[0]) from None
    return ds.cast_column("image", datasets.Image(decode=False))


def _load_saved(path: Path) -> LoadedRelease:
    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load the saved dataset: {exc}".splitlines()[0], file=path) from None
    if isinstance(obj, datasets.DatasetDict):
        obj = datasets.concatenate_datasets(list(obj.values()))
    return LoadedRelease(_undecoded(obj, path), "saved", str(path), [], _spec_beside(path))


def _load_hub(repo: str, revision: str | None, text: str) -> LoadedRelease:
    try:
        obj = datasets.load_dataset(repo, revision=revision, split="train")
    except Exception as exc:  # noqa: BLE001 - network, missing repo, bad revision ... one message
        raise InputError(f"cannot load from the Hub: {exc}".splitlines()[0], file=text) from None
    return LoadedRelease(_undecoded(obj, text), "hub", text, [], None)

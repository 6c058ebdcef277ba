"""A packaged release folder as one object: what it holds (spec, validation report, methods,
files), whether it is intact, how to load it and how to publish it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from mammosynth.builders.core.config_io import validate_model
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.licensing import PIXEL_COLUMNS, SOURCES_FILE, SourceUse, embedded_images, read_sources
from mammosynth.builders.core.run_layout import REPORT_JSON
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.builders.release.package import CHECKSUMS, release_files, verify_checksums
from mammosynth.validation.report import ValidationReport

SPEC_FILE = "spec.yaml"
REPORT_DIR = "validation"


class Release:
    """``Release(folder)``: the Hub-layout folder ``mammosynth build`` writes (``data/<config>/``,
    ``README.md``, ``validation/``, ``spec.yaml``, ``checksums.sha256``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"Release({str(self.folder)!r})"

    @cached_property
    def spec(self) -> ReleaseSpec:
        path = self.folder / SPEC_FILE
        if not path.is_file():
            raise InputError("not a release folder (no spec.yaml); run `mammosynth build` first", file=path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", file=path) from None
        if not isinstance(data, dict):
            raise InputError("expected a mapping of spec fields", file=path)
        return validate_model(ReleaseSpec, data, source=path)

    @property
    def report_path(self) -> Path:
        return self.folder / REPORT_DIR / REPORT_JSON

    @cached_property
    def report(self) -> ValidationReport | None:
        """The validation report shipped with the release, or None when there is none."""
        return ValidationReport.read_verified(self.report_path) if self.report_path.is_file() else None

    def row_hashes(self) -> dict[str, str]:
        """image_id -> sha256 of the image bytes, over every parquet file of the release."""
        import hashlib

        import pyarrow.parquet as pq

        out: dict[str, str] = {}
        for path in sorted((self.folder / "data").rglob("*.parquet")):
            # batch by batch: a file may hold up to a shard's worth (500 MB) of images
            for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=["image_id", "image"]):
                images = batch.column("image").field("bytes").to_pylist()
                for image_id, data in zip(batch.column("image_id").to_pylist(), images):
                    out[image_id] = hashlib.sha256(data).hexdigest()
        return out

    @property
    def tag(self) -> str:
        return self.spec.tag()

    @property
    def methods(self) -> list[str]:
        """Methods with at least one parquet shard, sorted."""
        data = self.folder / "data"
        if not data.is_dir():
            return []
        return sorted(p.name for p in data.iterdir() if p.is_dir() and any(p.glob("*.parquet")))

    @cached_property
    def sources(self) -> dict[str, SourceUse]:
        """The terms of every source, with the rows and images that embed its pixels."""
        return read_sources(self.folder / SOURCES_FILE)

    def embedded_images(self) -> dict[str, str]:
        """Source image id -> the first row embedding it, over every parquet file of the release
        (read from the rows themselves, whatever the folders are called)."""
        import pyarrow.parquet as pq

        out: dict[str, str] = {}
        for path in sorted((self.folder / "data").rglob("*.parquet")):
            table = pq.read_table(path, columns=["image_id", *PIXEL_COLUMNS]).to_pylist()
            for row in table:
                for used in embedded_images(row):
                    out.setdefault(used, row["image_id"])
        return out

    def restricted_sources(self) -> dict[str, SourceUse]:
        """Sources whose terms forbid redistribution although rows embed their pixels; an
        embedded image that ``sources.json`` does not list is an error (never a pass)."""
        listed = {image: name for name, use in self.sources.items() for image in use.images}
        blocked = {}
        for image, row in self.embedded_images().items():
            if image not in listed:
                raise InputError(
                    f"embeds image {image!r}, which {SOURCES_FILE} does not list; package it again",
                    file=self.folder / SOURCES_FILE,
                    record=row,
                    field="source_image",
                )
            use = self.sources[listed[image]]
            if not use.licence.redistribution_allowed:
                blocked[listed[image]] = use
        return blocked

    def files(self) -> list[str]:
        """Every file a push uploads, relative to the folder (the manifest included)."""
        return [p.relative_to(self.folder).as_posix() for p in release_files(self.folder)] + [CHECKSUMS]

    def verify(self) -> None:
        """Raise InputError when a file changed, appeared or went missing since packaging."""
        verify_checksums(self.folder)

    def load(self, config: str = "all", split: str = "train", **kwargs: Any):
        """The release as a consumer sees it: ``datasets.load_dataset(folder, config)``."""
        import datasets

        return datasets.load_dataset(str(self.folder), config, split=split, **kwargs)

    def publish(self, repo_id: str, **kwargs: Any):
        """Push to the Hub and tag it (see ``publish.publish`` for the refusals and options)."""
        from mammosynth.builders.release.publish import publish

        return publish(self.folder, repo_id, **kwargs)


__all__ = ["Release", "SPEC_FILE"]

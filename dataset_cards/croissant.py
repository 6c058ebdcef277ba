"""Croissant (ML Commons) metadata for a release, built and validated offline with mlcroissant.

The Hub only generates Croissant for public repos it can convert, so private and gated releases
ship their own. One FileSet per config points at its parquet shards; one RecordSet per config
describes the columns.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import datasets
import mlcroissant as mlc

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.release_data import ReleaseData
from mammosynth.builders.core.schema import release_features
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.dataset_cards.card import COLUMN_MEANINGS
from mammosynth.dataset_cards.citations import SOURCE_PAPERS


def _data_type(feature: Any) -> Any:
    if isinstance(feature, datasets.Image):
        return mlc.DataType.IMAGE_OBJECT
    if isinstance(feature, datasets.ClassLabel):
        return mlc.DataType.INTEGER
    if isinstance(feature, datasets.Value):
        return mlc.DataType.INTEGER if feature.dtype.startswith("int") else mlc.DataType.TEXT
    return mlc.DataType.FLOAT


def croissant_metadata(spec: ReleaseSpec, data: ReleaseData) -> dict[str, Any]:
    url = f"https://huggingface.co/datasets/{spec.hub.repo_id}" if spec.hub.repo_id else None
    repo = mlc.FileObject(
        id="repo",
        name="repo",
        description="The release's git repository.",
        content_url=url or f"{spec.name}-{spec.version}",
        encoding_formats=["git+https"],
        sha256="https://github.com/mlcommons/croissant/issues/80",
    )
    distribution: list[Any] = [repo]
    record_sets = []
    for cfg in data.configs:
        members = data.methods if cfg == "all" else [cfg]
        distribution.append(
            mlc.FileSet(
                id=f"parquet-files-for-config-{cfg}",
                name=f"parquet-files-for-config-{cfg}",
                contained_in=["repo"],
                encoding_formats=["application/x-parquet"],
                includes=[f"data/{m}/*.parquet" for m in members],
            )
        )
        fields = []
        for name, feature in release_features().items():
            extract = mlc.Extract(column=name)
            fields.append(
                mlc.Field(
                    id=f"{cfg}/{name}",
                    name=name,
                    description=COLUMN_MEANINGS[name],
                    data_types=[_data_type(feature)],
                    source=mlc.Source(file_set=f"parquet-files-for-config-{cfg}", extract=extract),
                    is_array=True if name == "bbox" else None,
                    array_shape="-1,4" if name == "bbox" else None,
                )
            )
        record_sets.append(mlc.RecordSet(id=cfg, name=cfg, description=f"{data.num_examples(cfg)} rows", fields=fields))
    meta = mlc.Metadata(
        name=spec.pretty_name,
        description=spec.description.strip(),
        license=[spec.license],
        url=url,
        version=spec.version if spec.version.count(".") == 2 else f"{spec.version}.0",
        keywords=["medical", "mammography", "synthetic", *spec.hub.tags],
        creators=[mlc.Person(name=a) for a in spec.authors],
        cite_as=SOURCE_PAPERS["methods"],
        date_published=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
        distribution=distribution,
        record_sets=record_sets,
        data_use_cases=["Research on mammography AI; not for clinical diagnosis."],
        personal_sensitive_information=[
            "Inpainting and Poisson rows embed real pixels of the source dataset; ids are pseudonymous."
        ],
    )
    return meta.to_json()


def validate_croissant(path: Path) -> None:
    """Parse the file back with mlcroissant; structural errors become an InputError."""
    try:
        mlc.Dataset(jsonld=str(path))
    except mlc.ValidationError as exc:
        raise InputError(f"invalid Croissant metadata: {str(exc).splitlines()[0]}", file=path) from None


def write_croissant(spec: ReleaseSpec, data: ReleaseData, path: Path) -> Path:
    path.write_text(json.dumps(croissant_metadata(spec, data), indent=1, default=str), encoding="utf-8")
    validate_croissant(path)
    return path

"""Croissant (ML Commons) metadata for a release, built and validated offline with mlcroissant.

The Hub only generates Croissant for public repos it can convert, so private and gated releases
ship their own, in the Hub's own shape: one FileSet per config over its parquet shards, one
RecordSet per config, the image field read from the ``bytes`` of the stored struct (as the Hub's
Croissant does). Each ClassLabel column is an integer field that ``references`` an enumeration
RecordSet (``<column>_names``: index -> name, inline), so a reader maps ``birads`` 4 to "BI-RADS 5".

Reading records locally: ``mlcroissant.Dataset(jsonld=croissant.json, mapping={"repo": folder})``.
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
from mammosynth.dataset_cards.citations import release_bibtex, release_url

REPO = "repo"  # the FileObject standing for the release's git repository (``mapping`` key)


def names_record_set(column: str) -> str:
    """Id of the enumeration RecordSet holding ``column``'s ClassLabel names."""
    return f"{column}_names"


def _data_type(feature: Any) -> Any:
    if isinstance(feature, datasets.Image):
        return mlc.DataType.IMAGE_OBJECT
    if isinstance(feature, datasets.ClassLabel):
        return mlc.DataType.INTEGER
    if isinstance(feature, datasets.Value):
        return mlc.DataType.INTEGER if feature.dtype.startswith("int") else mlc.DataType.TEXT
    return mlc.DataType.FLOAT


def _enumeration(column: str, names: list[str]) -> mlc.RecordSet:
    rs = names_record_set(column)
    return mlc.RecordSet(
        id=rs,
        name=rs,
        description=f"Names of the `{column}` ClassLabel: the column holds the index.",
        is_enumeration=True,
        key=[f"{rs}/index"],
        fields=[
            mlc.Field(id=f"{rs}/index", name="index", data_types=[mlc.DataType.INTEGER]),
            mlc.Field(id=f"{rs}/name", name="name", data_types=[mlc.DataType.TEXT]),
        ],
        data=[{f"{rs}/index": i, f"{rs}/name": n} for i, n in enumerate(names)],
    )


def _field(cfg: str, name: str, feature: Any) -> mlc.Field:
    file_set = f"parquet-files-for-config-{cfg}"
    description = COLUMN_MEANINGS[name]
    # the parquet column holds datasets' {"bytes", "path"} struct: the image is its bytes
    transforms = [mlc.Transform(json_path="bytes")] if isinstance(feature, datasets.Image) else []
    references = mlc.Source()
    if isinstance(feature, datasets.ClassLabel):
        description += "; ClassLabel index: " + ", ".join(f"{i} = {n}" for i, n in enumerate(feature.names))
        references = mlc.Source(field=f"{names_record_set(name)}/index")
    return mlc.Field(
        id=f"{cfg}/{name}",
        name=name,
        description=description,
        data_types=[_data_type(feature)],
        source=mlc.Source(file_set=file_set, extract=mlc.Extract(column=name), transforms=transforms),
        references=references,
        is_array=True if name == "bbox" else None,
        array_shape="-1,4" if name == "bbox" else None,
    )


def croissant_metadata(spec: ReleaseSpec, data: ReleaseData) -> dict[str, Any]:
    url = release_url(spec.hub.repo_id)
    features = release_features()
    repo = mlc.FileObject(
        id=REPO,
        name=REPO,
        description="The release's git repository at its tag.",
        # a Hub URL pins the tag (mlcroissant clones it and fetches the ref); a local release is
        # the folder this file lies in
        content_url=f"{url}/tree/refs%2Ftags%2F{spec.tag()}" if url else ".",
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
                contained_in=[REPO],
                encoding_formats=["application/x-parquet"],
                includes=[f"data/{m}/*.parquet" for m in members],
            )
        )
        fields = [_field(cfg, name, feature) for name, feature in features.items()]
        record_sets.append(mlc.RecordSet(id=cfg, name=cfg, description=f"{data.num_examples(cfg)} rows", fields=fields))
    record_sets += [_enumeration(k, f.names) for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    meta = mlc.Metadata(
        name=spec.pretty_name,
        description=spec.description.strip(),
        license=[spec.license],
        url=url,
        version=spec.version if spec.version.count(".") == 2 else f"{spec.version}.0",
        keywords=["medical", "mammography", "synthetic", *spec.hub.tags],
        creators=[mlc.Person(name=a, email=spec.contact if k == 0 else None) for k, a in enumerate(spec.authors)],
        cite_as=release_bibtex(spec),
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


__all__ = ["croissant_metadata", "validate_croissant", "write_croissant", "names_record_set", "REPO"]

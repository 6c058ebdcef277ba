"""The release spec: one YAML file that says what a release contains, how it is made, checked and
published. Validated on load; every error names the field."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from mammosynth.builders.core.config_io import StrictModel, load_model
from mammosynth.builders.core.run_layout import RunLayout
from mammosynth.builders.core.schema import (
    DENSITIES,
    LATERALITIES,
    METHODS,
    VIEWS,
    BiradsInt,
    Density,
    Laterality,
    View,
)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?$")


class CountRow(StrictModel):
    """``n`` images for every combination of the listed BI-RADS, views and lateralities."""

    birads: BiradsInt | list[BiradsInt]
    view: View | list[View] = list(VIEWS)
    laterality: Laterality | list[Laterality] = list(LATERALITIES)
    n: int = Field(ge=0, description="images per (BI-RADS, view, laterality) cell")

    def cells(self) -> list[tuple[int, str, str]]:
        as_list = lambda v: v if isinstance(v, list) else [v]  # noqa: E731
        return list(itertools.product(as_list(self.birads), as_list(self.view), as_list(self.laterality)))


class Text2ImageParams(StrictModel):
    base_model: str = Field(description="hub id or local path of the SD3.5 pipeline")
    lora: str | None = Field(None, description="LoRA adapter folder from `mammosynth train sd35-lora`")
    steps: int = Field(28, ge=1)
    guidance: float = Field(7.0, ge=0)
    scheduler: Literal["flow-euler", "flow-dpm++"] = "flow-euler"
    negative_prompt: str | None = None
    resolution: int = Field(1024, ge=64)
    densities: list[Density] = Field(default_factory=lambda: list(DENSITIES), min_length=1)
    vendor_in_prompt: str | None = None
    batch_size: int = Field(4, ge=1)
    fuse_qkv: bool = Field(
        False, description="fuse each attention's Q, K and V projections into one matrix product (speed)"
    )
    compile_blocks: bool = Field(
        False,
        description="torch.compile the transformer blocks (regional compilation: seconds to compile, faster steps)",
    )
    fp8: bool = Field(
        False, description="fp8 matrix products in the transformer blocks (torchao; GPUs of compute capability 8.9+)"
    )
    max_sequence_length: int = Field(
        77,
        ge=8,
        le=512,
        description="T5 prompt tokens; what `mammosynth train sd35-lora` trained with (its default: 77)",
    )


class InpaintingParams(StrictModel):
    checkpoints: dict[BiradsInt, str] = Field(description="BI-RADS class -> inpainting pipeline folder")
    steps: int = Field(24, ge=1)
    guidance: float = Field(7.0, ge=0)
    resolution: int = Field(1024, ge=64)
    background_birads: list[BiradsInt] = [1]
    erosion_px: int = Field(5, ge=0)
    margin_px: int = Field(24, ge=0)
    max_tries: int = Field(200, ge=1)
    batch_size: int = Field(4, ge=1)
    mode: Literal["full_frame", "window"] = Field(
        "full_frame",
        description="full_frame (the paper): the model denoises the whole background at `resolution`; window: "
        "only a `window`-pixel square around the box, cut from the background at output resolution (same-shape "
        "windows batch and compile; pixels outside the box are the background's either way)",
    )
    window: int = Field(
        512,
        ge=16,
        description="side of the denoised square in mode window (output pixels; a multiple of 8, at most resolution)",
    )


class PoissonParams(StrictModel):
    lesion_birads: list[BiradsInt] = [5]
    background_birads: list[BiradsInt] = [1]
    manufacturer_policy: Literal["same", "any"] = "same"
    fallback: Literal["any", "skip"] = "any"
    blend: Literal["normal", "mixed"] = "normal"
    engine: Literal["dst", "opencv"] = Field(
        "dst",
        description="Poisson solver on the lesion region: dst (discrete-sine-transform solve on the lesion's box "
        "plus the band; 8- and 16-bit) or opencv (cv2.seamlessClone on the lesion's box; 8-bit only, slower)",
    )
    scale: tuple[float, float] = Field((0.9, 1.1), description="random scale factor range (low, high) of each lesion")
    realistic_size: bool = Field(
        True,
        description="keep each scaled lesion's size (equivalent diameter) within the range of the lesion bank's "
        "lesions of its BI-RADS class: a scale never makes a lesion smaller or larger than a real one",
    )
    rotate: bool = True
    flip: bool = True
    max_tries: int = Field(500, ge=1)
    workers: int | None = Field(
        None,
        ge=1,
        description="processes blending backgrounds in parallel (default: the CPU count); the images do not depend on it",
    )

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {v}")
        return v


class MethodSpec(StrictModel):
    counts: list[CountRow] = Field(min_length=1)
    total: int | None = Field(None, ge=0, description="optional check: the counts must add up to this")
    text2image: Text2ImageParams | None = None
    inpainting: InpaintingParams | None = None
    poisson: PoissonParams | None = None


class SourceSpec(StrictModel):
    name: str
    prepared: Path = Field(description="prepared training set (`mammosynth ingest` output)")
    license: str
    redistribution_allowed: bool = Field(description="may pixels of this source be published?")
    citation: str | None = Field(None, description="BibTeX")
    url: str | None = None


class OutputSpec(StrictModel):
    bit_depth: Literal[8, 16] = 8
    shard_size: int = Field(64, ge=1, description="rows per generation shard")
    max_shard_mb: float = Field(500, gt=0, le=500, description="upper bound of a released parquet shard")


class HubSpec(StrictModel):
    repo_id: str | None = None
    visibility: Literal["public", "private", "gated"] = "private"
    gated_prompt: str | None = None
    tags: list[str] = []
    task_categories: list[str] = ["image-classification", "object-detection", "text-to-image"]

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None and not REPO_ID.match(v):
            raise ValueError(f"malformed repo id {v!r}; expected ORG/NAME")
        return v


class ReleaseSpec(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: str
    pretty_name: str
    description: str
    authors: list[str] = Field(min_length=1)
    contact: str | None = None
    license: str = "cc-by-nc-4.0"
    source: SourceSpec
    methods: dict[Literal["text2image", "inpainting", "poisson"], MethodSpec] = Field(min_length=1)
    output: OutputSpec = OutputSpec()
    validation: dict[str, Any] = Field(default_factory=dict, description="threshold overrides")
    hub: HubSpec = HubSpec()
    output_dir: Path | None = Field(None, description="default: releases/<name>-<version> beside the spec")
    previous_release: str | None = Field(None, description="folder or ORG/NAME@rev of the previous version")
    changes: str | None = Field(None, description="what changed since the previous version")
    citations: list[str] = Field(default_factory=list, description="extra BibTeX entries for the card")
    reader_study: Path | None = Field(
        None, description="a scored reader study (`mammosynth reader-study score --out DIR`) shown in the card"
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not VERSION.match(v):
            raise ValueError(f"version must look like 1.0 or 1.0.2, got {v!r}")
        return v

    @model_validator(mode="after")
    def _params_present(self) -> "ReleaseSpec":
        for method, m in self.methods.items():
            if getattr(m, method) is None and method != "poisson":
                raise ValueError(f"methods.{method}.{method}: parameters are required")
            if method == "poisson" and m.poisson is None:
                m.poisson = PoissonParams()
            for other in METHODS:
                if other != method and getattr(m, other) is not None:
                    raise ValueError(f"methods.{method}.{other}: parameters of another method")
        for method, m in self.methods.items():
            total = sum(row.n * len(row.cells()) for row in m.counts)
            if m.total is not None and m.total != total:
                raise ValueError(f"methods.{method}.total: counts add up to {total}, not {m.total}")
            if method == "inpainting" and m.inpainting is not None:
                wanted = sorted({b for row in m.counts if row.n for b, _, _ in row.cells()})
                missing = [b for b in wanted if b not in m.inpainting.checkpoints]
                if missing:
                    raise ValueError(f"methods.inpainting.inpainting.checkpoints: no checkpoint for BI-RADS {missing}")
            if method == "poisson" and m.poisson is not None:
                bad = sorted({b for row in m.counts if row.n for b, _, _ in row.cells()} - set(m.poisson.lesion_birads))
                if bad:
                    raise ValueError(
                        f"methods.poisson.counts: BI-RADS {bad} not in poisson.lesion_birads {m.poisson.lesion_birads}"
                    )
        if self.hub.visibility == "gated" and not self.hub.gated_prompt:
            raise ValueError("hub.gated_prompt is required when visibility is gated")
        return self

    # derived ------------------------------------------------------------------------------------

    def cell_counts(self, method: str) -> dict[tuple[int, str, str], int]:
        """(birads, view, laterality) -> number of images requested for ``method``."""
        counts: dict[tuple[int, str, str], int] = {}
        for row in self.methods[method].counts:
            for cell in row.cells():
                counts[cell] = counts.get(cell, 0) + row.n
        return counts

    def total(self, method: str | None = None) -> int:
        methods = [method] if method else list(self.methods)
        return sum(sum(self.cell_counts(m).values()) for m in methods)

    def tag(self) -> str:
        return f"v{self.version}"

    @property
    def layout(self) -> RunLayout:
        """The run's folders (generated, validation, card, release, stages, cache)."""
        if self.output_dir is None:
            raise ValueError("output_dir is unset: load the spec with load_spec()")
        return RunLayout(Path(self.output_dir))

    def local_checkpoints(self) -> dict[str, str]:
        """Checkpoint references that name local folders (field -> path); hub ids are not included."""
        refs: dict[str, str] = {}
        for method, m in self.methods.items():
            if m.text2image:
                refs[f"methods.{method}.text2image.base_model"] = m.text2image.base_model
                if m.text2image.lora:
                    refs[f"methods.{method}.text2image.lora"] = m.text2image.lora
            if m.inpainting:
                for b, p in m.inpainting.checkpoints.items():
                    refs[f"methods.{method}.inpainting.checkpoints.{b}"] = p
        return {k: v for k, v in refs.items() if _looks_local(v)}


def load_spec(path: str | Path) -> ReleaseSpec:
    """Load a release spec; relative paths in it are resolved against the spec's folder."""
    path = Path(path)
    spec = load_model(ReleaseSpec, path)
    base = path.resolve().parent
    if not spec.source.prepared.is_absolute():
        spec.source.prepared = base / spec.source.prepared
    if spec.reader_study is not None and not spec.reader_study.is_absolute():
        spec.reader_study = base / spec.reader_study
    if spec.output_dir is None:
        spec.output_dir = base / "releases" / f"{spec.name}-{spec.version}"
    elif not spec.output_dir.is_absolute():
        spec.output_dir = base / spec.output_dir
    for m in spec.methods.values():
        if m.text2image:
            m.text2image.base_model = _resolve(base, m.text2image.base_model)
            if m.text2image.lora:
                m.text2image.lora = _resolve(base, m.text2image.lora)
        if m.inpainting:
            m.inpainting.checkpoints = {b: _resolve(base, p) for b, p in m.inpainting.checkpoints.items()}
    return spec


def _looks_local(ref: str) -> bool:
    """Absolute, ./ or ../ paths, or anything that is not ORG/NAME, is a local folder."""
    return ref.startswith((".", "/", "~")) or not REPO_ID.match(ref)


def _resolve(base: Path, ref: str) -> str:
    """A relative reference that exists beside the spec becomes absolute; hub ids stay as they are."""
    candidate = base / ref
    return str(candidate) if not Path(ref).is_absolute() and candidate.exists() else ref


__all__ = ["CountRow", "ReleaseSpec", "load_spec", "pydantic"]

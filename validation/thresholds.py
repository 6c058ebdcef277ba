"""Validation thresholds: one pydantic model, loaded from YAML/JSON (``--config``) or from the
release spec's ``validation:`` mapping. Unknown keys and bad values are field-level errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from mammosynth.builders.core.config_io import StrictModel, load_model, validate_model
from mammosynth.validation.feature_extractor import RealismConfig


class EffectLimits(StrictModel):
    """Warn/fail limits on an effect size measured *above* the reference's bootstrap noise floor."""

    warn: float = Field(0.05, ge=0)
    fail: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "EffectLimits":
        if self.fail < self.warn:
            raise ValueError(f"fail ({self.fail}) must be >= warn ({self.warn})")
        return self

    def status(self, excess: float) -> str:
        if excess > self.fail:
            return "fail"
        if excess > self.warn:
            return "warn"
        return "pass"


class SanityThresholds(StrictModel):
    min_area_fraction: float = Field(0.02, ge=0, le=1, description="below this no breast is present")
    area_percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="reference percentiles bounding the breast-area fraction per view"
    )
    area_margin: float = Field(
        0.25, ge=0, description="the percentile range is widened by this share of its width on each side"
    )
    area_min_pad: float = Field(
        0.05, ge=0, le=1, description="... and by at least this much (small references give narrow ranges)"
    )
    blank_std: float = Field(0.01, ge=0, description="image std (0..1 units) below this is blank")
    saturated_fraction: float = Field(
        0.5, ge=0, le=1, description="fraction of pixels at the maximum value above which the image is saturated"
    )
    max_background_ratio: float = Field(
        0.4,
        ge=0,
        le=1,
        description="median background / median breast intensity (square-root units) above which the image has "
        "no breast silhouette on dark air (references: <= 0.2; noise textures: >= 0.6)",
    )
    lesion_max_outlier_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="inpainting rows: share of box pixels below the breast's 1st or above its 99.9th intensity "
        "percentile (black holes, saturated noise) allowed in each box",
    )
    lesion_mean_slack: float = Field(
        0.05, ge=0, description="... and the box mean may lie this far (share of [p1, p99.9]) outside that range"
    )
    bbox_min_inside_mask: float = Field(0.5, ge=0, le=1, description="share of each box that must lie in the breast")
    bbox_edge_tolerance_px: float = Field(1.0, ge=0, description="boxes may exceed the image by this much")


class DedupThresholds(StrictModel):
    phash_radius: int | None = Field(
        None, ge=0, le=256, description="Hamming radius of the 256-bit pHash; None = calibrated from the reference"
    )
    phash_radius_default: int = Field(24, ge=0, le=256, description="upper bound on the calibrated radius")
    nn_distance: float | None = Field(
        None, ge=0, description="embedding L2 distance below which two images match; None = calibrated"
    )
    calibration_quantile: float = Field(
        0.01, gt=0, lt=1, description="quantile of real other-patient nearest-neighbour distances"
    )
    calibration_factor: float = Field(0.5, gt=0, le=1, description="match when closer than factor x that quantile")
    nn_distance_max: float = Field(0.35, gt=0, description="ceiling on the calibrated embedding distance")
    embed_size: int = Field(32, ge=8, le=256, description="side of the normalized breast crop embedding")
    background_max_mad: float = Field(
        0.02, ge=0, description="mean |difference| (0..1) allowed outside the lesion boxes vs source_image"
    )
    background_box_margin: float = Field(
        0.1, ge=0, description="box margin (fraction of box size) excluded from the background comparison"
    )
    within_release: bool = True
    geometric_verification: bool = Field(
        True,
        description="re-score near training candidates by keypoint matching (ORB + RANSAC): catches cropped, "
        "zoomed, rotated, stretched and re-windowed copies the embedding distance misses",
    )
    geometric_min_inliers: int = Field(
        25,
        ge=4,
        description="RANSAC inliers from which a candidate is a copy (measured: copies >= 46, other patients <= 8)",
    )
    geometric_candidates: int = Field(2, ge=1, le=4, description="nearest training candidates verified per image")
    geometric_bound_factor: float = Field(
        4.0, gt=0, description="candidates verified when closer than this factor x the embedding threshold"
    )


class CanaryThresholds(StrictModel):
    """The canary self-test: planted copies of reference images run through the memorization check."""

    images: int = Field(6, ge=1, description="reference images drawn (seeded) and perturbed")
    perturbations: list[str] | None = Field(
        None, description="names of the perturbations planted (validation/perturbations.py); None = all"
    )
    held_out_patients: int = Field(
        8, ge=1, description="patients held out of the index whose real images must not be flagged"
    )
    held_out_images: int = Field(16, ge=1, description="at most this many of their images are queried")
    min_recall: float = Field(0.95, ge=0, le=1, description="the gate fails when fewer planted copies are caught")
    max_false_positive_rate: float = Field(
        0.01, ge=0, le=1, description="the gate fails when more held-out real images are flagged"
    )

    @field_validator("perturbations")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        from mammosynth.validation.perturbations import PERTURBATIONS  # OpenCV: only when named

        if names is None:
            return None
        unknown = sorted(set(names) - set(PERTURBATIONS))
        if unknown:
            raise ValueError(f"unknown perturbation(s) {unknown}; known: {list(PERTURBATIONS)}")
        if not names:
            raise ValueError("name at least one perturbation (or leave it unset for all)")
        return names


class StatsThresholds(StrictModel):
    categorical: EffectLimits = EffectLimits()
    categorical_gated: list[str] = Field(
        default_factory=lambda: ["density"],
        description="columns whose shares vs the reference gate the release (the spec fixes the others)",
    )
    box_size: EffectLimits = EffectLimits()
    intensity: EffectLimits = EffectLimits()
    area: EffectLimits = EffectLimits()
    drift: EffectLimits = EffectLimits()
    diversity_msssim: EffectLimits = Field(
        default_factory=lambda: EffectLimits(warn=0.8, fail=0.95),
        description="mean MS-SSIM within prompt groups (higher = less diverse)",
    )
    bootstrap: int = Field(50, ge=2, description="bootstrap repeats for the reference noise floor")
    histogram_bins: int = Field(64, ge=8, le=1024)
    msssim_size: int = Field(192, ge=161, description="side images are resized to for MS-SSIM")
    msssim_max_pairs: int = Field(32, ge=1, description="pairs sampled per prompt group")


class Thresholds(StrictModel):
    """Every number the validation gate uses. Defaults follow design.md §7."""

    sanity: SanityThresholds = SanityThresholds()
    dedup: DedupThresholds = DedupThresholds()
    stats: StatsThresholds = StatsThresholds()
    canaries: CanaryThresholds = CanaryThresholds()
    realism: RealismConfig = RealismConfig()  # the realism metrics' encoder (validation.realism)
    max_flagged_fraction: float = Field(
        0.0, ge=0, le=1, description="share of rows that may be flagged before the per-image gates fail"
    )
    seed: int = 0


def load_thresholds(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Thresholds:
    """Defaults, then the file (``--config``), then spec overrides on top (deep-merged)."""
    base = load_model(Thresholds, path).model_dump() if path is not None else {}
    if overrides:
        base = deep_merge(base, overrides)
    return validate_model(Thresholds, base, source=path)


def validate_overrides(overrides: dict[str, Any], *, source: str | Path | None = None) -> Thresholds:
    """Validate a release spec's ``validation:`` mapping (for the spec loader and the build step)."""
    return validate_model(Thresholds, overrides or {}, source=source)


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``: nested mappings merged key by key, anything else replaced (inputs unchanged)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

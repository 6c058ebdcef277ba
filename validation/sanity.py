"""The sanity checks' policy: is each image a plausible mammogram of what its row says?

The figures come from the per-image analysis (the Otsu breast mask among them); the ranges they are
judged against come from the reference (breast-area fractions per view, chest-wall side per
laterality) and the spec (bit depth, resolution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.validation import checks as C
from mammosynth.validation import rules
from mammosynth.validation.analysis import Analysed, Rows
from mammosynth.validation.image_features import ImageFeatures
from mammosynth.validation.reference import ReferenceIndex
from mammosynth.validation.report import Flag, Gate
from mammosynth.validation.thresholds import SanityThresholds, Thresholds

FlagFn = Callable[[str, str], None]  # (check, reason)


def _side_name(side: str) -> str:
    return "left" if side == "L" else "right"


def _pixel_checks(f: ImageFeatures, s: SanityThresholds, flag: FlagFn) -> None:
    if f.std < s.blank_std:
        flag(C.BLANK, f"image std {f.std:.4f} < {s.blank_std}")
    if f.saturated_fraction > s.saturated_fraction:
        flag(C.SATURATED, f"{f.saturated_fraction:.0%} of pixels at the maximum value")


def _breast_checks(
    f: ImageFeatures,
    view: str,
    laterality: str,
    area_range: tuple[float, float],
    want_side: str | None,
    s: SanityThresholds,
    flag: FlagFn,
) -> None:
    """A breast of the reference's size for the view, on dark air, at the side its laterality says."""
    if f.area_fraction < s.min_area_fraction:
        flag(C.NO_BREAST, f"breast-area fraction {f.area_fraction:.3f} < {s.min_area_fraction}")
        return
    lo, hi = area_range
    pad = max(s.area_margin * (hi - lo), s.area_min_pad)
    if not (lo - pad <= f.area_fraction <= hi + pad):
        flag(
            C.AREA_FRACTION,
            f"breast-area fraction {f.area_fraction:.3f} outside the reference's {view} range [{lo:.3f}, {hi:.3f}]",
        )
    if f.background_ratio > s.max_background_ratio:
        flag(
            C.NO_DARK_BACKGROUND,
            f"background/breast intensity ratio {f.background_ratio:.2f} > {s.max_background_ratio}: "
            "no breast silhouette on dark air (texture or noise)",
        )
    if f.side and want_side and f.side != want_side:
        flag(
            C.LATERALITY_SIDE,
            f"breast touches the {_side_name(f.side)} edge but laterality {laterality} expects "
            f"{_side_name(want_side)} (mirrored or inverted image)",
        )


def _format_checks(f: ImageFeatures, method: str, spec: ReleaseSpec | None, flag: FlagFn) -> None:
    """One grey channel; with a spec, its bit depth and its method's resolution (longest side)."""
    if f.channels != 1:
        flag(C.MODE, f"{f.channels} channels; a mammogram is single-channel grey")
    if spec is None:
        return
    if f.bit_depth != spec.output.bit_depth:
        flag(C.BIT_DEPTH, f"{f.bit_depth}-bit, spec says {spec.output.bit_depth}-bit")
    params = getattr(spec.methods.get(method), method, None) if method in spec.methods else None
    res = getattr(params, "resolution", None)
    if res and max(f.height, f.width) != res:
        flag(C.SIZE, f"{f.width}x{f.height}; spec resolution {res} (longest side)")


def _box_checks(f: ImageFeatures, boxes: list[list[float]], method: str, s: SanityThresholds, flag: FlagFn) -> None:
    """Each box inside the image and mostly inside the breast; an inpainted lesion looks like tissue."""
    tol = s.bbox_edge_tolerance_px
    for j, box in enumerate(boxes):
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0 or x0 < -tol or y0 < -tol or x1 > f.width + tol or y1 > f.height + tol:
            flag(
                C.BBOX_OUTSIDE_IMAGE, f"box {j} {[round(v, 1) for v in box]} not inside the {f.width}x{f.height} image"
            )
        elif f.box_inside[j] < s.bbox_min_inside_mask:
            flag(
                C.BBOX_OUTSIDE_BREAST,
                f"box {j}: only {f.box_inside[j]:.0%} inside the breast mask (< {s.bbox_min_inside_mask:.0%})",
            )
        if method == "inpainting" and f.box_tissue[j] is not None:
            low, high, pos = f.box_tissue[j]
            sl = s.lesion_mean_slack
            if low > s.lesion_max_outlier_share or high > s.lesion_max_outlier_share or not (-sl <= pos <= 1 + sl):
                flag(
                    C.LESION_REGION,
                    f"box {j}: {low:.0%} of pixels below the breast's 1st percentile, {high:.0%} above its 99.9th, "
                    f"mean at {pos:.2f} of that range: not breast tissue",
                )


def sanity_flags(
    rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, spec: ReleaseSpec | None
) -> list[Flag]:
    """Every sanity finding, row by row (an unreadable image gets that finding only)."""
    s = th.sanity
    flags: list[Flag] = []
    sides = index.expected_side()
    ranges = {v: index.area_range(v, *s.area_percentiles) for v in ("CC", "MLO")}
    for k, image_id in enumerate(rows.ids):
        method = rows.method[k]

        def flag(check: str, reason: str, image_id: str = image_id, method: str = method) -> None:
            flags.append(Flag(image_id=image_id, check=check, reason=reason, method=method))

        if k in an.errors:
            flag(C.UNREADABLE, an.errors[k])
            continue
        f = an.feats[k]
        assert f is not None
        _pixel_checks(f, s, flag)
        _breast_checks(
            f,
            rows.view[k],
            rows.laterality[k],
            ranges.get(rows.view[k], (0.0, 1.0)),
            sides.get(rows.laterality[k]),
            s,
            flag,
        )
        _format_checks(f, method, spec, flag)
        _box_checks(f, rows.bbox[k], method, s, flag)
    return flags


def sanity_gate(flags: list[Flag], n_rows: int, th: Thresholds, per_density: dict[str, Any] | None = None) -> Gate:
    """The per-image sanity gate; ``per_density``: rows and rejections per density category."""
    figures = {"per_density": per_density} if per_density is not None else {}
    return rules.flagged_gate(C.GATE_SANITY, flags, C.SANITY_CHECKS, n_rows, th, **figures)


__all__ = ["sanity_flags", "sanity_gate"]

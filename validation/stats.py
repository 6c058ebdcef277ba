"""Distribution statistics: effect sizes with p-values beside them, each judged above a bootstrap
noise floor, so a small release is not failed for sampling noise.

The floor is the 95th percentile of the same statistic between two independent resamples of the
reference, one of the release's size and one of the reference's: the reference is itself a sample,
so comparing a resample with the very values it was drawn from would understate the noise."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from scipy import stats as sst
from scipy.spatial.distance import jensenshannon

from mammosynth.validation import rules
from mammosynth.validation.thresholds import EffectLimits

if TYPE_CHECKING:
    from mammosynth.builders.core.spec import ReleaseSpec


def _shares(values: Iterable[Any]) -> dict[str, float]:
    c = Counter("null" if v is None or v == "" else str(v) for v in values)
    n = sum(c.values())
    return {k: v / n for k, v in sorted(c.items())} if n else {}


def total_variation(a: dict[str, float], b: dict[str, float]) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def _floor(samples: list[float]) -> float:
    return float(np.percentile(samples, 95)) if samples else 0.0


# Resamples for the noise floor are at most this many rows: the floor of a 20k-row reference is
# already tiny, and capping can only raise it (more noise), never fail a release for noise.
MAX_RESAMPLE = 2000


def _cap(n: int) -> int:
    return min(n, MAX_RESAMPLE)


def _labels(values: Any) -> np.ndarray:
    """Category names as a string array, missing (None or "") as "null" (as in ``_shares``)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "U":
        return np.where(values == "", "null", values)
    return np.array(["null" if v is None or v == "" else str(v) for v in values])


def categorical(
    values: list[Any], ref_values: list[Any], limits: EffectLimits, boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Total variation distance of category shares, against the reference's own resampling noise."""
    ref = _labels(ref_values)
    # the reference's shares and codes from one np.unique (a reference has tens of thousands of rows)
    names, codes, counts = np.unique(ref, return_inverse=True, return_counts=True)
    a, b = _shares(values), {str(k): int(c) / len(ref) for k, c in zip(names, counts)}
    tv = total_variation(a, b)
    n = len(values)
    floor = 0.0
    if n and len(ref):
        k = len(names)  # shares by bincount: no per-resample Counter
        share = lambda idx: np.bincount(codes[idx], minlength=k) / len(idx)  # noqa: E731
        m = len(ref)
        floor = _floor(
            [
                0.5 * float(np.abs(share(rng.integers(0, m, _cap(n))) - share(rng.integers(0, m, _cap(m)))).sum())
                for _ in range(boot)
            ]
        )
    return _judged(
        limits,
        {
            "effect": "total_variation",
            "value": round(tv, 4),
            "noise_floor": round(floor, 4),
            "excess": rules.excess(tv, floor),
            "release_shares": {k: round(v, 4) for k, v in a.items()},
            "reference_shares": {k: round(v, 4) for k, v in b.items()},
            "n": n,
        },
    )


def _judged(limits: EffectLimits, figure: dict[str, Any]) -> dict[str, Any]:
    """``figure`` with its status (the effect rule on its stored excess), after its excess."""
    status = rules.effect_status(figure, limits)
    keys = list(figure)
    at = keys.index("excess") + 1 if "excess" in keys else 0
    return {**{k: figure[k] for k in keys[:at]}, "status": status, **{k: figure[k] for k in keys[at:]}}


def _w_over_std(x: np.ndarray, ref: np.ndarray, sd: float) -> float:
    return float(sst.wasserstein_distance(x, ref) / sd)


def continuous(
    x: np.ndarray, ref: np.ndarray, limits: EffectLimits, boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Wasserstein distance in units of the reference's std (effect), KS statistic and p-value."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if len(x) < 2 or len(ref) < 2:
        note = f"too few values to compare (release {len(x)}, reference {len(ref)})"
        return _judged(limits, {"note": note, "n": len(x)})
    sd = float(ref.std()) or 1e-9
    eff = _w_over_std(x, ref, sd)
    ks = sst.ks_2samp(x, ref)
    floor = _floor(
        [_w_over_std(rng.choice(ref, _cap(len(x))), rng.choice(ref, _cap(len(ref))), sd) for _ in range(boot)]
    )
    return _judged(
        limits,
        {
            "effect": "wasserstein/std",
            "value": round(eff, 4),
            "noise_floor": round(floor, 4),
            "excess": rules.excess(eff, floor),
            "ks": round(float(ks.statistic), 4),
            "p_value": float(f"{ks.pvalue:.4g}"),
            "release_mean": round(float(x.mean()), 4),
            "reference_mean": round(float(ref.mean()), 4),
            "n": len(x),
            "n_reference": len(ref),
        },
    )


def _js(h: np.ndarray, ref: np.ndarray) -> float:
    if h.sum() == 0 or ref.sum() == 0:
        return 1.0
    return float(jensenshannon(h / h.sum(), ref / ref.sum(), base=2))


def histograms(
    hists: np.ndarray, ref_hists: np.ndarray, limits: EffectLimits, boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Jensen-Shannon distance between pooled in-breast intensity histograms."""
    if len(hists) == 0 or len(ref_hists) == 0:
        return _judged(limits, {"note": "no images to compare", "n": len(hists)})
    ref_total = ref_hists.sum(0)
    js = _js(hists.sum(0), ref_total)
    n = len(hists)
    m = len(ref_hists)
    floor = _floor(
        [
            _js(ref_hists[rng.integers(0, m, _cap(n))].sum(0), ref_hists[rng.integers(0, m, _cap(m))].sum(0))
            for _ in range(boot)
        ]
    )
    return _judged(
        limits,
        {
            "effect": "jensen_shannon",
            "value": round(js, 4),
            "noise_floor": round(floor, 4),
            "excess": rules.excess(js, floor),
            "n": n,
        },
    )


def quantiles(x: np.ndarray | None) -> dict[str, float] | None:
    """The low tail and the median of ``x`` (where copies would show), None when it is empty."""
    if x is None or len(x) == 0:
        return None
    qs = np.quantile(x.astype(np.float64), [0, 0.01, 0.05, 0.5])
    return {
        "min": round(float(qs[0]), 4),
        "p1": round(float(qs[1]), 4),
        "p5": round(float(qs[2]), 4),
        "median": round(float(qs[3]), 4),
        "n": int(len(x)),
    }


def expected_counts(spec: ReleaseSpec | None) -> dict[tuple[str, int, str, str], int] | None:
    """Rows the spec asks for per (method, BI-RADS, view, laterality); None without a spec."""
    if spec is None:
        return None
    return {(m, b, v, lat): n for m in spec.methods for (b, v, lat), n in spec.cell_counts(m).items()}


def count_gate(
    observed: Counter,
    expected: dict[tuple[str, int, str, str], int] | None,
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    """Rows per (method, BI-RADS, view, laterality) against the spec, exactly. A shortfall is
    explained only by generator skips with a recorded reason (warn); anything else fails
    (``rules.count_cell_status``; the gate's status: ``rules.judge``)."""
    if expected is None:
        return {
            "note": "no release spec: counts not checked",
            "observed_total": sum(observed.values()),
        }
    explained = Counter()
    reasons: dict[tuple, list[str]] = {}
    for s in skipped:
        cell = parse_task_id(s.get("image_id", ""))
        if cell and s.get("reason"):
            explained[cell] += 1
            reasons.setdefault(cell, []).append(f"{s['image_id']}: {s['reason']}")
    cells = []
    for cell in sorted(set(expected) | set(observed), key=str):
        want, got, why = expected.get(cell, 0), observed.get(cell, 0), explained.get(cell, 0)
        if got == want:
            continue
        cells.append(
            {
                "method": cell[0],
                "birads": cell[1],
                "view": cell[2],
                "laterality": cell[3],
                "expected": want,
                "observed": got,
                "skipped_with_reason": why,
                "status": rules.count_cell_status(want, got, why),
                "skips": reasons.get(cell, [])[:20],
            }
        )
    return {
        "expected_total": sum(expected.values()),
        "observed_total": sum(observed.values()),
        "skipped_total": len(skipped),
        "mismatched_cells": cells,
    }


def parse_task_id(image_id: str) -> tuple[str, int, str, str] | None:
    """``inpainting-b3-cc-l-00012`` (engine.SampleTask.image_id) -> (method, 3, "CC", "L")."""
    parts = image_id.split("-")
    if len(parts) != 5 or not parts[1].startswith("b"):
        return None
    try:
        return parts[0], int(parts[1][1:]), parts[2].upper(), parts[3].upper()
    except ValueError:
        return None


def diversity_pairs(
    groups: dict[str, list[tuple[str, str | None]]], max_pairs: int, rng: np.random.Generator
) -> dict[str, list[tuple[str, str]]]:
    """Image pairs per prompt group (members are (image id, source image)), at most ``max_pairs``
    sampled; pairs sharing a background are skipped: they are meant to look alike."""
    out = {}
    for prompt, members in groups.items():
        pairs = [(a, b) for i, (a, sa) in enumerate(members) for (b, sb) in members[i + 1 :] if not (sa and sa == sb)]
        if len(pairs) > max_pairs:
            pairs = [pairs[i] for i in rng.choice(len(pairs), max_pairs, replace=False)]
        if pairs:
            out[prompt] = pairs
    return out


def diversity(thumbs: dict[str, np.ndarray], pairs_by_group: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """Mean MS-SSIM between the pairs of each prompt group (``diversity_pairs``). Uses
    pytorch-msssim, pinned and named in the report. Runs on a thread beside other work: torch
    releases the GIL inside its operators."""
    import torch
    from pytorch_msssim import ms_ssim

    per_group = {}
    for prompt, pairs in pairs_by_group.items():
        # Pairs go in as the channels of one image: ms_ssim filters each channel on its own and
        # averages the channels' MS-SSIM, which is the group's mean over pairs. One grouped
        # convolution over all pairs is ~3x faster on CPU than a batch of single-channel images.
        x = torch.from_numpy(np.stack([thumbs[a] for a, _ in pairs])[None].astype(np.float32))
        y = torch.from_numpy(np.stack([thumbs[b] for _, b in pairs])[None].astype(np.float32))
        # One thread: the work is small, and torch's OpenMP threads slow it down ~30x (0.2 s ->
        # 7 s measured) when other processes hold the cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                mean = ms_ssim(x, y, data_range=255.0, size_average=False)
        finally:
            torch.set_num_threads(threads)
        per_group[prompt] = {"mean_msssim": round(float(mean[0]), 4), "pairs": len(pairs)}
    if not per_group:
        return {"status": "pass", "note": "no prompt group with two or more images", "groups": {}}
    mean = float(np.mean([g["mean_msssim"] for g in per_group.values()]))
    return {"mean_msssim": round(mean, 4), "groups": per_group}

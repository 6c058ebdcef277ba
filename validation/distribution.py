"""The distribution gates: does the release as a whole look like the reference (and the spec)?

Counts per cell against the spec, category shares, box sizes, intensity histograms and breast
areas against the reference; diversity within prompt groups; drift against a previous release.
Each effect is judged above the reference's own noise floor (``stats``). The random draws come from
one generator in a fixed order, so the figures are reproducible for a seed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.validation import checks as C
from mammosynth.validation import rules, stats
from mammosynth.validation.analysis import Analysed, Rows
from mammosynth.validation.reference import ReferenceIndex
from mammosynth.validation.report import Gate
from mammosynth.validation.thresholds import Thresholds

NO_PROMPT = "(no prompt)"  # the prompt group of rows without a prompt
DiversityPairs = dict[str, list[tuple[str, str]]]


def _readable(rows: Rows, an: Analysed) -> list[int]:
    return [k for k in range(len(rows.ids)) if an.feats[k] is not None]


def _box_extents(rows: Rows, an: Analysed, ok: list[int], birads: int) -> tuple[list[float], list[float]]:
    """Widths and heights (shares of the image's) of the boxes of the class ``birads``."""
    ws = [(x1 - x0) / an.feats[k].width for k in ok if rows.birads[k] == birads for x0, y0, x1, y1 in rows.bbox[k]]
    hs = [(y1 - y0) / an.feats[k].height for k in ok if rows.birads[k] == birads for x0, y0, x1, y1 in rows.bbox[k]]
    return ws, hs


def counts_gate(rows: Rows, spec: ReleaseSpec | None, skipped: list[dict[str, str]], th: Thresholds) -> Gate:
    """Rows per (method, BI-RADS, view, laterality) against the spec."""
    observed = Counter((rows.method[k], rows.birads[k], rows.view[k], rows.laterality[k]) for k in range(len(rows.ids)))
    c = stats.count_gate(observed, stats.expected_counts(spec), skipped)
    mism = len(c.get("mismatched_cells", []))
    summary = c.get("note") or (
        f"{c['observed_total']} of {c['expected_total']} images; {mism} cell(s) differ; {c['skipped_total']} generator skip(s)"
    )
    return rules.judged_gate(C.GATE_COUNTS, th, summary, c)


def categorical_gate(rows: Rows, index: ReferenceIndex, th: Thresholds, rng: np.random.Generator) -> Gate:
    """Category shares vs the reference; only ``categorical_gated`` columns can fail (the spec
    fixes the others on purpose: ``rules``)."""
    st = th.stats
    cols = {
        "birads": ([f"BI-RADS {b}" for b in rows.birads], np.char.add("BI-RADS ", index.birads.astype(str))),
        "view": (rows.view, index.views),
        "laterality": (rows.laterality, index.lateralities),
        "density": (rows.density, index.density),
    }
    per_col = {name: stats.categorical(a, b, st.categorical, st.bootstrap, rng) for name, (a, b) in cols.items()}
    summary = ", ".join(f"{k} TV {v['value']:.3f} (floor {v['noise_floor']:.3f})" for k, v in per_col.items())
    return rules.judged_gate(C.GATE_CATEGORICAL, th, summary, {"columns": per_col})


def box_size_gate(rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, rng: np.random.Generator) -> Gate:
    """Box widths and heights per BI-RADS class vs the reference's."""
    st = th.stats
    ok = _readable(rows, an)
    box = {}
    for b in sorted({rows.birads[k] for k in ok if rows.bbox[k]}):
        ws, hs = _box_extents(rows, an, ok, b)
        sel = index.box_birads == b
        box[f"BI-RADS {b}"] = {
            "width": stats.continuous(np.array(ws), index.box_w[sel], st.box_size, st.bootstrap, rng),
            "height": stats.continuous(np.array(hs), index.box_h[sel], st.box_size, st.bootstrap, rng),
        }
    summary = "; ".join(
        f"{k}: W/std w {v['width'].get('value', '-')}, h {v['height'].get('value', '-')}" for k, v in box.items()
    )
    return rules.judged_gate(C.GATE_BOX_SIZE, th, summary or "no boxes in the release", {"per_birads": box})


def intensity_gate(rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, rng: np.random.Generator) -> Gate:
    """In-breast intensity histograms per method vs the reference's."""
    st = th.stats
    ok = _readable(rows, an)
    hist_by_method = {}
    for m in sorted({rows.method[k] for k in ok}):
        idx = [k for k in ok if rows.method[k] == m]
        hist_by_method[m] = stats.histograms(
            np.stack([an.feats[k].hist for k in idx]), index.hist[index.side != ""], st.intensity, st.bootstrap, rng
        )
    summary = ", ".join(
        f"{m} JS {v.get('value', '-')} (floor {v.get('noise_floor', '-')})" for m, v in hist_by_method.items()
    )
    return rules.judged_gate(C.GATE_INTENSITY, th, summary, {"per_method": hist_by_method})


def area_gate(rows: Rows, an: Analysed, index: ReferenceIndex, th: Thresholds, rng: np.random.Generator) -> Gate:
    """Breast-area fractions per view vs the reference's."""
    st = th.stats
    ok = _readable(rows, an)
    area = {}
    for view in ("CC", "MLO"):
        x = np.array([an.feats[k].area_fraction for k in ok if rows.view[k] == view])
        if len(x):
            area[view] = stats.continuous(
                x, index.area[(index.views == view) & (index.side != "")], st.area, st.bootstrap, rng
            )
    summary = ", ".join(f"{v_}: W/std {d.get('value', '-')}" for v_, d in area.items())
    return rules.judged_gate(C.GATE_AREA, th, summary, {"per_view": area})


def prompt_groups(rows: Rows, an: Analysed) -> dict[str, list[tuple[str, str | None]]]:
    """(image id, source image) of the rows with a thumbnail, per prompt."""
    groups: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for k in _readable(rows, an):
        if rows.ids[k] in an.thumbs:
            groups[rows.prompt[k] or NO_PROMPT].append((rows.ids[k], rows.source[k]))
    return groups


def distribution_gates(
    rows: Rows,
    an: Analysed,
    index: ReferenceIndex,
    th: Thresholds,
    spec: ReleaseSpec | None,
    skipped: list[dict[str, str]],
    rng: np.random.Generator,
) -> tuple[dict[str, Gate], DiversityPairs]:
    """The counts, categorical, box-size, intensity and area gates, and the image pairs the
    diversity gate compares (drawn here, in the same order of random draws as the statistics;
    MS-SSIM itself runs on a thread: see ``validate_release``)."""
    gates = {
        C.GATE_COUNTS: counts_gate(rows, spec, skipped, th),
        C.GATE_CATEGORICAL: categorical_gate(rows, index, th, rng),
        C.GATE_BOX_SIZE: box_size_gate(rows, an, index, th, rng),
        C.GATE_INTENSITY: intensity_gate(rows, an, index, th, rng),
        C.GATE_AREA: area_gate(rows, an, index, th, rng),
    }
    return gates, stats.diversity_pairs(prompt_groups(rows, an), th.stats.msssim_max_pairs, rng)


def thumb_rows(rows: Rows, th: Thresholds, rng: np.random.Generator) -> set[int]:
    """Rows whose thumbnails the diversity check needs: a bounded random subset per prompt group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, p in enumerate(rows.prompt):
        groups[p or NO_PROMPT].append(k)
    keep = int(np.ceil(np.sqrt(2 * th.stats.msssim_max_pairs))) + 2
    out: set[int] = set()
    for members in groups.values():
        out.update(members if len(members) <= keep else rng.choice(members, keep, replace=False).tolist())
    return out


def diversity_gate(div: dict[str, Any], th: Thresholds) -> Gate:
    """Mean MS-SSIM within prompt groups (``stats.diversity``): too similar images warn or fail."""
    if "mean_msssim" in div:
        summary = f"mean MS-SSIM within prompt groups {div['mean_msssim']:.3f} (MAM-E reports 0.29-0.60)"
    else:
        summary = div["note"]
    return rules.judged_gate(C.GATE_DIVERSITY, th, summary, div)


def drift_gate(
    rows: Rows, an: Analysed, base_rows: Rows, base: Analysed, th: Thresholds, rng: np.random.Generator
) -> Gate:
    """This release against a previous one: category shares (reported, not gated: the spec may
    change them on purpose), intensity, breast area and box width."""
    st = th.stats
    out: dict[str, Any] = {}
    cols = {
        "birads": (rows.birads, base_rows.birads),
        "view": (rows.view, base_rows.view),
        "laterality": (rows.laterality, base_rows.laterality),
        "density": (rows.density, base_rows.density),
        "method": (rows.method, base_rows.method),
    }
    out["categorical"] = {k: stats.categorical(a, b, st.drift, st.bootstrap, rng) for k, (a, b) in cols.items()}
    ok, bok = _readable(rows, an), _readable(base_rows, base)
    hists = np.stack([an.feats[k].hist for k in ok]) if ok else np.zeros((0, 1))
    base_hists = np.stack([base.feats[k].hist for k in bok]) if bok else np.zeros((0, 1))
    out["intensity"] = stats.histograms(hists, base_hists, st.drift, st.bootstrap, rng)
    out["area"] = stats.continuous(
        np.array([an.feats[k].area_fraction for k in ok]),
        np.array([base.feats[k].area_fraction for k in bok]),
        st.drift,
        st.bootstrap,
        rng,
    )
    rw = np.array([(x1 - x0) / an.feats[k].width for k in ok for x0, _, x1, _ in rows.bbox[k]])
    bw = np.array([(x1 - x0) / base.feats[k].width for k in bok for x0, _, x1, _ in base_rows.bbox[k]])
    out["box_width"] = stats.continuous(rw, bw, st.drift, st.bootstrap, rng)
    summary = (
        f"vs baseline: intensity JS {out['intensity'].get('value', '-')}, area W/std {out['area'].get('value', '-')}, "
        f"box width W/std {out['box_width'].get('value', '-')}"
    )
    return rules.judged_gate(C.GATE_DRIFT, th, summary, out)


__all__ = [
    "NO_PROMPT",
    "counts_gate",
    "categorical_gate",
    "box_size_gate",
    "intensity_gate",
    "area_gate",
    "prompt_groups",
    "distribution_gates",
    "thumb_rows",
    "diversity_gate",
    "drift_gate",
]

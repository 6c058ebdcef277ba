"""Realism metrics in a feature encoder's space: FID, KID and precision/recall, between the release
and the reference (overall, per method, per density A-D and per BI-RADS), and between the release
and the previous release (drift, the same metrics and strata).

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) of the two feature sets'
  means and covariances (``scipy.linalg.sqrtm``).
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; the std over those subsets is reported.
- Precision/recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls reaching
  every point's k-th nearest neighbour in its own set (``faiss``); precision is the share of
  released images inside the reference's manifold (fidelity), recall the share of reference images
  inside the release's (coverage).

The encoder is named in the thresholds file (``feature_extractor.RealismConfig``). Without one the
figures are ``{"configured": False}`` and the section says so: no figure is ever made up. A stratum
with fewer than ``min_images`` images on either side gets no figures, only its counts.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import faiss
import numpy as np
import scipy.linalg

from mammosynth.builders.core import atomic
from mammosynth.builders.core.hashing import sha256_json
from mammosynth.builders.core.imageio import UnreadableImage, decode_grey
from mammosynth.builders.core.schema import DENSITIES
from mammosynth.validation.feature_extractor import FIELD, FeatureExtractor, RealismConfig, load_extractor

KERNEL = "(x.y/d + 1)^3"
_FID_ZERO_TOL = 1e-6  # relative to the traces: negative FID within this is rounding
_SQRTM_IMAG_TOL = 1e-3  # relative imaginary part of sqrtm(S1 S2) above which FID is flagged unreliable
_BLOCK = 1 << 24  # distances per block in precision/recall (128 MB of float64)


@dataclass
class ImageSet:
    """Images and their labels, one entry per image, in the same order. ``images`` is read once (a
    generator is fine); None stands for an unreadable image, which is left out and counted."""

    images: Iterable[np.ndarray | None]
    method: Sequence[str | None] | None = None
    density: Sequence[str | None] | None = None
    birads: Sequence[int | None] | None = None
    key: str | None = None  # content identity; with ``cache_dir``, its features are cached


def dataset_images(ds: Any, column: str = "image", batch_size: int = 64) -> Iterator[np.ndarray | None]:
    """Grey arrays of a ``datasets.Dataset``'s image column, decoded here (16-bit kept); None for
    unreadable bytes."""
    feature = ds.features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        ds = ds.cast_column(column, datasets.Image(decode=False))  # bytes: PIL would drop 16-bit depth
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        for image in batch[column]:
            try:
                yield decode_grey(image)
            except (UnreadableImage, OSError, ValueError):
                yield None


# --- the metrics, on feature matrices (n, d) -----------------------------------------------------


def fid(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    """(FID, reliable): reliable is False when sqrtm(S1 S2) came out noticeably complex."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference FID code does
        eps = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    reliable = True
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        reliable = bool(imag <= _SQRTM_IMAG_TOL * max(np.abs(covmean.real).max(), 1e-12))
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    # FID is a squared distance: a negative value within sqrtm's rounding of the traces (about
    # sqrt(eps) for the singular products of small samples) is zero; a larger one is left visible
    scale = float(diff @ diff + np.trace(s1) + np.trace(s2))
    return (0.0 if -_FID_ZERO_TOL * scale <= value < 0 else value), reliable


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two samples under the KID kernel (diagonals left out of the within-set means)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, rng: np.random.Generator) -> dict[str, Any]:
    """KID as mean and std (ddof 0) of ``mmd2_unbiased`` over random subsets of both sets (drawn
    without replacement, ``a``'s subset then ``b``'s); one exact value when both sets fit whole."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m == len(a) == len(b):  # every "subset" is both whole sets: one exact value, no spread
        return {"mean": mmd2_unbiased(a, b), "std": 0.0, "subsets": 1, "subset_size": m}
    vals = np.array(
        [
            mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(subsets)
        ]
    )
    return {"mean": float(vals.mean()), "std": float(vals.std()), "subsets": subsets, "subset_size": m}


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (exact faiss search, the
    distance itself recomputed in float64 so that it matches ``inside_manifold``)."""
    x32 = np.ascontiguousarray(x, np.float32)
    index = faiss.IndexFlatL2(x32.shape[1])
    index.add(x32)
    _, nn = index.search(x32, k + 1)  # the point itself comes first
    diff = np.asarray(x, np.float64) - np.asarray(x, np.float64)[nn[:, k]]
    return np.einsum("ij,ij->i", diff, diff)


def inside_manifold(queries: np.ndarray, points: np.ndarray, radii2: np.ndarray) -> np.ndarray:
    """Per query: whether it lies in some ball (point, squared radius)."""
    points = np.asarray(points, np.float64)
    queries = np.asarray(queries, np.float64)
    pp = np.einsum("ij,ij->i", points, points)
    out = np.empty(len(queries), bool)
    rows = max(1, _BLOCK // max(len(points), 1))
    for s in range(0, len(queries), rows):
        q = queries[s : s + rows]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + pp[None, :] - 2.0 * (q @ points.T)
        out[s : s + rows] = (d2 <= radii2[None, :]).any(axis=1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s improved precision (fake inside real) and recall (real inside fake)."""
    centre = np.asarray(real, np.float64).mean(0)  # centred: the distance expansion loses less
    real, fake = np.asarray(real, np.float64) - centre, np.asarray(fake, np.float64) - centre
    precision = inside_manifold(fake, real, knn_radii(real, k)).mean()
    recall = inside_manifold(real, fake, knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def compare(release: np.ndarray, other: np.ndarray, cfg: RealismConfig, seed: int, other_name: str) -> dict[str, Any]:
    """All figures for one stratum, or its counts and why there are none."""
    n_rel, n_oth = len(release), len(other)
    out: dict[str, Any] = {"n_release": n_rel, f"n_{other_name}": n_oth}
    need = max(cfg.min_images, cfg.k + 1)  # k neighbours besides the point itself
    if min(n_rel, n_oth) < need:
        out["note"] = f"too few images (n={n_rel} release, {n_oth} {other_name}; minimum {need})"
        return out
    if not (np.isfinite(release).all() and np.isfinite(other).all()):
        out["note"] = "the encoder returned non-finite features"
        return out
    warnings = []
    dim = release.shape[1]
    if min(n_rel, n_oth) <= dim:
        warnings.append(
            f"no more images than feature dimensions ({dim}): the covariances are rank-deficient and FID is "
            "biased upward; compare FID only at equal n"
        )
    value, reliable = fid(release, other)
    if not reliable:
        warnings.append("sqrtm(S1 S2) has a large imaginary part: FID is numerically unreliable")
    rng = np.random.default_rng([seed, zlib.crc32(other_name.encode())])
    kd = kid(release, other, cfg.kid_subsets, cfg.kid_subset_size, rng)
    precision, recall = precision_recall(other, release, cfg.k)  # the other side is the "real" one
    out.update(
        fid=value,
        kid=kd["mean"],
        kid_std=kd["std"],
        kid_subset_size=kd["subset_size"],
        precision=precision,
        recall=recall,
        warnings=warnings,
    )
    return out


# --- strata ---------------------------------------------------------------------------------------


def _labels(values: Sequence[Any] | None, ok: np.ndarray) -> np.ndarray | None:
    if values is None:
        return None
    if len(values) != len(ok):
        raise ValueError(f"{len(values)} labels for {len(ok)} images")
    return np.array(["" if v is None else str(v) for v in values], dtype=object)[ok]


def strata_figures(
    rel: np.ndarray,
    rel_labels: dict[str, np.ndarray | None],
    oth: np.ndarray,
    oth_labels: dict[str, np.ndarray | None],
    cfg: RealismConfig,
    seed: int,
    other_name: str,
) -> dict[str, Any]:
    """``overall`` plus per method, density (always A-D: the equity view) and BI-RADS. Per method the
    release's rows are compared with the whole other side when that side has no methods (the
    reference), else method against method (a previous release)."""

    def one(key: str, r: np.ndarray, o: np.ndarray) -> dict[str, Any]:
        return compare(rel[r], oth[o], cfg, zlib.crc32(f"{seed}:{key}".encode()), other_name)

    all_r, all_o = np.ones(len(rel), bool), np.ones(len(oth), bool)
    out: dict[str, Any] = {"overall": one("overall", all_r, all_o)}
    for col in ("method", "density", "birads"):
        r_lab, o_lab = rel_labels.get(col), oth_labels.get(col)
        if r_lab is None:
            continue
        values = set(r_lab) | (set(o_lab) if o_lab is not None else set())
        values.discard("")
        if col == "density":
            values |= set(DENSITIES)
        if col == "method" and o_lab is None:
            out[col] = {v: one(f"{col}={v}", r_lab == v, all_o) for v in sorted(values)}
        elif o_lab is not None:
            out[col] = {v: one(f"{col}={v}", r_lab == v, o_lab == v) for v in sorted(values)}
    return out


# --- features ---------------------------------------------------------------------------------------


def _features(ext: FeatureExtractor, images: ImageSet, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(features of the readable images, readable mask over all images); cached by ``images.key``."""
    cache = None
    if cache_dir is not None and images.key:
        cache = Path(cache_dir) / f"realism-{sha256_json(ext.describe(), images.key)[:24]}.npz"
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    return z["features"], z["ok"]
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged cache is recomputed, never trusted
    ok: list[bool] = []

    def readable() -> Iterator[np.ndarray]:
        for im in images.images:
            ok.append(im is not None)
            if im is not None:
                yield im

    feats = ext.extract(readable())
    mask = np.array(ok, bool)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, features=feats, ok=mask)
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(cache, buf.getvalue())
    return feats, mask


def _side(ext: FeatureExtractor, images: ImageSet, cache_dir: Path | None) -> tuple[np.ndarray, dict, int]:
    feats, ok = _features(ext, images, cache_dir)
    labels = {c: _labels(getattr(images, c), ok) for c in ("method", "density", "birads")}
    return feats, labels, int((~ok).sum())


def not_configured() -> dict[str, Any]:
    return {"configured": False, "reason": f"no feature extractor named (thresholds field {FIELD})"}


def realism_figures(
    cfg: RealismConfig,
    release: ImageSet,
    reference: ImageSet,
    *,
    previous: ImageSet | None = None,
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The realism section's figures (JSON-able): release against reference, and against the
    previous release when given (``drift``). No encoder configured: no images are read."""
    if not cfg.extractor and extractor is None:
        return not_configured()
    ext = extractor or load_extractor(cfg)
    cache = Path(cache_dir) if cache_dir is not None else None
    rel, rel_lab, rel_bad = _side(ext, release, cache)
    ref, ref_lab, ref_bad = _side(ext, reference, cache)
    figures: dict[str, Any] = {
        "configured": True,
        "extractor": ext.describe(),
        "metrics": {
            "fid": "Frechet distance of the feature Gaussians (scipy.linalg.sqrtm)",
            "kid": f"unbiased MMD^2, kernel {KERNEL}, mean and std over {cfg.kid_subsets} subsets",
            "precision_recall": f"Kynkaanniemi et al. 2019, k-NN manifolds (faiss IndexFlatL2), k={cfg.k}",
        },
        "k": cfg.k,
        "min_images": cfg.min_images,
        "n_release": len(rel),
        "n_reference": len(ref),
        "unreadable": {"release": rel_bad, "reference": ref_bad},
        "strata": strata_figures(rel, rel_lab, ref, ref_lab, cfg, seed, "reference"),
        "drift": _drift((rel, rel_lab, rel_bad), _side(ext, previous, cache), cfg, seed)
        if previous is not None
        else None,
    }
    return figures


def _drift(rel: tuple, prev: tuple, cfg: RealismConfig, seed: int) -> dict[str, Any]:
    return {
        "n_release": len(rel[0]),
        "n_previous": len(prev[0]),
        "unreadable": {"release": rel[2], "previous": prev[2]},
        "strata": strata_figures(rel[0], rel[1], prev[0], prev[1], cfg, seed, "previous"),
    }


def drift_figures(
    cfg: RealismConfig,
    release: ImageSet,
    previous: ImageSet,
    *,
    seed: int = 0,
    extractor: FeatureExtractor | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Release against the previous release alone: the same metrics and strata as
    ``realism_figures``' ``drift`` (which computes it too when given ``previous``)."""
    if not cfg.extractor and extractor is None:
        return not_configured()
    ext = extractor or load_extractor(cfg)
    cache = Path(cache_dir) if cache_dir is not None else None
    out = _drift(_side(ext, release, cache), _side(ext, previous, cache), cfg, seed)
    return {"configured": True, "extractor": ext.describe(), "k": cfg.k, "min_images": cfg.min_images, **out}


# --- markdown ----------------------------------------------------------------------------------------

_STRATUM_TITLES = {"method": "method", "density": "density", "birads": "BI-RADS"}


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _table(strata: dict[str, Any], other_name: str) -> list[str]:
    lines = [
        f"| stratum | n release | n {other_name} | FID | KID x 10^3 | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    notes: dict[str, list[str]] = {}  # warning -> the strata it applies to
    rows = [("all", strata["overall"])]
    for col, title in _STRATUM_TITLES.items():
        rows += [(f"{title} {v}", s) for v, s in strata.get(col, {}).items()]
    for label, s in rows:
        head = f"| {label} | {s['n_release']} | {s[f'n_{other_name}']} |"
        if "fid" not in s:
            lines.append(f"{head} {s['note']} | | | |")
            continue
        kid_txt = f"{_fmt(s['kid'] * 1e3)} ± {_fmt(s['kid_std'] * 1e3)}"
        lines.append(f"{head} {_fmt(s['fid'])} | {kid_txt} | {s['precision']:.3f} | {s['recall']:.3f} |")
        for w in s.get("warnings", []):
            notes.setdefault(w, []).append(label)
    return lines + ([""] + [f"- {', '.join(where)}: {w}." for w, where in notes.items()] if notes else [])


def render_realism_markdown(figures: dict[str, Any], heading: str = "###") -> str:
    """The realism section of report.md and the card, from ``realism_figures``' output."""
    title = f"{heading} Realism metrics"
    if not figures.get("configured"):
        return (
            f"{title}\n\nNot configured: no feature extractor is named (thresholds field `{FIELD}`), "
            "so FID, KID and precision/recall were not computed.\n"
        )
    e = figures["extractor"]
    rev = f", revision `{e['revision'][:12]}`" if e.get("revision") else ""
    lines = [
        title,
        "",
        f"Encoder `{e['name']}` ({e['kind']}{rev}, content hash `{e['content_hash'][:12]}`, {e['feature_dim']} "
        f"features, {e['image_size']}x{e['image_size']} input). Release: {figures['n_release']} images; "
        f"reference: {figures['n_reference']} images"
        + _unreadable(figures["unreadable"])
        + ". FID and KID (mean ± std over subsets) are distances in the encoder's feature space (lower is "
        "closer); precision is the share of released images inside the reference's feature manifold "
        "(fidelity), recall the share of reference images inside the release's (coverage), after "
        f"Kynkäänniemi et al. (k={figures['k']}). "
        "Per method the release's images are compared with the whole reference; per density and BI-RADS, "
        f"stratum with stratum. Strata under {figures['min_images']} images on either side get no figures.",
        "",
        *_table(figures["strata"], "reference"),
    ]
    if figures.get("drift"):
        lines += ["", render_drift_markdown(figures["drift"], heading + "#").rstrip("\n")]
    return "\n".join(lines) + "\n"


def render_drift_markdown(drift: dict[str, Any], heading: str = "###") -> str:
    """The drift subsection: ``realism_figures(...)["drift"]`` or ``drift_figures``' output."""
    title = f"{heading} Drift against the previous release"
    if drift.get("configured") is False:
        return render_realism_markdown(drift, heading).replace("Realism metrics", "Drift against the previous release")
    lines = [
        title,
        "",
        f"The same metrics between this release ({drift['n_release']} images) and the previous one "
        f"({drift['n_previous']} images){_unreadable(drift['unreadable'])}.",
        "",
        *_table(drift["strata"], "previous"),
    ]
    return "\n".join(lines) + "\n"


def _unreadable(counts: dict[str, int]) -> str:
    bad = [f"{v} unreadable in the {k}" for k, v in counts.items() if v]
    return f" ({', '.join(bad)}, left out)" if bad else ""


__all__ = [
    "ImageSet",
    "dataset_images",
    "fid",
    "mmd2_unbiased",
    "kid",
    "knn_radii",
    "inside_manifold",
    "precision_recall",
    "compare",
    "strata_figures",
    "realism_figures",
    "drift_figures",
    "not_configured",
    "render_realism_markdown",
    "render_drift_markdown",
]

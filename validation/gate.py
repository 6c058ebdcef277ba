"""``validate_release``: the whole gate as one Python call (the CLI is a thin layer over it).

Order of work: thresholds -> reference index (cached) -> release rows -> one analysis pass per
image (``analysis``) -> per-image checks (``sanity``, ``memorization``) -> distribution statistics
(``distribution``) -> reports (``report``). Per-image problems (including unreadable bytes) become
findings for that row; only bad inputs (reference, release schema, thresholds, a report folder that
is a file or holds other files) raise InputError.

Each run writes its report folder and the local-only sibling afresh: both are staged and swapped
in when the run succeeds (a failed run leaves the previous report as it was).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.config_io import read_mapping
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.provenance import package_version, strip_local_paths
from mammosynth.builders.core.run_layout import REPORT_JSON
from mammosynth.builders.core.spec import ReleaseSpec, load_spec
from mammosynth.validation import checks as C
from mammosynth.validation import dedup, rules, stats
from mammosynth.validation.analysis import Rows, analyse_rows, analysis_pool
from mammosynth.validation.canaries import CanaryRun, canary_gate, perturbation_names
from mammosynth.validation.distribution import distribution_gates, diversity_gate, drift_gate, thumb_rows
from mammosynth.validation.image_features import KP_COUNT, KP_HEIGHT, PIXEL_HASH
from mammosynth.validation.memorization import memorization_flags, memorization_gate
from mammosynth.validation.patients import patient_audit, per_density
from mammosynth.validation.realism import ImageSet, dataset_images, realism_figures
from mammosynth.validation.reference import ReferenceIndex, cache_dir_for, reference_index
from mammosynth.validation.release_io import LoadedRelease, load_release, shipped_name
from mammosynth.validation.report import (
    LOCAL_MARKER,
    REPORT_VERSION,
    DataPlots,
    Gate,
    ValidationReport,
    local_dir,
    spec_digest,
    write_reports,
)
from mammosynth.validation.sanity import sanity_flags, sanity_gate
from mammosynth.validation.thresholds import Thresholds, deep_merge, validate_overrides


def resolve_thresholds(
    config: str | Path | Thresholds | None, spec: ReleaseSpec | None, spec_path: Path | None = None
) -> Thresholds:
    """Defaults < the spec's ``validation:`` overrides < the ``--config`` file."""
    if isinstance(config, Thresholds):
        return config
    data: dict[str, Any] = {}
    if spec is not None and spec.validation:
        validate_overrides(spec.validation, source=spec_path)  # field errors name the spec
        data = deep_merge({}, spec.validation)
    if config is not None:
        file_data = read_mapping(config)
        validate_overrides(file_data, source=config)  # field errors name the config file
        data = deep_merge(data, file_data)
    return validate_overrides(data, source=config or spec_path)


def require_spec_thresholds(report: ValidationReport, spec: ReleaseSpec, path: str | Path) -> None:
    """The report was judged with the thresholds ``spec`` asks for. Its statuses are re-derived from
    its figures with the thresholds it records; this check closes the other door (figures and
    thresholds edited together, or a laxer ``--config`` than the spec's)."""
    if report.thresholds != resolve_thresholds(None, spec).model_dump(mode="json"):
        raise InputError(
            "the validation report was judged with other thresholds than the spec's; validate again",
            file=path,
            field="thresholds",
        )


def _implementations(th: Thresholds) -> dict[str, str]:
    """What computed each figure, with versions: named in the report."""
    v = partial(package_version, missing="unknown")
    size = th.dedup.embed_size
    return {
        "mammosynth": v("mammosynth"),
        "ms-ssim": f"pytorch-msssim=={v('pytorch-msssim')}",
        "search": f"faiss-cpu=={v('faiss-cpu')} IndexFlatL2 + IndexBinaryFlat (exact)",
        "phash": "256-bit DCT pHash of the breast crop (scipy.fft)",
        "pixel hash": f"{PIXEL_HASH} (xxhash=={v('xxhash')}) of shape, dtype and pixels",
        "breast mask": "mammosynth.builders.core.breast_mask.breast_mask (Otsu)",
        "embedding": f"{size}x{size} standardized, one-cell-blurred grid of the stable breast crop, chest wall left; "
        f"training-set candidates under {dedup.PRESCORE_FACTOR:g}x the threshold re-scored over small grid shifts and scales",
        "geometric verification": f"opencv-python-headless=={v('opencv-python-headless')} ORB ({KP_COUNT} keypoints "
        f"on the breast crop at {KP_HEIGHT} px), brute-force Hamming matches with ratio test, RANSAC affine "
        f"(cv2.estimateAffine2D); the {th.dedup.geometric_candidates} nearest candidates under "
        f"{th.dedup.geometric_bound_factor:g}x the threshold, a copy from {th.dedup.geometric_min_inliers} inliers",
        "canaries": f"{th.canaries.images} seeded reference images x {len(perturbation_names(th))} perturbations "
        "(mammosynth.validation.perturbations) searched by the same check; held-out patients searched against "
        "the index without them",
    }


def _reference_info(reference: str | Path, index: ReferenceIndex, th: Thresholds) -> dict[str, Any]:
    return {
        "source": shipped_name(reference),
        "n": index.n,
        "content_hash": index.meta.get("content_hash"),
        "cache_key": index.meta.get("key"),
        "area_ranges": {v: index.area_range(v, *th.sanity.area_percentiles) for v in ("CC", "MLO")},
        "expected_side": index.expected_side(),
    }


def check_report_dir(report_dir: str | Path, keep: list[str | Path]) -> Path:
    """The report folder as an absolute path, when a run may replace it (and its local sibling)
    whole: a folder or nothing (no file on the way), holding a report or nothing, and neither
    holding nor being any of ``keep`` (the data, the working directory). Else InputError."""
    folder = Path(os.path.abspath(report_dir))
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise InputError("the report goes into a folder, and this is a file", file=p)
    for k in keep:
        path = Path(os.path.abspath(k))
        if folder == path or folder in path.parents:
            raise InputError(f"each run replaces its report folder, and this one holds {path.name}", file=folder)
    local = local_dir(folder)
    if local.exists() and not local.is_dir():
        raise InputError("the local-only report folder must be a folder, and this is a file", file=local)
    for f, marker in ((folder, REPORT_JSON), (local, LOCAL_MARKER)):
        if f.is_dir() and any(f.iterdir()) and not (f / marker).is_file():
            raise InputError(
                f"holds files that are not a validation report (no {marker}); each run replaces the report "
                "folder, so choose a new or empty one",
                file=f,
            )
    return folder


def validate_release(
    release: str | Path | LoadedRelease,
    reference: str | Path,
    *,
    baseline: str | Path | None = None,
    spec: str | Path | ReleaseSpec | None = None,
    config: str | Path | Thresholds | None = None,
    report_dir: str | Path | None = None,
    progress: bool = True,
    plots: bool = True,
) -> ValidationReport:
    """Run every check; with ``report_dir``, write report.json, report.md and the statistics plots
    there and the image panels into ``local_dir(report_dir)``, both afresh."""
    with contextlib.ExitStack() as stack:
        out = local = None
        if report_dir is not None:
            keep = [Path.cwd(), reference]
            keep += [release.source] if isinstance(release, LoadedRelease) else [release]
            keep += [baseline] if baseline is not None else []
            folder = check_report_dir(report_dir, [k for k in keep if Path(k).exists()])
            out = stack.enter_context(atomic_dir(folder))
            local = stack.enter_context(atomic_dir(local_dir(folder)))
        return _validate(release, reference, baseline, spec, config, out, local, progress, plots)


def _validate(
    release: str | Path | LoadedRelease,
    reference: str | Path,
    baseline: str | Path | None,
    spec: str | Path | ReleaseSpec | None,
    config: str | Path | Thresholds | None,
    out: Path | None,
    local: Path | None,
    progress: bool,
    plots: bool,
) -> ValidationReport:
    """``validate_release`` with its report folders staged (``out``, ``local``: None for no report)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    rel = release if isinstance(release, LoadedRelease) else load_release(release)
    analysis_pool(rel.num_rows)  # the workers start while the reference index loads
    spec_path: Path | None = None
    if spec is None and rel.spec_path is not None:
        spec = rel.spec_path
    if isinstance(spec, (str, Path)):
        spec_path = Path(spec)
        spec = load_spec(spec_path)
    th = resolve_thresholds(config, spec, spec_path)
    rng = np.random.default_rng(th.seed)
    index, ref_ds = reference_index(
        reference, embed_size=th.dedup.embed_size, bins=th.stats.histogram_bins, progress=progress
    )
    timings["reference_index"] = time.perf_counter() - t
    # the planted copies are analysed on the pool ahead of the release rows (cached per reference)
    t = time.perf_counter()
    canaries = CanaryRun(index, ref_ds, th, analysis_pool)
    canary_s = time.perf_counter() - t

    t = time.perf_counter()
    rows = Rows.of(rel)
    # a bad baseline is bad input: fail before the long analysis and before any report file exists
    base_rel = load_release(baseline) if baseline is not None else None
    base_rows = Rows.of(base_rel) if base_rel is not None else None
    an = analyse_rows(rel, rows, th, thumb_rows(rows, th, rng), "validate", progress)
    timings["analysis"] = time.perf_counter() - t
    started = None
    pool = analysis_pool(len(rows.ids))
    if out is not None and plots and pool is not None:
        started = DataPlots(rows, an, index, spec, out, pool)
    row_hashes = an.row_hashes  # taken by the analysis pass as it read the bytes

    t = time.perf_counter()
    sanity = sanity_flags(rows, an, index, th, spec)
    checks_s = time.perf_counter() - t
    # Distribution statistics before the de-duplication search (it draws no random numbers, so
    # the figures are the same), so that MS-SSIM runs on a thread while faiss searches here.
    t = time.perf_counter()
    dist_gates, div_pairs = distribution_gates(rows, an, index, th, spec, rel.skipped, rng)
    with ThreadPoolExecutor(1) as ex:
        div_future = ex.submit(stats.diversity, an.thumbs, div_pairs)
        stats_s = time.perf_counter() - t
        t = time.perf_counter()
        result = memorization_flags(rows, an, rel, index, ref_ds, th, progress)
        memo, memo_figures = result.flags, result.figures
        timings["per_image_checks"] = checks_s + time.perf_counter() - t
        t = time.perf_counter()
        canary_gate_ = canary_gate(canaries.figures(), th)
        timings["canaries"] = canary_s + time.perf_counter() - t
        t = time.perf_counter()
        diversity = diversity_gate(div_future.result(), th)

    audit = patient_audit(
        result.queries,
        result.search,
        index,
        memo,
        dedup.PRESCORE_FACTOR * memo_figures["nn_threshold"],
        rows.method,
        rows.source,
    )
    memo_figures["per_density"] = per_density(rows.density, memo, C.MEMORIZATION_CHECKS, rows.ids)
    gates: dict[str, Gate] = {
        C.GATE_SANITY: sanity_gate(
            sanity, len(rows.ids), th, per_density(rows.density, sanity, C.SANITY_CHECKS, rows.ids)
        ),
        C.GATE_MEMORIZATION: memorization_gate(memo, memo_figures, len(rows.ids), th),
        C.GATE_CANARIES: canary_gate_,
        **dist_gates,
        C.GATE_DIVERSITY: diversity,
    }
    base_info = None
    if base_rel is not None and base_rows is not None:
        base_an = analyse_rows(base_rel, base_rows, th, set(), "baseline", progress)
        gates[C.GATE_DRIFT] = drift_gate(rows, an, base_rows, base_an, th, rng)
        base_info = {"source": base_rel.name, "kind": base_rel.kind, "n": len(base_rows.ids), "files": base_rel.files}
    timings["statistics"] = stats_s + time.perf_counter() - t

    t = time.perf_counter()
    realism = realism_figures(  # {"configured": False} at no cost without an encoder
        th.realism,
        ImageSet(rel.grey_images(), method=rows.method, density=rows.density, birads=rows.birads),
        ImageSet(
            dataset_images(ref_ds),
            density=list(index.density),
            birads=list(index.birads),
            key=index.meta.get("content_hash"),
        ),
        previous=ImageSet(
            base_rel.grey_images(), method=base_rows.method, density=base_rows.density, birads=base_rows.birads
        )
        if base_rel is not None and base_rows is not None
        else None,
        seed=th.seed,
        cache_dir=cache_dir_for(Path(reference)),
    )
    timings["realism"] = time.perf_counter() - t

    flags = sanity + memo
    report = ValidationReport(
        passed=rules.overall(g.status for g in gates.values()),
        report_version=REPORT_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        release={
            "source": rel.name,
            "kind": rel.kind,
            "spec": spec_path.name if spec_path else None,
            "spec_digest": spec_digest(spec) if spec is not None else None,
            "skipped": rel.skipped,
            "files": rel.files,
        },
        reference=_reference_info(reference, index, th),
        baseline=base_info,
        implementations=_implementations(th),
        thresholds=th.model_dump(mode="json"),
        n_rows=len(rows.ids),
        gates=gates,
        flagged=flags,
        failed_image_ids=sorted({f.image_id for f in flags}),
        timings_s={k: round(v, 3) for k, v in timings.items()},
        row_hashes=row_hashes,
        patients=audit,
        realism=realism,
    )
    # names only: no machine paths in a report that ships (the sources above are names already)
    report = ValidationReport.model_validate(strip_local_paths(report.model_dump(mode="json")))
    if out is not None and local is not None:
        write_reports(
            report,
            out,
            local,
            rows=rows,
            an=an,
            index=index,
            ref_ds=ref_ds,
            rel=rel,
            spec=spec,
            plots=plots,
            started=started,
        )
    return report


__all__ = ["require_spec_thresholds", "resolve_thresholds", "validate_release"]

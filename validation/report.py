"""The typed validation report: reading report.json back, and writing it with report.md and the
plots.

Other stages (the card, the release build, publishing) read reports through
``ValidationReport.read`` (or ``read_verified``: its statuses re-derived from its figures), so this
module stays light to import: OpenCV, faiss and matplotlib are imported only by the functions that
draw the plots.

A report is bound to the data it judged: ``release.files`` (each data file's name, rows, size and
sha256), ``release.spec_digest`` (``spec_digest``), ``reference.content_hash``, ``thresholds`` and
``row_hashes`` (image_id -> sha256 of the image bytes; ``rows_not_validated`` compares a release's
rows with them).

Two folders per run, each written afresh (staged, then swapped in): the report folder holds what
may ship with a release (report.json, report.md, plots of the released rows' statistics:
``SHIPPABLE_PLOTS``); its sibling ``local_dir(report_dir)`` (the report folder's name +
``LOCAL_SUFFIX``, e.g. ``validation-local/``) holds the image panels (flagged rows beside their
nearest training image): restricted pixels that never leave the machine.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pydantic

from mammosynth.builders.core import atomic
from mammosynth.builders.core.config_io import read_mapping, validate_model
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_json
from mammosynth.builders.core.run_layout import REPORT_JSON, REPORT_MD, report_json

if TYPE_CHECKING:
    import datasets

    from mammosynth.builders.core.spec import ReleaseSpec
    from mammosynth.validation.analysis import Analysed, Rows
    from mammosynth.validation.reference import ReferenceIndex
    from mammosynth.validation.release_io import LoadedRelease

Status = Literal["pass", "warn", "fail"]
# report.json's format: 2 adds the canary self-test gate (required from then on), the patient-level
# audit, per-density figures and the (not yet measured) realism section. Reports without the field
# are version 1.
REPORT_VERSION = 2

# --- the two output folders ----------------------------------------------------------------------

LOCAL_SUFFIX = "-local"  # <report_dir><LOCAL_SUFFIX>/: local-only image panels, never packaged
LOCAL_MARKER = "NOT-FOR-RELEASE.txt"  # written into the local folder, naming what it holds
FLAGGED_PANEL = "flagged.png"  # flagged rows beside their nearest training image (local folder)
# the only PNGs the report folder holds: statistics of the released rows against the reference's
SHIPPABLE_PLOTS: tuple[str, ...] = ("intensity_histograms.png", "box_sizes.png", "class_counts.png")


def local_dir(report_dir: str | Path) -> Path:
    """The local-only sibling of a report folder: ``validation/`` -> ``validation-local/``."""
    report_dir = Path(report_dir)
    return report_dir.with_name(report_dir.name + LOCAL_SUFFIX)


def spec_digest(spec: ReleaseSpec) -> str:
    """sha256 of the spec's content (``output_dir``, where the run lies, left out): what the report
    records as ``release.spec_digest`` and a build compares with its own spec."""
    return sha256_json(spec.model_dump(mode="json", exclude={"output_dir"}))


class Gate(pydantic.BaseModel):
    """One gate: its status plus whatever figures it measured (kept flat, as in report.json)."""

    model_config = pydantic.ConfigDict(extra="allow")

    status: Status
    summary: str = ""


class Flag(pydantic.BaseModel):
    """One finding on one image. Older reports' flags carry a ``severity``; it is kept as an extra."""

    model_config = pydantic.ConfigDict(extra="allow")

    image_id: str
    check: str
    reason: str
    method: str | None = None
    nearest_training_id: str | None = None
    nearest_training_patient: str | None = None  # the pseudonymous patient (study_id) of that image
    nearest_release_id: str | None = None
    distance: float | None = None


class ValidationReport(pydantic.BaseModel):
    """report.json. Everything but ``passed`` and ``gates`` has a default, so that the reports of
    older versions (and hand-written ones) still read."""

    passed: bool
    report_version: int = 1
    created: str = ""
    release: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    baseline: dict[str, Any] | None = None
    implementations: dict[str, str] = {}
    thresholds: dict[str, Any] = {}
    n_rows: int = 0
    gates: dict[str, Gate]
    flagged: list[Flag] = []
    failed_image_ids: list[str] = []
    timings_s: dict[str, float] = {}
    plots: list[str] = []  # file names in the report folder
    local_plots: list[str] = []  # file names in ``local_dir(report folder)``: not shipped
    row_hashes: dict[str, str] = {}  # image_id -> sha256 of the validated image bytes
    # patient-level memorization audit (``patients.patient_audit``): nearest training patient per
    # image, exposure per patient
    patients: dict[str, Any] | None = None
    # distribution realism metrics (FID, KID, precision/recall), filled by the realism module; None =
    # not measured by this version. A dict may carry "markdown" (tables only) for report.md.
    realism: dict[str, Any] | None = None

    @classmethod
    def read(cls, path: str | Path) -> "ValidationReport":
        """The report in ``path`` (a report.json); a missing, unreadable or malformed file is an
        InputError naming the file (and the field, when one is wrong)."""
        path = Path(path)
        try:
            data = read_mapping(path)
        except OSError as exc:
            raise InputError(f"cannot read the validation report: {exc.strerror or exc}", file=path) from None
        return validate_model(cls, data, source=path)

    @classmethod
    def read_verified(cls, path: str | Path) -> "ValidationReport":
        """``read``, and every gate's status and ``passed`` re-derived from the report's own figures
        and recorded thresholds (``verdict``); a disagreement is an InputError naming the file and
        the field (``gates.<name>.status``, ``passed``, or the figure that does not add up)."""
        from mammosynth.validation.verdict import verify  # the rules import the thresholds model

        return verify(cls.read(path), source=Path(path))

    def rows_not_validated(self, hashes: Mapping[str, str]) -> list[str]:
        """The image ids of ``hashes`` (image_id -> sha256 of its image bytes, e.g.
        ``ReleaseData.image_hashes``) that this report did not validate with those bytes."""
        return sorted(i for i, h in hashes.items() if not h or self.row_hashes.get(i) != h)

    def is_for_spec(self, spec: ReleaseSpec) -> bool:
        """Whether this report judged the release ``spec`` describes (``spec_digest``)."""
        return self.release.get("spec_digest") == spec_digest(spec)

    @property
    def data_files(self) -> dict[str, list[dict[str, Any]]]:
        """method (or config) -> the data files validated: {name, rows, bytes, sha256}."""
        return self.release.get("files", {})

    def failed_gates(self) -> list[str]:
        return [k for k, g in self.gates.items() if g.status == "fail"]

    def failed_ids(self) -> set[str]:
        """The image ids that failed validation: ``failed_image_ids``, or, where that list is empty
        (reports older than it), the flags whose ``severity`` is "fail" (or that have none)."""
        ids = set(self.failed_image_ids)
        if not ids:
            ids = {f.image_id for f in self.flagged if (f.model_extra or {}).get("severity", "fail") == "fail"}
        return ids


# --- writing -------------------------------------------------------------------------------------


def write_json(report: ValidationReport, path: Path) -> None:
    atomic.write_json(path, report.model_dump(mode="json"), indent=1, default=str)


_ICON = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail"}


def canary_sentence(report: ValidationReport) -> str:
    """One sentence for the dataset card: what the memorization check caught of the copies it
    planted of training images, and what it flagged of real images of patients held out of the
    index (or that the report predates the self-test)."""
    gate = report.gates.get("canaries")
    if gate is None:
        return (
            "This validation report has no canary self-test (it predates it): the memorization check's "
            "recall is not measured."
        )
    fig = gate.model_dump()
    held = fig.get("held_out", {})
    per = fig.get("per_perturbation", {})
    text = (
        f"This check caught {fig['caught']}/{fig['planted']} planted copies of {fig['images']} training "
        f"images ({len(per)} perturbations: shifts, crops and zooms, stretching, half size, rotation, intensity "
        "and windowing changes, JPEG, noise, flips and pasted boxes"
    )
    weak = sorted((v["recall"], k) for k, v in per.items() if v["recall"] < 1)
    if weak:
        k = weak[0][1]
        text += f"; weakest: {k} {per[k]['caught']}/{per[k]['planted']}"
    text += ")"
    if held.get("images"):
        text += (
            f" and flagged {held['false_positives']} of {held['images']} real images of {held['patients']} "
            "patients held out of the index"
        )
    else:
        text += "; its false-positive rate is not measured (the reference holds a single patient)"
    return text + f": self-test {gate.status}."


def _canary_lines(report: ValidationReport) -> list[str]:
    gate = report.gates.get("canaries")
    if gate is None:
        return []
    fig = gate.model_dump()
    lines = [
        "",
        "### Canary self-test",
        "",
        canary_sentence(report),
        "",
        "| perturbation | caught | recall |",
        "|---|---|---|",
    ]
    for name, v in fig.get("per_perturbation", {}).items():
        lines.append(f"| {name} | {v['caught']}/{v['planted']} | {v['recall']:.0%} |")
    lines.append(
        f"| **all** | **{fig['caught']}/{fig['planted']}** | **{(fig['recall'] or 0):.1%}** (minimum {fig['min_recall']:.0%}) |"
    )
    missed = fig.get("missed", [])
    if missed:
        lines += [
            "",
            "Missed: "
            + "; ".join(
                f"{m['perturbation']} of {m['image_id']} (nearest distance {m['nearest_distance']}, inliers {m['inliers']})"
                for m in missed[:5]
            )
            + (f"; {len(missed) - 5} more in {REPORT_JSON}" if len(missed) > 5 else "")
            + ".",
        ]
    held = fig.get("held_out", {})
    if held.get("images"):
        lines += [
            "",
            f"False-positive rate on {held['images']} real images of {held['patients']} patients held out of the "
            f"index: {held['false_positive_rate']:.1%} (maximum {fig['max_false_positive_rate']:.0%}); most keypoint "
            f"inliers to another patient: {held.get('max_inliers')} (a copy needs "
            f"{fig['geometric_verification']['min_inliers']}).",
        ]
    return lines


def _patient_lines(report: ValidationReport) -> list[str]:
    p = report.patients
    if not p:
        return []
    lines = [
        "",
        "### Patient-level audit",
        "",
        f"{p['patients_matched']} of {p['patients_in_reference']} training patients have a released image flagged "
        f"against one of their images; {p['patients_near']} have released images within distance "
        f"{p['near_distance']} of one of their views (at most {p['max_near']} per patient); "
        f"{p['same_patient_other_view']} inpainted/blended image(s) match another view of their own background's patient.",
    ]
    shown = [e for e in p.get("exposure", []) if e["matched"] or e["near"]][:10]
    if shown:
        lines += ["", "| patient | released images matched | near | used as background |", "|---|---|---|---|"]
        lines += [f"| {e['patient']} | {e['matched']} | {e['near']} | {e['backgrounds']} |" for e in shown]
    return lines


def _equity_lines(report: ValidationReport) -> list[str]:
    """Sanity rejections, memorization flags and canary recall per density category."""
    cols = {
        "sanity": report.gates.get("sanity"),
        "memorization": report.gates.get("memorization"),
        "canaries": report.gates.get("canaries"),
    }
    per = {k: (g.model_dump().get("per_density") if g is not None else None) or {} for k, g in cols.items()}
    cats = sorted(set(per["sanity"]) | set(per["memorization"]) | set(per["canaries"]))
    if not cats:
        return []
    lines = [
        "",
        "### Per density category",
        "",
        "| density | rows | sanity rejections | memorization flags | canary recall |",
        "|---|---|---|---|---|",
    ]
    for c in cats:
        s, m, k = per["sanity"].get(c), per["memorization"].get(c), per["canaries"].get(c)
        rows = (s or m or {}).get("rows", 0)
        lines.append(
            f"| {c} | {rows} | {s['flagged'] if s else 0} | {m['flagged'] if m else 0} | "
            + (f"{k['caught']}/{k['planted']}" if k else "–")
            + " |"
        )
    return lines


def _realism_lines(report: ValidationReport) -> list[str]:
    """The realism section (``realism.render_realism_markdown``: tables only), or a line saying
    that the report has none."""
    if report.realism is None:
        return ["", "### Realism metrics", "", "FID, KID and precision/recall: not part of this report."]
    from mammosynth.validation.realism import render_realism_markdown  # scipy, faiss: only when there

    return ["", render_realism_markdown(report.realism).rstrip("\n")]


def render_markdown(report: ValidationReport, plots_rel: str = "", *, images: bool = True) -> str:
    """Compact summary for the dataset card and the CI page; ``images=False`` leaves out the plot
    links (tables only: the CI summary page cannot show the report folder's files)."""
    lines = [
        f"## Validation: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"Release `{report.release.get('source')}` ({report.n_rows} images) against reference "
        f"`{report.reference.get('source')}` ({report.reference.get('n')} images, content hash "
        f"`{str(report.reference.get('content_hash', ''))[:12]}`)"
        + (f"; baseline `{report.baseline.get('source')}`" if report.baseline else "")
        + ".",
        "",
        "| gate | status | summary |",
        "|---|---|---|",
    ]
    for name, g in report.gates.items():
        lines.append(f"| {name} | {_ICON.get(g.status, g.status)} | {g.summary.replace('|', '/')} |")
    lines += ["", f"Flagged images: {len(report.failed_image_ids)} of {report.n_rows}."]
    if report.flagged:
        lines += ["", "| image | check | reason | nearest training image |", "|---|---|---|---|"]
        for f in report.flagged[:25]:
            lines.append(f"| {f.image_id} | {f.check} | {f.reason.replace('|', '/')} | {f.nearest_training_id or ''} |")
        if len(report.flagged) > 25:
            lines.append(f"| … | | {len(report.flagged) - 25} more in {REPORT_JSON} | |")
    lines += _canary_lines(report) + _patient_lines(report) + _equity_lines(report) + _realism_lines(report)
    lines += [
        "",
        "Implementations: " + ", ".join(f"{k}: {v}" for k, v in report.implementations.items()) + ".",
        "Effect sizes are judged above a bootstrap noise floor of the reference against itself.",
    ]
    if report.plots and images:
        lines += ["", " ".join(f"![{Path(p).stem}]({plots_rel}{Path(p).name})" for p in report.plots)]
    elif report.plots:
        lines += ["", f"Plots ({', '.join(Path(p).name for p in report.plots)}) are in the report folder."]
    if report.local_plots:
        lines += [
            "",
            f"Image panels of flagged rows ({', '.join(report.local_plots)}) are kept on the validating machine, "
            f"beside this folder in its `{LOCAL_SUFFIX}` sibling; they show training images and are not released.",
        ]
    return "\n".join(lines) + "\n"


def write_markdown(report: ValidationReport, path: Path) -> str:
    """report.md; also appended to the CI job's summary page when there is one, as tables only
    (the page cannot show the plots, which stay in the report folder)."""
    text = render_markdown(report)
    atomic.write_text(path, text)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(render_markdown(report, images=False))
    return text


# --- plots -------------------------------------------------------------------------------------

FLAGGED_GRID_ROWS = 12  # flagged images drawn beside their nearest training image


def _data_plot_jobs(
    rows: Rows, an: Analysed, index: ReferenceIndex, spec: ReleaseSpec | None, out: Path
) -> list[tuple[str, tuple, Path]]:
    """The plots that need only the analysis (not the findings): (plots function, args, file).
    Statistics only (histograms, box sizes, counts): no pixels of any row, so they may ship."""
    from mammosynth.validation.stats import expected_counts  # scipy: not needed to read a report

    ok = [k for k in range(len(rows.ids)) if an.feats[k] is not None]
    per_m = defaultdict(lambda: np.zeros(an.feats[ok[0]].hist.shape if ok else 1))
    for k in ok:
        per_m[rows.method[k]] = per_m[rows.method[k]] + an.feats[k].hist
    rb: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for b in sorted({rows.birads[k] for k in ok if rows.bbox[k]}):
        bx = [(x1 - x0) / an.feats[k].width for k in ok if rows.birads[k] == b for x0, _, x1, _ in rows.bbox[k]]
        by = [(y1 - y0) / an.feats[k].height for k in ok if rows.birads[k] == b for _, y0, _, y1 in rows.bbox[k]]
        rb[b] = (np.array(bx), np.array(by))
    refb = {
        int(b): (index.box_w[index.box_birads == b], index.box_h[index.box_birads == b])
        for b in np.unique(index.box_birads)
    }
    label = lambda c: f"{c[0]} B{c[1]} {c[2]} {c[3]}"  # noqa: E731
    obs = Counter(
        label((rows.method[k], rows.birads[k], rows.view[k], rows.laterality[k])) for k in range(len(rows.ids))
    )
    exp = {label(c): v for c, v in expected_counts(spec).items()} if spec is not None else None
    args = {
        "intensity_histograms": (dict(per_m), index.hist[index.side != ""].sum(0)),
        "box_sizes": (rb, refb),
        "class_counts": (dict(obs), exp),
    }
    return [(Path(file).stem, args[Path(file).stem], out / file) for file in SHIPPABLE_PLOTS]


def _render(name: str, args: tuple, path: Path) -> str:
    """Draw one plot (in this process or on a pool worker); returns its file."""
    from mammosynth.validation import plots

    return getattr(plots, name)(*args, path)


class DataPlots:
    """The data plots, started early: on a process pool when one is given (they then draw while
    the caller runs the checks and statistics), else drawn when ``files`` is asked for."""

    def __init__(
        self,
        rows: Rows,
        an: Analysed,
        index: ReferenceIndex,
        spec: ReleaseSpec | None,
        out: Path,
        pool: Executor | None = None,
    ) -> None:
        self.jobs = _data_plot_jobs(rows, an, index, spec, out)
        # absolute paths: a worker's working directory is the one its pool started in
        self.futures: list[Future] | None = (
            [pool.submit(_render, name, args, path.resolve()) for name, args, path in self.jobs]
            if pool is not None
            else None
        )

    def files(self) -> list[str]:
        """The plots' file names (in the folder they were drawn into), once drawn."""
        if self.futures is None:
            for j in self.jobs:
                _render(*j)
        else:
            for f in self.futures:
                f.result()
        return [path.name for _, _, path in self.jobs]


def _flagged_pairs(
    report: ValidationReport, rows: Rows, index: ReferenceIndex, ref_ds: datasets.Dataset, rel: LoadedRelease
) -> list[tuple[str, Any, str | None, Any]]:
    """(label, flagged image, nearest training id, its image) for the first flagged images."""
    from mammosynth.builders.core.imageio import UnreadableImage, decode, grey_channel
    from mammosynth.validation.reference import reference_image

    pairs = []
    row_of, pos = index.row_of(), {i: k for k, i in enumerate(rows.ids)}
    seen = set()
    for f in report.flagged:
        if f.image_id in seen or len(pairs) >= FLAGGED_GRID_ROWS:
            continue
        seen.add(f.image_id)
        try:
            img = grey_channel(decode(rel.image(pos[f.image_id])))
        except (UnreadableImage, ValueError):
            continue
        ref = None
        if f.nearest_training_id and row_of.get(f.nearest_training_id, ref_ds.num_rows) < ref_ds.num_rows:
            ref = grey_channel(reference_image(ref_ds, row_of[f.nearest_training_id]))
        pairs.append((f"{f.image_id}\n{f.check}", img, f.nearest_training_id, ref))
    return pairs


LOCAL_NOTE = """Local-only output of `mammosynth validate`: image panels that show training (reference)
images and flagged rows. Restricted pixels: do not publish, share or package this folder. The
report that may ship is in the sibling folder without the "{suffix}" suffix.
"""


def write_reports(
    report: ValidationReport,
    out: Path,
    local: Path,
    *,
    rows: Rows,
    an: Analysed,
    index: ReferenceIndex,
    ref_ds: datasets.Dataset,
    rel: LoadedRelease,
    spec: ReleaseSpec | None,
    plots: bool = True,
    started: DataPlots | None = None,
) -> None:
    """report.json, report.md and (with ``plots``) the statistics plots into ``out``; the image
    panels (and ``LOCAL_MARKER``) into ``local``. Both are a run's own fresh (staging) folders;
    ``report.plots`` and ``report.local_plots`` list the files by name."""
    out.mkdir(parents=True, exist_ok=True)
    local.mkdir(parents=True, exist_ok=True)
    atomic.write_text(local / LOCAL_MARKER, LOCAL_NOTE.format(suffix=LOCAL_SUFFIX))
    if plots:
        from mammosynth.validation.plots import flagged_grid

        pairs = _flagged_pairs(report, rows, index, ref_ds, rel)
        if pairs:
            flagged_grid(pairs, local / FLAGGED_PANEL)
            report.local_plots = [FLAGGED_PANEL]
        report.plots = (started or DataPlots(rows, an, index, spec, out)).files()
    stray = sorted(p.name for p in out.iterdir() if p.suffix == ".png" and p.name not in SHIPPABLE_PLOTS)
    if stray:  # a new plot must be declared shippable (statistics only) or drawn into ``local``
        raise RuntimeError(f"undeclared plots in the report folder: {stray}")
    write_json(report, report_json(out))
    write_markdown(report, out / REPORT_MD)


__all__ = [
    "Gate",
    "Flag",
    "ValidationReport",
    "Status",
    "write_json",
    "render_markdown",
    "canary_sentence",
    "REPORT_VERSION",
    "write_markdown",
    "DataPlots",
    "write_reports",
    "LOCAL_SUFFIX",
    "LOCAL_MARKER",
    "FLAGGED_PANEL",
    "SHIPPABLE_PLOTS",
    "local_dir",
    "spec_digest",
]

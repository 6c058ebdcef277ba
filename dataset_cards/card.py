"""Render, lint and amend the release's dataset card (README.md with Hub YAML metadata).

The YAML `dataset_info` is produced by `datasets`' own serializer from `schema.release_features()`
and the exact split sizes of the rows being released, so loading the release checks the card.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import jinja2
import yaml
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCardData

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.provenance import strip_local_paths
from mammosynth.builders.core.release_data import ReleaseData
from mammosynth.builders.core.schema import BIRADS_NAMES, LATERALITIES, METHODS, VIEWS, release_features
from mammosynth.builders.core.spec import REPO_ID, PoissonParams, ReleaseSpec
from mammosynth.dataset_cards.citations import SOURCE_PAPERS, release_bibtex
from mammosynth.validation.checks import MEMORIZATION_CHECKS
from mammosynth.validation.report import ValidationReport, canary_sentence

TEMPLATES = Path(__file__).parent / "templates"
OVERRIDES_RE = re.compile(r"(<!-- mammosynth:overrides -->\n)(.*?)(\n<!-- /mammosynth:overrides -->)", re.S)
NO_OVERRIDES = {
    "passed": "None: the release passed its validation gates and respects the source licence.",
    "failed": "None recorded. The shipped rows fail validation gates (see Validation): the release is not "
    "fit for publishing as it stands.",
    "unvalidated": "None recorded. No validation report describes this release.",
}

METHOD_WORDS = {
    "text2image": "Text-to-image: Stable Diffusion 3.5 with a LoRA adapter, prompted with laterality, view, "
    "density and BI-RADS",
    "inpainting": "Lesion inpainting: a BI-RADS-specific Stable Diffusion 2 inpainting model paints a lesion "
    "into a box placed inside the breast of a real BI-RADS 1 background",
    "poisson": "Poisson blending: a real lesion crop (BI-RADS 5 by default) is blended by Poisson image "
    "editing into a real background without findings (BI-RADS 1 by default) of a matching vendor",
}
COLUMN_MEANINGS = {
    "image": "the synthetic mammogram (PNG)",
    "image_id": "stable id, unique in the release",
    "method": "generation method",
    "birads": "assessment category the image was generated for",
    "view": "CC / MLO",
    "laterality": "L / R",
    "density": "prompt density or the background's (A–D); null when unknown",
    "bbox": "inserted lesions as [xmin, ymin, xmax, ymax] in output pixels; empty when none is known",
    "seed": "sampling seed",
    "mask_seed": "placement seed",
    "prompt": "text condition used; null when none",
    "source_image": "pseudonymous id of the real background (inpainting, poisson); null otherwise",
    "lesion_source": "pseudonymous id of the donor lesion (poisson); null otherwise",
    "manufacturer": "vendor of the background, or the one named in the prompt; null when unknown",
    "generator": "checkpoint name and content hash / revision",
}
# Anything that looks like an unfilled template slot or a stock "fill me" phrase.
PLACEHOLDER_RE = re.compile(
    r"\{\{.*?\}\}|\{%.*?%\}|\[More Information Needed\]|\bTODO\b|\bTBD\b|\bFIXME\b|<FILL[^>]*>|\bXXX\b|"
    r"\bPLACEHOLDER\b",
)


@dataclass
class Override:
    kind: str  # "validation" or "licence"
    reason: str

    def line(self) -> str:
        what = {
            "validation": "Published although the validation report was missing or failed",
            "licence": "Published publicly although rows embed pixels of a source whose licence forbids redistribution",
        }[self.kind]
        return f"- **{what}.** Maintainer's reason: {self.reason}"


def size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def _feature_type(feature: Any) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "ClassLabel(" + ", ".join(feature.names) + ")"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.Image):
        return "Image"
    return "list of [4 × float32]"


def card_metadata(spec: ReleaseSpec, data: ReleaseData) -> dict[str, Any]:
    """The YAML header: Hub fields, `configs` and `dataset_info` with exact split sizes."""
    features = release_features()
    card_data = DatasetCardData(
        license=spec.license,
        pretty_name=spec.pretty_name,
        language=["en"],
        tags=sorted({"medical", "mammography", "synthetic", "breast-cancer", *spec.hub.tags}),
        task_categories=spec.hub.task_categories,
        size_categories=[size_category(data.num_examples("all"))],
        source_datasets=[spec.source.name],
    )
    infos = DatasetInfosDict()
    for cfg in data.configs:
        split = datasets.SplitInfo(name="train", num_bytes=data.num_bytes(cfg), num_examples=data.num_examples(cfg))
        infos[cfg] = datasets.DatasetInfo(
            features=features,
            splits=datasets.SplitDict({"train": split}),
            dataset_size=data.num_bytes(cfg),
        )
    infos.to_dataset_card_data(card_data)
    meta = card_data.to_dict()
    meta["configs"] = [
        {
            "config_name": cfg,
            "data_files": [
                {"split": "train", "path": [f"data/{m}/train-*" for m in (data.methods if cfg == "all" else [cfg])]}
            ],
            **({"default": True} if cfg == "all" else {}),
        }
        for cfg in data.configs
    ]
    if spec.hub.visibility == "gated":
        meta["extra_gated_prompt"] = spec.hub.gated_prompt
        meta["extra_gated_fields"] = {
            "Affiliation": "text",
            "I will not use this dataset for clinical diagnosis": "checkbox",
        }
    return meta


def _validation_summary(report: ValidationReport | None, shipped_rows: int, dropped: int) -> tuple[str, str]:
    """The gate table and the memorization statement, both of the rows the release ships."""
    if report is None:
        return (
            "No validation report was produced for this release.",
            "No memorization check was run; treat every image as possibly memorized.",
        )
    scope = f"Gates computed on the {shipped_rows} rows this release ships"
    if dropped:
        scope += f", validated again after {dropped} rows were dropped (see *Dropped rows*)"
    lines = [scope + ".", "", f"Overall: **{'passed' if report.passed else 'FAILED'}**.", ""]
    lines += ["| gate | status | summary |", "|---|---|---|"]
    for name, gate in sorted(report.gates.items()):
        lines.append(f"| {name} | {gate.status} | {gate.summary.replace('|', '/')} |")
    by_check = Counter(f.check for f in report.flagged)
    if by_check:
        lines += ["", "Flagged shipped rows per check: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_check.items()))]
        lines[-1] += "."
    memo_flags = [f for f in report.flagged if f.check in MEMORIZATION_CHECKS]
    memo = (
        "Every image was compared with every training image of the prepared source set (exact pixel hash, "
        "perceptual hash and nearest-neighbour distance inside the breast, thresholds calibrated on real "
        "held-out images; near candidates re-checked by keypoint matching, so cropped, zoomed, rotated and "
        f"stretched copies are caught). {len(memo_flags)} shipped row(s) are flagged as possible copies"
        + (" (listed in `validation/report.json`)." if memo_flags else ".")
        + " For inpainting and Poisson rows the background is, by construction, a real training image. "
        + canary_sentence(report)
    )
    return "\n".join(lines), memo


def realism_text(report: ValidationReport | None) -> str:
    """The realism metrics of the shipped rows (FID, KID, precision/recall), or why there are none."""
    if report is None or report.realism is None:
        return "No realism metrics were computed for this release."
    if not report.realism.get("configured"):
        return (
            "Not configured: no feature encoder was named in the validation thresholds (`realism.extractor`), "
            "so no FID, KID or precision/recall is reported."
        )
    from mammosynth.validation.realism import render_realism_markdown  # scipy, faiss: only when needed

    text = render_realism_markdown(report.realism, heading="####")
    return text.split("\n", 1)[1].strip()  # the card's own heading stands above it


def dropped_rows(data: ReleaseData, candidate: ValidationReport | None) -> list[tuple[str, str, int, str]]:
    """(method, check, rows, one reason) for the rows dropped after validation, from the report
    the drops were decided on."""
    method_of = {i: m for m, ids in data.dropped.items() for i in ids}
    groups: dict[tuple[str, str], list[str]] = {}
    for f in candidate.flagged if candidate else []:
        if f.image_id in method_of:
            groups.setdefault((method_of[f.image_id], f.check), []).append(f.reason)
    out = [(m, c, len(reasons), reasons[0]) for (m, c), reasons in sorted(groups.items())]
    flagged = {f.image_id for f in candidate.flagged} if candidate else set()
    unexplained = Counter(m for i, m in method_of.items() if i not in flagged)
    out += [(m, "(no finding recorded)", n, "listed as failed by the report") for m, n in sorted(unexplained.items())]
    return out


def _source_text(sources: dict[str, Any], extra: list[str]) -> str:
    """Each source's licence and the attribution its record asks for, then the citations of the
    records and ``extra`` (the spec's): BibTeX entries in one block, plain references as lines."""
    lines, cites = [], []
    for name, use in sources.items():
        lic = use.licence
        line = f"- **{name}** (licence `{lic.licence}`" + (f", {lic.url}" if lic.url else "") + ")."
        if lic.attribution:
            line += f" Attribution it asks for: {lic.attribution.strip()}"
        else:
            line += f" Its record names no attribution text; credit it as {name}."
        lines.append(line)
        cites.append((lic.citation or "").strip())
    cites = list(dict.fromkeys(c for c in [*cites, *(e.strip() for e in extra)] if c))
    lines += [f"- Cite: {c}" for c in cites if not c.startswith("@")]
    bibtex = [c for c in cites if c.startswith("@")]
    if bibtex:
        lines += ["", "```bibtex", "\n\n".join(bibtex), "```"]
    return "\n".join(lines)


def _count_table(data: ReleaseData) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for m in data.methods:
        c = data.counts(m)
        out[m] = {}
        for b in BIRADS_NAMES:
            row = {f"{v} {lat}": c.get((b, v, lat), 0) for v in VIEWS for lat in LATERALITIES}
            row["total"] = sum(row.values())
            out[m][b] = row
    return out


def _params(spec: ReleaseSpec, method: str) -> dict[str, Any]:
    m = spec.methods[method]
    p = getattr(m, method)
    if p is None and method == "poisson":
        p = PoissonParams()  # optional in the spec: the card shows the defaults the generator used
    # Local paths say nothing to a reader; the generator column carries the content hash. The
    # worker count is a speed setting: the images do not depend on it.
    return strip_local_paths(p.model_dump(mode="json", exclude={"workers"})) if p is not None else {}


def changes_text(spec: ReleaseSpec, data: ReleaseData, previous: dict[str, Any] | None) -> str:
    if previous is None and not spec.changes:
        return "First version."
    parts = [spec.changes.strip()] if spec.changes else []
    if previous is not None:
        parts.append(f"Rows per config, version {previous.get('version', 'previous')} → {spec.version}:")
        parts.append("")
        parts += ["| config | before | after |", "|---|---|---|"]
        prev_counts = previous.get("num_examples", {})
        for cfg in sorted(set(prev_counts) | set(data.configs), key=lambda c: (c == "all", c)):
            after = data.num_examples(cfg) if cfg in data.configs else 0
            parts.append(f"| {cfg} | {prev_counts.get(cfg, 0)} | {after} |")
    return "\n".join(parts)


def previous_release_info(ref: str | Path | None) -> dict[str, Any] | None:
    """Version and rows per config of the previous release: a local release folder, or a Hub
    dataset ``ORG/NAME[@revision]`` read through huggingface_hub (its card's YAML and ``spec.yaml``)
    at the configured endpoint. Anything unreadable is an InputError naming ``previous_release``."""
    if ref is None:
        return None
    text = str(ref)
    folder = Path(text).expanduser()
    if folder.is_dir():
        readme, spec_file = folder / "README.md", folder / "spec.yaml"
        if not readme.is_file():
            raise InputError("previous release has no README.md", file=readme, field="previous_release")
        spec_text = spec_file.read_text(encoding="utf-8") if spec_file.is_file() else None
        return _previous_from(readme.read_text(encoding="utf-8"), spec_text, readme, spec_file)
    repo, _, rev = text.partition("@")
    if not REPO_ID.match(repo) or text.startswith((".", "/", "~")):
        raise InputError(
            "no such folder, and not a Hub repo id (ORG/NAME[@revision])", file=text, field="previous_release"
        )
    card_text, spec_text = _hub_release_files(repo, rev or None, text)
    return _previous_from(card_text, spec_text, f"{text}:README.md", f"{text}:spec.yaml", default_version=rev or None)


def _hub_release_files(repo: str, rev: str | None, where: str) -> tuple[str, str | None]:
    """README.md and spec.yaml (None when the repo has none) of a Hub dataset at ``rev``."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub import errors as hub_errors

    endpoint = constants.ENDPOINT  # HF_ENDPOINT as the library read it

    def fetch(name: str) -> str:
        path = hf_hub_download(repo, name, repo_type="dataset", revision=rev, endpoint=endpoint)
        return Path(path).read_text(encoding="utf-8")

    try:
        card_text = fetch("README.md")
        try:
            spec_text: str | None = fetch("spec.yaml")
        except hub_errors.RemoteEntryNotFoundError:  # the Hub says there is none (offline is not "none")
            spec_text = None
    except hub_errors.RepositoryNotFoundError:
        raise InputError(
            f"no dataset {repo} on {endpoint} (or no access)", file=where, field="previous_release"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise InputError(f"{repo} has no revision {rev!r}", file=where, field="previous_release") from None
    except hub_errors.LocalEntryNotFoundError:
        raise InputError(
            f"cannot reach {endpoint} and {repo} is not in the cache (offline?)", file=where, field="previous_release"
        ) from None
    except hub_errors.RemoteEntryNotFoundError:
        raise InputError(f"{repo} has no README.md at {rev or 'main'}", file=where, field="previous_release") from None
    except Exception as exc:
        # the client's transport errors (its HTTP library's own classes) mean the same as OSError
        transport = {"TransportError", "ConnectError", "TimeoutException", "HTTPError"}
        known = (hub_errors.HfHubHTTPError, hub_errors.HFValidationError, OSError)
        if not isinstance(exc, known) and not transport & {c.__name__ for c in type(exc).__mro__}:
            raise
        raise InputError(
            f"cannot read {repo} from {endpoint} ({type(exc).__name__})", file=where, field="previous_release"
        ) from None
    return card_text, spec_text


def _previous_from(
    card_text: str,
    spec_text: str | None,
    card_where: str | Path,
    spec_where: str | Path,
    default_version: str | None = None,
) -> dict[str, Any]:
    try:
        meta = parse_card(card_text)[0]
        infos = meta.get("dataset_info") or []
        infos = [infos] if isinstance(infos, dict) else infos
        counts = {i.get("config_name", "default"): sum(s["num_examples"] for s in i.get("splits", [])) for i in infos}
    except (InputError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"previous release's card metadata is malformed ({type(exc).__name__})",
            file=card_where,
            field="previous_release",
        ) from None
    version = default_version
    if spec_text is not None:
        try:
            version = (yaml.safe_load(spec_text) or {}).get("version", version)
        except (yaml.YAMLError, AttributeError) as exc:
            raise InputError(
                f"previous release's spec is malformed ({type(exc).__name__})",
                file=spec_where,
                field="previous_release",
            ) from None
    return {"version": version, "num_examples": counts}


def render_card(
    spec: ReleaseSpec,
    data: ReleaseData,
    report: ValidationReport | None,
    *,
    overrides: list[Override] = (),  # type: ignore[assignment]
    previous: dict[str, Any] | None = None,
    candidate: ValidationReport | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """The card of ``data`` as validated by ``report`` (the report of exactly these rows);
    ``candidate`` is the report the dropped rows were dropped on, when rows were dropped;
    ``extra_sections`` are Markdown sections (each opening with its ``## `` heading) placed after
    the validation section."""
    from mammosynth.builders.core.licensing import source_uses

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    meta = card_metadata(spec, data)
    dropped_total = sum(len(v) for v in data.dropped.values())
    summary, memorization = _validation_summary(report, data.num_examples("all"), dropped_total)
    density = data.density_shares()
    total = data.num_examples("all")
    density_text = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in density.items()) or "not recorded"
    features = release_features()
    sources = source_uses(spec, data.tables)
    citations = [SOURCE_PAPERS["methods"], SOURCE_PAPERS["mam-e"], *(c.strip() for c in spec.citations)]
    # the spec's own source citation, when the prepared set's record carries none
    source_bibtex = [spec.source.citation.strip()] if spec.source.citation else []
    status = "unvalidated" if report is None else "passed" if report.passed else "failed"
    text = env.get_template("README.md.j2").render(
        yaml_metadata=yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
        spec=spec,
        data=data,
        repo_id=spec.hub.repo_id or f"<org>/{spec.name}",
        total_rows=total,
        method_words=METHOD_WORDS,
        params={m: _params(spec, m) for m in data.methods},
        requested={m: spec.total(m) for m in data.methods},
        schema_rows=[(k, _feature_type(f), COLUMN_MEANINGS[k]) for k, f in features.items()],
        views=VIEWS,
        lateralities=LATERALITIES,
        birads_names=BIRADS_NAMES,
        count_table=_count_table(data),
        validation_summary=summary,
        memorization=memorization,
        realism=realism_text(report),
        dropped_total=dropped_total,
        dropped_rows=dropped_rows(data, candidate),
        density_text=density_text,
        real_pixel_methods=[m for m in data.methods if m in ("inpainting", "poisson")],
        overrides_text="\n".join(o.line() for o in overrides) or NO_OVERRIDES[status],
        changes_text=changes_text(spec, data, previous),
        release_bibtex=release_bibtex(spec),
        extra_sections=list(extra_sections),
        citations=citations,
        source_text=_source_text(sources, source_bibtex),
        sources=sources,
    )
    if not spec.hub.repo_id:
        text = text.replace(f'"<org>/{spec.name}"', f'"path/to/{spec.name}"')
    return text


def parse_card(text: str) -> tuple[dict[str, Any], str]:
    """(YAML metadata, Markdown body)."""
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    if not m:
        raise InputError("card has no YAML metadata block")
    return yaml.safe_load(m.group(1)) or {}, m.group(2)


def lint_card(text: str, *, source: str | Path | None = None) -> None:
    """Fail on unfilled placeholders, a missing metadata field or an empty section."""
    problems: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        for hit in PLACEHOLDER_RE.finditer(line):
            problems.append(f"line {i}: unfilled placeholder {hit.group(0)!r}")
    meta, body = parse_card(text)
    for key in ("license", "pretty_name", "tags", "task_categories", "size_categories", "configs", "dataset_info"):
        if not meta.get(key):
            problems.append(f"metadata field {key!r} is missing")
    for tag in ("medical", "mammography", "synthetic"):
        if tag not in (meta.get("tags") or []):
            problems.append(f"tag {tag!r} is missing")
    headers = [(len(h), t) for h, t in re.findall(r"^(#{2,4}) (.*)$", body, flags=re.M)]
    contents = re.split(r"^#{2,4} .*$", body, flags=re.M)[1:]
    for k, ((level, title), content) in enumerate(zip(headers, contents)):
        opens_subsection = k + 1 < len(headers) and headers[k + 1][0] > level
        if not content.strip() and not opens_subsection:
            problems.append(f"section {title!r} is empty")
    if problems:
        raise InputError(
            "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
            file=source,
            field="README.md",
        )


def override_recorded(readme: Path, override: Override) -> bool:
    """Whether the card's overrides block already holds ``override``."""
    m = OVERRIDES_RE.search(readme.read_text(encoding="utf-8"))
    return m is not None and override.line() in m.group(2).splitlines()


def record_override(readme: Path, override: Override) -> str:
    """Add ``override`` to the card's overrides block (idempotent); returns the new text."""
    text = readme.read_text(encoding="utf-8")
    m = OVERRIDES_RE.search(text)
    if m is None:
        raise InputError("card has no overrides block", file=readme)
    lines = [] if m.group(2).strip() in NO_OVERRIDES.values() else m.group(2).strip().splitlines()
    if override.line() not in lines:
        lines.append(override.line())
    text = text[: m.start(2)] + "\n".join(lines) + text[m.end(2) :]
    readme.write_text(text, encoding="utf-8")
    return text


__all__ = [
    "Override",
    "card_metadata",
    "render_card",
    "lint_card",
    "parse_card",
    "record_override",
    "override_recorded",
    "previous_release_info",
    "size_category",
    "json",
    "METHODS",
]

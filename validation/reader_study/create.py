"""`mammosynth reader-study create`: sample cases from a release and a real set, write them through
the one case preparation under opaque names, with the key, the readers' tokens and each reader's
own order beside them."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mammosynth.builders.core.atomic import atomic_dir
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import sha256_bytes
from mammosynth.builders.core.imageio import decode_grey, image_size
from mammosynth.builders.core.prepared import ingest_fingerprint, open_prepared
from mammosynth.builders.core.schema import BIRADS_NAMES, DENSITIES, LATERALITIES, METHODS, VIEWS, lesion_image_id
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.core.workers import cpu_count, worker_pool
from mammosynth.validation.reader_study.caseimage import prepare_case
from mammosynth.validation.reader_study.layout import Case, Mode, StudyLayout, Trial
from mammosynth.validation.reader_study.sampling import STRATA, Candidate, matched, stratified
from mammosynth.validation.reader_study.survey import DEFAULT_SURVEY, load_survey
from mammosynth.validation.release_files import ReleaseRows
from mammosynth.validation.release_io import LoadedRelease, load_release


@dataclass
class CreateOptions:
    n_real: int
    n_synthetic: int
    readers: int
    stratify: tuple[str, ...] = ("method",)
    seed: int = 0
    mode: Mode = "single"
    size: int | None = None  # side of every case image; None: the smallest long side sampled
    survey: Path | None = None
    workers: int | None = None


@dataclass
class CreatedStudy:
    root: Path
    cases: int
    trials: int
    readers: dict[str, str]
    admin_token: str
    notes: list[str] = field(default_factory=list)


def create_study(
    release: str | Path,
    real: str | Path,
    out: str | Path,
    options: CreateOptions,
    *,
    echo: Callable[[str], None] = lambda _: None,
) -> CreatedStudy:
    _check_options(options)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError("the study folder exists and is not empty (a study is never overwritten)", file=out)
    survey = load_survey(options.survey) if options.survey else load_survey(DEFAULT_SURVEY)
    loaded = load_release(release)
    real_ds = open_prepared(real, field="--real")
    synthetic_pool = _release_candidates(loaded)
    real_all = _real_candidates(real_ds)
    notes: list[str] = []

    _refuse_overlap(loaded, real_ds, real)
    training = _training_set_note(loaded, real, real_ds)
    if training:
        notes.append(training)
        echo(f"note: {training}")
    real_pool, excluded = _exclude_sources(real_all, loaded, real_ds)
    if excluded:
        notes.append(
            f"{excluded} real images left out of the real pool: they (or another image of their study) are the "
            "background or lesion donor of a release row, and a reader could recognise them"
        )

    rng = np.random.default_rng(options.seed)
    if options.n_synthetic > len(synthetic_pool):
        raise InputError(
            f"the release has {len(synthetic_pool)} rows, {options.n_synthetic} asked for", field="--n-synthetic"
        )
    if options.n_real > len(real_pool):
        raise InputError(
            f"the real set has {len(real_pool)} eligible images ({excluded} left out as sources of release rows), "
            f"{options.n_real} asked for",
            field="--n-real",
        )
    synthetic = stratified(synthetic_pool, options.n_synthetic, options.stratify, rng)
    real_cases, targets, levels = matched(real_pool, synthetic, options.n_real, rng)
    match = {"exact": levels[0], "view_laterality": levels[1], "view": levels[2], "unmatched": levels[3]}

    sampled = [*synthetic, *real_cases]
    sources = {"synthetic": loaded.dataset, "real": real_ds}
    which = ["synthetic" if c.method else "real" for c in sampled]
    sizes = [image_size(_image(sources[w], c.row)) for w, c in zip(which, sampled)]
    size = options.size or min(max(s) for s in sizes)
    if options.size is None and len({max(s) for s in sizes}) > 1:
        notes.append(f"cases come in several sizes; all were scaled to a {size}-pixel square (the smallest long side)")
    aspects = {
        truth: sorted({round(h / w, 2) for (w, h), c in zip(sizes, sampled) if bool(c.method) == truth})
        for truth in (True, False)
    }
    if aspects[True] and aspects[False] and set(aspects[True]) != set(aspects[False]):
        notes.append(
            "real and synthetic images have different aspect ratios (real "
            f"{aspects[False][:3]}, synthetic {aspects[True][:3]}): the letterbox border differs between them"
        )

    case_ids = _opaque_ids(rng, len(sampled))
    key = [
        Case(cid, "synthetic" if c.method else "real", c.method, c.birads, c.density, c.view, c.laterality, c.image_id)
        for cid, c in zip(case_ids, sampled)
    ]
    trials = _trials(options, key, synthetic, real_cases, targets, rng)
    readers = {f"R{i + 1}": secrets.token_urlsafe(18) for i in range(options.readers)}
    orders = {r: reader_order([t.trial_id for t in trials], options.seed, r) for r in readers}
    admin = secrets.token_urlsafe(18)

    echo(f"writing {len(sampled)} case images ({size} x {size}, 8-bit grey PNG)")
    with atomic_dir(out) as tmp:
        layout = StudyLayout(tmp)
        layout.cases.mkdir()
        jobs = [(w, c.row, c.mirrored, size, layout.case_png(cid)) for w, c, cid in zip(which, sampled, case_ids)]
        _write_cases(sources, jobs, options.workers)
        _refuse_identical(layout, key)
        layout.write_key(sorted(key, key=lambda c: c.case_id))
        layout.write_readers(readers)
        layout.write_orders(orders)
        if options.mode == "2afc":
            layout.write_trials(trials)
        shutil.copyfile(options.survey or DEFAULT_SURVEY, layout.survey_yaml)
        layout.write_info(
            {
                "mode": options.mode,
                "seed": options.seed,
                "release": loaded.name,
                "real_set": Path(real).resolve().name,
                "n_real": len(real_cases),
                "n_synthetic": len(synthetic),
                "readers": len(readers),
                "stratify": list(options.stratify),
                "synthetic_by_method": dict(Counter(c.method for c in synthetic)),
                "real_matching": match,
                "image": {"size": size, "bit_depth": 8, "format": "PNG (IHDR, IDAT, IEND)", "fit": "letterbox"},
                "real_is_training_set": bool(training),
                "notes": notes,
                "survey_questions": len(survey.questions),
                "admin_token": admin,
            }
        )
    return CreatedStudy(out, len(key), len(trials), readers, admin, notes)


def reader_order(trial_ids: Sequence[str], seed: int, reader_id: str) -> list[str]:
    """The reader's own order of ``trial_ids``: a permutation seeded by the study seed and the
    reader id (the same reader always gets the same order; two readers almost never share one)."""
    digest = int.from_bytes(hashlib.sha256(reader_id.encode()).digest()[:8], "big")
    rng = np.random.default_rng([seed, digest])
    ordered = sorted(trial_ids)
    return [ordered[i] for i in rng.permutation(len(ordered))]


# --- candidates ----------------------------------------------------------------------------------


def _check_options(o: CreateOptions) -> None:
    for name, value in (("--n-real", o.n_real), ("--n-synthetic", o.n_synthetic), ("--readers", o.readers)):
        if value < 1:
            raise InputError("must be at least 1", field=name)
    bad = [s for s in o.stratify if s not in STRATA]
    if bad:
        raise InputError(f"unknown stratum {bad}; choose from {list(STRATA)}", field="--stratify")
    if o.mode == "2afc" and o.n_real != o.n_synthetic:
        raise InputError(
            "2afc pairs each synthetic case with one real case: --n-real must equal --n-synthetic", field="--n-real"
        )
    if o.size is not None and not 64 <= o.size <= 8192:
        raise InputError("must be between 64 and 8192 pixels", field="--size")


def _label(names: Sequence[str], value: int | None) -> str:
    return names[value] if value is not None and 0 <= value < len(names) else ""


def _release_candidates(loaded: LoadedRelease) -> list[Candidate]:
    table = loaded.dataset.table(["image_id", "method", "birads", "density", "view", "laterality"]).to_pydict()
    out = []
    for i in range(len(table["image_id"])):
        birads = _label(BIRADS_NAMES, table["birads"][i])
        out.append(
            Candidate(
                row=i,
                image_id=str(table["image_id"][i]),
                method=_label(METHODS, table["method"][i]),
                birads=int(birads.split()[-1]) if birads else None,
                density=_label(DENSITIES, table["density"][i]),
                view=_label(VIEWS, table["view"][i]),
                laterality=_label(LATERALITIES, table["laterality"][i]),
            )
        )
    return out


def _real_candidates(ds: Any) -> list[Candidate]:
    table = ds.select_columns(["image_id", "birads", "density", "view", "laterality", "flipped"]).with_format("arrow")[
        :
    ]
    t = table.to_pydict()
    return [
        Candidate(
            row=i,
            image_id=str(t["image_id"][i]),
            method="",
            birads=int(t["birads"][i]) if t["birads"][i] in range(1, 6) else None,
            density=t["density"][i] or "",
            view=t["view"][i] or "",
            laterality=t["laterality"][i] or "",
            mirrored=bool(t["flipped"][i]),
        )
        for i in range(len(t["image_id"]))
    ]


def _image(ds: Any, row: int) -> bytes:
    """One row's stored image bytes: a release row read from its file's chunk, a prepared row by index."""
    if isinstance(ds, ReleaseRows):
        data = ds.row(row)["image"]
    else:
        data = ds.select_columns(["image"]).with_format("arrow")[row : row + 1].column("image")[0].as_py()
    if data.get("bytes"):
        return data["bytes"]
    return Path(data["path"]).read_bytes()


def _images(ds: Any) -> Any:
    """(image id, stored image bytes) of every row, in batches (a release streamed from its files)."""
    if isinstance(ds, ReleaseRows):
        batches = ds.iter_batches(("image_id", "image"), 256)
    else:
        batches = ds.select_columns(["image_id", "image"]).with_format("arrow").iter(batch_size=256)
    for batch in batches:
        column = batch.column("image")
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        for image_id, data, path in zip(
            batch.column("image_id").to_pylist(), column.field("bytes").to_pylist(), column.field("path").to_pylist()
        ):
            yield str(image_id), data if data else Path(path).read_bytes()


def _pixel_digest(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    return sha256_bytes(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())


# --- overlap and provenance ------------------------------------------------------------------------


def _refuse_overlap(loaded: LoadedRelease, real_ds: Any, real: str | Path) -> None:
    """The same image (same id or same pixels) in the release and in the real set would be shown
    as both truths: refused."""
    real_ids = set(real_ds["image_id"])
    same_id = sorted(real_ids & set(loaded.dataset["image_id"]))
    if same_id:
        raise InputError(
            f"the release and the real set share {len(same_id)} image ids (e.g. {same_id[0]!r}): they overlap",
            file=real,
            field="image_id",
        )
    # Same pixels under another encoding count too: images are decoded where the two sets share a
    # size (read from the headers), real ones in both orientations (prepared sets may store mirrored).
    release_sizes = {image_id: image_size(data) for image_id, data in _images(loaded.dataset)}
    real_sizes = {image_id: image_size(data) for image_id, data in _images(real_ds)}
    common = set(release_sizes.values()) & set(real_sizes.values())
    if not common:
        return
    digests: dict[str, str] = {}
    for image_id, data in _images(real_ds):
        if real_sizes[image_id] in common:
            arr = decode_grey(data)
            digests[_pixel_digest(arr)] = digests[_pixel_digest(arr[:, ::-1])] = image_id
    for image_id, data in _images(loaded.dataset):
        if release_sizes[image_id] in common:
            real_id = digests.get(_pixel_digest(decode_grey(data)))
            if real_id is not None:
                raise InputError(
                    f"release row {image_id!r} has the same pixels as real image {real_id!r}: the sets overlap",
                    file=real,
                    record=real_id,
                    field="image",
                )


def _refuse_identical(layout: StudyLayout, key: list[Case]) -> None:
    """Two cases whose prepared files are identical (e.g. a synthetic row that copies its
    background) would show one picture under two truths: refused."""
    seen: dict[str, Case] = {}
    for case in key:
        digest = sha256_bytes(layout.case_png(case.case_id).read_bytes())
        other = seen.get(digest)
        if other is not None and other.truth != case.truth:
            raise InputError(
                f"{case.truth} case {case.source_id!r} and {other.truth} case {other.source_id!r} are the same picture",
                record=case.source_id,
                field="image",
            )
        seen[digest] = case


def _source_ids(loaded: LoadedRelease) -> set[str]:
    """Real image ids whose pixels release rows embed: backgrounds and lesion donors."""
    t = loaded.dataset.table(["source_image", "lesion_source"]).to_pydict()
    ids = {s for s in t["source_image"] if s}
    ids |= {lesion_image_id(s) for s in t["lesion_source"] if s}
    return ids


def _training_set_note(loaded: LoadedRelease, real: str | Path, real_ds: Any) -> str | None:
    """Why the real set is (part of) the generators' training set, or None."""
    if loaded.spec_path is not None:
        try:
            trained_on = load_spec(loaded.spec_path).source.prepared
        except InputError:
            trained_on = None
        if trained_on is not None and Path(trained_on).exists():
            same = Path(trained_on).resolve() == Path(real).resolve()
            fingerprint = ingest_fingerprint(real)
            if same or (fingerprint is not None and fingerprint == ingest_fingerprint(trained_on)):
                return "the real set is the generators' training set (the release spec's source.prepared)"
        elif trained_on is not None and Path(trained_on).name == Path(real).resolve().name:
            # a packaged release's spec keeps only the folder's name (no machine path ships)
            return (
                "the real set is probably the generators' training set: the release spec's source.prepared "
                f"is named {Path(trained_on).name!r} too"
            )
    shared = _source_ids(loaded) & set(real_ds["image_id"])
    if shared:
        return (
            f"the real set is (part of) the generators' training set: it holds {len(shared)} images that release "
            "rows use as backgrounds or lesion donors"
        )
    return None


def _exclude_sources(real: list[Candidate], loaded: LoadedRelease, real_ds: Any) -> tuple[list[Candidate], int]:
    """The real pool without the images release rows embed, and without the other images of their
    studies (the same breast, another view)."""
    sources = _source_ids(loaded)
    studies = dict(zip(real_ds["image_id"], real_ds["study_id"]))
    bad_studies = {studies[s] for s in sources if s in studies and studies[s]}
    keep = [c for c in real if c.image_id not in sources and studies.get(c.image_id) not in bad_studies]
    return keep, len(real) - len(keep)


# --- trials and files ------------------------------------------------------------------------------


def _opaque_ids(rng: np.random.Generator, n: int, taken: set[str] | None = None) -> list[str]:
    taken = set(taken or ())
    out: list[str] = []
    while len(out) < n:
        cid = rng.bytes(8).hex()
        if cid not in taken:
            taken.add(cid)
            out.append(cid)
    return out


def _trials(
    o: CreateOptions,
    key: list[Case],
    synthetic: list[Candidate],
    real: list[Candidate],
    targets: list[Candidate | None],
    rng: np.random.Generator,
) -> list[Trial]:
    if o.mode == "single":
        return [Trial(c.case_id, (c.case_id,)) for c in key]
    # 2afc: each real case was matched to a synthetic target; pair them, sides at random.
    case_of = {(bool(c.truth == "synthetic"), c.source_id): c.case_id for c in key}
    synth_left = list(synthetic)
    pairs: list[tuple[str, str]] = []
    for r, t in zip(real, targets):
        s = t if t is not None and t in synth_left else synth_left[0]
        synth_left.remove(s)
        pairs.append((case_of[(True, s.image_id)], case_of[(False, r.image_id)]))
    ids = _opaque_ids(rng, len(pairs), {c.case_id for c in key})
    trials = []
    for tid, (s, r) in zip(ids, pairs):
        trials.append(Trial(tid, (s, r) if rng.random() < 0.5 else (r, s)))
    return trials


# The datasets the case writers read from; set before the pool forks (memory-mapped arrow and
# in-memory tables are shared, not copied), so no image bytes travel through the task queue.
_SOURCES: dict[str, Any] = {}


def _prepare_one(job: tuple[str, int, bool, int, Path]) -> None:
    source, row, mirrored, size, path = job
    path.write_bytes(prepare_case(_image(_SOURCES[source], row), size=size, mirrored=mirrored))


def _write_cases(sources: dict[str, Any], jobs: list[tuple[str, int, bool, int, Path]], workers: int | None) -> None:
    # written in case-id order (random): file times must not follow real-then-synthetic
    jobs = sorted(jobs, key=lambda j: j[4].name)
    _SOURCES.clear()
    _SOURCES.update(sources)
    try:
        n = min(workers or cpu_count(), max(1, len(jobs) // 16))
        if n <= 1:
            for job in jobs:
                _prepare_one(job)
            return
        with worker_pool(n) as pool:
            for _ in pool.map(_prepare_one, jobs, chunksize=8):
                pass
    finally:
        _SOURCES.clear()

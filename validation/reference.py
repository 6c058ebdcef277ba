"""The reference (prepared training set) as the gate sees it: per-image features, the search
indexes' vectors, and the calibration of "how close is too close" from real images of other
patients. Built once and cached beside the reference, keyed by a content hash of its files."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import faiss
import numpy as np
from tqdm.auto import tqdm

from mammosynth.builders.core import atomic
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import dataset_content_hash
from mammosynth.builders.core.imageio import UnreadableImage, decode
from mammosynth.builders.core.prepared import open_prepared
from mammosynth.builders.core.schema import prepared_features
from mammosynth.validation.dedup import tolerant_distance
from mammosynth.validation.image_features import KP_COUNT, PHASH_BYTES, PIXEL_HASH, analyse

INDEX_VERSION = 5  # bump when the features change: stale cached indexes rebuild
CACHE_DIR_NAME = ".validation-cache"
_K = 64  # neighbours fetched when looking for the nearest image of another patient
_RESCORE = 4  # nearest other-patient neighbours re-scored with the gate's shift-tolerant distance


@dataclass
class ReferenceIndex:
    """Column arrays, one entry per reference image (``n``)."""

    image_ids: np.ndarray
    study_ids: np.ndarray
    views: np.ndarray
    lateralities: np.ndarray
    birads: np.ndarray
    density: np.ndarray
    manufacturer: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    area: np.ndarray
    side: np.ndarray  # "L" / "R" / "" (no breast)
    pixel_hashes: np.ndarray
    phash: np.ndarray  # (n, 32) uint8
    emb: np.ndarray  # (n, d) float32
    hist: np.ndarray  # (n, bins) float64
    box_birads: np.ndarray  # one entry per reference box
    box_w: np.ndarray  # relative to the image width
    box_h: np.ndarray
    nn_other: np.ndarray  # per image: embedding distance to the nearest image of another patient
    phash_other: np.ndarray  # per image: Hamming distance to the nearest image of another patient
    kp_xy: np.ndarray  # (n, KP_COUNT, 2) float16 ORB keypoint positions (first kp_n[i] valid)
    kp_desc: np.ndarray  # (n, KP_COUNT, 32) uint8 ORB descriptors
    kp_n: np.ndarray  # (n,) int16 keypoints per image
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.image_ids)

    def row_of(self) -> dict[str, int]:
        return {str(i): k for k, i in enumerate(self.image_ids)}

    @property
    def patients(self) -> np.ndarray:
        """Per image, its patient: the prepared set's pseudonymous ``study_id`` (ingest stores the
        patient there, so that two views of one woman are never taken for two people)."""
        return self.study_ids

    def keypoints(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, descriptors) of one image's keypoints."""
        m = int(self.kp_n[row])
        return self.kp_xy[row, :m], self.kp_desc[row, :m]

    # ---- derived figures --------------------------------------------------------------------

    def area_range(self, view: str, lo_pct: float, hi_pct: float) -> tuple[float, float]:
        ok = self.side != ""
        sel = ok & (self.views == view)
        vals = self.area[sel] if sel.any() else self.area[ok]
        if not len(vals):
            return (0.0, 1.0)
        return float(np.percentile(vals, lo_pct)), float(np.percentile(vals, hi_pct))

    def expected_side(self) -> dict[str, str]:
        """Laterality -> chest-wall side, learnt from the reference (ingest may have mirrored R)."""
        out = {}
        for lat, default in (("L", "L"), ("R", "R")):
            sides = self.side[(self.lateralities == lat) & (self.side != "")]
            out[lat] = max(("L", "R"), key=lambda s: int((sides == s).sum())) if len(sides) else default
        return out

    def calibrated_nn(self, quantile: float, factor: float, ceiling: float) -> float:
        vals = self.nn_other[np.isfinite(self.nn_other)]
        if not len(vals):
            return ceiling
        return float(min(ceiling, factor * np.quantile(vals, quantile)))

    def calibrated_radius(self, quantile: float, factor: float, ceiling: int) -> int:
        vals = self.phash_other[self.phash_other >= 0]
        if not len(vals):
            return ceiling
        return int(min(ceiling, np.floor(factor * np.quantile(vals, quantile))))


# ---- loading the reference ---------------------------------------------------------------------


def load_reference_dataset(path: str | Path) -> datasets.Dataset:
    """The prepared set as saved; missing or not the prepared schema -> InputError."""
    path = Path(path)
    ds = open_prepared(path, field="reference")
    want = prepared_features()
    for name in ("image_id", "study_id", "view", "laterality", "birads"):
        if repr(ds.features[name]) != repr(want[name]):
            raise InputError(
                f"feature {ds.features[name]!r} is not the prepared schema's {want[name]!r}", file=path, field=name
            )
    if not isinstance(ds.features["image"], datasets.Image):
        raise InputError("expected an Image feature", file=path, field="image")
    return ds


def cache_dir_for(reference: Path) -> Path:
    """Beside the reference when writable, else the user cache (reference folders may be read-only)."""
    here = reference / CACHE_DIR_NAME
    try:
        here.mkdir(exist_ok=True)
        probe = here / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
        return here
    except OSError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        digest = hashlib.blake2b(str(reference.resolve()).encode(), digest_size=8).hexdigest()
        d = base / "mammosynth" / "validation" / digest
        d.mkdir(parents=True, exist_ok=True)
        return d


_ARRAYS = [
    "image_ids",
    "study_ids",
    "views",
    "lateralities",
    "birads",
    "density",
    "manufacturer",
    "heights",
    "widths",
    "area",
    "side",
    "pixel_hashes",
    "phash",
    "emb",
    "hist",
    "box_birads",
    "box_w",
    "box_h",
    "nn_other",
    "phash_other",
    "kp_xy",
    "kp_desc",
    "kp_n",
]


def save_index(index: ReferenceIndex, path: Path) -> None:
    # through a file object: given a name, np.savez would append ".npz" to the temporary's
    with atomic.atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(index.meta)), **{k: getattr(index, k) for k in _ARRAYS})


def load_index(path: Path) -> ReferenceIndex:
    with np.load(path, allow_pickle=False) as z:
        return ReferenceIndex(**{k: z[k] for k in _ARRAYS}, meta=json.loads(str(z["meta"])))


def reference_index(
    reference: str | Path,
    *,
    embed_size: int = 64,
    bins: int = 64,
    progress: bool = True,
    rebuild: bool = False,
) -> tuple[ReferenceIndex, datasets.Dataset]:
    """The cached index of ``reference`` (built when absent or when the reference changed)."""
    reference = Path(reference)
    ds = load_reference_dataset(reference)
    cache = cache_dir_for(reference)
    # Hash the saved files themselves, before any cast (a cast may add cache files beside them).
    digest = dataset_content_hash(ds, cache / "file-digests.json")
    ds = ds.cast_column("image", datasets.Image(decode=False))
    key = hashlib.blake2b(
        f"{digest}:v{INDEX_VERSION}:e{embed_size}:b{bins}:{PIXEL_HASH}".encode(), digest_size=12
    ).hexdigest()
    path = cache / f"index-{key}.npz"
    if path.is_file() and not rebuild:
        try:
            return load_index(path), ds
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt, never trusted
    index = build_index(ds, embed_size=embed_size, bins=bins, progress=progress)
    index.meta.update({"content_hash": digest, "key": key, "reference": str(reference)})
    for old in cache.glob("index-*.npz"):  # invalidated: the reference changed
        old.unlink(missing_ok=True)
    save_index(index, path)
    return index, ds


def build_index(ds: datasets.Dataset, *, embed_size: int = 64, bins: int = 64, progress: bool = True) -> ReferenceIndex:
    n = ds.num_rows
    d = embed_size * embed_size
    cols: dict[str, list] = {
        k: [] for k in ("image_ids", "study_ids", "views", "lateralities", "birads", "density", "manufacturer")
    }
    heights, widths, area = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.float32)
    side, hashes = np.empty(n, dtype="<U1"), np.empty(n, dtype="<U32")
    phash = np.zeros((n, PHASH_BYTES), np.uint8)
    emb = np.zeros((n, d), np.float32)
    hist = np.zeros((n, bins), np.float64)
    box_b, box_w, box_h = [], [], []
    kp_xy, kp_desc, kp_n = (
        np.zeros((n, KP_COUNT, 2), np.float16),
        np.zeros((n, KP_COUNT, 32), np.uint8),
        np.zeros(n, np.int16),
    )
    meta_cols = ["image_id", "study_id", "view", "laterality", "birads", "density", "manufacturer", "findings"]
    unreadable = []
    k = 0
    bar = tqdm(total=n, desc="reference index", unit="img", disable=not progress)
    for batch in ds.iter(batch_size=32):
        for j in range(len(batch["image_id"])):
            row = {c: batch[c][j] for c in meta_cols}
            for c, src in zip(
                cols, ("image_id", "study_id", "view", "laterality", "birads", "density", "manufacturer")
            ):
                cols[c].append("" if row[src] is None else str(row[src]) if src != "birads" else int(row[src]))
            try:
                f = analyse(batch["image"][j], embed_size=embed_size, bins=bins)
            except UnreadableImage:
                unreadable.append(row["image_id"])
                side[k], hashes[k] = "", ""
                k += 1
                bar.update(1)
                continue
            heights[k], widths[k], area[k] = f.height, f.width, f.area_fraction
            side[k], hashes[k], phash[k], emb[k], hist[k] = f.side or "", f.pixel_hash, f.phash, f.embedding, f.hist
            if f.kp_desc is not None:
                m = kp_n[k] = len(f.kp_desc)
                kp_xy[k, :m], kp_desc[k, :m] = f.kp_xy, f.kp_desc
            for finding in row["findings"] or []:
                x0, y0, x1, y1 = finding["bbox"]
                b = finding.get("finding_birads") or row["birads"]
                box_b.append(int(b))
                box_w.append((x1 - x0) / f.width)
                box_h.append((y1 - y0) / f.height)
            k += 1
            bar.update(1)
    bar.close()
    index = ReferenceIndex(
        **{c: np.array(v, dtype=np.int16 if c == "birads" else str) for c, v in cols.items()},
        heights=heights,
        widths=widths,
        area=area,
        side=side,
        pixel_hashes=hashes,
        phash=phash,
        emb=emb,
        hist=hist,
        box_birads=np.array(box_b, np.int16),
        box_w=np.array(box_w, np.float32),
        box_h=np.array(box_h, np.float32),
        nn_other=np.zeros(0, np.float32),
        phash_other=np.zeros(0, np.int32),
        kp_xy=kp_xy,
        kp_desc=kp_desc,
        kp_n=kp_n,
        meta={"n": n, "embed_size": embed_size, "bins": bins, "unreadable": unreadable, "index_version": INDEX_VERSION},
    )
    index.nn_other, index.phash_other = calibrate(index)
    return index


def calibrate(index: ReferenceIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per reference image: distance to the nearest image of *another patient* (study_id), in the
    embedding space and in pHash bits. Their low quantiles say how close two different real
    people can look, which is what a synthetic image must not undercut."""
    n = index.n
    nn = np.full(n, np.inf, np.float32)
    ham = np.full(n, -1, np.int32)
    valid = np.nonzero(index.side != "")[0]
    if len(valid) < 2:
        return nn, ham
    studies = index.study_ids[valid]
    k = min(len(valid), _K)
    flat = faiss.IndexFlatL2(index.emb.shape[1])
    flat.add(np.ascontiguousarray(index.emb[valid]))
    dist, idx = flat.search(np.ascontiguousarray(index.emb[valid]), k)
    binary = faiss.IndexBinaryFlat(index.phash.shape[1] * 8)
    binary.add(np.ascontiguousarray(index.phash[valid]))
    hd, hidx = binary.search(np.ascontiguousarray(index.phash[valid]), k)
    for r in range(len(valid)):
        other = studies[idx[r]] != studies[r]
        if other.any():
            nn[valid[r]] = np.sqrt(max(float(dist[r][other.argmax()]), 0.0))
        else:  # all k neighbours from the same patient: exact scan over the others
            sel = studies != studies[r]
            if sel.any():
                diff = index.emb[valid[sel]] - index.emb[valid[r]]
                nn[valid[r]] = float(np.sqrt((diff * diff).sum(1).min()))
        other_h = studies[hidx[r]] != studies[r]
        if other_h.any():
            ham[valid[r]] = int(hd[r][other_h.argmax()])
        else:
            sel = studies != studies[r]
            if sel.any():
                x = np.unpackbits(index.phash[valid[sel]] ^ index.phash[valid[r]], axis=1).sum(1)
                ham[valid[r]] = int(x.min())
    _rescore_other(index, valid, studies, dist, idx, nn)
    return nn, ham


def _rescore_other(
    index: ReferenceIndex, valid: np.ndarray, studies: np.ndarray, dist: np.ndarray, idx: np.ndarray, nn: np.ndarray
) -> None:
    """Lower ``nn`` to the shift-tolerant distance of each image's ``_RESCORE`` nearest
    other-patient neighbours: the gate scores near candidates that way, so the calibration must
    measure real other-patient pairs with the same distance."""
    other = studies[idx] != studies[:, None]  # (v, k)
    order = np.argsort(~other, axis=1, kind="stable")[:, :_RESCORE]  # other-patient columns first, by distance
    cols = np.take_along_axis(idx, order, 1)
    ok = np.take_along_axis(other, order, 1)
    for s in range(0, len(valid), 1024):  # bounds the gathered (rows, _RESCORE, d) candidates
        e = min(len(valid), s + 1024)
        tol = tolerant_distance(index.emb[valid[s:e]], index.emb[valid[cols[s:e]]])
        nn[valid[s:e]] = np.minimum(nn[valid[s:e]], np.where(ok[s:e], tol, np.inf).min(1))


def reference_image(ds: datasets.Dataset, row: int) -> np.ndarray:
    return decode(ds[int(row)]["image"])

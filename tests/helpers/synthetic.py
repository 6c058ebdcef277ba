"""Every piece of synthetic test data, written in one place: prepared sets, generated shards,
image content and the planted perturbations the validation gate must catch.

Three layers:

* rows and writers: `prepared_row` (a row of `schema.prepared_features()`), `write_prepared` (the
  only place the tests build and save a prepared set), `release_row`, and `write_shards` /
  `write_generated` (the only place the tests write generated shards, through the product's
  `ShardWriter`);
* image content: `mammogram` (textured, phantom-like), `breast_image` (flat half-ellipse),
  `lesion_box`, `add_lesion`, and the perturbations `shift`, `crop`, `contrast`, `jpeg`, `noise`,
  `invert`, `mirror`;
* scenarios, one per test area: the validation reference set (`reference_rows`,
  `write_reference_set`), the generator test set (`write_generator_set`), the trainer test set
  (`write_trainer_set`) and fake generation for the release tests (`fake_row`, `generate_fake`).

Each scenario draws its random numbers in the order it always has and keeps its PNG encoder, so
the sets it writes are the same bytes as before the tests shared this module.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import datasets
import numpy as np
from PIL import Image

from mammosynth.builders.core import schema
from mammosynth.builders.core.breast_mask import allowed_region, breast_mask, chest_wall_side
from mammosynth.builders.core.imageio import encode_png, image_size
from mammosynth.builders.core.run_layout import RunLayout
from mammosynth.builders.core.shard_writer import ShardWriter
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.builders.sources.phantom import power_law_noise
from mammosynth.generators.engine import plan

Row = dict[str, Any]


# --- rows and writers ----------------------------------------------------------------------------


def prepared_row(
    image: bytes | np.ndarray,
    image_id: str,
    *,
    view: str,
    laterality: str,
    birads: int,
    density: str | None = None,
    findings: Sequence[dict[str, Any]] = (),
    flipped: bool = False,
    study_id: str | None = None,
    manufacturer: str = "PHANTOM",
    model_name: str = "synthetic",
    split: str = "training",
    orig_size: tuple[int, int] | None = None,
) -> Row:
    """One prepared-set row with every column of `schema.prepared_features()`.

    ``image`` is PNG bytes, or an array encoded with `core.imageio.encode_png`. ``study_id``
    defaults to a study of its own (``s-<image_id>``); ``orig_size`` (height, width) to the image's
    own size. Columns this helper does not know (one added to the schema later) are None."""
    data = encode_png(image) if isinstance(image, np.ndarray) else image
    if orig_size is None:
        width, height = image_size(data)
        orig_size = (height, width)
    known: Row = {
        "image": {"bytes": data, "path": None},
        "image_id": image_id,
        "study_id": f"s-{image_id}" if study_id is None else study_id,
        "laterality": laterality,
        "view": view,
        "birads": birads,
        "density": density,
        "manufacturer": manufacturer,
        "model_name": model_name,
        "split": split,
        "orig_height": orig_size[0],
        "orig_width": orig_size[1],
        "findings": list(findings),
        "flipped": flipped,
    }
    return {key: known.get(key) for key in schema.prepared_features()}


def write_prepared(path: str | Path, rows: Sequence[Row]) -> Path:
    """Save ``rows`` as a prepared set (``save_to_disk``, `schema.prepared_features()`)."""
    path = Path(path)
    datasets.Dataset.from_list(list(rows), features=schema.prepared_features()).save_to_disk(str(path))
    return path


def release_row(
    img: np.ndarray | bytes,
    image_id: str,
    method: str,
    birads: int,
    view: str,
    laterality: str,
    *,
    density: str | None = "C",
    bbox: list[list[float]] | None = None,
    source_image: str | None = None,
    prompt: str | None = None,
) -> Row:
    """One generated (release-schema) row; an array image is encoded with `core.imageio.encode_png`."""
    if prompt is None:
        prompt = (
            schema.text2image_prompt(laterality, view, density, birads)
            if method == "text2image"
            else schema.inpainting_prompt(birads)
        )
    return {
        "image": {"bytes": encode_png(img) if isinstance(img, np.ndarray) else img, "path": None},
        "image_id": image_id,
        "method": method,
        "birads": f"BI-RADS {birads}",
        "view": view,
        "laterality": laterality,
        "density": density,
        "bbox": bbox or [],
        "seed": 1,
        "mask_seed": 2,
        "prompt": prompt,
        "source_image": source_image,
        "lesion_source": None,
        "manufacturer": "PHANTOM",
        "generator": "test",
    }


def write_shards(
    method_dir: str | Path,
    shards: Iterable[Iterable[Row]],
    *,
    skipped: Sequence[dict[str, str]] = (),
    resume: bool = False,
) -> Path:
    """Write one method's shards (shard k = the k-th row batch) with the product's `ShardWriter`.

    ``skipped`` is recorded beside shard 0. With ``resume``, a shard already on disk is kept and its
    batch is never iterated, so a batch given as a generator draws no random numbers for it."""
    writer = ShardWriter(method_dir)
    for index, rows in enumerate(shards):
        if not (resume and writer.is_done(index)):
            writer.write(index, list(rows), list(skipped) if index == 0 else [], 0.0)
    return writer.out_dir


def write_generated(
    out: str | Path, rows_by_method: dict[str, list[Row]], skipped: dict[str, list[dict[str, str]]] | None = None
) -> Path:
    """A generation output folder, one shard per method: ``out/generated/<method>/shard-00000.parquet``
    (+ stats JSON)."""
    out = Path(out)
    for method, rows in rows_by_method.items():
        write_shards(RunLayout(out).generated(method), [rows], skipped=(skipped or {}).get(method, []))
    return out


def pil_default_png(img: np.ndarray) -> bytes:
    """PNG at Pillow's default compression: the encoder the generator and trainer sets were first
    written with (the validation reference and releases use `encode_png`, compression level 1).
    Kept per scenario so each set's bytes stay as they were."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# --- image content -------------------------------------------------------------------------------


def mammogram(
    rng: np.random.Generator, h: int = 320, w: int = 256, laterality: str = "L", view: str = "CC"
) -> np.ndarray:
    """uint8 grey image: textured half-ellipse breast on the chest-wall side, black background.

    Textures use the phantom source's parenchyma model (`power_law_noise`), so images of different
    seeds look alike in statistics but not in pixels, as real patients do."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h * rng.uniform(0.45, 0.55)
    half = h * (rng.uniform(0.34, 0.42) if view == "CC" else rng.uniform(0.42, 0.48))
    depth = w * rng.uniform(0.6, 0.8)
    t = (yy - cy) / half
    mask = xx < depth * np.sqrt(np.clip(1 - np.abs(t) ** 2.2, 0, 1))
    if view == "MLO":
        mask |= (xx < depth * 0.4 * (1 - yy / (cy + half))) & (yy < cy)
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    thickness = 1 - np.exp(-dist / (0.06 * w))
    tex = power_law_noise(rng, (h, w), beta=3.0)
    fine = power_law_noise(rng, (h, w), beta=2.0)
    img = (0.35 + 0.12 * tex + 0.03 * fine) * thickness
    img = np.clip(np.where(mask, img + 0.1, 0.02), 0, 1)
    out = np.clip(img * 255 + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8)
    return out[:, ::-1].copy() if laterality == "R" else out


# generator test set: prepared images are width x height (not square, so scaling is exercised)
GENERATOR_SIZE = (96, 128)


def breast_image(rng: np.random.Generator, side: str, size: tuple[int, int] = GENERATOR_SIZE) -> np.ndarray:
    """Noisy flat half-ellipse on black touching the chest-wall edge (left for ``side='L'``);
    ``size`` is (width, height)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cx = 0 if side == "L" else w - 1
    inside = ((xx - cx) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.42 * h)) ** 2 <= 1
    img = np.where(inside, 150 + rng.normal(0, 20, (h, w)), 5 + rng.normal(0, 2, (h, w)))
    return np.clip(img, 0, 255).astype(np.uint8)


def lesion_box(img: np.ndarray, rng: np.random.Generator, frac: float = 0.12) -> list[float]:
    """A box well inside the breast (for BI-RADS 3-5 rows)."""
    h, w = img.shape
    bw, bh = w * frac * rng.uniform(0.8, 1.2), h * frac * rng.uniform(0.8, 1.2)
    ys, xs = np.nonzero(allowed_region(img, 2, int(max(bw, bh) / 2) + 2))
    j = rng.integers(len(xs))
    cx, cy = np.clip(xs[j], bw / 2 + 1, w - bw / 2 - 1), np.clip(ys[j], bh / 2 + 1, h - bh / 2 - 1)
    return [float(cx - bw / 2), float(cy - bh / 2), float(cx + bw / 2), float(cy + bh / 2)]


def add_lesion(img: np.ndarray, box: list[float], rng: np.random.Generator) -> np.ndarray:
    """Paint a bright blob inside ``box`` (a stand-in for an inpainted lesion)."""
    out = img.astype(np.float32)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2.5, (y1 - y0) / 2.5
    blob = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) * 2)
    return np.clip(out + 70 * blob, 0, 255).astype(np.uint8)


# --- planted perturbations (what the validation gate must catch) ---------------------------------


def shift(img: np.ndarray, dx: int = 4, dy: int = 8) -> np.ndarray:
    """Translate by (dx away from the chest wall, dy down). A shift into the chest wall cuts tissue
    off and is a crop, which ``crop`` plants."""
    if chest_wall_side(breast_mask(np.sqrt(img / float(np.iinfo(img.dtype).max)))) == "R":
        dx = -dx
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(
        img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_CONSTANT, borderValue=int(img.min())
    )


def crop(img: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Cut ``frac`` off every border except the chest wall, resized back to the original size."""
    h, w = img.shape
    left_wall = chest_wall_side(breast_mask(np.sqrt(img / 255.0))) == "L"
    dy, dx = int(h * frac), int(w * frac)
    c = img[dy : h - dy, : w - dx] if left_wall else img[dy : h - dy, dx:]
    return cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)


def contrast(img: np.ndarray, gain: float = 1.2, bias: float = 10) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, quality: int = 70) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def noise(img: np.ndarray, sigma: float = 6.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def invert(img: np.ndarray) -> np.ndarray:
    return (np.iinfo(img.dtype).max - img).astype(img.dtype)


def mirror(img: np.ndarray) -> np.ndarray:
    return img[:, ::-1].copy()


# --- scenario: the validation reference set -------------------------------------------------------


def reference_rows(n_studies: int, seed: int, h: int = 320, w: int = 256, prefix: str = "ref") -> list[Row]:
    """Four `mammogram` views per study (L/R x CC/MLO), BI-RADS cycling 1..5, density cycling
    A..D, a lesion and its box on BI-RADS >= 3. PNGs by `encode_png`, like generated rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        birads = 1 + (s % 5)
        density = "ABCD"[s % 4]
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                img = mammogram(rng, h, w, lat, view)
                findings = []
                if birads >= 3:
                    box = lesion_box(img, rng)
                    img = add_lesion(img, box, rng)
                    findings.append({"bbox": box, "categories": ["Mass"], "finding_birads": birads})
                rows.append(
                    prepared_row(
                        encode_png(img),
                        f"{prefix}{seed}-{s:04d}-{lat}{view}",
                        study_id=f"{prefix}{seed}-study{s:04d}",
                        view=view,
                        laterality=lat,
                        birads=birads,
                        density=density,
                        findings=findings,
                        manufacturer="PHANTOM",
                        model_name="synthetic",
                        orig_size=(h, w),
                    )
                )
    return rows


def write_reference_set(out: str | Path, n_studies: int = 10, seed: int = 0, h: int = 320, w: int = 256) -> Path:
    """`reference_rows` saved as a prepared set: the validation tests' training reference."""
    return write_prepared(out, reference_rows(n_studies, seed, h, w))


# --- scenario: the generator test set -------------------------------------------------------------

# per class: reference box sizes (w, h) in prepared-image pixels; the last one is an outlier the
# IQR step must drop
REFERENCE_BOXES = {
    3: [(10, 12), (12, 14), (14, 12), (12, 10), (60, 64)],
    4: [(14, 16), (16, 18), (18, 16), (16, 14)],
    5: [(18, 20), (20, 22), (22, 20), (20, 18)],
}


def write_generator_set(path: str | Path, n_backgrounds: int = 3, seed: int = 0) -> Path:
    """``n_backgrounds`` BI-RADS 1 `breast_image`s per view x laterality (one R image stored
    mirrored with ``flipped=True``) and BI-RADS 3-5 images carrying the `REFERENCE_BOXES`.
    PNGs by `pil_default_png` (the encoder this set was first written with)."""
    rng = np.random.default_rng(seed)
    w, h = GENERATOR_SIZE
    common = {"manufacturer": "SIEMENS", "model_name": "Mammomat", "orig_size": (h * 10, w * 10)}
    rows: list[Row] = []
    for view in ("CC", "MLO"):
        for lat in ("L", "R"):
            for i in range(n_backgrounds):
                flipped = lat == "R" and i == 0
                img = breast_image(rng, "L" if flipped else lat)
                rows.append(
                    prepared_row(
                        pil_default_png(img),
                        f"bg-{view}-{lat}-{i}",
                        view=view,
                        laterality=lat,
                        birads=1,
                        density="BCD"[i % 3],
                        flipped=flipped,
                        **common,
                    )
                )
    for b, boxes in REFERENCE_BOXES.items():
        for j, (bw, bh) in enumerate(boxes):
            img = breast_image(rng, "L")
            findings = [{"bbox": [20.0, 40.0, 20.0 + bw, 40.0 + bh], "categories": ["Mass"], "finding_birads": b}]
            rows.append(
                prepared_row(
                    pil_default_png(img),
                    f"lesion-{b}-{j}",
                    view="CC",
                    laterality="L",
                    birads=b,
                    density="C",
                    findings=findings,
                    **common,
                )
            )
    return write_prepared(path, rows)


# --- scenario: the trainer test set ---------------------------------------------------------------


def write_trainer_set(
    path: str | Path, *, n: int = 4, size: tuple[int, int] = (80, 64), birads: tuple[int, ...] = (4, 3), seed: int = 0
) -> Path:
    """A few rows with one lesion box each, for trainer unit tests that need exact control over
    rows (the phantom ingest is the realistic set); ``size`` is (height, width). PNGs by
    `pil_default_png` (the encoder this set was first written with)."""
    rng = np.random.default_rng(seed)
    h, w = size
    rows = []
    for i in range(n):
        lat = "L" if i % 2 == 0 else "R"
        arr = (rng.random((h, w)) * 40).astype(np.uint8)
        half = slice(0, w // 2) if lat == "L" else slice(w // 2, w)  # breast against its chest wall
        arr[:, half] += 140
        b = birads[i % len(birads)]
        box = [w * 0.2, h * 0.3, w * 0.45, h * 0.55] if lat == "L" else [w * 0.55, h * 0.3, w * 0.8, h * 0.55]
        rows.append(
            prepared_row(
                pil_default_png(arr),
                f"tiny{i:03d}",
                study_id=f"study{i // 2}",
                laterality=lat,
                view=schema.VIEWS[(i // 2) % 2],
                birads=b,
                density=schema.DENSITIES[i % 4],
                findings=[{"bbox": [float(v) for v in box], "categories": ["Mass"], "finding_birads": b}],
                manufacturer="SIEMENS",
                model_name="tiny",
                orig_size=(h * 10, w * 10),
            )
        )
    return write_prepared(path, rows)


# --- scenario: fake generation for the release tests ---------------------------------------------

FAKE_SIZE = 64  # side of the random images `fake_row` draws


def fake_row(task: Any, rng: np.random.Generator) -> Row:
    """The release row a generator would write for plan ``task``, with a random image."""
    img = rng.integers(0, 255, (FAKE_SIZE, FAKE_SIZE), dtype=np.uint8)
    m = task.method
    return {
        "image": img,
        "image_id": task.image_id,
        "method": m,
        "birads": f"BI-RADS {task.birads}",
        "view": task.view,
        "laterality": task.laterality,
        "density": "C" if task.index % 2 else "B",
        "bbox": [] if m == "text2image" else [[4.0, 4.0, 20.0, 24.0]],
        "seed": task.seed,
        "mask_seed": task.mask_seed,
        "prompt": schema.text2image_prompt(task.laterality, task.view, "C", task.birads)
        if m == "text2image"
        else schema.inpainting_prompt(task.birads)
        if m == "inpainting"
        else None,
        "source_image": None if m == "text2image" else f"bg-{task.index:04d}",
        "lesion_source": f"lesion-{task.index:04d}" if m == "poisson" else None,
        "manufacturer": "SIEMENS",
        "generator": f"{m}-tiny@sha256:{'ab' * 8}",
    }


def generate_fake(spec: ReleaseSpec, methods: list[str] | None = None, seed: int = 0) -> dict[str, int]:
    """Stand-in for generators.api.generate with the same on-disk result (shards per method, a
    rerun keeps the shards already written)."""
    rng = np.random.default_rng(seed)
    out = {}
    for method in methods or list(spec.methods):
        tasks = plan(spec, method)
        size = spec.output.shard_size
        # generators: a kept shard draws no random numbers, as before
        batches = [(fake_row(t, rng) for t in tasks[k : k + size]) for k in range(0, len(tasks), size)]
        write_shards(spec.layout.generated(method), batches, resume=True)
        out[method] = len(tasks)
    return out

"""The one data module of the trainers: read the prepared set, select rows, augment, shard.

Augmentations keep boxes and laterality true: a horizontal flip mirrors the boxes and swaps the
laterality the caption states; resizing scales the boxes. Randomness is drawn from
``(seed, epoch, row)`` so a resumed run sees exactly the samples an uninterrupted run would, in
any DataLoader worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import datasets
import numpy as np
import torch

from mammosynth.builders.core import schema
from mammosynth.builders.core.box_mask import box_mask
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import dataset_content_hash
from mammosynth.builders.core.imageio import image_size
from mammosynth.builders.core.prepared import open_prepared

META_COLUMNS = ("image_id", "laterality", "view", "birads", "density", "manufacturer", "split", "findings", "flipped")


# --- reading ---------------------------------------------------------------------------------------


def load_prepared(path: str | Path, split: str | None = "training") -> tuple[datasets.Dataset, list[dict]]:
    """Open the prepared set; return it with the metadata rows (no image decoded) of ``split``."""
    path = Path(path)
    ds = open_prepared(path)
    meta = ds.select_columns(list(META_COLUMNS)).to_list()
    for i, row in enumerate(meta):
        row["_index"] = i
    if split is not None:
        meta = [r for r in meta if r["split"] == split]
    if not meta:
        raise InputError(f"no rows in split {split!r}", file=path, field="split")
    return ds, meta


def rows_with_birads(meta: list[dict], birads: int, *, file: str | Path | None = None) -> list[dict]:
    """Rows with at least one box of lesion class ``birads`` (inpainting trains on these only)."""
    rows = [r for r in meta if any(f["finding_birads"] == birads and f["bbox"] for f in r["findings"] or [])]
    if not rows:
        raise InputError(
            f"no image with a BI-RADS {birads} lesion box (findings[].finding_birads)", file=file, field="findings"
        )
    return rows


def class_boxes(row: dict, birads: int | None) -> np.ndarray:
    """Boxes [xmin, ymin, xmax, ymax] (prepared-image pixels) of one class, or all boxes."""
    boxes = [
        f["bbox"] for f in row["findings"] or [] if f["bbox"] and (birads is None or f["finding_birads"] == birads)
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def data_hash(ds: datasets.Dataset, rows: list[dict]) -> str:
    """Identity of the training data: the prepared set's content hash plus the selected image ids.
    (Not ``ds._fingerprint``: datasets draws it anew when a set is written, so the same data would
    give the checkpoint, and every row generated from it, a different identity on each ingest.)"""
    h = hashlib.sha256(dataset_content_hash(ds).encode())
    h.update(json.dumps([r["image_id"] for r in rows]).encode())
    return h.hexdigest()


def image_sizes(ds: datasets.Dataset, indices: list[int]) -> list[tuple[int, int]]:
    """(width, height) of prepared images from their PNG headers, without decoding pixels."""
    raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False)).select(indices)
    return [image_size(item) for item in raw["image"]]


def caption(row: dict, laterality: str, *, vendor: bool = False) -> str:
    """The shared text-to-image prompt for a row (generation builds prompts the same way)."""
    return schema.text2image_prompt(
        laterality,
        row["view"],
        row["density"] or None,
        int(row["birads"]),
        row["manufacturer"] if vendor else None,
    )


# --- pixels ------------------------------------------------------------------------------------------


def to_unit_float(image) -> np.ndarray:
    """PIL image (8-bit L/RGB or 16-bit I;16) -> float32 HxW in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int64) or image.mode.startswith("I"):
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return image[:, ::-1].copy(), hflip_boxes(boxes, image.shape[1])


def hflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return out


def resize_geometry(h: int, w: int, size: int, mode: str, chest_wall_right: bool):
    """Where ``resize_square`` puts an h x w image: (scaled height, width, x0, y0, box transform)."""
    if mode == "stretch":
        scale = np.array([size / w, size / h, size / w, size / h], dtype=np.float32)
        return size, size, 0, 0, lambda b: b * scale
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    x0 = size - nw if chest_wall_right else 0
    y0 = (size - nh) // 2
    return nh, nw, x0, y0, lambda b: b * s + np.array([x0, y0, x0, y0], dtype=np.float32)


def resize_square(image: np.ndarray, boxes: np.ndarray, size: int, mode: str, chest_wall_right: bool):
    """Resize to size x size. ``pad`` keeps the aspect and the chest wall against its edge."""
    h, w = image.shape
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    nh, nw, x0, y0, move = resize_geometry(h, w, size, mode, chest_wall_right)
    if mode == "stretch":
        return cv2.resize(image, (size, size), interpolation=interp), move(boxes)
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), dtype=np.float32)
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out, move(boxes)


def jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    if amount <= 0:
        return image
    contrast = rng.uniform(1 - amount, 1 + amount)
    brightness = rng.uniform(-amount, amount)
    return np.clip((image - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)


def to_model_rgb(image: np.ndarray) -> torch.Tensor:
    """HxW in [0, 1] -> 3xHxW in [-1, 1] (the VAE's input range)."""
    t = torch.from_numpy(np.ascontiguousarray(image) * 2.0 - 1.0)
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


@dataclass
class Augment:
    resolution: int
    resize_mode: str = "stretch"
    hflip_prob: float = 0.0
    intensity_jitter: float = 0.0
    unflip: bool = False

    @property
    def fixed_pixels(self) -> bool:
        """Whether a row's pixels depend only on the row and the mirror draw (cacheable)."""
        return self.intensity_jitter <= 0

    def draw_flip(self, rng: np.random.Generator) -> bool:
        return bool(self.hflip_prob > 0 and rng.random() < self.hflip_prob)

    def __call__(self, image, row: dict, boxes: np.ndarray, rng: np.random.Generator, flip: bool | None = None):
        """-> (pixels HxW [0,1] at resolution, boxes at resolution, laterality shown by the pixels).
        ``flip`` given: that mirror state instead of a draw from ``rng``."""
        flip = self.draw_flip(rng) if flip is None else flip
        arr = to_unit_float(image)
        mirror, laterality, chest_wall_right = self.orientation(row, flip)
        if mirror:
            arr, boxes = hflip(arr, boxes)
        arr, boxes = resize_square(arr, boxes, self.resolution, self.resize_mode, chest_wall_right)
        boxes = np.clip(boxes, 0, self.resolution)
        return jitter(arr, self.intensity_jitter, rng), boxes, laterality

    def orientation(self, row: dict, flip: bool) -> tuple[bool, str, bool]:
        """(mirror the pixels?, laterality they show, chest wall on the right?)."""
        laterality = row["laterality"]
        mirrored = bool(row.get("flipped"))
        mirror = False
        if mirrored and self.unflip:
            mirror, mirrored = True, False
        if flip:  # the caption's laterality names the breast
            mirror = not mirror
            laterality = "L" if laterality == "R" else "R"
        # the chest wall of an unmirrored R is on the right
        return mirror, laterality, (laterality == "R") != mirrored

    def boxes(self, size: tuple[int, int], row: dict, boxes: np.ndarray, flip: bool) -> np.ndarray:
        """The boxes ``__call__`` gives for an image of ``size`` (w, h), without decoding it."""
        w, h = size
        mirror, _, chest_wall_right = self.orientation(row, flip)
        if mirror:
            boxes = hflip_boxes(boxes, w)
        move = resize_geometry(h, w, self.resolution, self.resize_mode, chest_wall_right)[4]
        return np.clip(move(boxes), 0, self.resolution)


# --- sharding ------------------------------------------------------------------------------------------


def batches_per_epoch(num_samples: int, batch_size: int, num_processes: int) -> int:
    return -(-num_samples // (batch_size * num_processes))


def shard_batches(
    num_samples: int,
    batch_size: int,
    *,
    process_index: int = 0,
    num_processes: int = 1,
    seed: int = 0,
    start_batch: int = 0,
) -> Iterator[list[tuple[int, int]]]:
    """Endless micro-batches of ``(epoch, row)`` for one process.

    Each epoch is a seeded permutation, wrapped to a multiple of ``batch_size * num_processes`` so
    every process gets the same number of full batches; process p takes every p-th element, so
    the processes' samples of an epoch are disjoint (except the wrapped tail) and cover the set.
    ``start_batch`` skips already-trained micro-batches arithmetically (for resume).
    """
    if num_samples < 1:
        raise ValueError("no samples")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} not in [0, {num_processes})")
    per_epoch = batches_per_epoch(num_samples, batch_size, num_processes)
    epoch, offset = divmod(start_batch, per_epoch)
    while True:
        perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
        total = per_epoch * batch_size * num_processes
        perm = np.resize(perm, total)  # wraps around
        mine = perm[process_index::num_processes]
        for b in range(offset, per_epoch):
            yield [(epoch, int(i)) for i in mine[b * batch_size : (b + 1) * batch_size]]
        epoch, offset = epoch + 1, 0


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, 0x5EED])


# --- torch datasets --------------------------------------------------------------------------------------


class Text2ImageData(torch.utils.data.Dataset):
    """(epoch, i) -> pixels in [-1, 1] and the index of its caption in ``prompts``. With
    ``decode_pixels=False`` (latents cached) only the caption index and the row."""

    def __init__(self, ds: datasets.Dataset, rows: list[dict], augment: Augment, *, seed: int, vendor: bool):
        self.ds, self.rows, self.augment, self.seed, self.vendor = ds, rows, augment, seed, vendor
        self.decode_pixels = True
        lateralities = ("L", "R") if augment.hflip_prob > 0 else (None,)
        prompts: dict[str, None] = {}
        for r in rows:
            for lat in lateralities:
                prompts.setdefault(caption(r, lat or r["laterality"], vendor=vendor), None)
        self.prompts = list(prompts)
        self.prompt_index = {p: i for i, p in enumerate(self.prompts)}

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, i: int, flip: bool = False) -> torch.Tensor:
        """Row ``i``'s fixed pixels (no jitter): what the latent cache encodes."""
        row = self.rows[i]
        arr, _, _ = self.augment(
            self.ds[row["_index"]]["image"], row, class_boxes(row, None), np.random.default_rng(0), flip=flip
        )
        return to_model_rgb(arr)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        row = self.rows[i]
        rng = sample_rng(self.seed, epoch, i)
        if not self.decode_pixels:
            flip = self.augment.draw_flip(rng)
            laterality = self.augment.orientation(row, flip)[1]
            return {"prompt_index": self.prompt_index[caption(row, laterality, vendor=self.vendor)], "row": i}
        image = self.ds[row["_index"]]["image"]
        arr, _, laterality = self.augment(image, row, class_boxes(row, None), rng)
        text = caption(row, laterality, vendor=self.vendor)
        return {"pixel_values": to_model_rgb(arr), "prompt_index": self.prompt_index[text], "row": i}


# how an inpainting sample's mask was drawn
MASK_BOX, MASK_FULL, MASK_RANDOM = 0, 1, 2


class InpaintData(torch.utils.data.Dataset):
    """(epoch, i) -> pixels, the binary mask of the class's boxes (whole cells of the ``grid``,
    the VAE's 8-pixel latent grid), and the masked image; plus the row, the mirror state and the
    mask kind, which index the latent cache. With ``decode_pixels=False`` (image and box-masked
    latents cached, no random boxes) no image is decoded."""

    def __init__(
        self,
        ds: datasets.Dataset,
        rows: list[dict],
        augment: Augment,
        *,
        birads: int,
        seed: int,
        box_margin: int = 0,
        full_mask_fraction: float = 0.0,
        random_box_fraction: float = 0.0,
        grid: int = 1,
    ):
        self.ds, self.rows, self.augment, self.birads, self.seed = ds, rows, augment, birads, seed
        self.box_margin, self.full, self.random, self.grid = box_margin, full_mask_fraction, random_box_fraction, grid
        self.decode_pixels = True
        # relative box sizes of the class, the pool for random boxes
        sizes = []
        self.sizes = image_sizes(ds, [r["_index"] for r in rows])
        for r, (img_w, img_h) in zip(rows, self.sizes):
            for x0, y0, x1, y1 in class_boxes(r, birads):
                sizes.append(((x1 - x0) / img_w, (y1 - y0) / img_h))
        self.rel_sizes = np.asarray(sizes or [(0.1, 0.1)], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.rows)

    def box_mask(self, boxes: np.ndarray, margin: int = 0) -> np.ndarray:
        size = self.augment.resolution
        return box_mask((size, size), boxes, margin, grid=self.grid).astype(np.float32)

    def fixed_sample(self, i: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``i``'s fixed pixels and its lesion-box masked image (no jitter): what the latent
        cache encodes."""
        row = self.rows[i]
        arr, boxes, _ = self.augment(
            self.ds[row["_index"]]["image"], row, class_boxes(row, self.birads), np.random.default_rng(0), flip=flip
        )
        pixels = to_model_rgb(arr)
        return pixels, masked_image(pixels, torch.from_numpy(self.box_mask(boxes, self.box_margin)))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        row = self.rows[i]
        rng = sample_rng(self.seed, epoch, i)
        flip = self.augment.draw_flip(rng)
        size = self.augment.resolution
        arr = None
        if self.decode_pixels:
            arr, boxes, _ = self.augment(
                self.ds[row["_index"]]["image"], row, class_boxes(row, self.birads), rng, flip=flip
            )
        else:
            boxes = self.augment.boxes(self.sizes[i], row, class_boxes(row, self.birads), flip)
        u = rng.random()
        if u < self.full:
            kind, mask = MASK_FULL, np.ones((size, size), dtype=np.float32)
        elif u < self.full + self.random:
            rw, rh = self.rel_sizes[rng.integers(len(self.rel_sizes))] * size
            x0, y0 = rng.uniform(0, max(1e-6, size - rw)), rng.uniform(0, max(1e-6, size - rh))
            kind, mask = MASK_RANDOM, self.box_mask([[x0, y0, x0 + rw, y0 + rh]])
        else:
            kind, mask = MASK_BOX, self.box_mask(boxes, self.box_margin)
        mask_t = torch.from_numpy(mask).unsqueeze(0)
        item = {"mask": mask_t, "row": i, "flip": int(flip), "mask_kind": kind}
        if arr is not None:
            pixels = to_model_rgb(arr)
            item["pixel_values"] = pixels
            item["masked_pixel_values"] = masked_image(pixels, mask_t)
        return item


def masked_image(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the inpainting pipeline feeds: the image with the region to fill set to 0 (mid-grey)."""
    return pixels * (mask < 0.5)


def collate(batch: list[dict]) -> dict:
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return out


def make_loader(dataset, batches: Iterator[list], num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over our own (resumable, sharded) batch stream; persistent workers, pinned
    batches (the trainers copy them to the GPU with ``non_blocking``)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers > 0 else None,
    )

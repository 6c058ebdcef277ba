"""Training data module: sharding, augmentation that keeps boxes/laterality true, row selection,
config errors."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from helpers.synthetic import write_trainer_set
from mammosynth.builders.core.errors import InputError
from mammosynth.training import data as tdata
from mammosynth.training.config import InpaintConfig, SD35LoraConfig, load_config


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory):
    return write_trainer_set(tmp_path_factory.mktemp("prep") / "prep", n=4)


def test_shards_are_disjoint_cover_the_epoch_and_equal_in_size():
    n, bs, world = 23, 3, 2
    per_epoch = tdata.batches_per_epoch(n, bs, world)
    shards = [
        list(itertools.islice(tdata.shard_batches(n, bs, process_index=p, num_processes=world, seed=5), per_epoch))
        for p in range(world)
    ]
    assert len(shards[0]) == len(shards[1]) == per_epoch == 4
    seen = [idx for shard in shards for batch in shard for (epoch, idx) in batch]
    assert {e for shard in shards for batch in shard for (e, _) in batch} == {0}
    assert all(len(b) == bs for shard in shards for b in shard)
    counts = Counter(seen)
    assert set(counts) == set(range(n))  # every row is trained each epoch
    assert sum(c - 1 for c in counts.values()) == per_epoch * bs * world - n  # only the wrapped tail repeats
    first = {i for b in shards[0] for (_, i) in b}
    second = {i for b in shards[1] for (_, i) in b}
    assert len(first & second) <= per_epoch * bs * world - n


def test_shard_stream_resumes_exactly_and_changes_order_per_epoch():
    stream = list(itertools.islice(tdata.shard_batches(10, 2, seed=1), 12))
    resumed = list(itertools.islice(tdata.shard_batches(10, 2, seed=1, start_batch=7), 5))
    assert resumed == stream[7:12]
    epoch0 = [i for b in stream[:5] for (_, i) in b]
    epoch1 = [i for b in stream[5:10] for (_, i) in b]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1


def test_hflip_mirrors_boxes_and_swaps_laterality():
    image = np.zeros((40, 30), np.float32)
    image[10:20, 2:8] = 1.0
    boxes = np.array([[2, 10, 8, 20]], np.float32)
    row = {"laterality": "L", "flipped": False}
    aug = tdata.Augment(resolution=30, resize_mode="stretch", hflip_prob=1.0)
    from PIL import Image

    pil = Image.fromarray((image * 255).astype(np.uint8))
    out, out_boxes, lat = aug(pil, row, boxes, np.random.default_rng(0))
    assert lat == "R"
    x0, y0, x1, y1 = np.round(out_boxes[0]).astype(int)
    # the bright patch is where the mirrored, rescaled box says it is
    assert out[y0:y1, x0:x1].mean() > 0.9 and out.mean() < 0.2
    assert x0 > 15  # moved to the right half


def test_pad_mode_keeps_chest_wall_side_and_scales_boxes():
    image = np.zeros((40, 20), np.float32)
    boxes = np.array([[0, 0, 20, 40]], np.float32)
    right, b_right = tdata.resize_square(image, boxes, 20, "pad", chest_wall_right=True)
    left, b_left = tdata.resize_square(image, boxes, 20, "pad", chest_wall_right=False)
    assert right.shape == left.shape == (20, 20)
    np.testing.assert_allclose(b_right[0], [10, 0, 20, 20])
    np.testing.assert_allclose(b_left[0], [0, 0, 10, 20])


def test_inpaint_sample_masks_exactly_the_class_boxes(tiny_prepared):
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)
    assert [r["image_id"] for r in rows] == ["tiny000", "tiny002"]
    data = tdata.InpaintData(ds, rows, tdata.Augment(32), birads=4, seed=0)
    item = data[(0, 0)]
    mask = item["mask"][0]
    assert (
        item["pixel_values"].shape == (3, 32, 32) and -1 <= item["pixel_values"].min() < item["pixel_values"].max() <= 1
    )
    assert 0 < mask.mean() < 0.2
    inside = mask > 0.5
    assert torch.all(item["masked_pixel_values"][:, inside] == 0)
    assert torch.equal(item["masked_pixel_values"][:, ~inside], item["pixel_values"][:, ~inside])


def test_random_and_full_masks(tiny_prepared):
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)
    full = tdata.InpaintData(ds, rows, tdata.Augment(32), birads=4, seed=0, full_mask_fraction=1.0)
    assert full[(0, 0)]["mask"].min() == 1
    rand = tdata.InpaintData(ds, rows, tdata.Augment(32), birads=4, seed=0, random_box_fraction=1.0)
    masks = [rand[(e, 0)]["mask"] for e in range(4)]
    assert all(0 < m.mean() < 1 for m in masks)
    assert len({m.numpy().tobytes() for m in masks}) > 1  # random placements differ per epoch


def test_captions_use_shared_template_and_follow_flip(tiny_prepared):
    from mammosynth.builders.core import schema

    ds, meta = tdata.load_prepared(tiny_prepared)
    data = tdata.Text2ImageData(ds, meta, tdata.Augment(32, hflip_prob=1.0), seed=0, vendor=False)
    item = data[(0, 0)]
    row = meta[0]
    expected = schema.text2image_prompt("R", row["view"], row["density"], row["birads"])  # L row, flipped
    assert data.prompts[item["prompt_index"]] == expected


def test_no_rows_of_class_is_input_error(tiny_prepared):
    _, meta = tdata.load_prepared(tiny_prepared)
    with pytest.raises(InputError, match="BI-RADS 5") as err:
        tdata.rows_with_birads(meta, 5, file=tiny_prepared)
    assert err.value.field == "findings"


def test_missing_prepared_set_is_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        tdata.load_prepared(tmp_path / "nope")


def test_config_defaults_follow_design_and_typos_name_the_field(tmp_path):
    sd = SD35LoraConfig(prepared="p", output_dir="o")
    assert (sd.lora.rank, sd.lora.dropout, sd.learning_rate, sd.lr_scheduler, sd.lr_warmup_steps) == (
        64,
        0.1,
        1e-4,
        "cosine",
        100,
    )
    assert (sd.train_batch_size, sd.gradient_accumulation_steps, sd.max_train_steps, sd.resolution) == (
        3,
        8,
        2000,
        1024,
    )
    inp = InpaintConfig(prepared="p", output_dir="o")
    assert (inp.learning_rate, inp.weight_decay, inp.lr_scheduler, inp.resolution, inp.checkpointing_steps) == (
        5e-6,
        0.01,
        "constant",
        512,
        1000,
    )
    assert inp.mixed_precision == "bf16" and inp.train_batch_size == 4 and not inp.use_lora
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prepared: p\noutput_dir: o\nlora:\n  rnak: 8\n")
    with pytest.raises(InputError) as err:
        load_config(SD35LoraConfig, cfg)
    assert err.value.field == "lora.rnak" and "unknown field" in str(err.value) and str(cfg) in str(err.value)


def test_inpaint_masks_cover_whole_latent_cells(tiny_prepared):
    """With grid=8 (the VAE factor) every 8x8 cell is all masked or all kept: the mask the UNet
    sees on the latent grid has no half-masked strip, the same mask generation draws."""
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)

    def cells(grid):
        data = tdata.InpaintData(ds, rows, tdata.Augment(64), birads=4, seed=0, grid=grid)
        mask = data[(0, 0)]["mask"][0].numpy()
        return mask.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)

    assert all(len(set(c)) == 1 for c in cells(8))
    assert any(len(set(c)) > 1 for c in cells(1))  # these boxes do not fall on the grid by themselves


def test_cached_items_decode_no_pixels_and_keep_the_stream(tiny_prepared):
    """Without pixels (latents cached) an item has the same mask, mirror state and caption as with them."""
    ds, meta = tdata.load_prepared(tiny_prepared)
    rows = tdata.rows_with_birads(meta, 4)
    full = tdata.InpaintData(ds, rows, tdata.Augment(32, hflip_prob=0.5), birads=4, seed=3, grid=8)
    bare = tdata.InpaintData(ds, rows, tdata.Augment(32, hflip_prob=0.5), birads=4, seed=3, grid=8)
    bare.decode_pixels = False
    keys = [(e, i) for e in range(4) for i in range(len(rows))]
    for key in keys:
        a, b = full[key], bare[key]
        assert "pixel_values" not in b and torch.equal(a["mask"], b["mask"]) and a["flip"] == b["flip"]
    assert {full[k]["flip"] for k in keys} == {0, 1}
    pixels, masked = full.fixed_sample(0, bool(full[(0, 0)]["flip"]))
    assert torch.equal(pixels, full[(0, 0)]["pixel_values"]) and torch.equal(
        masked, full[(0, 0)]["masked_pixel_values"]
    )
    t2i = tdata.Text2ImageData(ds, meta, tdata.Augment(32, hflip_prob=0.5), seed=3, vendor=False)
    with_pixels = [t2i[(e, i)]["prompt_index"] for e in range(3) for i in range(len(meta))]
    t2i.decode_pixels = False
    assert [t2i[(e, i)]["prompt_index"] for e in range(3) for i in range(len(meta))] == with_pixels

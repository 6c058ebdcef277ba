"""Inpainting masks on the latent grid, and the window mode beside the paper's full frame (tiny
random SD2-inpainting pipelines, 64 px, 2 steps)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from helpers.gen_helpers import inpainting_method, make_spec
from helpers.synthetic import write_generator_set
from mammosynth.builders.core.errors import InputError
from mammosynth.generators.api import generate, load_generated, make_sampler
from mammosynth.generators.engine import plan

COUNTS = [{"birads": [3, 5], "view": "CC", "laterality": "L", "n": 2}]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_generator_set(tmp_path_factory.mktemp("prepared") / "prepared", n_backgrounds=2)


def _unet_inputs(pipe):
    """Record every UNet input (latents, mask, masked-image latents) of the pipeline's next calls."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().float().clone()))
    return seen, handle


def test_the_mask_the_model_sees_covers_whole_latent_cells_around_the_box(prepared, tiny_sd2_inpaint, tmp_path):
    """Before: the 8-px latent mask (nearest-downsampled) missed box pixels in cells only partly
    inside the box, so the model kept those cells as known grey (the masked image's blank)."""
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    sampler = make_sampler(spec, "inpainting")
    boxes = [(13, 21, 30, 37), (9, 17, 23, 26)]  # no edge on the 8-px grid
    batch = [dataclasses.replace(sampler.place(t), box=b) for t, b in zip(plan(spec, "inpainting")[:2], boxes)]
    seen, handle = _unet_inputs(sampler.pipeline(3))
    try:
        sampler.inpaint(3, batch)
    finally:
        handle.remove()
    latent_mask = seen[0][: len(batch), 4].numpy()  # channel 4: the mask (the rest of the batch is CFG's copy)
    assert latent_mask.shape[-1] == 64 // 8
    for (x0, y0, x1, y1), cells in zip(boxes, latent_mask):
        pixels = np.kron(cells, np.ones((8, 8))) > 0.5
        assert pixels[y0:y1, x0:x1].all()  # every box pixel is to be painted
        ax0, ay0, ax1, ay1 = x0 // 8 * 8, y0 // 8 * 8, -(-x1 // 8) * 8, -(-y1 // 8) * 8
        assert pixels.sum() == (ax1 - ax0) * (ay1 - ay0)  # and nothing beyond the cells the box touches


def test_bbox_stays_the_lesion_box_and_only_it_changes(prepared, tiny_sd2_inpaint, tmp_path):
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    generate(spec, progress=False)
    sampler = make_sampler(spec, "inpainting")
    tasks = {t.image_id: t for t in plan(spec, "inpainting")}
    for r in load_generated(spec, "inpainting"):
        pl = sampler.place(tasks[r["image_id"]])
        assert r["bbox"] == [[float(v) for v in pl.box]]
        x0, y0, x1, y1 = pl.box
        out = np.asarray(r["image"]).copy()
        out[y0:y1, x0:x1] = pl.image[y0:y1, x0:x1]
        assert np.array_equal(out, pl.image)


def _window_spec(tmp_path, prepared, checkpoint, **params):
    return make_spec(
        tmp_path,
        {"inpainting": inpainting_method(checkpoint, COUNTS, mode="window", window=32, **params)},
        prepared=prepared,
    )


def test_window_mode_denoises_only_the_window_and_keeps_every_pixel_outside(prepared, tiny_sd2_inpaint, tmp_path):
    spec = _window_spec(tmp_path, prepared, tiny_sd2_inpaint)
    sampler = make_sampler(spec, "inpainting")
    tasks = plan(spec, "inpainting")
    seen, handle = _unet_inputs(sampler.pipeline(3))
    try:
        rows = sampler.generate(tasks)
    finally:
        handle.remove()
    assert {tuple(s.shape[-2:]) for s in seen} == {(32 // 8, 32 // 8)}  # the model saw windows only
    assert len(rows) == len(tasks)
    changed = 0
    for task, row in zip(tasks, rows):
        pl = sampler.place(task)
        x, y, side = pl.frame
        assert side == 32 and x % 8 == 0 and y % 8 == 0 and 0 <= x <= 64 - side and 0 <= y <= 64 - side
        x0, y0, x1, y1 = pl.box
        assert x <= x0 and y <= y0 and x1 <= x + side and y1 <= y + side
        outside = np.ones((64, 64), bool)
        outside[y : y + side, x : x + side] = False
        assert np.array_equal(row["image"][outside], pl.image[outside])  # byte-identical background
        changed += int(not np.array_equal(row["image"][y0:y1, x0:x1], pl.image[y0:y1, x0:x1]))
    assert changed == len(rows)  # and the model painted every box


def test_window_and_full_frame_both_run_and_record_their_mode(prepared, tiny_sd2_inpaint, tmp_path):
    window = _window_spec(tmp_path / "w", prepared, tiny_sd2_inpaint)
    full = make_spec(tmp_path / "f", {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    a = generate(window, progress=False)["inpainting"]
    b = generate(full, progress=False)["inpainting"]
    assert a.rows == b.rows == 4
    ids = lambda spec: list(load_generated(spec, "inpainting")["image_id"])  # noqa: E731
    assert ids(window) == ids(full)
    # the run's identity (and so the card's method parameters) names the mode
    assert '"mode": "window"' in make_sampler(window, "inpainting").fingerprint
    assert '"mode": "full_frame"' in make_sampler(full, "inpainting").fingerprint
    assert full.methods["inpainting"].inpainting.mode == "full_frame"  # the paper's mode is the default


@pytest.mark.parametrize(
    "window, message",
    [
        (36, "window 36 is not divisible by 8"),
        (128, "window 128 is larger than the output resolution 64"),
        (24, "window 24 cannot hold BI-RADS 3's largest boxes .* use window >= 32"),
    ],
)
def test_bad_window_is_refused_before_model_work(window, message, prepared, tiny_sd2_inpaint, tmp_path, monkeypatch):
    import diffusers

    monkeypatch.setattr(
        diffusers.StableDiffusionInpaintPipeline, "from_pretrained", lambda *a, **k: pytest.fail("model loaded")
    )
    spec = make_spec(
        tmp_path,
        {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS, mode="window", window=window)},
        prepared=prepared,
    )
    with pytest.raises(InputError, match=message) as exc:
        make_sampler(spec, "inpainting")
    assert exc.value.field == "methods.inpainting.inpainting.window"


def test_window_origin_holds_the_aligned_box_on_the_grid():
    from mammosynth.generators.inpainting import aligned_box, window_origin

    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = (int(v) for v in rng.integers(1, 40, 2))
        x0, y0 = int(rng.integers(0, 128 - w)), int(rng.integers(0, 128 - h))
        box = (x0, y0, x0 + w, y0 + h)
        a = aligned_box((128, 128), box, 8)
        x, y = window_origin(box, a, 64, 128, 8)
        assert x % 8 == 0 and y % 8 == 0 and 0 <= x <= 64 and 0 <= y <= 64
        assert x <= a[0] and y <= a[1] and a[2] <= x + 64 and a[3] <= y + 64

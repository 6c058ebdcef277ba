"""BI-RADS inpainting with tiny random SD2-inpainting pipelines, 64 px, 2 steps."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.gen_helpers import inpainting_method, make_spec
from helpers.synthetic import GENERATOR_SIZE, REFERENCE_BOXES, write_generator_set
from mammosynth.builders.core.errors import InputError
from mammosynth.generators import inpainting as inpainting_module
from mammosynth.generators.api import generate, load_generated, make_sampler
from mammosynth.generators.box_sampling import SizeRange, iqr_inliers, sample_box, size_range
from mammosynth.generators.engine import Skip, plan

COUNTS = [{"birads": [3, 4, 5], "n": 2}]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_generator_set(tmp_path_factory.mktemp("prepared") / "prepared")


@pytest.fixture(scope="module")
def run_once(tmp_path_factory, prepared, tiny_sd2_inpaint):
    """One full run (24 images), shared by the checks that only read its output."""
    tmp = tmp_path_factory.mktemp("inpaint")
    spec = make_spec(tmp, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    result = generate(spec, progress=False)["inpainting"]
    return spec, result, load_generated(spec, "inpainting")


def test_counts_and_rows(run_once):
    spec, result, ds = run_once
    assert result.rows == len(ds) == spec.total("inpainting") == 3 * 4 * 2
    names = ds.features["birads"].names
    for r in ds:
        assert r["image"].size == (64, 64) and r["image"].mode == "L"
        assert r["prompt"] == f"A mammogram with BI-RADS {names[r['birads']][-1]} lesion."
        assert r["source_image"].startswith("bg-")
        assert r["generator"].startswith("sd2_inpainting@") and len(r["generator"].split("@")[1]) == 12


def test_only_the_box_changes_and_boxes_respect_region_and_class_range(run_once):
    spec, _, ds = run_once
    sampler = make_sampler(spec, "inpainting")
    tasks = {t.image_id: t for t in plan(spec, "inpainting")}
    changed_inside = 0
    for r in ds:
        task = tasks[r["image_id"]]
        bg = sampler.background_for(task)
        assert r["source_image"] == bg.image_id
        background = sampler.background_image(bg)
        out = np.asarray(r["image"])
        [[x0, y0, x1, y1]] = [[int(v) for v in b] for b in r["bbox"]]
        outside = np.ones(out.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(out[outside], background[outside])
        changed_inside += int(not np.array_equal(out[~outside], background[~outside]))
        assert sampler.allowed(background)[y0:y1, x0:x1].all()
        assert sampler.size_ranges[task.birads].contains(x1 - x0, y1 - y0)
    assert changed_inside == len(ds)  # the model did paint every box


def test_backgrounds_are_taken_in_order_and_right_breasts_unmirrored(run_once):
    spec, _, ds = run_once
    sampler = make_sampler(spec, "inpainting")
    by_id = {r["image_id"]: r for r in ds}
    for t in plan(spec, "inpainting"):
        assert by_id[t.image_id]["source_image"] == f"bg-{t.view}-{t.laterality}-{t.index % 3}"
    # bg-CC-R-0 is stored mirrored (flipped=True): it comes back with the breast on the right
    mirrored = next(b for b in sampler.backgrounds[("CC", "R")] if b.flipped)
    img = sampler.background_image(mirrored)
    assert img[:, -8:].mean() > 3 * img[:, :8].mean()


def test_class_size_range_drops_outliers_and_scales(prepared, tiny_sd2_inpaint, tmp_path):
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    ranges = make_sampler(spec, "inpainting").size_ranges
    sx, sy = 64 / GENERATOR_SIZE[0], 64 / GENERATOR_SIZE[1]
    w3 = [w for w, _ in REFERENCE_BOXES[3]]
    assert ranges[3].w_max == pytest.approx(sorted(w3)[-2] * sx)  # 60 px outlier dropped
    assert ranges[5].h_min == pytest.approx(min(h for _, h in REFERENCE_BOXES[5]) * sy)
    assert list(iqr_inliers([10, 11, 12, 13, 100])) == [10, 11, 12, 13]


def test_box_sampling_is_seeded_and_inside_region():
    region = np.zeros((64, 64), bool)
    region[10:40, 20:60] = True
    sizes = size_range([5, 8, 10], [4, 6, 9])
    boxes = [sample_box(region, sizes, seed) for seed in range(30)]
    assert boxes == [sample_box(region, sizes, seed) for seed in range(30)]
    assert len(set(boxes)) > 20
    for x0, y0, x1, y1 in boxes:
        assert region[y0:y1, x0:x1].all() and sizes.contains(x1 - x0, y1 - y0)
    assert sample_box(region, SizeRange(50, 60, 50, 60, 1), seed=1, max_tries=50) is None


def test_same_spec_twice_identical_and_two_processes_equal_one(run_once, tiny_sd2_inpaint, prepared, tmp_path):
    spec1, _, ds1 = run_once
    spec2 = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    for i in (1, 0):
        generate(spec2, process_index=i, num_processes=2, progress=False)
    ds2 = load_generated(spec2, "inpainting")
    assert ds1.to_pandas().equals(ds2.to_pandas())  # includes the PNG bytes


def test_no_box_fits_is_skipped_with_reason(prepared, tiny_sd2_inpaint, tmp_path):
    spec = make_spec(
        tmp_path,
        {
            "inpainting": inpainting_method(
                tiny_sd2_inpaint, [{"birads": 3, "view": "CC", "laterality": "L", "n": 2}], margin_px=30
            )
        },
        prepared=prepared,
    )
    result = generate(spec, progress=False)["inpainting"]
    assert result.rows == 0 and len(result.skipped) == 2
    assert "empty allowed region" in result.skipped[0]["reason"]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load weights fails the test: bad input must be caught before model work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was loaded before the input was checked")

    import diffusers

    monkeypatch.setattr(diffusers.StableDiffusionInpaintPipeline, "from_pretrained", refuse)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resolution": 68}, "not divisible by 8"),
        ({"background_birads": [2]}, "no BI-RADS \\[2\\] backgrounds"),
        ({"checkpoints": {3: "/nonexistent/ckpt"}}, "not found"),
    ],
)
def test_bad_input_fails_before_model_work(change, message, prepared, tiny_sd2_inpaint, tmp_path, no_model_loading):
    counts = [{"birads": 3, "n": 1}]
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, counts, **change)}, prepared=prepared)
    with pytest.raises(InputError, match=message):
        generate(spec, progress=False)
    assert not (tmp_path / "release" / "generated").exists()


def test_text_to_image_checkpoint_is_not_an_inpainting_one(prepared, tiny_sd3, tmp_path, no_model_loading):
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd3, [{"birads": 4, "n": 1}])}, prepared=prepared)
    with pytest.raises(InputError, match="not an inpainting pipeline"):
        make_sampler(spec, "inpainting")


def test_class_without_checkpoint(prepared, tiny_sd2_inpaint, tmp_path, no_model_loading):
    spec = make_spec(
        tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, [{"birads": 3, "n": 1}])}, prepared=prepared
    )
    spec.methods["inpainting"].counts[0].birads = 4  # bypasses the spec's own check: the sampler checks too
    spec.methods["inpainting"].inpainting.checkpoints = {3: str(tiny_sd2_inpaint)}
    with pytest.raises(InputError, match="BI-RADS 4 is requested in counts but has no checkpoint"):
        make_sampler(spec, "inpainting")


def test_skip_type_is_the_engine_one():
    assert inpainting_module.Skip is Skip


def test_killed_run_resumes_to_the_uninterrupted_result(run_once, tiny_sd2_inpaint, prepared, tmp_path, monkeypatch):
    from mammosynth.generators.inpainting import InpaintingSampler

    _, _, clean = run_once
    spec = make_spec(tmp_path, {"inpainting": inpainting_method(tiny_sd2_inpaint, COUNTS)}, prepared=prepared)
    real_generate = InpaintingSampler.generate
    calls = []

    def dies_after_three_shards(self, tasks):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(len(tasks))
        return real_generate(self, tasks)

    monkeypatch.setattr(InpaintingSampler, "generate", dies_after_three_shards)
    with pytest.raises(KeyboardInterrupt):
        generate(spec, progress=False)
    monkeypatch.setattr(InpaintingSampler, "generate", real_generate)
    assert len(load_generated(spec, "inpainting")) == 9  # three finished shards of 3
    resumed = generate(spec, progress=False)["inpainting"]
    assert resumed.already_done == [0, 1, 2] and len(resumed.written) == 5
    assert load_generated(spec, "inpainting").to_pandas().equals(clean.to_pandas())


def test_sixteen_bit_output_keeps_background_pixels(prepared, tiny_sd2_inpaint, tmp_path):
    spec = make_spec(
        tmp_path,
        {"inpainting": inpainting_method(tiny_sd2_inpaint, [{"birads": 5, "view": "MLO", "laterality": "L", "n": 1}])},
        prepared=prepared,
    )
    spec.output.bit_depth = 16
    generate(spec, progress=False)
    row = load_generated(spec, "inpainting")[0]
    out = np.array(row["image"])
    assert out.dtype == np.uint16 and out.max() > 255
    sampler = make_sampler(spec, "inpainting")
    background = sampler.background_image(sampler.backgrounds[("MLO", "L")][0])
    x0, y0, x1, y1 = (int(v) for v in row["bbox"][0])
    out[y0:y1, x0:x1] = background[y0:y1, x0:x1]
    assert np.array_equal(out, background)

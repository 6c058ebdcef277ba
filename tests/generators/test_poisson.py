"""Poisson blending and the PoissonSampler, on phantom and real CBIS-DDSM backgrounds."""

from __future__ import annotations

import io
import sys

import cv2
import datasets
import numpy as np
import pydantic
import pytest
from PIL import Image

from mammosynth.builders.core.breast_mask import poisson_mask
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.imageio import decode_grey
from mammosynth.builders.core.spec import ReleaseSpec
from mammosynth.generators import engine
from mammosynth.generators.backgrounds import load_prepared
from mammosynth.generators.lesion_bank import build_lesion_bank
from mammosynth.generators.placement import PlacementConfig, analyse_background, place
from mammosynth.generators.poisson import PoissonSampler, lesion_size, transform_lesion
from mammosynth.generators.poisson_solver import band_width, blend, exact_poisson_edit, poisson_correction


def _spec_dict(prepared, out, counts=None, **poisson) -> dict:
    return dict(
        name="t",
        version="1.0",
        pretty_name="t",
        description="d",
        authors=["a"],
        source=dict(name="phantom", prepared=str(prepared), license="x", redistribution_allowed=False),
        methods={"poisson": {"counts": counts or [{"birads": 5, "n": 2}], "poisson": poisson}},
        output_dir=str(out),
    )


def _spec(prepared, out, counts=None, **poisson) -> ReleaseSpec:
    return ReleaseSpec.model_validate(_spec_dict(prepared, out, counts, **poisson))


def _textured(h=200, w=160, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(0, 1, (h, w)), (0, 0), 4)
    img = 120 + 25 * base / base.std()
    top = 255 if dtype == np.uint8 else 65535
    return np.clip(img * (top / 255), 0, top).astype(dtype)


def _lesion(dtype=np.uint8, r=12):
    crop = _textured(2 * r + 9, 2 * r + 9, seed=3, dtype=dtype)
    mask = np.zeros(crop.shape, bool)
    cv2.circle(mask.view(np.uint8), (r + 4, r + 4), r, 1, -1)
    crop = crop.astype(np.float64)
    crop[mask] += 30 * (np.iinfo(dtype).max / 255)
    return np.clip(crop, 0, np.iinfo(dtype).max).astype(dtype), mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("mode", ["normal", "mixed"])
def test_change_confined_to_band_and_seam_smooth(dtype, mode):
    bg = _textured(dtype=dtype)
    crop, mask = _lesion(dtype)
    out, bbox = blend(bg, crop, mask, 60, 80, mode=mode)
    assert out.dtype == dtype and out.shape == bg.shape
    full = np.zeros(bg.shape, np.uint8)
    full[80 : 80 + crop.shape[0], 60 : 60 + crop.shape[1]] = mask
    d = cv2.distanceTransform(1 - full, cv2.DIST_L2, 5)
    band = band_width((25, 25))  # the lesion's box, not the crop's
    diff = out.astype(np.int64) != bg
    assert diff.any() and not diff[d > band].any()
    assert bbox == [64.0, 84.0, 64.0 + 25, 84.0 + 25]
    # seam: gradient energy on the mask boundary ring comparable to the background's there
    ring = (d > 0) & (d <= 2)
    gy, gx = np.gradient(out.astype(np.float64))
    by, bx = np.gradient(bg.astype(np.float64))
    e_out, e_bg = np.mean(gx[ring] ** 2 + gy[ring] ** 2), np.mean(bx[ring] ** 2 + by[ring] ** 2)
    assert e_out < 3 * e_bg
    if mode == "normal":  # a plain paste would leave a step of ~50 grey levels on that ring
        pasted = bg.astype(np.float64)
        pasted[full > 0] = crop[mask]
        py, px = np.gradient(pasted)
        assert np.mean(px[ring] ** 2 + py[ring] ** 2) > 3 * e_out


def test_dst_solver_matches_opencv_on_8bit():
    bg = _textured()
    crop, mask = _lesion()
    a, _ = blend(bg, crop, mask, 50, 70, engine="opencv")
    b, _ = blend(bg, crop, mask, 50, 70, engine="dst")
    err = np.abs(a.astype(int) - b.astype(int))
    # same equation, two discretisations of the region border: agree to well under a grey level on average
    assert err.mean() < 1.0 and np.median(err) == 0 and (err > 0).any()


def test_rotated_lesion_change_confined_to_band_of_the_lesion():
    """A rotated crop's canvas is larger than the lesion: the band and the solved region follow
    the lesion's own box, so nothing changes beyond the band around the mask."""
    bg = _textured(260, 240)
    crop, mask = _lesion(r=20)
    crop, mask = transform_lesion(crop, mask, np.random.default_rng(4), (1.0, 1.0), True, False)
    assert mask.shape[0] > mask.any(1).sum()  # the canvas has empty rows
    out, bbox = blend(bg, crop, mask, 70, 90)
    full = np.zeros(bg.shape, np.uint8)
    full[90 : 90 + crop.shape[0], 70 : 70 + crop.shape[1]] = mask
    d = cv2.distanceTransform(1 - full, cv2.DIST_L2, 5)
    x0, y0, x1, y1 = (int(v) for v in bbox)
    assert (y1 - y0, x1 - x0) == (mask.any(1).sum(), mask.any(0).sum())
    diff = out != bg
    assert diff.any() and not diff[d > band_width((y1 - y0, x1 - x0))].any()


@pytest.mark.parametrize("shape", [(70, 90), (64, 63), (101, 57)])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("to_border", [False, True])
def test_dst_correction_solves_the_poisson_equation(shape, mixed, to_border):
    """At every interior pixel of the region the correction's 5-point Laplacian equals the
    divergence of the guidance field minus the background's gradients, also when the solver pads
    the region to a fast transform length (70x90 -> 71x89 unknowns, 101x57 -> 99x59) and when the
    mask reaches the region's border (a lesion at the image's edge)."""
    h, w = shape
    rng = np.random.default_rng(h * w)
    src, dst = rng.integers(0, 255, shape).astype(np.float64), rng.integers(0, 255, shape).astype(np.float64)
    m = np.zeros(shape, bool)
    if to_border:
        m[:] = rng.random(shape) > 0.3
        m[[0, -1], :] = m[:, [0, -1]] = False  # the region border is the boundary, as blend_region sets it
    else:
        m[10:-12, 7:-9] = rng.random((h - 22, w - 16)) > 0.3
    c = poisson_correction(src, dst, m, mixed).astype(np.float64)
    sgx, sgy = np.diff(src, axis=1, append=src[:, -1:]), np.diff(src, axis=0, append=src[-1:])
    dgx, dgy = np.diff(dst, axis=1, append=dst[:, -1:]), np.diff(dst, axis=0, append=dst[-1:])
    if mixed:
        sgx, sgy = np.where(np.abs(sgx) > np.abs(dgx), sgx, dgx), np.where(np.abs(sgy) > np.abs(dgy), sgy, dgy)
    vx, vy = np.where(m, sgx - dgx, 0.0), np.where(m, sgy - dgy, 0.0)
    div = vx[1:-1, 1:-1] - vx[1:-1, :-2] + vy[1:-1, 1:-1] - vy[:-2, 1:-1]
    lap = c[:-2, 1:-1] + c[2:, 1:-1] + c[1:-1, :-2] + c[1:-1, 2:] - 4 * c[1:-1, 1:-1]
    assert np.abs(div).max() > 100 and np.abs(lap - div).max() < 1e-3


def test_lesion_filling_its_crop_at_the_image_corner():
    """A mask that fills its crop, placed against the image's edges: the region is clipped there and
    both engines blend it, changing nothing beyond the band."""
    bg = _textured()
    crop, mask = _textured(30, 30, seed=9), np.ones((30, 30), bool)
    for x, y in ((0, 0), (bg.shape[1] - 30, bg.shape[0] - 30)):
        for eng in ("dst", "opencv"):
            out, bbox = blend(bg, crop, mask, x, y, engine=eng)
            assert bbox == [float(x), float(y), float(x + 30), float(y + 30)]
            diff = np.argwhere(out != bg)
            band = band_width((30, 30))
            assert (
                diff.size
                and (diff.min(0) >= [y - band, x - band]).all()
                and (diff.max(0) < [y + 30 + band, x + 30 + band]).all()
            )


def test_correction_zero_for_identical_images():
    img = _textured().astype(np.float64)
    m = np.zeros(img.shape, bool)
    m[50:80, 40:90] = True
    assert np.abs(poisson_correction(img, img, m)).max() < 1e-8


def test_blend_bad_input():
    crop, mask = _lesion(np.uint16)
    with pytest.raises(InputError, match="uint16 but the background is uint8"):
        blend(_textured(), crop, mask, 10, 10)
    crop8, mask8 = _lesion()
    with pytest.raises(InputError, match="leaves"):
        blend(_textured(), crop8, mask8, 150, 10)
    with pytest.raises(InputError, match="blend mode"):
        blend(_textured(), crop8, mask8, 10, 10, mode="median")
    with pytest.raises(InputError, match="8-bit images only") as e:
        blend(_textured(dtype=np.uint16), crop, mask, 10, 10, engine="opencv")
    assert e.value.field == "methods.poisson.poisson.engine"


def _rows(out_dir):
    ds = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in out_dir.glob("shard-*.parquet")), split="train"
    )
    return ds.cast_column("image", datasets.Image(decode=False))


def test_sampler_deterministic_bbox_in_breast_vendor_policy(prepared_set, tmp_path):
    spec = _spec(prepared_set, tmp_path / "a")
    sampler = PoissonSampler(spec)
    assert sampler.method == "poisson" and sampler.generator.startswith("poisson-blend/")
    tasks = engine.plan(spec, "poisson")
    r1 = engine.run(tasks, sampler, tmp_path / "run1", shard_size=3, progress=False)
    engine.run(
        tasks, PoissonSampler(_spec(prepared_set, tmp_path / "b")), tmp_path / "run2", shard_size=5, progress=False
    )
    assert r1.rows + len(r1.skipped) == len(tasks) and r1.rows >= len(tasks) - 2
    a, b = _rows(tmp_path / "run1"), _rows(tmp_path / "run2")
    assert [x["bytes"] for x in a["image"]] == [x["bytes"] for x in b["image"]]
    bank = {les.lesion_id: les for les in sampler.bank.lesions}
    vendors = {les.manufacturer for les in sampler.bank.lesions}
    for row in a:
        img = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        x0, y0, x1, y1 = (int(v) for v in row["bbox"][0])
        assert poisson_mask(img)[y0:y1, x0:x1].mean() > 0.95
        assert row["method"] == 2 and row["birads"] == 4  # ClassLabel indices: poisson, BI-RADS 5
        les = bank[row["lesion_source"]]
        if row["manufacturer"] in vendors:
            assert les.manufacturer == row["manufacturer"]
        # the difference from the background stays near the lesion box
        src = load_prepared(prepared_set)
        idx = src["image_id"].index(row["source_image"])
        bg = decode_grey(src[idx]["image"])
        diff = np.argwhere(img != bg)
        pad = 0.6 * max(x1 - x0, y1 - y0) + 4
        assert diff[:, 1].min() >= x0 - pad and diff[:, 1].max() <= x1 + pad
        assert diff[:, 0].min() >= y0 - pad and diff[:, 0].max() <= y1 + pad


def test_sampler_opencv_engine(prepared_set, tmp_path):
    """``engine: opencv`` (seamlessClone) places the same lesions at the same positions and keeps
    its change inside the lesion's box; only the solver differs."""
    tasks = engine.plan(_spec(prepared_set, tmp_path / "d"), "poisson")
    dst = PoissonSampler(_spec(prepared_set, tmp_path / "d"), workers=1).generate(tasks)
    cv = PoissonSampler(_spec(prepared_set, tmp_path / "o", engine="opencv"), workers=1).generate(tasks)
    pairs = [(a, b) for a, b in zip(dst, cv) if not isinstance(a, engine.Skip)]
    assert pairs
    src = load_prepared(prepared_set)
    for a, b in pairs:
        assert a["bbox"] == b["bbox"] and a["lesion_source"] == b["lesion_source"] and a["generator"] != b["generator"]
        bg = decode_grey(src[src["image_id"].index(a["source_image"])]["image"])
        ia, ib = (np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in (a, b))
        x0, y0, x1, y1 = (int(v) for v in a["bbox"][0])
        outside = np.ones(bg.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert (ia != ib).any() and (ib != bg).any() and not (ib != bg)[outside].any()


def test_dst_engine_closer_to_exact_poisson_editing_than_seamlessclone():
    """Against Pérez et al.'s solution (sparse direct solve, the mask's outline as boundary) the
    DST engine's lesion pixels are closer than seamlessClone's, whose boundary is the lesion's box."""
    bg = _textured(200, 200, seed=5)
    crop, mask = _lesion(r=30)
    crop, mask = transform_lesion(crop, mask, np.random.default_rng(1), (1.0, 1.0), True, False)
    x, y = 60, 50
    ref_src, m = bg.copy(), np.zeros(bg.shape, bool)
    ref_src[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    m[y : y + crop.shape[0], x : x + crop.shape[1]] = mask
    exact = exact_poisson_edit(ref_src, bg, m)
    err = {}
    for eng in ("dst", "opencv"):
        out, _ = blend(bg, crop, mask, x, y, engine=eng)
        err[eng] = np.abs(out - exact)[m].mean()
    err["nothing"] = np.abs(bg - exact)[m].mean()  # leaving the background as it was
    assert err["dst"] < err["opencv"] and err["dst"] < 0.5 * err["nothing"], err


def test_sampler_skips_with_reason(prepared_set, tmp_path):
    spec = _spec(prepared_set, tmp_path, fallback="skip")
    sampler = PoissonSampler(spec)
    sampler.pools[5] = [les for les in sampler.pools[5] if les.manufacturer == "SIEMENS"]
    out = sampler.generate(engine.plan(spec, "poisson"))
    skips = [o for o in out if isinstance(o, engine.Skip)]
    rows = [o for o in out if not isinstance(o, engine.Skip)]
    assert all(r["manufacturer"] == "SIEMENS" for r in rows)
    for s in skips:
        assert "no lesion from manufacturer" in s.reason or "no position" in s.reason
    # a lesion scaled below the bank's smallest usable size is skipped, not blended
    tiny = PoissonSampler(_spec(prepared_set, tmp_path / "tiny", scale=(0.01, 0.01), realistic_size=False))
    out = tiny.generate(engine.plan(spec, "poisson")[:2])
    assert all(isinstance(o, engine.Skip) and "px across after scaling" in o.reason for o in out)
    # a lesion far larger than any breast is skipped, never placed anyway
    big = PoissonSampler(_spec(prepared_set, tmp_path / "big", scale=(6.0, 6.0), rotate=False, realistic_size=False))
    out = big.generate(engine.plan(spec, "poisson")[:2])
    assert all(isinstance(o, engine.Skip) and ("inside_with_margin" in o.reason or "larger" in o.reason) for o in out)


def test_scaled_lesions_keep_real_sizes(prepared_set, tmp_path):
    """A scale range far beyond real lesions is clipped to the bank's sizes of the class; with
    ``realistic_size: false`` it is applied as given."""
    sampler = PoissonSampler(_spec(prepared_set, tmp_path / "r", scale=(3.0, 4.0)))
    free = PoissonSampler(_spec(prepared_set, tmp_path / "f", scale=(3.0, 4.0), realistic_size=False))
    lo, hi = sampler.size_ranges[5]
    assert 0 < lo <= hi and not free.size_ranges
    for k, les in enumerate(sampler.pools[5]):
        _, mask = sampler.shape_lesion(les, np.random.default_rng(k))
        _, big = free.shape_lesion(les, np.random.default_rng(k))
        assert lo * 0.97 <= lesion_size(mask) <= hi * 1.03  # interpolation moves the area a little
        assert lesion_size(big) > 2.9 * lesion_size(les.mask)
    with pytest.raises(pydantic.ValidationError, match="0 < low <= high"):
        _spec(prepared_set, tmp_path, scale=(1.2, 0.8))


def test_sampler_bad_input(prepared_set, tmp_path):
    with pytest.raises(InputError, match="lesion bank is empty"):
        PoissonSampler(_spec(prepared_set, tmp_path, counts=[{"birads": 2, "n": 1}], lesion_birads=[2]))
    with pytest.raises(InputError, match="no background of view"):
        PoissonSampler(
            _spec(prepared_set, tmp_path, background_birads=[3], counts=[{"birads": 5, "laterality": "R", "n": 1}])
        )


@pytest.mark.slow
def test_real_cbis_backgrounds(cbis_prepared, prepared_set):
    """Phantom lesions placed and blended into the 8 real CBIS-DDSM images."""
    bank = build_lesion_bank(prepared_set, [5])
    ds = load_prepared(cbis_prepared)
    cfg = PlacementConfig()
    done = 0
    for i in range(len(ds)):
        img = decode_grey(ds[i]["image"])
        info = analyse_background(img, ds[i]["view"], cfg)
        les = bank.lesions[i % len(bank)]
        pl = place(info, les.mask, les.context_std, np.random.default_rng(700 + i), cfg)
        if isinstance(pl, str):
            assert "no position" in pl or "no accepted" in pl
            continue
        out, (x0, y0, x1, y1) = blend(img, les.crop, les.mask, pl.x, pl.y)
        assert info.mask[int(y0) : int(y1), int(x0) : int(x1)].mean() > 0.95
        diff = np.argwhere(out != img)
        band = band_width(les.crop.shape)
        assert diff[:, 1].min() >= pl.x - band - 1 and diff[:, 1].max() <= pl.x + les.crop.shape[1] + band
        done += 1
    assert done >= 5


def test_sampler_pool_and_png_paths_give_the_same_bytes(prepared_set, tmp_path, monkeypatch):
    """Workers and the PNG path are speed choices only: one worker, a pool, and the fallback that
    decodes with Pillow and deflates every block all write the same bytes."""
    import mammosynth.generators.poisson as poisson_mod
    from mammosynth.builders.core.png_blocks import BlockFile

    spec = _spec(prepared_set, tmp_path, counts=[{"birads": 5, "n": 3}])
    tasks = engine.plan(spec, "poisson")
    with PoissonSampler(spec, workers=2) as pooled:
        many = pooled.generate(tasks)
        assert pooled._executor is not None  # the pool is kept for the next shard
        assert pooled.generate(tasks[:2]) == many[:2]
    one = PoissonSampler(spec, workers=1).generate(tasks)
    stored = load_prepared(prepared_set)[0]["image"]["bytes"]
    assert BlockFile.parse(stored) is not None  # ingest writes the block layout
    monkeypatch.setattr(poisson_mod.BlockFile, "parse", classmethod(lambda cls, data: None))
    fallback = PoissonSampler(spec, workers=1).generate(tasks)
    rows = [r for r in one if not isinstance(r, engine.Skip)]
    assert len(rows) >= len(tasks) - 2
    assert many == one == fallback
    monkeypatch.undo()
    for r in rows:  # outputs keep the block layout and decode to what a full decode gives
        f = BlockFile.parse(r["image"]["bytes"])
        assert f is not None and np.array_equal(f.rows(), decode_grey(r["image"]))


@pytest.mark.slow
def test_sampler_pool_without_fork(prepared_set, tmp_path, monkeypatch):
    """Where fork is not available (macOS, Windows) the workers are spawned and rebuild the sampler
    from the spec; the bytes are the same as in one process."""
    import multiprocessing

    spec = _spec(prepared_set, tmp_path, counts=[{"birads": 5, "n": 3}])
    tasks = engine.plan(spec, "poisson")
    one = PoissonSampler(spec, workers=1).generate(tasks)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with PoissonSampler(spec, workers=2) as pooled:
        spawned = pooled.generate(tasks)
        assert pooled._executor is not None and pooled._executor._mp_context.get_start_method() == "spawn"
    assert spawned == one and any(not isinstance(r, engine.Skip) for r in one)


def test_cli_generate_poisson_resumes_and_rejects_bad_input(prepared_set, tmp_path, capsys):
    """`mammosynth generate SPEC --method poisson`: shards written, a rerun adds nothing; a spec
    asking for backgrounds that do not exist exits 2 naming the file and field, writing nothing."""
    import yaml

    from mammosynth.builders.cli import main

    def cli(*args):
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return exc.value.code, capsys.readouterr()

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec_dict(prepared_set, tmp_path / "out", [{"birads": 5, "n": 3}])))
    code, out = cli("generate", str(path), "--method", "poisson")
    assert code == 0, out.err
    shards = sorted((tmp_path / "out" / "generated" / "poisson").glob("shard-*.parquet"))
    rows = _rows(tmp_path / "out" / "generated" / "poisson")
    assert shards and 10 <= len(rows) <= 12 and set(rows["method"]) == {2}  # 3 per view x laterality cell
    assert "poisson:" in out.out
    code, out = cli("generate", str(path), "--method", "poisson")
    assert code == 0 and "0 images in 0 new shards" in out.out
    assert sorted((tmp_path / "out" / "generated" / "poisson").glob("shard-*.parquet")) == shards

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_spec_dict(prepared_set, tmp_path / "bad-out", background_birads=[3])))
    code, out = cli("generate", str(bad), "--method", "poisson")
    assert code == 2
    assert "methods.poisson.poisson.background_birads" in out.err and "no background of view" in out.err
    assert not list((tmp_path / "bad-out").rglob("shard-*.parquet"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses pgrep")
def test_killed_pooled_run_leaves_no_workers_and_resumes_to_the_same_bytes(prepared_set, tmp_path):
    """SIGKILL of `mammosynth generate` while its pool works: the workers leave too, and a rerun
    finishes to exactly the images of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import time

    import yaml

    def write(name: str):
        d = _spec_dict(prepared_set, tmp_path / name, [{"birads": 5, "n": 150}])
        d["output"] = {"shard_size": 4}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d))
        return path, tmp_path / name / "generated" / "poisson"

    def images(folder):
        return {r["image_id"]: r["image"]["bytes"] for r in _rows(folder)}

    cmd = [sys.executable, "-m", "mammosynth.builders.cli", "generate"]
    spec, out = write("killed")
    proc = subprocess.Popen(
        [*cmd, str(spec), "--method", "poisson"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "shard-00002.parquet").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    workers = [
        int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert workers  # the pool was running
    deadline = time.monotonic() + 10
    while any(
        os.path.exists(f"/proc/{w}") and "zombie" not in open(f"/proc/{w}/status").read().lower() for w in workers
    ):
        assert time.monotonic() < deadline, "pool workers outlived their killed parent"
        time.sleep(0.1)
    done = len(list(out.glob("shard-*.parquet")))
    assert 3 <= done < 150  # 600 tasks, 4 per shard: killed part way
    assert subprocess.run([*cmd, str(spec), "--method", "poisson"], capture_output=True).returncode == 0
    clean_spec, clean = write("clean")
    assert subprocess.run([*cmd, str(clean_spec), "--method", "poisson"], capture_output=True).returncode == 0
    assert images(out) == images(clean) and len(images(clean)) >= 590


@pytest.fixture(scope="module")
def prepared16(phantom_source, tmp_path_factory):
    from conftest import PREPARED_SIZE

    from mammosynth.builders.sources.ingest import IngestOptions, ingest_vindr

    out = tmp_path_factory.mktemp("prepared16") / "prep"
    return ingest_vindr(phantom_source, out, IngestOptions(size=PREPARED_SIZE, bit_depth=16), progress=False)


def test_sampler_16_bit(prepared16, tmp_path):
    """A 16-bit prepared set gives 16-bit rows (DST engine); the change stays near the lesion;
    seamlessClone, 8-bit only, is refused at once naming the field."""
    spec = _spec(prepared16, tmp_path / "a")
    spec.output.bit_depth = 16
    tasks = engine.plan(spec, "poisson")
    rows = [r for r in PoissonSampler(spec, workers=1).generate(tasks) if not isinstance(r, engine.Skip)]
    assert len(rows) >= len(tasks) - 2
    src = load_prepared(prepared16)
    for row in rows:
        img = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        bg = decode_grey(src[src["image_id"].index(row["source_image"])]["image"])
        assert img.dtype == np.uint16 and bg.dtype == np.uint16 and img.shape == bg.shape
        x0, y0, x1, y1 = (int(v) for v in row["bbox"][0])
        diff = np.argwhere(img != bg)
        pad = band_width((y1 - y0, x1 - x0)) + 1
        assert diff.size and diff[:, 0].min() >= y0 - pad and diff[:, 0].max() < y1 + pad
        assert diff[:, 1].min() >= x0 - pad and diff[:, 1].max() < x1 + pad
    with pytest.raises(InputError, match="8-bit images only") as e:
        PoissonSampler(_spec(prepared16, tmp_path / "b", engine="opencv"))
    assert e.value.field == "methods.poisson.poisson.engine"

"""Realism metrics: the encoder path (tiny random models saved to folders and loaded as real ones
are) and FID / KID / precision-recall against independent computations written out here."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from helpers import synthetic as S
from mammosynth.builders.core.config_io import validate_model
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.hashing import tree_hash
from mammosynth.builders.core.prepared import open_prepared
from mammosynth.validation import realism as R
from mammosynth.validation.analysis import Rows
from mammosynth.validation.feature_extractor import RealismConfig, load_extractor, preprocess
from mammosynth.validation.release_io import load_release

MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]  # not ImageNet's: the processor's must be the ones used


# --- encoders on disk --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny random DINOv2 (16 features, 32x32 input) with its image processor, as save_pretrained writes it."""
    from transformers import Dinov2Config, Dinov2Model, ViTImageProcessorPil

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "tiny-dinov2"
    cfg = Dinov2Config(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    Dinov2Model(cfg).eval().save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dino(dino_dir):
    return load_extractor(RealismConfig(extractor=str(dino_dir)))


def _images(seed: int, n: int, h: int = 64, w: int = 48) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [S.mammogram(rng, h, w, "LR"[k % 2], ("CC", "MLO")[k % 3 == 0]) for k in range(n)]


def _cfg(dino_dir, **kw) -> RealismConfig:
    base = dict(extractor=str(dino_dir), min_images=5, kid_subsets=20, kid_subset_size=1000)
    return RealismConfig(**(base | kw))


# --- independent computations --------------------------------------------------------------------


def _fid_closed_form(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^1/2 S2 S1^1/2)^1/2), by symmetric eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def _exact_sample(rng, mean, cov, n) -> np.ndarray:
    """n points whose sample mean and covariance (ddof 1) are exactly ``mean`` and ``cov``."""
    d = len(mean)
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, d))]))
    z = q[:, 1:] * np.sqrt(n - 1)  # orthonormal columns, each orthogonal to the ones vector
    return mean + z @ np.linalg.cholesky(cov).T


def _mmd2_loop(x, y) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, one kernel evaluation at a time."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _pr_loop(real, fake, k) -> tuple[float, float]:
    """Kynkaanniemi et al. by brute force: radius = distance to the k-th nearest *other* point."""

    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def share_inside(q, x, r):
        return float(np.mean([any(np.linalg.norm(p - x[j]) <= r[j] for j in range(len(x))) for p in q]))

    return share_inside(fake, real, radii(real)), share_inside(real, fake, radii(fake))


# --- FID --------------------------------------------------------------------------------------------


def test_fid_diagonal_gaussians_match_the_analytic_closed_form():
    rng = np.random.default_rng(1)
    sd1, sd2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6) + 3.0
    a = _exact_sample(rng, mu1, np.diag(sd1**2), 400)
    b = _exact_sample(rng, mu2, np.diag(sd2**2), 300)
    value, reliable = R.fid(a, b)
    # diagonal covariances: Tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sd1 - sd2)^2
    assert reliable
    assert value == pytest.approx(np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2), rel=1e-9)


def test_fid_full_covariances_match_the_symmetric_form():
    """Non-commuting covariances: catches sqrtm(S1) sqrtm(S2) in place of sqrtm(S1 S2), covariances of
    the wrong axis, and a mean term of the wrong sign."""
    rng = np.random.default_rng(2)
    d = 5
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) + 1.0
    a, b = _exact_sample(rng, mu1, s1, 200), _exact_sample(rng, mu2, s2, 150)
    value, _ = R.fid(a, b)
    assert value == pytest.approx(_fid_closed_form(mu1, s1, mu2, s2), rel=1e-8)
    assert value == pytest.approx(R.fid(b, a)[0], rel=1e-8)  # a distance: symmetric


def test_fid_of_a_set_with_itself_through_the_encoder_is_zero(dino_dir):
    imgs = _images(0, 40)
    f = R.realism_figures(_cfg(dino_dir), R.ImageSet(imgs), R.ImageSet(list(imgs)))
    overall = f["strata"]["overall"]
    assert overall["fid"] == pytest.approx(0.0, abs=1e-8)
    assert overall["precision"] == overall["recall"] == 1.0
    other = R.realism_figures(_cfg(dino_dir), R.ImageSet(imgs), R.ImageSet([S.invert(i) for i in imgs]))
    assert other["strata"]["overall"]["fid"] > 1e-3  # and it is not zero for everything


# --- KID --------------------------------------------------------------------------------------------


def test_mmd2_matches_the_loop():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.5
    assert R.mmd2_unbiased(x, y) == pytest.approx(_mmd2_loop(x, y), rel=1e-10)
    assert R.mmd2_unbiased(x, y) > 0.01


def test_kid_over_subsets_is_mean_and_std_of_the_loop_on_the_same_subsets():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(50, 3)) * 1.5
    got = R.kid(a, b, subsets=6, subset_size=20, rng=np.random.default_rng(9))
    draw = np.random.default_rng(9)  # the same draws, in the documented order: a's subset, then b's
    vals = [_mmd2_loop(a[draw.choice(40, 20, replace=False)], b[draw.choice(50, 20, replace=False)]) for _ in range(6)]
    assert got["mean"] == pytest.approx(np.mean(vals), rel=1e-10)
    assert got["std"] == pytest.approx(np.std(vals), rel=1e-8)
    assert got["std"] > 0 and got["subset_size"] == 20
    whole = R.kid(a, b[:40], subsets=6, subset_size=100, rng=np.random.default_rng(9))
    assert whole == {
        "mean": pytest.approx(_mmd2_loop(a, b[:40]), rel=1e-10),
        "std": 0.0,
        "subsets": 1,
        "subset_size": 40,
    }


# --- precision / recall -------------------------------------------------------------------------------


def test_precision_recall_match_brute_force_and_are_not_swapped():
    rng = np.random.default_rng(5)
    real = rng.uniform(0, 10, size=(60, 2))
    fake = rng.normal(5, 0.6, size=(40, 2))  # a tight cluster inside the real cloud: faithful, not diverse
    p, r = R.precision_recall(real, fake, k=3)
    assert (p, r) == pytest.approx(_pr_loop(real, fake, 3))
    assert p > 0.9 and r < 0.4
    assert R.precision_recall(real, real, k=3) == (1.0, 1.0)
    assert R.precision_recall(real, real + 1000.0, k=3) == (0.0, 0.0)
    assert R.precision_recall(real, fake, k=1) == pytest.approx(_pr_loop(real, fake, 1))


# --- the whole path: encoder features, then the figures -------------------------------------------------


def _independent_features(folder, images) -> np.ndarray:
    """The documented preprocessing written out here, through transformers directly."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    mean, std = np.array(proc["image_mean"])[:, None, None], np.array(proc["image_std"])[:, None, None]
    batch = []
    for im in images:
        unit = im.astype(np.float32) / (255.0 if im.dtype == np.uint8 else 65535.0)
        unit = cv2.resize(unit, (32, 32), interpolation=cv2.INTER_AREA)
        batch.append((np.stack([unit] * 3) - mean) / std)
    with torch.no_grad():
        return model(pixel_values=torch.tensor(np.array(batch), dtype=torch.float32)).pooler_output.double().numpy()


def test_figures_equal_independent_features_and_formulas(dino_dir, dino):
    rel_imgs, ref_imgs = _images(10, 40), _images(11, 40)
    rel_imgs[::2] = [(i.astype(np.uint16) * 257) for i in rel_imgs[::2]]  # 16-bit rows scale by their depth
    f_rel, f_ref = _independent_features(dino_dir, rel_imgs), _independent_features(dino_dir, ref_imgs)
    assert np.allclose(dino.extract(rel_imgs), f_rel, atol=1e-5)
    assert dino.describe()["feature_dim"] == 16 and dino.image_size == 32
    assert dino.mean == tuple(MEAN) and dino.std == tuple(STD)

    cfg = _cfg(dino_dir, kid_subsets=1)  # one subset of all images (equal n): KID is the full-set MMD^2
    overall = R.realism_figures(cfg, R.ImageSet(rel_imgs), R.ImageSet(ref_imgs))["strata"]["overall"]
    expect_fid = _fid_closed_form(
        f_rel.mean(0), np.cov(f_rel, rowvar=False), f_ref.mean(0), np.cov(f_ref, rowvar=False)
    )
    assert overall["fid"] == pytest.approx(expect_fid, rel=1e-4, abs=1e-7)
    assert overall["kid"] == pytest.approx(_mmd2_loop(f_rel, f_ref), rel=1e-4, abs=1e-9)
    assert (overall["precision"], overall["recall"]) == pytest.approx(_pr_loop(f_ref, f_rel, 3))
    assert overall["n_release"] == 40 and overall["n_reference"] == 40


def test_bit_depth_does_not_change_the_features(dino):
    imgs = _images(12, 4)
    assert np.allclose(dino.extract(imgs), dino.extract([i.astype(np.uint16) * 257 for i in imgs]), atol=1e-5)
    assert not np.allclose(dino.extract(imgs), dino.extract([i.astype(np.uint16) for i in imgs]), atol=1e-3)


def test_preprocess_scales_resizes_and_normalises():
    img = np.full((100, 60), 65535, np.uint16)
    img[:50] = 0
    x = preprocess(img, 20, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    assert x.shape == (3, 20, 20) and x.dtype == np.float32
    assert np.allclose(x[0, :10], -1.0) and np.allclose(x[0, 10:], 1.0) and np.allclose(x[1, 10:], 2.0)
    with pytest.raises(ValueError, match="grey"):
        preprocess(np.zeros((4, 4, 3), np.uint8), 8)


# --- strata, small samples, not configured ---------------------------------------------------------------


def test_strata_keys_counts_and_too_few(dino_dir, dino):
    n = 40
    rel = R.ImageSet(
        _images(20, n),
        method=["text2image", "inpainting"] * (n // 2),
        density=["A", "B", "C", "C"] * (n // 4),
        birads=[1, 2, 3, 4, 5] * (n // 5),
    )
    ref = R.ImageSet(_images(21, 30), density=["A", "B", "C"] * 10, birads=[1, 2, 3] * 10)
    f = R.realism_figures(_cfg(dino_dir, min_images=6), rel, ref, extractor=dino)
    st = f["strata"]
    assert set(st) == {"overall", "method", "density", "birads"}
    assert set(st["method"]) == {"text2image", "inpainting"}
    assert st["method"]["inpainting"]["n_release"] == 20 and st["method"]["inpainting"]["n_reference"] == 30
    assert set(st["density"]) == {"A", "B", "C", "D"}  # every category, present or not
    assert (st["density"]["C"]["n_release"], st["density"]["C"]["n_reference"]) == (20, 10)
    assert (st["density"]["A"]["n_release"], st["density"]["A"]["n_reference"]) == (10, 10)
    assert "fid" in st["density"]["C"] and "fid" in st["density"]["A"]
    assert st["density"]["D"] == {
        "n_release": 0,
        "n_reference": 0,
        "note": "too few images (n=0 release, 0 reference; minimum 6)",
    }
    assert set(st["birads"]) == {"1", "2", "3", "4", "5"}
    assert (st["birads"]["3"]["n_release"], st["birads"]["3"]["n_reference"]) == (8, 10)
    assert "fid" not in st["birads"]["4"] and st["birads"]["4"]["note"].startswith("too few images (n=8 release, 0 ")
    # 8 images in 16 dimensions: figures, with the warning that says what they are worth
    assert any("rank-deficient" in w for w in st["birads"]["3"]["warnings"])
    assert f["extractor"]["content_hash"] == tree_hash(dino_dir) and f["extractor"]["name"] == "tiny-dinov2"

    md = R.render_realism_markdown(f)
    assert "| density D | 0 | 0 | too few images (n=0 release, 0 reference; minimum 6) |" in md
    fid_a = st["density"]["A"]["fid"]
    assert f"| density A | 10 | 10 | {fid_a:.4g} |" in md
    assert "tiny-dinov2" in md and tree_hash(dino_dir)[:12] in md
    json.dumps(f, allow_nan=False)  # JSON-able as report.json needs it


def test_not_configured_reads_nothing_and_shows_no_number():
    def explode():
        raise AssertionError("images were read")
        yield

    f = R.realism_figures(RealismConfig(), R.ImageSet(explode()), R.ImageSet(explode()), previous=R.ImageSet(explode()))
    assert f["configured"] is False
    md = R.render_realism_markdown(f)
    assert "Not configured" in md and "realism.extractor" in md
    assert not re.search(r"\d", md)
    assert R.drift_figures(RealismConfig(), R.ImageSet(explode()), R.ImageSet(explode()))["configured"] is False


def test_unreadable_images_are_left_out_and_counted(dino_dir, dino):
    imgs = _images(30, 12)
    rel = R.ImageSet([None, *imgs], density=[None, *(["A"] * 12)])
    f = R.realism_figures(_cfg(dino_dir), rel, R.ImageSet(imgs, density=["A"] * 12), extractor=dino)
    assert f["unreadable"] == {"release": 1, "reference": 0}
    assert f["n_release"] == 12 and f["strata"]["density"]["A"]["n_release"] == 12
    assert f["strata"]["overall"]["fid"] == pytest.approx(0.0, abs=1e-8)


# --- drift ------------------------------------------------------------------------------------------


def test_drift_uses_the_same_metrics_and_strata(dino_dir, dino):
    imgs = _images(40, 24)
    labels = dict(method=["text2image"] * 12 + ["inpainting"] * 12, density=["B"] * 24, birads=[2, 4] * 12)
    same = R.drift_figures(_cfg(dino_dir), R.ImageSet(imgs, **labels), R.ImageSet(list(imgs), **labels), extractor=dino)
    assert same["strata"]["overall"]["fid"] == pytest.approx(0.0, abs=1e-8)
    assert same["strata"]["method"]["inpainting"]["n_previous"] == 12  # method against method
    assert same["strata"]["density"]["B"]["precision"] == 1.0

    darker = R.ImageSet([(i * 0.5).astype(np.uint8) for i in imgs], **labels)
    f = R.realism_figures(
        _cfg(dino_dir), R.ImageSet(imgs, **labels), R.ImageSet(imgs, **labels), previous=darker, extractor=dino
    )
    moved = f["drift"]["strata"]["overall"]
    assert moved["fid"] > 1e-3 and moved["n_previous"] == 24
    assert f["strata"]["overall"]["fid"] == pytest.approx(0.0, abs=1e-8)
    md = R.render_realism_markdown(f)
    assert "#### Drift against the previous release" in md and f"{moved['fid']:.4g}" in md


# --- loading: Hub cache only, other kinds, config errors ---------------------------------------------


def test_hub_id_loads_from_the_local_cache_only(dino_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--acme--tiny-dino"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(dino_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ext = load_extractor(RealismConfig(extractor="acme/tiny-dino"))
    d = ext.describe()
    assert (d["name"], d["revision"], d["kind"]) == ("acme/tiny-dino", commit, "transformers")
    assert d["content_hash"] == tree_hash(dino_dir)  # the same weights, the same identity

    with pytest.raises(InputError, match="local Hugging Face cache") as err:
        load_extractor(RealismConfig(extractor="acme/not-downloaded"))
    assert err.value.field == "realism.extractor"
    with pytest.raises(InputError, match="folder not found") as err:
        load_extractor(RealismConfig(extractor=str(tmp_path / "nowhere")))
    assert err.value.field == "realism.extractor"


def test_an_exported_torch_program_loads_by_its_files(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.rand(2, 3, 24, 24),), dynamic_shapes=({0: batch},))
    folder = tmp_path / "conv-encoder"
    folder.mkdir()
    torch.export.save(program, folder / "model.pt2")
    (folder / "extractor.json").write_text(json.dumps({"image_size": 24, "mean": [0.5], "std": [0.25]}))
    ext = load_extractor(RealismConfig(extractor=str(folder)))
    assert (ext.kind, ext.dim, ext.image_size, ext.mean) == ("torch_export", 8, 24, (0.5, 0.5, 0.5))
    imgs = _images(50, 5)
    x = torch.tensor(np.stack([preprocess(i, 24, (0.5,) * 3, (0.25,) * 3) for i in imgs]))
    with torch.no_grad():
        assert np.allclose(ext.extract(imgs), net(x).double().numpy(), atol=1e-6)


def test_a_folder_of_unknown_files_is_input_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="cannot tell how to load") as err:
        load_extractor(RealismConfig(extractor=str(tmp_path)))
    assert err.value.field == "realism.extractor"
    for kind in ("transformers", "torchvision", "torch_export"):  # a kind named that the files do not fit
        with pytest.raises(InputError) as err:
            load_extractor(RealismConfig(extractor=str(tmp_path), kind=kind))
        assert err.value.field == "realism.extractor"


def test_config_is_strict_with_field_errors():
    with pytest.raises(InputError) as err:
        validate_model(RealismConfig, {"extractor": "x", "min_image": 3})
    assert err.value.field == "min_image" and "unknown field" in str(err.value)
    with pytest.raises(InputError) as err:
        validate_model(RealismConfig, {"device": "gpu"})
    assert err.value.field == "device"


# --- from datasets, as the gate reads them --------------------------------------------------------------


def test_release_and_reference_datasets_with_feature_cache(dino_dir, dino, tmp_path):
    ref_path = S.write_reference_set(tmp_path / "ref", n_studies=3, seed=0, h=96, w=80)
    rows = [
        S.release_row(
            r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"]
        )
        for k, r in enumerate(S.reference_rows(3, 5, h=96, w=80))
    ]
    rows[0]["image"]["bytes"] = b"not a png"
    rel = load_release(S.write_generated(tmp_path / "rel", {"text2image": rows}))
    ref_ds = open_prepared(ref_path)
    cfg = _cfg(dino_dir, min_images=4)

    labels = Rows.of(rel)  # class labels as names, as the gate reads them

    def sets(key):
        release = R.ImageSet(
            R.dataset_images(rel.dataset), method=labels.method, density=labels.density, birads=labels.birads
        )
        reference = R.ImageSet(R.dataset_images(ref_ds), density=ref_ds["density"], birads=ref_ds["birads"], key=key)
        return release, reference

    first = R.realism_figures(cfg, *sets("ref-v1"), extractor=dino, cache_dir=tmp_path / "cache")
    assert first["unreadable"] == {"release": 1, "reference": 0}
    assert first["n_reference"] == 12 and first["strata"]["density"]["A"]["n_reference"] == 4
    assert len(list((tmp_path / "cache").glob("realism-*.npz"))) == 1
    release, _ = sets(None)

    def explode():
        raise AssertionError("the cached reference was read again")
        yield

    again = R.realism_figures(
        cfg,
        release,
        R.ImageSet(explode(), density=ref_ds["density"], birads=ref_ds["birads"], key="ref-v1"),
        extractor=dino,
        cache_dir=tmp_path / "cache",
    )
    assert again["strata"] == first["strata"]


def test_compare_needs_k_neighbours_and_finite_features():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(10, 4))
    out = R.compare(a, b, RealismConfig(min_images=2, k=3), 0, "reference")
    assert out == {"n_release": 3, "n_reference": 10, "note": "too few images (n=3 release, 10 reference; minimum 4)"}
    a = rng.normal(size=(10, 4))
    a[2, 1] = np.nan
    assert "fid" not in R.compare(a, b, RealismConfig(min_images=2), 0, "reference")


def test_a_damaged_feature_cache_is_recomputed(dino_dir, dino, tmp_path):
    imgs = _images(60, 8)
    cfg = _cfg(dino_dir, min_images=4)
    first = R.realism_figures(cfg, R.ImageSet(imgs), R.ImageSet(imgs, key="k1"), extractor=dino, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("realism-*.npz")
    cached.write_bytes(b"truncated")
    again = R.realism_figures(cfg, R.ImageSet(imgs), R.ImageSet(imgs, key="k1"), extractor=dino, cache_dir=tmp_path)
    assert again["strata"] == first["strata"] and np.load(cached)["features"].shape == (8, 16)


def test_pooling_choices_read_the_right_tokens(dino_dir):
    from transformers import AutoModel

    imgs = _images(70, 6)
    x = torch.tensor(np.stack([preprocess(i, 32, MEAN, STD) for i in imgs]))
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(dino_dir, local_files_only=True).eval()(pixel_values=x).last_hidden_state
    cls = load_extractor(RealismConfig(extractor=str(dino_dir), pooling="cls")).extract(imgs)
    mean = load_extractor(RealismConfig(extractor=str(dino_dir), pooling="mean")).extract(imgs)
    assert np.allclose(cls, hidden[:, 0].double().numpy(), atol=1e-5)
    assert np.allclose(mean, hidden.mean(1).double().numpy(), atol=1e-5)


def test_a_grossly_negative_fid_is_not_hidden(monkeypatch):
    """Rounding below zero reads as 0; a real defect (here a doubled matrix root) stays visible."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(50, 3))
    assert 0.0 <= R.fid(a, a)[0] < 1e-9  # a set with itself: zero up to rounding, never below
    sqrtm = R.scipy.linalg.sqrtm
    monkeypatch.setattr(R.scipy.linalg, "sqrtm", lambda m: 2 * sqrtm(m))
    assert R.fid(a, a)[0] < -1.0


# --- through `validate` ----------------------------------------------------------------------------


def test_validate_reports_the_realism_section_with_a_configured_encoder(dino_dir, tmp_path):
    """The gate's wiring: release images against the reference, through the thresholds file's
    encoder; the figures equal a direct call on the same images, and report.md renders them."""
    from mammosynth.validation.gate import validate_release

    ref = S.write_reference_set(tmp_path / "ref", n_studies=4, seed=0)
    rows = [
        S.release_row(r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"])
        for k, r in enumerate(S.reference_rows(3, 55))
    ]
    rel = S.write_generated(tmp_path / "rel", {"text2image": rows})
    config = tmp_path / "thresholds.yaml"
    config.write_text(f"realism: {{extractor: {dino_dir}, min_images: 5, kid_subsets: 10}}\n")
    rep = validate_release(rel, ref, config=config, report_dir=tmp_path / "report", progress=False, plots=False)
    assert rep.realism["configured"] and rep.realism["n_release"] == len(rows)
    overall = rep.realism["strata"]["overall"]

    loaded = load_release(rel)
    direct = R.realism_figures(
        _cfg(dino_dir, kid_subsets=10),
        R.ImageSet(R.dataset_images(_as_dataset(loaded)), method=Rows.of(loaded).method),
        R.ImageSet(R.dataset_images(open_prepared(ref))),
        seed=0,
    )
    assert overall["fid"] == pytest.approx(direct["strata"]["overall"]["fid"], rel=1e-6)
    assert overall["precision"] == direct["strata"]["overall"]["precision"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Realism metrics" in md and f"{overall['fid']:.2f}"[:3] in md

    plain = validate_release(rel, ref, report_dir=tmp_path / "report2", progress=False, plots=False)
    assert plain.realism == {"configured": False, "reason": R.not_configured()["reason"]}
    assert "not configured" in (tmp_path / "report2" / "report.md").read_text().lower()


def _as_dataset(loaded):
    import datasets

    table = loaded.dataset.table(["image"])
    return datasets.Dataset(table).cast_column("image", datasets.Image(decode=False))

"""Anatomically guided placement on phantom and real CBIS-DDSM backgrounds."""

from __future__ import annotations

import numpy as np
import pytest

from mammosynth.builders.core.breast_mask import distance_to_edge
from mammosynth.builders.core.imageio import decode_grey
from mammosynth.generators.backgrounds import load_prepared
from mammosynth.generators.placement import Placement, PlacementConfig, analyse_background, place


def _disk_mask(r: int) -> np.ndarray:
    yy, xx = np.mgrid[: 2 * r + 1, : 2 * r + 1]
    return (yy - r) ** 2 + (xx - r) ** 2 <= r * r


def _images(path, n=None):
    ds = load_prepared(path)
    rows = range(len(ds)) if n is None else range(min(n, len(ds)))
    return [(ds[i]["view"], decode_grey(ds[i]["image"])) for i in rows]


@pytest.mark.parametrize("which", ["prepared_set", "cbis_prepared"])
def test_inside_breast_away_from_skin_off_pectoral(which, request):
    cfg = PlacementConfig()
    lesion = _disk_mask(8)
    placed = 0
    for view, img in _images(request.getfixturevalue(which), 8):
        info = analyse_background(img, view, cfg)
        res = place(info, lesion, 0.0, np.random.default_rng(700), cfg)
        if isinstance(res, str):
            continue
        placed += 1
        ys, xs = np.nonzero(lesion)
        ys, xs = ys + res.y, xs + res.x
        assert info.mask[ys, xs].all()
        margin = cfg.margin_px * max(img.shape) / 1024
        assert distance_to_edge(info.mask)[ys, xs].min() >= margin - 2
        lo, hi = info.window
        assert lo < hi
        if view == "MLO":
            assert info.pectoral.any()
            f = info.factor
            assert not info.pectoral[
                (ys / f).astype(int).clip(0, info.pectoral.shape[0] - 1),
                (xs / f).astype(int).clip(0, info.pectoral.shape[1] - 1),
            ].any()
    assert placed >= 6


def test_deterministic_and_seed_dependent(prepared_set):
    view, img = _images(prepared_set, 1)[0]
    cfg = PlacementConfig()
    info = analyse_background(img, view, cfg)
    a = place(info, _disk_mask(6), 0.0, np.random.default_rng(123), cfg)
    b = place(info, _disk_mask(6), 0.0, np.random.default_rng(123), cfg)
    others = {
        (p.x, p.y)
        for s in range(5)
        if isinstance(p := place(info, _disk_mask(6), 0.0, np.random.default_rng(s), cfg), Placement)
    }
    assert isinstance(a, Placement) and (a.x, a.y) == (b.x, b.y)
    assert len(others) > 1


def test_no_position_gives_reason(prepared_set):
    view, img = _images(prepared_set, 1)[0]
    cfg = PlacementConfig()
    info = analyse_background(img, view, cfg)
    too_big = place(info, _disk_mask(90), 0.0, np.random.default_rng(0), cfg)
    assert isinstance(too_big, str) and "inside_with_margin" in too_big
    larger_than_image = place(info, np.ones((400, 400), bool), 0.0, np.random.default_rng(0), cfg)
    assert isinstance(larger_than_image, str) and "larger than the background" in larger_than_image
    # an impossible texture demand (100x the background's) also skips, naming the constraint
    odd = place(info, _disk_mask(5), 1e3, np.random.default_rng(0), cfg)
    assert isinstance(odd, str) and "texture" in odd

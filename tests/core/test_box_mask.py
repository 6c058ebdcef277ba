"""One box mask for training and generation: edges round outwards, margins grow, images clip."""

from __future__ import annotations

import numpy as np

from mammosynth.builders.core.box_mask import box_mask


def test_fractional_box_covers_every_pixel_it_touches() -> None:
    m = box_mask((10, 12), [[2.5, 1.2, 5.0, 3.9]])
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 4, 1, 3)
    assert m.dtype == bool and m.shape == (10, 12)


def test_margin_and_clipping() -> None:
    m = box_mask((8, 8), [[0, 0, 2, 2], [6.5, 6.5, 9, 9]], margin=1)
    assert m[:3, :3].all() and not m[3, 3]
    assert m[5:, 5:].all() and m.sum() == 9 + 9


def test_height_and_width_not_swapped() -> None:
    m = box_mask((4, 10), [[6, 0, 10, 2]])
    assert m[:2, 6:].all() and m.sum() == 8


def test_grid_aligns_every_edge_outwards_to_whole_latent_cells() -> None:
    m = box_mask((64, 64), [[10.2, 17, 29, 30.5]], grid=8)
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (8, 32, 16, 32)
    cells = m.reshape(8, 8, 8, 8).mean(axis=(1, 3))
    assert set(np.unique(cells)) <= {0.0, 1.0}  # no latent cell is half masked
    assert box_mask((64, 64), [[8, 16, 32, 32]], grid=8).sum() == box_mask((64, 64), [[8, 16, 32, 32]]).sum()

"""The lesion box as a mask: ONE function, so the mask an inpainting model learns on and the one it
fills at generation time cannot differ."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def box_mask(shape: tuple[int, int], boxes: Iterable[Sequence[float]], margin: int = 0, grid: int = 1) -> np.ndarray:
    """Boolean (H, W) mask, True inside any of the ``[xmin, ymin, xmax, ymax]`` boxes.

    Fractional edges round outwards (a box covers every pixel it touches), then grow by ``margin``,
    then out to the next multiple of ``grid`` (the VAE's 8-pixel latent cells: a latent mask made
    by downsampling then covers whole cells, leaving no half-masked strip at the box's edges);
    everything is clipped to the image.
    """
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        xa, ya = max(0, int(np.floor(x0)) - margin), max(0, int(np.floor(y0)) - margin)
        xb, yb = min(w, int(np.ceil(x1)) + margin), min(h, int(np.ceil(y1)) + margin)
        if grid > 1:
            xa, ya = xa // grid * grid, ya // grid * grid
            xb, yb = min(w, -(-xb // grid) * grid), min(h, -(-yb // grid) * grid)
        if xb > xa and yb > ya:
            mask[ya:yb, xa:xb] = True
    return mask


__all__ = ["box_mask"]

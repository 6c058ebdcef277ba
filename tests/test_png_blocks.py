"""Block PNG encoder: any decoder reads it, a patched encode equals a fresh encode of the result."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from mammosynth.generators.inpainting import _decode
from mammosynth.generators.png_blocks import BLOCK_ROWS, BlockPNG, adler32_combine, encode_png


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_and_patch(dtype):
    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max
    img = rng.integers(0, top, (3 * BLOCK_ROWS + 5, 41), endpoint=True).astype(dtype)
    enc = BlockPNG(img)
    plain = enc.encode()
    assert np.array_equal(_decode({"bytes": plain}), img)
    with Image.open(io.BytesIO(plain)) as im:
        im.verify()  # chunk CRCs and the zlib stream (Adler-32 trailer) check out
    # a patch straddling two blocks
    patch = rng.integers(0, top, (BLOCK_ROWS + 3, 7), endpoint=True).astype(dtype)
    y, x = BLOCK_ROWS - 2, 30
    want = img.copy()
    want[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    got = enc.encode(patch, y, x)
    assert np.array_equal(_decode({"bytes": got}), want)
    assert got == encode_png(want)  # bytes depend on the pixels only, not on what was cached
    assert enc.encode() == plain  # the cache is not modified by a patched encode
    with pytest.raises(ValueError, match="does not fit"):
        enc.encode(patch, img.shape[0] - 2, 0)


def test_adler32_combine():
    a, b = b"mammography" * 999, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)

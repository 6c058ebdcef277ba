"""Block PNG layout: any decoder reads it, row ranges decode alone, a patched file equals a fresh
encode of the result (whichever path made it), anything else is recognised as not ours."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from mammosynth.builders.core.imageio import decode_grey as _decode
from mammosynth.builders.core.imageio import encode_png as pil_png
from mammosynth.builders.core.png_blocks import (
    BLOCK_ROWS,
    BlockFile,
    BlockPNG,
    adler32_combine,
    adler32_patch,
    encode_blocked_png,
)


def _img(dtype, h=3 * BLOCK_ROWS + 5, w=41, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, (h, w), endpoint=True).astype(dtype)


def _both_decoders(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and the zlib stream (Adler-32 trailer) check out
    return _decode({"bytes": data}), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_and_patch(dtype):
    img = _img(dtype)
    enc = BlockPNG(img)
    plain = enc.encode()
    for got in _both_decoders(plain):
        assert got.dtype == dtype and np.array_equal(got, img)
    patch = _img(dtype, BLOCK_ROWS + 3, 7, seed=1)  # straddles two blocks
    y, x = BLOCK_ROWS - 2, 30
    want = img.copy()
    want[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    got = enc.encode(patch, y, x)
    assert np.array_equal(_decode({"bytes": got}), want)
    assert got == encode_blocked_png(want)  # bytes depend on the pixels only, not on what was cached
    assert enc.encode() == plain  # the cache is not modified by a patched encode
    with pytest.raises(ValueError, match="does not fit"):
        enc.encode(patch, img.shape[0] - 2, 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("level", [1, 6])
def test_block_file_reads_rows_and_patches(dtype, level):
    img = _img(dtype, h=4 * BLOCK_ROWS + 9, w=37)
    data = encode_blocked_png(img, level)
    f = BlockFile.parse(data)
    assert f is not None and f.shape == img.shape and f.dtype == dtype
    for y0, y1 in [(0, 1), (BLOCK_ROWS - 1, BLOCK_ROWS + 1), (40, 130), (img.shape[0] - 3, img.shape[0])]:
        assert np.array_equal(BlockFile.parse(data).rows(y0, y1), img[y0:y1])
    patch = _img(dtype, 2 * BLOCK_ROWS + 4, 11, seed=3)  # three blocks
    for y, x in [(BLOCK_ROWS - 2, 5), (0, 0), (img.shape[0] - patch.shape[0], img.shape[1] - 11)]:
        want = img.copy()
        want[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        fresh = BlockFile.parse(data)  # only the touched blocks are inflated
        got = fresh.encode(patch, y, x, level=level)
        assert len(fresh._rows) == (y + patch.shape[0] - 1) // BLOCK_ROWS - y // BLOCK_ROWS + 1
        for dec in _both_decoders(got):
            assert np.array_equal(dec, want)
        assert got == encode_blocked_png(want, level)  # byte-identical to a full encode: path does not matter
        assert f.encode(patch, y, x, level=level) == got  # after a full read too
    full = f.rows()
    assert np.array_equal(full, img) and not full.flags.writeable
    assert f.encode() == data


def test_not_block_layout_falls_back():
    img = _img(np.uint8, h=2 * BLOCK_ROWS + 3)
    assert BlockFile.parse(pil_png(img)) is None  # one big IDAT stream
    assert BlockFile.parse(cv2.imencode(".png", img)[1].tobytes()) is None
    data = encode_blocked_png(img)
    assert BlockFile.parse(data[:-12]) is None  # no IEND
    bad = bytearray(data)
    bad[60] ^= 0xFF  # inside a block: the chunk CRC no longer matches
    assert BlockFile.parse(bytes(bad)) is None
    rgb = cv2.imencode(".png", np.dstack([img] * 3))[1].tobytes()
    assert BlockFile.parse(rgb) is None
    assert BlockFile.parse(b"not a png") is None
    # the chunk sequence fits but a block's content is not ours: rows() refuses it (no garbage)
    s0, e0 = BlockFile.parse(data)._spans[0]
    none_filter = np.hstack([np.zeros((BLOCK_ROWS, 1), np.uint8), img[:BLOCK_ROWS]]).tobytes()
    short = none_filter[: -img.shape[1] - 1]  # a block one row short
    for raw in (none_filter, short):
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        body = c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)
        chunk = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(b"IDAT")))
        g = BlockFile.parse(data[:s0] + chunk + data[e0:])
        assert g is not None and g.rows(0, 5) is None and g.rows() is None
        assert np.array_equal(g.rows(BLOCK_ROWS, BLOCK_ROWS + 2), img[BLOCK_ROWS : BLOCK_ROWS + 2])


def test_adler32_combine_and_patch():
    a, b = b"mammography" * 999, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    rng = np.random.default_rng(5)
    old = rng.integers(0, 256, 200_000, dtype=np.uint8)
    new = old.copy()
    new[70_000:90_000] = rng.integers(0, 256, 20_000, dtype=np.uint8)
    got = adler32_patch(zlib.adler32(old), old.size, 70_000, old[70_000:90_000].tobytes(), new[70_000:90_000].tobytes())
    assert got == zlib.adler32(new)

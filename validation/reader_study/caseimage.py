"""The one preparation every case image goes through, real or synthetic, so that nothing but the
pixels' content tells them apart: true orientation (a prepared image stored mirrored is mirrored
back, as generators do for their backgrounds), one grey channel, 8 bits, the long side scaled to
the study's size, letterboxed onto a square black canvas against the chest wall, encoded by
`core.imageio.encode_png` (IHDR, IDAT, IEND: no text, time or physical-size chunks)."""

from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

from mammosynth.builders.core.breast_mask import breast_mask, chest_wall_side
from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.imageio import as_bit_depth, decode_grey, encode_png

BIT_DEPTH = 8  # what a browser draws; window/level acts on these values


def prepare_case(image: dict[str, Any] | bytes | np.ndarray, *, size: int, mirrored: bool = False) -> bytes:
    """PNG bytes of one case: ``size`` x ``size``, 8-bit grey, breast against its chest-wall edge."""
    arr = decode_grey(image)
    if mirrored:
        arr = arr[:, ::-1]
    arr = as_bit_depth(np.ascontiguousarray(arr), BIT_DEPTH)
    h, w = arr.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        arr = cv2.resize(arr, (nw, nh), interpolation=interp)
    canvas = np.zeros((size, size), np.uint8)
    top = (size - nh) // 2
    left = 0 if _chest_wall(arr) == "L" else size - nw
    canvas[top : top + nh, left : left + nw] = arr
    return encode_png(canvas)


def long_side(image: dict[str, Any] | bytes | np.ndarray) -> int:
    return int(max(decode_grey(image).shape))


def _chest_wall(arr: np.ndarray) -> str:
    try:
        return chest_wall_side(breast_mask(arr))
    except InputError:  # an empty breast mask (a blank image): keep it at the left edge
        return "L"


def png_layout(data: bytes) -> tuple[tuple[int, int, int, int, int, int, int], tuple[str, ...]]:
    """(IHDR fields, chunk types with runs of IDAT collapsed) of PNG bytes: what a file says about
    itself besides its pixels."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, types, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        name = kind.decode("latin-1")
        if name == "IHDR":
            ihdr = struct.unpack(">IIBBBBB", data[pos + 8 : pos + 21])
        if not (types and types[-1] == name == "IDAT"):
            types.append(name)
        pos += 12 + length
    if ihdr is None:
        raise ValueError("PNG without IHDR")
    return ihdr, tuple(types)

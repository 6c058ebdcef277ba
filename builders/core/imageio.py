"""Image bytes <-> arrays, one way for every stage.

- ``decode``: any stored image (a datasets ``{"bytes", "path"}`` dict, raw bytes, an array) to its
  array as stored (OpenCV: several times faster than PIL on large PNGs, keeps 16-bit; PIL as the
  fallback for the few encodings OpenCV lacks).
- ``decode_grey``: the same, reduced to one uint8/uint16 channel (prepared sets are grey; an RGB
  rendering of a grey image keeps its first channel).
- ``encode_png``: release rows' PNG (8-bit ``L`` or 16-bit ``I;16``). Prepared sets use the block
  layout of ``png_blocks.encode_blocked_png`` instead; both decode the same.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

# ITU-R BT.601 luma, the weights PIL's convert("L") uses; applied in float64 then rounded, so the
# conversion is exact and identical on every machine.
LUMA = np.array([0.299, 0.587, 0.114])


class UnreadableImage(ValueError):
    """The stored bytes do not decode to an image."""


def image_bytes(image: dict[str, Any] | bytes) -> bytes:
    if isinstance(image, dict):
        data = image.get("bytes")
        if data is None and image.get("path"):
            return Path(image["path"]).read_bytes()
        image = data or b""
    if not image:
        raise UnreadableImage("no image bytes")
    return image


def decode(image: dict[str, Any] | bytes | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    data = image_bytes(image)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        try:
            arr = np.asarray(Image.open(io.BytesIO(data)))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
            # the class name only: PIL's message embeds a memory address, which would differ by run
            raise UnreadableImage(f"cannot decode image bytes ({type(exc).__name__})") from None
    return arr


def decode_grey(image: dict[str, Any] | bytes | np.ndarray) -> np.ndarray:
    arr = decode(image)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.uint16) if arr.dtype.kind in "iu" and arr.dtype.itemsize > 1 else arr.astype(np.uint8)


def image_size(image: dict[str, Any] | bytes) -> tuple[int, int]:
    """(width, height) from the header, without decoding the pixels."""
    src = (
        io.BytesIO(image["bytes"])
        if isinstance(image, dict) and image.get("bytes")
        else (image["path"] if isinstance(image, dict) else io.BytesIO(image))
    )
    with Image.open(src) as im:
        return im.size


def grey_channel(arr: np.ndarray) -> np.ndarray:
    """A decoded (OpenCV channel order) image as one grey channel: BGR by luma, alpha dropped."""
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[..., :3]
        arr = arr[..., 0] if arr.shape[2] == 1 else cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    return arr


def rgb_to_grey(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float RGB in [0, 1] (H, W, 3), as pipelines return it -> uint8/uint16 grey by BT.601 luma."""
    luma = np.clip(np.asarray(rgb, np.float64) @ LUMA, 0.0, 1.0)
    if bit_depth == 16:
        return np.round(luma * 65535).astype(np.uint16)
    return np.round(luma * 255).astype(np.uint8)


def as_bit_depth(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """An 8- or 16-bit grey array at ``bit_depth`` (exact scaling by 257)."""
    image = np.asarray(image)
    if bit_depth == 16:
        return image.astype(np.uint16) if image.dtype == np.uint16 else image.astype(np.uint16) * 257
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float64) / 257).astype(np.uint8)
    return image.astype(np.uint8)


def dtype_max(arr: np.ndarray) -> float:
    return float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """Lossless PNG bytes; uint16 arrays stay 16-bit (``I;16``), everything else 8-bit ``L``."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            if image.ndim != 2:
                raise TypeError(f"16-bit images must be 2-D grey, got shape {image.shape}")
            # frombytes: Pillow versions differ on fromarray(..., mode="I;16")
            h, w = image.shape
            image = Image.frombytes("I;16", (w, h), np.ascontiguousarray(image, dtype="<u2").tobytes())
        elif image.dtype == np.uint8:
            image = Image.fromarray(image)
        else:
            raise TypeError(f"image array must be uint8 or uint16, got {image.dtype}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


__all__ = [
    "UnreadableImage",
    "decode",
    "decode_grey",
    "image_size",
    "grey_channel",
    "rgb_to_grey",
    "as_bit_depth",
    "dtype_max",
    "encode_png",
    "image_bytes",
    "LUMA",
]

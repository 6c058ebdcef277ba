"""Read a mammography DICOM into a display-ready array: modality + VOI LUT (or window), MONOCHROME1
inversion, padding to black, with truncated, non-DICOM, non-mammography (Modality other than MG)
and over-16-bit files reported as `DicomError`.

The VOI transform is evaluated once per file on the range of stored values (a lookup table built
with pydicom's own `apply_modality_lut` / `apply_voi_lut`) and then applied by indexing, which is
exact for integer pixels and far cheaper than running the transforms on ~10 M float64 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DISPLAY_MAX = 65535  # display-ready arrays are uint16, 0 = black (no tissue), 65535 = white
MAX_BITS = 16  # the display table has one entry per stored value: 2**16 at most
MAMMOGRAPHY = "MG"


class DicomError(Exception):
    """A single file cannot be used; `field` names the DICOM attribute at fault."""

    def __init__(self, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass
class DisplayImage:
    pixels: np.ndarray  # uint16 (H, W), 0 = black
    header: pydicom.Dataset  # the dataset without its pixel data


def read_header(path: str | Path) -> pydicom.Dataset:
    """Header only (fast); raises DicomError for files that are not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DicomError(f"not a readable DICOM file ({type(exc).__name__}: {exc})".splitlines()[0], "file") from None


def first_value(value: object) -> float | None:
    """Window tags may be multi-valued (IMS writes five); the first is the primary window."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return float(value[0]) if len(value) else None
    text = str(value).strip().strip("[]")
    if not text:
        return None
    for sep in ("\\", ","):
        if sep in text:
            text = text.split(sep)[0]
    return float(text.strip().strip("'\""))


def check_supported(ds: pydicom.Dataset) -> None:
    """A mammogram of at most 16 stored bits, from the header alone. A missing Modality passes
    (some exports drop it); a stated other one (CT, MR, OT...) does not."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality != MAMMOGRAPHY:
        raise DicomError(f"Modality {modality!r} is not mammography ({MAMMOGRAPHY})", "Modality")
    for key in ("BitsAllocated", "BitsStored"):
        value = ds.get(key)
        if value is None:
            continue
        try:
            bits = int(value)
        except (TypeError, ValueError):
            raise DicomError(f"{key} {value!r} is not a number", key) from None
        if not 1 <= bits <= MAX_BITS:
            raise DicomError(f"{key} {bits} is not supported (1 to {MAX_BITS} bits)", key)


def window_is_valid(ds: pydicom.Dataset) -> bool:
    """A first WindowCenter/WindowWidth pair that pydicom can apply (width >= 1, both numbers)."""
    try:
        center, width = first_value(ds.get("WindowCenter")), first_value(ds.get("WindowWidth"))
    except (TypeError, ValueError):
        return False
    return center is not None and width is not None and np.isfinite([center, width]).all() and width >= 1


def _check_length(ds: pydicom.Dataset) -> None:
    """Real downloads contain files whose pixel data is shorter than Rows x Columns."""
    for key in ("Rows", "Columns", "BitsAllocated", "PixelData"):
        if key not in ds:
            raise DicomError(f"missing {key}", key)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return  # compressed: the decoder reports short streams
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = ds.Rows * ds.Columns * int(ds.get("SamplesPerPixel", 1)) * frames * ds.BitsAllocated // 8
    got = len(ds.PixelData)
    if got < expected:
        raise DicomError(
            f"truncated pixel data: {got} bytes, expected {expected} (Rows x Columns = {ds.Rows} x {ds.Columns})",
            "PixelData",
        )


def display_lut(ds: pydicom.Dataset, raw: np.ndarray) -> np.ndarray:
    """uint16 table mapping every stored value to display intensity (0 black .. 65535 white)."""
    if raw.dtype.kind == "i":
        raise DicomError("signed pixel data is not supported for mammograms", "PixelRepresentation")
    if raw.dtype.itemsize * 8 > MAX_BITS:  # whatever the header says: never a 2**32-entry table
        raise DicomError(
            f"{raw.dtype.itemsize * 8}-bit pixel data is not supported (at most {MAX_BITS})", "BitsAllocated"
        )
    # The whole stored range, so the table's extremes are the window's output extremes.
    bits = min(int(ds.get("BitsStored", MAX_BITS) or MAX_BITS), MAX_BITS)
    levels = np.arange(max(1 << bits, int(raw.max()) + 1), dtype=np.uint32)
    values = apply_modality_lut(levels, ds)
    # A window of width 0 (or one that is not a number) cannot be applied: such an image is shown
    # like one without a window, stretched over the range it uses, rather than skipped; its pixels
    # are fine, only the display hint is broken. A VOI LUT sequence, when present, wins over it.
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds and window_is_valid(ds))
    if has_voi:
        # First window of multi-valued tags (IMS); apply_voi_lut already prefers index 0.
        try:
            values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            field = "VOILUTSequence" if "VOILUTSequence" in ds else "WindowWidth"
            raise DicomError(f"cannot apply the VOI transform: {exc}".splitlines()[0], field) from None
        lo, hi = float(values.min()), float(values.max())
    else:
        # No window: stretch the range the image actually uses (e.g. the CBIS-DDSM scans).
        values = np.asarray(values, dtype=np.float64)
        pad = _padding_value(ds)
        used = raw[raw != pad] if pad is not None else raw
        lo = float(apply_modality_lut(np.array([used.min()]), ds)[0]) if used.size else 0.0
        hi = float(apply_modality_lut(np.array([used.max()]), ds)[0]) if used.size else 1.0
    span = hi - lo if hi > lo else 1.0
    lut = np.clip((values - lo) / span, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        lut = 1.0 - lut
    lut = np.round(lut * DISPLAY_MAX).astype(np.uint16)
    pad = _padding_value(ds)
    if pad is not None and 0 <= pad < lut.size:
        lut[pad] = 0  # padding is background whatever the photometric interpretation
    return lut


def _padding_value(ds: pydicom.Dataset) -> int | None:
    value = ds.get("PixelPaddingValue")
    return int(value) if value is not None else None


def read_display(path: str | Path) -> DisplayImage:
    """Decode `path` to a display-ready uint16 array (VOI applied, MONOCHROME1 inverted)."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DicomError(f"not a readable DICOM file ({type(exc).__name__}: {exc})".splitlines()[0], "file") from None
    check_supported(ds)
    _check_length(ds)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoder errors come in many types (RLE, JPEG plugins, numpy)
        raise DicomError(f"cannot decode pixel data: {exc}".splitlines()[0], "PixelData") from None
    if raw.ndim != 2:
        raise DicomError(f"expected one grayscale frame, got array of shape {raw.shape}", "PixelData")
    lut = display_lut(ds, raw)
    pixels = lut[raw]
    del ds.PixelData
    return DisplayImage(pixels=pixels, header=ds)

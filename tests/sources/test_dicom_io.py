"""DICOM reading: VOI window/LUT, list-string windows, MONOCHROME1, padding, truncation, RLE."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammosynth.builders.sources.dicom_folder import sample_dicom_dir
from mammosynth.builders.sources.dicom_io import DicomError, first_value, read_display, read_header


def _write(path, pixels, **tags):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def test_first_value_of_list_windows():
    assert first_value(pydicom.multival.MultiValue(float, ["2047", "1800", "1500"])) == 2047.0
    assert first_value("['2047', '1800', '1500', '1200', '900']") == 2047.0
    assert first_value("2047\\1800") == 2047.0
    assert first_value("") is None and first_value(None) is None


def test_window_matches_pydicom(tmp_path):
    path = _write(
        tmp_path / "w.dcm", RAMP, WindowCenter=[1500, 1000, 900, 800, 700], WindowWidth=[1000, 500, 400, 300, 200]
    )
    ds = pydicom.dcmread(path)
    ref = apply_voi_lut(ds.pixel_array, ds, index=0).astype(float)
    ref = (ref - 0) / 4095 * 65535  # pydicom's window output spans the 12 stored bits
    got = read_display(path).pixels.astype(float)
    assert np.abs(got - ref).max() <= 1.0
    assert got.min() == 0 and got.max() == 65535  # the ramp crosses both ends of the first window


def test_monochrome1_inverts_and_padding_is_black(tmp_path):
    m2 = read_display(_write(tmp_path / "m2.dcm", RAMP, WindowCenter=2048, WindowWidth=4096)).pixels
    m1 = read_display(
        _write(
            tmp_path / "m1.dcm",
            RAMP,
            WindowCenter=2048,
            WindowWidth=4096,
            PhotometricInterpretation="MONOCHROME1",
            PixelPaddingValue=4080,
        )
    ).pixels
    pad = RAMP == 4080
    assert (m1[pad] == 0).all()
    assert np.abs(m1[~pad].astype(int) + m2[~pad].astype(int) - 65535).max() <= 1


def test_no_window_stretches_used_range(tmp_path):
    img = read_display(_write(tmp_path / "n.dcm", (RAMP // 4) + 100)).pixels
    assert img.min() == 0 and img.max() == 65535


def test_truncated_pixel_data(tmp_path):
    path = _write(tmp_path / "t.dcm", RAMP, WindowCenter=2048, WindowWidth=4096)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(DicomError, match="truncated") as exc:
        read_display(path)
    assert exc.value.field == "PixelData"


def test_non_dicom(tmp_path):
    path = tmp_path / "notes.dicom"
    path.write_text("this is not a DICOM file\n" * 10)
    with pytest.raises(DicomError) as exc:
        read_header(path)
    assert exc.value.field == "file"
    with pytest.raises(DicomError):
        read_display(path)


def test_rle_cbis_image():
    path = sorted(sample_dicom_dir().rglob("*.dcm"))[0]
    hdr = read_header(path)
    assert hdr.file_meta.TransferSyntaxUID.name == "RLE Lossless"
    img = read_display(path).pixels
    assert img.shape == (hdr.Rows, hdr.Columns) and img.dtype == np.uint16
    assert img.min() == 0 and img.max() == 65535 and 0.05 < (img > 8000).mean() < 0.9


def test_window_width_zero_falls_back_to_the_used_range(tmp_path):
    """pydicom refuses a window narrower than 1; the image is shown like one without a window."""
    plain = read_display(_write(tmp_path / "n.dcm", RAMP)).pixels
    for width in (0, -5):
        got = read_display(_write(tmp_path / f"w{width}.dcm", RAMP, WindowCenter=2048, WindowWidth=width)).pixels
        assert np.array_equal(got, plain)


def test_over_16_bits_is_refused_without_a_giant_table(make_dicom, tmp_path):
    path = make_dicom(tmp_path / "b32.dcm", RAMP.astype(np.uint32) << 16, BitsAllocated=32, BitsStored=32, HighBit=31)
    with pytest.raises(DicomError, match="BitsAllocated 32") as exc:
        read_display(path)
    assert exc.value.field == "BitsAllocated"
    path = make_dicom(tmp_path / "s20.dcm", RAMP, BitsStored=20, HighBit=19)
    with pytest.raises(DicomError, match="BitsStored 20") as exc:
        read_display(path)
    assert exc.value.field == "BitsStored"


def test_other_modalities_are_refused(make_dicom, tmp_path):
    with pytest.raises(DicomError, match="'CT' is not mammography") as exc:
        read_display(make_dicom(tmp_path / "ct.dcm", Modality="CT"))
    assert exc.value.field == "Modality"
    assert read_display(make_dicom(tmp_path / "mg.dcm")).pixels.shape == RAMP.shape

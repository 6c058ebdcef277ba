"""Fixtures of the source tests: a tiny phantom, small DICOM files with chosen tags, and the CLI run
in-process with its stderr captured at the file-descriptor level (so stray warnings and progress
bars count as lines too)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """3 studies (12 images) at 1/20 size; copy it before changing it."""
    from mammosynth.builders.sources.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("small") / "src", 3, seed=11, size_scale=0.05)


@pytest.fixture
def phantom_copy(small_phantom, tmp_path) -> Path:
    return Path(shutil.copytree(small_phantom, tmp_path / "src"))


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def one_line_error(self, *names: object) -> str:
        """Assert exit 2 with one line on stderr, no traceback, naming each of ``names``."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, (self.code, self.err)
        assert "Traceback" not in self.err and len(lines) == 1, self.err
        for name in names:
            assert str(name) in lines[0], (name, lines[0])
        return lines[0]


@pytest.fixture
def cli(capfd) -> Callable[..., CliResult]:
    """``cli("ingest", "vindr", SRC, OUT)`` -> CliResult (exit code, stdout, stderr)."""
    from mammosynth.builders.cli import main

    def run(*args: object) -> CliResult:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capfd.readouterr()
        return CliResult(exc.value.code, out, err)

    return run


RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


@pytest.fixture
def make_dicom() -> Callable[..., Path]:
    """``make_dicom(path, pixels=RAMP, **tags)``: a small uncompressed mammogram (MG, left CC, 12 of
    16 bits) whose tags the keywords override (``BitsAllocated=32`` writes 32-bit pixels)."""

    def write(path: Path, pixels: np.ndarray = RAMP, **tags) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageLaterality, ds.ViewPosition, ds.PatientID = "MG", "L", "CC", "P1"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        for k, v in tags.items():
            setattr(ds, k, v)
        dtype = np.uint32 if ds.BitsAllocated == 32 else np.uint16
        ds.PixelData = pixels.astype(dtype).tobytes()
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return path

    return write

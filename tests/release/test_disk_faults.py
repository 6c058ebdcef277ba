"""A full disk and a read-only disk, for real: every command that writes gets exit 2 and one line
naming the file, leaves no temporary behind, keeps what an earlier run wrote, and resumes once
space is back.

The disks are small tmpfs mounts (root in a container, as on CI). Where mounting is not allowed the
tests skip, unless ``MAMMOSYNTH_REQUIRE_MOUNT=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mammosynth.builders.core.hashing import dataset_content_hash, hash_tree
from mammosynth.builders.core.prepared import open_prepared
from mammosynth.builders.release.package import verify_checksums

SPEC = """\
name: t
version: "1.0"
pretty_name: T
description: d
authors: [a]
source: {{name: phantom, prepared: {prepared}, license: x, redistribution_allowed: true}}
methods:
  poisson:
    counts: [{{birads: 5, n: 1}}]
    poisson: {{background_birads: [1, 2, 3, 4, 5]}}
output_dir: {out}
"""


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mammosynth.builders.cli", *map(str, args)], capture_output=True, text=True
    )


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, exactly one ``error:`` line, naming each of ``words``."""
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, res.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def _leftovers(root: Path) -> list[str]:
    """Temporaries an interrupted write may leave (``.name.tmp-PID``, ``name.tmpPID``, ``OUT.tmp``)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name)


class Disk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Occupy all but ``leave`` bytes of the disk."""
        with open(self.filler, "ab") as f:
            f.write(b"\0" * max(self.free() - leave, 0))

    def empty_filler(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    path = tmp_path / "disk"
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        if os.environ.get("MAMMOSYNTH_REQUIRE_MOUNT") == "1":
            pytest.fail(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    """A phantom (16 studies at 1/20 size) and its prepared set, on the ordinary disk."""
    root = tmp_path_factory.mktemp("faults")
    assert _cli("phantom", root / "src", "--studies", 16, "--scale", 0.05, "--seed", 3).returncode == 0
    res = _cli("ingest", "vindr", root / "src", root / "prepared")
    assert res.returncode == 0, res.stderr
    return root / "src", root / "prepared"


def _spec(folder: Path, prepared: Path, out: Path) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(prepared=prepared, out=out))
    return spec


def test_build_on_a_full_disk_exits_2_and_resumes_when_space_is_back(source, disk: Disk, tmp_path: Path) -> None:
    _, prepared = source
    spec = _spec(tmp_path, prepared, disk.path / "out")
    disk.fill(leave=96 * 1024)  # room for some shards, not for the whole run
    res = _cli("build", spec, "--no-progress")
    _one_line_error(res, "No space left on device", str(disk.path))
    assert not (disk.path / "out" / "release").exists()
    assert _leftovers(disk.path) == []

    disk.empty_filler()
    res = _cli("build", spec, "--no-progress")
    assert res.returncode == 0, res.stderr
    verify_checksums(disk.path / "out" / "release")


def test_a_failed_package_on_a_full_disk_keeps_the_previous_release(source, disk: Disk, tmp_path: Path) -> None:
    _, prepared = source
    spec = _spec(tmp_path, prepared, disk.path / "out")
    assert _cli("build", spec, "--no-progress").returncode == 0
    release = disk.path / "out" / "release"
    before = hash_tree(release)
    for stage in ("card", "package"):  # package again, as after a card edit
        (disk.path / "out" / "stages" / f"{stage}.json").unlink()
    disk.fill(leave=32 * 1024)
    res = _cli("build", spec, "--no-progress")
    _one_line_error(res, "No space left on device")
    assert hash_tree(release) == before
    verify_checksums(release)
    assert _leftovers(disk.path) == []


def test_read_only_outputs_exit_2_naming_the_file(source, disk: Disk, tmp_path: Path) -> None:
    src, prepared = source
    spec = _spec(tmp_path, prepared, disk.path / "out")
    assert _cli("build", spec, "--no-progress").returncode == 0
    release = disk.path / "out" / "release"
    before = hash_tree(release)
    edited = tmp_path / "spec-edited.yaml"  # a changed spec: build must write again
    edited.write_text(spec.read_text().replace("description: d", "description: edited"))
    disk.remount("ro")
    try:
        cases = {
            "phantom": ("phantom", disk.path / "ph", "--studies", 1, "--scale", 0.05),
            "ingest": ("ingest", "vindr", src, disk.path / "prepared2"),
            "validate": ("validate", release, "--reference", prepared, "--report", disk.path / "report2"),
            "card": ("card", spec, "--out", disk.path / "card2"),
            "build": ("build", edited, "--no-progress"),
        }
        for name, args in cases.items():
            line = _one_line_error(_cli(*args), "Read-only file system")
            assert str(disk.path) in line, (name, line)
    finally:
        disk.remount("rw")
    assert hash_tree(release) == before
    assert _leftovers(disk.path) == []


def test_ingest_on_a_full_disk_exits_2_and_resumes(source, disk: Disk, tmp_path: Path) -> None:
    src, _ = source
    small = ("--size", 128)
    assert _cli("ingest", "vindr", src, tmp_path / "expected", *small).returncode == 0
    disk.fill(leave=64 * 1024)
    out = disk.path / "prepared"
    _one_line_error(_cli("ingest", "vindr", src, out, *small), "No space left on device", str(disk.path))
    assert _leftovers(disk.path) == []
    disk.empty_filler()
    res = _cli("ingest", "vindr", src, out, *small)
    assert res.returncode == 0, res.stderr
    assert dataset_content_hash(open_prepared(out)) == dataset_content_hash(open_prepared(tmp_path / "expected"))

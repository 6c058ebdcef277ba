"""Release folder: Hub layout, load_dataset round trip per config, git commit + tag, checksums,
resumable build stages, --drop-failed, and a failing round trip that leaves nothing half-made."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from helpers.release_helpers import spec_dict, write_report, write_spec  # noqa: E402
from helpers.synthetic import generate_fake  # noqa: E402
from mammosynth.builders.core.errors import GateFailed
from mammosynth.builders.core.release_data import load_release_data
from mammosynth.builders.core.schema import BIRADS_NAMES, release_features
from mammosynth.builders.core.spec import load_spec
from mammosynth.builders.release import package as package_mod
from mammosynth.builders.release.build import build
from mammosynth.builders.release.package import shard_bounds, verify_checksums

QUIET = {"progress": False, "echo": lambda s: None}


def _spec(tmp: Path, **kw):
    (tmp / "prepared").mkdir(exist_ok=True)
    return load_spec(write_spec(tmp, spec_dict(tmp, **kw)))


def test_shard_bounds_respect_the_size_limit() -> None:
    assert shard_bounds([4, 4, 4, 4, 4], 10) == [(0, 2), (2, 4), (4, 5)]
    assert shard_bounds([30, 1], 10) == [(0, 1), (1, 2)]  # an oversized row gets a shard of its own
    assert shard_bounds([], 10) == [(0, 0)]


def test_build_packages_a_release_that_loads_for_every_config(tmp_path: Path) -> None:
    spec = _spec(tmp_path, output={"shard_size": 4, "max_shard_mb": 0.02})  # force several parquet shards
    res = build(spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d), **QUIET)
    rel = res.release
    assert res.ran == ["generate", "validate", "card", "package"]
    shards = sorted(p.relative_to(rel).as_posix() for p in rel.glob("data/*/*.parquet"))
    assert "data/text2image/train-00000-of-00002.parquet" in shards, shards
    for p in rel.glob("data/*/*.parquet"):
        assert p.stat().st_size <= 0.02e6 + 8192  # image bytes bounded; footer and metadata on top
    for name in ("README.md", "croissant.json", "spec.yaml", "checksums.sha256", "validation/report.json"):
        assert (rel / name).is_file(), name
    verify_checksums(rel)
    # one commit, tagged v1.0
    log = subprocess.run(["git", "-C", str(rel), "log", "--format=%s"], capture_output=True, text=True).stdout
    assert log.strip().splitlines() == ["Release v1.0: Tiny synthetic mammograms"]
    tags = subprocess.run(["git", "-C", str(rel), "tag", "--points-at", "HEAD"], capture_output=True, text=True)
    assert tags.stdout.split() == ["v1.0"]
    status = subprocess.run(["git", "-C", str(rel), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == ""

    data = load_release_data(spec)
    expected = {"text2image": 8, "inpainting": 8, "poisson": 4, "all": 20}
    with tempfile.TemporaryDirectory() as cache:
        for cfg, n in expected.items():
            ds = datasets.load_dataset(str(rel), cfg, split="train", cache_dir=cache)
            assert len(ds) == n
            assert ds.features == release_features()
            assert ds.features["birads"].names == list(BIRADS_NAMES)
            methods = set(ds.features["method"].int2str(ds["method"]))
            assert methods == (set(data.methods) if cfg == "all" else {cfg})
            first = ds.cast_column("image", datasets.Image(decode=False))[0]
            want = data.image_hashes(cfg if cfg != "all" else "text2image")[first["image_id"]]
            assert hashlib.sha256(first["image"]["bytes"]).hexdigest() == want
        poisson = datasets.load_dataset(str(rel), "poisson", split="train", cache_dir=cache)
        assert set(poisson.features["birads"].int2str(poisson["birads"])) == {"BI-RADS 5"}
        assert poisson[0]["image"].size == (64, 64) and poisson[0]["bbox"] == [[4.0, 4.0, 20.0, 24.0]]
    # plain pyarrow keeps the feature metadata too
    assert b"huggingface" in pq.read_schema(next(rel.glob("data/poisson/*.parquet"))).metadata

    # rerun: everything up to date
    again = build(spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d), **QUIET)
    assert again.ran == [] and again.skipped == ["generate", "validate", "card", "package"]


def test_failed_validation_stops_before_packaging(tmp_path: Path) -> None:
    """(--drop-failed: tests/release/test_drop_failed.py)"""
    spec = _spec(tmp_path)
    failed = ["text2image-b1-cc-l-00000", "poisson-b5-mlo-r-00001"]
    with pytest.raises(GateFailed):
        build(spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d, failed=failed), **QUIET)
    assert not (Path(spec.output_dir) / "release").exists()


def test_failed_round_trip_stops_the_build_and_keeps_the_previous_release(tmp_path: Path, monkeypatch) -> None:
    spec = _spec(tmp_path)
    ok = build(spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d), **QUIET)
    before = (ok.release / "checksums.sha256").read_text()
    real = package_mod.write_parquet_shards

    def lossy(data, method, out_dir, max_bytes):  # one row short: the card's split size no longer matches
        paths = real(data, method, out_dir, max_bytes)
        table = pq.read_table(paths[0])
        pq.write_table(table.slice(1), paths[0])
        return paths

    monkeypatch.setattr(package_mod, "write_parquet_shards", lossy)
    write_report(Path(spec.output_dir) / "validation", failed=[])  # new report -> card and package rerun
    (Path(spec.output_dir) / "validation" / "report.md").write_text("# changed\n")
    with pytest.raises(GateFailed, match="round trip"):
        build(spec, generate_fn=generate_fake, validate_fn=lambda s, d: write_report(d), **QUIET)
    assert (ok.release / "checksums.sha256").read_text() == before
    assert not list(ok.release.parent.glob(".release.tmp-*"))


def test_second_build_on_one_folder_exits_2_naming_the_first(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    hold = (
        "import sys, time\nfrom mammosynth.builders.core.locks import folder_lock\n"
        "with folder_lock(sys.argv[1], 'build'):\n    print('held', flush=True)\n    time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(spec.layout.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = subprocess.run(
            [sys.executable, "-m", "mammosynth.builders.cli", "build", str(tmp_path / "spec.yaml")],
            capture_output=True,
            text=True,
        )
    finally:
        holder.kill()
        holder.wait()
    assert run.returncode == 2, run.stderr
    assert f"in use by pid {holder.pid} (build)" in run.stderr and "Traceback" not in run.stderr
    assert not spec.layout.generated().exists()  # nothing was written


def test_forced_build_refuses_an_undecodable_image(tmp_path: Path) -> None:
    from mammosynth.builders.core.errors import InputError

    spec = _spec(tmp_path)

    def generate_truncated(s) -> None:
        """A generator that wrote a PNG cut off mid-stream (the shard and its record agree)."""
        from mammosynth.builders.core.shard_writer import ShardWriter

        generate_fake(s)
        writer = ShardWriter(s.layout.generated("poisson"))
        rows = pq.read_table(writer.shard_files()[0]).to_pylist()
        rows[0]["image"] = {"bytes": rows[0]["image"]["bytes"][:60], "path": None}
        writer.write(0, rows, [], 0.0)
        (tmp_path / "victim").write_text(rows[0]["image_id"])

    with pytest.raises(InputError, match="does not decode") as info:
        build(
            spec,
            generate_fn=generate_truncated,
            validate_fn=lambda s, d: write_report(d, passed=False),
            force=True,
            reason="test",
            **QUIET,
        )
    assert info.value.record == (tmp_path / "victim").read_text() and info.value.field == "image"
    assert not spec.layout.release.exists()


def test_an_edited_report_is_validated_again_not_trusted(tmp_path: Path) -> None:
    import json

    spec = _spec(tmp_path)
    calls: list[int] = []

    def failing(s, d) -> None:
        calls.append(1)
        write_report(d, passed=False)

    with pytest.raises(GateFailed):
        build(spec, generate_fn=generate_fake, validate_fn=failing, **QUIET)
    report = json.loads(spec.layout.report_json.read_text())
    report["passed"] = True
    spec.layout.report_json.write_text(json.dumps(report))  # a hand edit (or an attacker)
    with pytest.raises(GateFailed):
        build(spec, generate_fn=generate_fake, validate_fn=failing, **QUIET)
    assert len(calls) == 2 and not spec.layout.release.exists()

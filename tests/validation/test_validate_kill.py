"""A SIGKILLed `mammosynth validate` leaves no fork server and no pool workers behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import synthetic as S


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    live = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(p)
    return live


def test_sigkill_leaves_no_workers(tmp_path) -> None:
    ref = S.write_reference_set(tmp_path / "ref", n_studies=3, seed=0)
    rows = [
        S.release_row(
            r["image"]["bytes"], f"t-{k}", "text2image", r["birads"], r["view"], r["laterality"], density=r["density"]
        )
        for k, r in enumerate(S.reference_rows(24, 77))
    ]
    rel = S.write_generated(tmp_path / "rel", {"text2image": rows})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mammosynth.builders.cli",
            "validate",
            str(rel),
            "--reference",
            str(ref),
            "--report",
            str(tmp_path / "report"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, seen = time.time() + 300, set()
    while time.time() < deadline and proc.poll() is None:
        seen |= _children(proc.pid)
        if len(_alive(seen)) >= 3:  # the fork server and both workers are up
            break
        time.sleep(0.05)
    assert proc.poll() is None, "validate ended before its pool was seen"
    assert len(_alive(seen)) >= 3, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(seen):
        time.sleep(0.2)
    assert not _alive(seen)

"""Two runs on one output folder: the second stops at once, naming the holder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mammosynth.builders.core.errors import InputError
from mammosynth.builders.core.locks import folder_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from mammosynth.builders.core.locks import folder_lock
    with folder_lock(sys.argv[1], "build"):
        print("held", flush=True)
        time.sleep(30)
    """
)


def test_second_holder_is_refused_with_the_pid(tmp_path) -> None:
    out = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=rf"in use by pid {holder.pid} \(build\)"), folder_lock(out, "build"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(out, "build"):  # a killed holder leaves nothing that blocks the next run
        pass


def test_lock_is_reentrant_across_sequential_runs(tmp_path) -> None:
    for _ in range(2):
        with folder_lock(tmp_path / "out", "ingest"):
            (tmp_path / "out").mkdir(exist_ok=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_keyed_locks_are_independent(tmp_path) -> None:
    with folder_lock(tmp_path / "generated", "generate", key="rank0"):
        with folder_lock(tmp_path / "generated", "generate", key="rank1"):  # another rank of the same run
            pass
        with (
            pytest.raises(InputError, match="in use by pid"),
            folder_lock(tmp_path / "generated", "generate", key="rank0"),
        ):
            pass

"""Pool workers leave when their parent is killed (SIGKILL gives the pool no chance to stop them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from multiprocessing import forkserver
    from mammosynth.builders.core.workers import worker_pool

    if __name__ == "__main__":
        pool = worker_pool(2, method=sys.argv[1])
        pool.submit(os.getpid).result()
        pids = list(pool._processes)
        if sys.argv[1] == "forkserver":  # the fork server must leave too
            pids.append(forkserver._forkserver._forkserver_pid)
        print(" ".join(map(str, pids)), flush=True)
        time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_exit_after_parent_sigkill(method: str) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, method], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == (3 if method == "forkserver" else 2) and all(_alive(p) for p in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)

"""The one process-pool design: a ``ProcessPoolExecutor`` whose workers leave when their parent
dies (after a SIGKILL the pool gets no chance to stop them, and they would wait on the task queue
for ever), with one OpenCV thread each (the processes already fill the cores).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def cpu_count() -> int:
    """Cores this process may use (the affinity mask on Linux, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def exit_with_parent(parent: int) -> None:
    """Start a daemon thread that ends this process once ``parent`` (the process that made the
    pool) is gone or this process is re-parented. A forkserver worker's own parent is the fork
    server, which leaves when the pool's owner dies; both signs are watched."""
    first_ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == first_ppid and not _gone(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init(parent: int, opencv_threads: int | None, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    exit_with_parent(parent)
    if opencv_threads is not None:
        import cv2

        cv2.setNumThreads(opencv_threads)
    if initializer is not None:
        initializer(*initargs)


def _ready() -> None:
    """A no-op task: waiting on one per worker makes sure the pool has started (and, for spawned
    or forkserver workers, has imported the modules the tasks need)."""


def start_method(preferred: str = "fork") -> str:
    """``preferred`` where the platform has it, else spawn."""
    return preferred if preferred in mp.get_all_start_methods() else "spawn"


def worker_pool(
    workers: int,
    *,
    method: str = "fork",
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
    opencv_threads: int | None = 1,
    wait_ready: bool = True,
) -> ProcessPoolExecutor:
    """A started pool of ``workers`` processes (``method`` where the platform has it, else spawn).

    Every worker is started here (with ``wait_ready=False`` the caller goes on while they import).
    Forked workers never call ``cv2.setNumThreads`` (OpenCV would then wait on threads the fork did
    not copy): the parent's setting is lowered while they fork and restored after."""
    method = start_method(method)
    ctx = mp.get_context(method)
    in_worker = None if method == "fork" else opencv_threads
    threads = None
    if method == "fork" and opencv_threads is not None:
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(opencv_threads)  # inherited by the forked workers
    try:
        pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init, initargs=(os.getpid(), in_worker, initializer, initargs)
        )
        futures = [pool.submit(_ready) for _ in range(workers)]
        if wait_ready or method == "fork":
            for f in futures:
                f.result()
        return pool
    finally:
        if threads is not None:
            import cv2

            cv2.setNumThreads(threads)


__all__ = ["cpu_count", "exit_with_parent", "start_method", "worker_pool"]

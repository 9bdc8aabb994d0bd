"""Worker process pools that die with their parent and stop at once on Ctrl-C or an error.

A plain `ProcessPoolExecutor` has two faults for long preprocessing runs: its workers hold both ends
of their task queue, so when the parent is killed (kill -9, OOM killer) they wait on it forever;
and leaving its `with` block on Ctrl-C first runs every queued task. `process_pool` fixes both:
each worker is tied to its parent (Linux: the kernel kills it when the parent dies; elsewhere a
thread polls the parent's pid), ignores SIGINT (the parent decides), and the pool is torn down at
once, pending tasks cancelled and workers terminated, when its block exits with an exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.5  # how often a worker without PDEATHSIG checks that its parent still lives


@contextlib.contextmanager
def process_pool(
    workers: int,
    initializer: Callable[..., Any] | None = None,
    initargs: Sequence[Any] = (),
) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context pool of `workers` processes (module docstring); `initializer(*initargs)`
    runs in each worker, as with ProcessPoolExecutor. Leaving the block normally waits for the
    submitted tasks; leaving it with an exception (KeyboardInterrupt included) does not."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, tuple(initargs)),
    )
    try:
        yield pool
    except BaseException:
        stop_now(pool)
        raise
    pool.shutdown(wait=True)


def stop_now(pool: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Cancel the pool's pending tasks and terminate its workers without waiting for them."""
    # `_processes` is private but has been the pid -> Process map since Python 3.2; the public
    # shutdown() cannot interrupt a task already running
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()


def _start_worker(
    parent: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> None:
    """Worker start-up: tie the worker's life to `parent`, leave Ctrl-C to it, then initialise."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not _kill_on_parent_death():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the tie was made
        os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def _kill_on_parent_death() -> bool:
    """Linux: ask the kernel to SIGKILL this process when its parent exits (works even while the
    worker holds the GIL in a long C call); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)

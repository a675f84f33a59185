"""CPU-bound batch work in worker processes, so that one busy interpreter is not the limit.

A FHIR gateway importing records validates, seals, stores, anchors and indexes them in one
Python process. Measured with ``bench/fhir.py`` on a 2-core machine, that process held one
core at ~90 % (its GIL the limit) while the machine's other core was two-thirds idle, and
sealing (a fresh data key per record, wrapped for each recipient with X25519) was its
largest single cost. Pure functions over large batches run here instead, in a small
process pool (one worker per core beyond the first), results in order and streamed, so the
caller can use the first while the rest are computed.

Small batches run inline: the pool costs a fresh interpreter per worker (spawned, not
forked: the gateway runs threads, which a fork would copy mid-flight), started on first use
and kept until the process exits. ``MEDMESH_WORKERS=0`` turns the pool off.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Final, TypeVar

__all__ = ["MIN_BATCH", "map_batch", "warm", "worker_count"]

#: Batches smaller than this run inline (a batch of 1,000 records: ~150 ms of sealing).
MIN_BATCH: Final = 128
_CHUNK: Final = 64  # items per task sent to a worker
PARENT_CHECK_S: Final = 1.0  # how often a worker checks that its parent is alive

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def worker_count() -> int:
    """Worker processes the pool uses (0: everything inline)."""
    configured = os.environ.get("MEDMESH_WORKERS")
    if configured is not None and configured.strip():
        return max(0, int(configured))
    return max(0, (os.cpu_count() or 1) - 1)


def _get_pool() -> ProcessPoolExecutor | None:
    global _pool
    with _lock:
        if _pool is None:
            count = worker_count()
            if count == 0:
                return None
            _pool = ProcessPoolExecutor(
                count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return _pool


def map_batch(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """``map(fn, items)``, in worker processes when the batch is large enough.

    ``fn`` must be a module-level function and ``items`` and its results picklable. Results
    come in order, each as soon as it and those before it are done; an exception raised by
    ``fn`` is raised here, in place of its item's result at the latest (items are sent to
    workers in chunks: results of its chunk before it may not come).
    """
    pool = _get_pool() if len(items) >= MIN_BATCH else None
    if pool is None:
        return map(fn, items)
    return pool.map(fn, items, chunksize=_CHUNK)


def _watch_parent(parent: int) -> None:
    """In each worker: exit once the process that started it is gone. A server killed
    outright (SIGKILL, or SIGTERM without a clean shutdown) cannot stop its pool, and a
    worker blocked on its task queue would otherwise live on, orphaned."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="medmesh-parent-watch", daemon=True).start()


def warm() -> None:
    """Start the pool now, in the background, so that a server's first large batch does not
    wait for the workers to start and import (about a second on a 2-core machine)."""
    pool = _get_pool()
    if pool is not None:
        pool.submit(_ready)


def _ready() -> None:
    # what sealing and FHIR validation need, imported once (fhir.resources: ~1 s)
    import medmesh.crypto.envelope
    import medmesh.interop.fhir.validation  # noqa: F401

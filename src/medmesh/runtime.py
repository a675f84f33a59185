"""How a medmesh server process tunes the Python runtime: the cyclic garbage collector.

CPython's default thresholds (700, 10, 10) suit scripts, not a server that holds a batch of
1,000 resources for a few seconds. Each batch's objects outlive two young collections, get
promoted to the oldest generation, and that promotion triggers full collections. A full
collection scans every object of the process with the GIL held: about 0.12 s for a
gateway's 300,000 objects.

Measured on a FHIR import (``bench/fhir.py``, 10,000 resources): 16 full collections took
1.8 s of the gateway's 14 s. With the thresholds below there were none, and the young
collections took 0.2 s in all.

Garbage is still collected. Most objects die by reference count, and cycles are found by the
rarer collections. Memory stays flat; an import's gateway peaks at about the same size.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Final

__all__ = ["SERVER_GC_THRESHOLDS", "server_gc"]

#: Young collection every 50,000 net allocations (a batch's worth); middle every 20 of those;
#: the oldest every 20 middle ones (and then only if its own growth rule agrees).
SERVER_GC_THRESHOLDS: Final = (50_000, 20, 20)


_lock = threading.Lock()
_serving = 0  # servers of this process inside server_gc()
_before: tuple[int, ...] = ()


@contextlib.contextmanager
def server_gc() -> Iterator[None]:
    """While the block runs (a server's lifetime), collect garbage on server thresholds;
    once the last server of the process leaves, the previous ones come back, so an
    embedding process (a test run starting gateways, even several at once) is unchanged."""
    global _serving, _before
    with _lock:
        if _serving == 0:
            _before = gc.get_threshold()
            gc.set_threshold(*SERVER_GC_THRESHOLDS)
        _serving += 1
    try:
        yield
    finally:
        with _lock:
            _serving -= 1
            if _serving == 0:
                gc.set_threshold(*_before)

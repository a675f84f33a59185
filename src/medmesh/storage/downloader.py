"""The get pipeline: stripes fetched in parallel, leaves released in file order.

Up to ``window`` stripes are fetched at once (bounded memory: ``window * k`` leaves). Before
anything is fetched the availability of every stripe is checked, so a download that cannot
complete fails at once with :class:`InsufficientSharesError` naming the stripes that lack
shares, instead of after writing part of a file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from medmesh.errors import InsufficientSharesError
from medmesh.storage.fetcher import StripeFetcher
from medmesh.storage.locate import Location

__all__ = ["check_available", "stream_leaves"]


def check_available(loc: Location) -> None:
    """Raise unless every stripe has at least k obtainable shares."""
    k = loc.manifest.k
    missing = [s for s in range(len(loc.manifest.stripes)) if loc.available(s) < k]
    if missing:
        shown = ", ".join(str(s) for s in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise InsufficientSharesError(
            f"{len(missing)} of {len(loc.manifest.stripes)} stripes have fewer than {k} "
            f"reachable shares (stripes {shown})",
            missing,
        )


async def stream_leaves(
    loc: Location,
    *,
    window: int = 32,
    executor: Executor | None = None,
    fetcher: StripeFetcher | None = None,
) -> AsyncIterator[bytes]:
    """Yield the object's ciphertext, leaf by leaf, in order; every leaf verified."""
    check_available(loc)
    fetcher = fetcher or StripeFetcher(loc, executor)
    count = len(loc.manifest.stripes)
    tasks: dict[int, asyncio.Task[list[bytes]]] = {}
    next_start = 0
    try:
        for s in range(count):
            while next_start < count and next_start < s + window:
                tasks[next_start] = asyncio.create_task(fetcher.fetch(next_start))
                next_start += 1
            leaves = await tasks.pop(s)
            for leaf in leaves:
                yield leaf
    finally:
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)

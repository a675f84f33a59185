"""A token bucket for a node's outgoing bandwidth (off by default).

Used to emulate nodes on slower links in benchmarks, and by operators to cap egress.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` bytes per second with a burst of ``burst`` bytes, shared by all responses."""

    def __init__(self, rate: int, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate // 10, 64 * 1024)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= nbytes or self._tokens >= self.burst:
                    self._tokens -= nbytes
                    return
                await asyncio.sleep((min(nbytes, self.burst) - self._tokens) / self.rate)

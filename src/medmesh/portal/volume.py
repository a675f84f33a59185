"""Stored volume over time: the bytes the storage nodes hold, as the gateway saw them.

The chain records *what* was anchored, not how large it is, and a node knows only what it
holds now. So the gateway keeps the history itself: a :class:`VolumeSampler` thread asks
every node for ``/node/info`` once a minute (and the network page adds a sample from the
probes it makes anyway) and :class:`VolumeLog` keeps ``(time, bytes held by the nodes that
answered, nodes up, nodes known)`` in ``<home>/portal.db``. A sample is four numbers: no CIDs,
no addresses, nothing about any patient. Samples older than :data:`KEEP_SECONDS` are dropped.

:func:`levels` turns the samples into one point per chart interval: the volume last seen by
the end of that interval (intervals before the first sample have none, and the chart says
so by starting the line late rather than inventing a zero).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["KEEP_SECONDS", "SAMPLE_EVERY", "Sample", "VolumeLog", "VolumeSampler", "levels"]

#: seconds between two samples of the background sampler (the page may add more)
SAMPLE_EVERY: Final = 60.0
#: a page's own sample is kept only if the last one is at least this old
PAGE_SAMPLE_GAP: Final = 10.0
KEEP_SECONDS: Final = 90 * 86400

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    at: float
    bytes_used: int  # summed over the nodes that answered
    nodes_up: int
    nodes: int


class VolumeLog:
    """The samples, in a small SQLite file of their own (safe from any thread)."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS volume ("
                " at REAL PRIMARY KEY, bytes_used INTEGER NOT NULL,"
                " nodes_up INTEGER NOT NULL, nodes INTEGER NOT NULL)"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, sample: Sample, *, min_gap: float = 0.0) -> bool:
        """Keep ``sample`` unless the newest one is less than ``min_gap`` seconds older;
        samples past :data:`KEEP_SECONDS` are dropped on the way."""
        with self._lock, self._db:
            (last,) = self._db.execute("SELECT MAX(at) FROM volume").fetchone()
            if last is not None and sample.at - float(last) < min_gap:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO volume VALUES (?, ?, ?, ?)",
                (sample.at, sample.bytes_used, sample.nodes_up, sample.nodes),
            )
            self._db.execute("DELETE FROM volume WHERE at < ?", (sample.at - KEEP_SECONDS,))
        return True

    def samples(self, since: float | None = None) -> list[Sample]:
        query = "SELECT at, bytes_used, nodes_up, nodes FROM volume"
        args: tuple[float, ...] = ()
        if since is not None:
            query, args = query + " WHERE at >= ?", (since,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY at", args).fetchall()
        return [Sample(float(a), int(b), int(u), int(n)) for a, b, u, n in rows]


def levels(
    samples: Sequence[Sample], *, start: float, end: float, count: int = 24
) -> list[tuple[float, float]]:
    """The bytes held at the end of each of ``count`` equal intervals of [start, end]: the
    newest sample taken by then (``samples`` in time order); none before the first sample."""
    width = max(end - start, 1.0) / count
    out: list[tuple[float, float]] = []
    i, current = 0, None
    for b in range(count):
        edge = start + (b + 1) * width
        while i < len(samples) and samples[i].at <= edge + 1e-9:
            current = samples[i]
            i += 1
        if current is not None:
            out.append((edge, float(current.bytes_used)))
    return out


class VolumeSampler:
    """Takes a sample every ``every`` seconds until ``stop`` is set (the gateway runs one in a
    daemon thread). ``probe`` returns ``(bytes used, nodes up, nodes known)``."""

    def __init__(
        self,
        log: VolumeLog,
        probe: Callable[[], tuple[int, int, int]],
        *,
        every: float = SAMPLE_EVERY,
    ) -> None:
        self.log = log
        self.probe = probe
        self.every = every

    def sample(self) -> Sample:
        used, up, known = self.probe()
        sample = Sample(self.log.clock(), used, up, known)
        # a sample right after one the page took says nothing new
        self.log.add(sample, min_gap=PAGE_SAMPLE_GAP)
        return sample

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a missed sample is a gap in a chart, not a failure
                log.warning("stored-volume sample skipped: %s", type(exc).__name__)
            stop.wait(self.every)

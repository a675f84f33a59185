"""Shared pytest fixtures."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _started_under(base: Path) -> list[int]:
    """Processes whose command line names a folder of this session's temporary tree: chains,
    nodes and gateways the tests started (nothing else has these paths)."""
    needle = str(base).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def _stop_what_the_tests_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A fixture that failed half-way through its set-up may leave a chain or a node running;
    at the end of the session they are stopped, by PID, and named on stderr."""
    yield
    if not Path("/proc").is_dir():
        return
    base = tmp_path_factory.getbasetemp()
    stray = _started_under(base)
    deadline = time.monotonic() + 5
    while stray and time.monotonic() < deadline:  # a stop may still be under way
        time.sleep(0.2)
        stray = _started_under(base)
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        print(f"\nstopped process {pid}, left running by a test fixture", file=sys.__stderr__)

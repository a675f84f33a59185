"""Background processes medmesh starts, and only those: spawn detached, check, stop by PID.

A daemon is recognised by its PID *and* its command line naming its own data folder, so a
recycled PID is never mistaken for ours and nothing we did not start is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Final

__all__ = ["HOST", "alive", "free_port", "port_free", "spawn_detached", "stop"]

HOST: Final = "127.0.0.1"


def port_free(port: int, kind: int) -> bool:
    """True if a server could bind ``port`` (``kind``: ``SOCK_STREAM`` or ``SOCK_DGRAM``) now.

    For TCP the probe sets ``SO_REUSEADDR``, as servers do (Anvil, uvicorn, our storage node):
    the TIME_WAIT sockets a stopped server leaves on its port for a minute do not count, a
    listener does. Not for UDP, where ``SO_REUSEADDR`` would let the probe share a port that
    another socket holds with the same option.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def alive(pid: int, data: str) -> bool:
    """True if ``pid`` runs and is the node of ``data`` (not a recycled PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return data.encode() in cmdline


def spawn_detached(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Start ``cmd`` as a daemon: its own session, re-parented to init, output to ``log``,
    with ``env`` added to this process's environment (for it alone).

    The classic double fork: the node outlives this process (``devnet up`` returns) and is
    never left as a zombie of whoever called us.
    """
    pid = os.fork()
    if pid == 0:  # first child
        try:
            os.setsid()
            if os.fork() == 0:  # grandchild: becomes the node
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.execve(cmd[0], cmd, {**os.environ, **(env or {})})  # noqa: S606 - our own interpreter and module
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def stop(pid: int, marker: str, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send ``sig`` to the daemon ``pid`` (if it is still the one naming ``marker``), SIGKILL
    after ``timeout``; True if it was running."""
    if not alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid, marker):
            time.sleep(0.05)
    return True

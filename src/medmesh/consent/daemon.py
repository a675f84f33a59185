"""The consent gateway as a background service of a home folder (``medmesh gateway up``).

``up`` starts ``medmesh gateway run`` detached, with its PID file and log under
``<home>/gateway/``, and returns once ``/v1/health`` answers. The wallet's passphrase is
handed to the service through its environment (the service signs access logs with the home
wallet); it is never written to disk or to the log. ``down`` stops the service by the PID it
wrote, after checking that the PID still names this home's PID file on its command line.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medmesh.config import ENV_PASSPHRASE, Home
from medmesh.daemons import HOST, alive, free_port, port_free, spawn_detached, stop
from medmesh.errors import ConfigError, NodeUnavailableError

__all__ = ["DEFAULT_GATEWAY_PORT", "GatewayDaemon", "GatewayStatus"]

DEFAULT_GATEWAY_PORT: Final = 7700


@dataclass(frozen=True)
class GatewayStatus:
    running: bool
    url: str | None
    pid: int | None
    log: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def health(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The gateway's ``/v1/health`` answer, or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/v1/health", timeout=timeout) as response:  # noqa: S310 - our own http URL
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except (urllib.error.URLError, OSError, ValueError):
        return None


class GatewayDaemon:
    """Start, inspect and stop the gateway service of one home folder."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.dir = home.path / "gateway"
        self.pid_file = self.dir / "gateway.pid"
        self.info_file = self.dir / "gateway.json"
        self.log = self.dir / "gateway.log"

    def _info(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.info_file.read_text())
            return doc
        except (OSError, ValueError):
            return {}

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid, str(self.pid_file)) else None

    def status(self) -> GatewayStatus:
        pid = self._pid()
        return GatewayStatus(pid is not None, self._info().get("url"), pid, str(self.log))

    def up(
        self,
        port: int = DEFAULT_GATEWAY_PORT,
        *,
        passphrase: str,
        fhir: bool = False,
        timeout: float = 60.0,
    ) -> GatewayStatus:
        """Start the service unless it runs (port 0: any free port); return once it answers.
        ``fhir``: also serve the FHIR R4 API (``gateway run --fhir``)."""
        current = self.status()
        if current.running and current.url and health(current.url):
            return current
        if port == 0:
            port = free_port(socket.SOCK_STREAM)
        if not port_free(port, socket.SOCK_STREAM):
            raise ConfigError(f"port {port} on {HOST} is taken; choose another with --port")
        self.dir.mkdir(parents=True, exist_ok=True)
        url = f"http://{HOST}:{port}"
        self.info_file.write_text(json.dumps({"url": url, "port": port}) + "\n")
        cmd = [
            sys.executable,
            "-m",
            "medmesh",
            "--home",
            str(self.home.path),
            "gateway",
            "run",
            "--port",
            str(port),
            "--pid-file",
            str(self.pid_file),
            *(["--fhir"] if fhir else []),
        ]
        # the service's environment alone carries the passphrase: never written to disk
        spawn_detached(cmd, self.log, env={ENV_PASSPHRASE: passphrase})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if health(url) is not None and self._pid() is not None:
                return self.status()
            time.sleep(0.1)
        raise NodeUnavailableError(
            f"the gateway did not answer at {url} within {timeout:.0f} s; see {self.log}"
        )

    def down(self, timeout: float = 10.0) -> bool:
        """Stop the service (it flushes pending access logs first); True if it was running."""
        pid = self._pid()
        if pid is None:
            return False
        return stop(pid, str(self.pid_file), timeout=timeout)


def write_pid_file(path: str | os.PathLike[str]) -> None:
    """Called by the service itself: record its PID (atomically)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(target)

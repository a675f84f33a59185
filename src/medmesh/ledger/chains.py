"""Chains: the embedded local chain (Anvil) and any EVM JSON-RPC endpoint in production.

The local chain is a real EVM node, Anvil (npm ``@foundry-rs/anvil-linux-amd64``, pinned in
``package-lock.json``; ``make`` installs it into ``node_modules/``). :class:`LocalChain` keeps
it under ``<home>/chain/``::

    state.json      Anvil's own state file (``--state``, rewritten every second)
    snapshot.json   the last whole state.json, copied with fsync + rename
    durable.json    {"block": N}: every block up to N is in snapshot.json
    chain.json      the running supervisor: pid, anvil pid, RPC URL, chain id
    anvil.log, supervisor.log

Anvil rewrites ``state.json`` in place (``O_TRUNC``, no fsync), so a crash in the middle of
a dump would leave a truncated file and an empty chain at the next start. A small supervisor
process (``python -m medmesh.ledger.chains serve``) therefore runs Anvil as its child, copies
every complete dump to ``snapshot.json`` durably, restores it before any (re)start, and
restarts Anvil if it dies: after a failed start (say its port is still held for a moment) it
waits 0.5 s, doubling up to 10 s, and tries again until it is stopped; ``supervisor.log`` says
what happened. A transaction counts as acknowledged on the local chain once its
block is durable (:meth:`LocalChain.wait_durable`): killing Anvil then loses nothing.

Mining is by interval (``--block-time``, 1 s by default), not one block per transaction:
Anvil's per-block cost grows with the state it holds, and batching many transactions into
one block is what keeps hundreds of grants per second possible. Blocks hold 100M gas
(``--gas-limit``, :data:`DEFAULT_GAS_LIMIT`) rather than Anvil's 30M, which let only 768
records a block in through ``Records.anchor_many`` (docs/ledger.md, "Block gas limit").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from medmesh.daemons import HOST, alive, free_port, port_free, spawn_detached, stop
from medmesh.errors import ConfigError, LedgerError, RpcUnavailableError
from medmesh.ledger.rpc import Rpc

__all__ = [
    "DEFAULT_CHAIN_ID",
    "DEFAULT_PORT",
    "ChainStatus",
    "LocalChain",
    "anvil_binary",
]

DEFAULT_PORT: Final = 8545
DEFAULT_CHAIN_ID: Final = 31337
DEFAULT_BLOCK_TIME: Final = 1.0
# gas per block: Anvil's own default is 30M, which caps Records.anchor_many at about 770
# records a block (docs/ledger.md); real networks set their own
DEFAULT_GAS_LIMIT: Final = 100_000_000
ENV_ANVIL: Final = "MEDMESH_ANVIL"
_SUPERVISOR_MODULE: Final = "medmesh.ledger.chains"
RESTART_DELAY_FIRST: Final = 0.5  # seconds before the next start after one failure
RESTART_DELAY_MAX: Final = 10.0  # ... doubling per failure in a row, up to this
STABLE_RUN: Final = 30.0  # an Anvil that ran this long before it died is restarted at once
#: How often the supervisor looks for a new dump (a stat() when there is none), and how often
#: a writer waiting for its block looks at durable.json: both are latency added to every
#: durable write (docs/benchmarks.md, FHIR fifth measurement).
SNAPSHOT_POLL_S: Final = 0.05
DURABLE_POLL_S: Final = 0.02

log = logging.getLogger(__name__)


def anvil_binary() -> Path:
    """``$MEDMESH_ANVIL``, else the pinned npm install in this checkout, else ``anvil`` on PATH."""
    override = os.environ.get(ENV_ANVIL)
    if override:
        return Path(override)
    local = Path(__file__).resolve().parents[3] / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ConfigError(
        "Anvil is not installed: run `make up` (it runs `npm ci`) or set MEDMESH_ANVIL"
    )


@dataclass(frozen=True)
class ChainStatus:
    """The local chain as seen from outside."""

    running: bool
    rpc_url: str | None
    chain_id: int | None
    pid: int | None
    anvil_pid: int | None
    block: int | None
    durable_block: int | None
    data: str

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "rpc_url": self.rpc_url,
            "chain_id": self.chain_id,
            "pid": self.pid,
            "anvil_pid": self.anvil_pid,
            "block": self.block,
            "durable_block": self.durable_block,
            "data": self.data,
        }


def restart_delay(failures: int) -> float:
    """Seconds the supervisor waits before starting Anvil after ``failures`` failures in a row.

    >>> [restart_delay(n) for n in range(8)]
    [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    """
    if failures <= 0:
        return 0.0
    return min(RESTART_DELAY_FIRST * 2.0 ** min(failures - 1, 16), RESTART_DELAY_MAX)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_BEST_BLOCK: Final = re.compile(rb'"best_block_number":\s*(?:"(0x[0-9a-fA-F]+)"|([0-9]+))')


def _dump_block(raw: bytes) -> int | None:
    """The newest block in an Anvil state dump, or None if the dump is not whole: cheap.

    A dump caught mid-write is a prefix of the whole JSON object. The dump holds no braces
    inside strings (only numbers, hex strings and null), so it is whole when it ends with
    the ``}`` that brings the brace depth back to zero; counting braces costs a few
    milliseconds where parsing (:func:`_state_block`) took tens, plus ten times the dump in
    memory. The block number is then looked up, not parsed out.
    """
    body = raw.rstrip()
    if not (body.startswith(b"{") and body.endswith(b"}")):
        return None
    if body.count(b"{") != body.count(b"}"):
        return None
    at = body.find(b'"best_block_number"')
    found = _BEST_BLOCK.match(body, at) if at >= 0 else None
    if found is None:  # another layout: parse it
        return _state_block(raw)
    hex_number, number = found.groups()
    return int(hex_number, 16) if hex_number else int(number)


def _state_block(raw: bytes) -> int | None:
    """The newest block in an Anvil state dump, or None if the dump is incomplete (parsed)."""
    try:
        state = json.loads(raw)
        best = state.get("best_block_number")
        if best is None:
            best = state["block"]["number"]
        return int(best, 16) if isinstance(best, str) else int(best)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LocalChain:
    """Start, stop and inspect the embedded Anvil chain kept under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.info_file = self.root / "chain.json"
        self.state_file = self.root / "state.json"
        self.snapshot_file = self.root / "snapshot.json"
        self.durable_file = self.root / "durable.json"

    # -- outside view --------------------------------------------------------------------------

    def _info(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _marker(self) -> str:
        return str(self.root)

    def running_info(self) -> dict[str, Any] | None:
        """chain.json if its supervisor is alive."""
        info = self._info()
        if info and alive(int(info["pid"]), self._marker()):
            return info
        return None

    def durable_block(self) -> int | None:
        try:
            return int(json.loads(self.durable_file.read_text())["block"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def status(self) -> ChainStatus:
        info = self.running_info()
        block = None
        if info:
            try:
                with Rpc(info["rpc_url"], timeout=2.0, retries=1) as rpc:
                    block = int(rpc.call("eth_blockNumber"), 16)
            except LedgerError:
                block = None
        return ChainStatus(
            running=info is not None,
            rpc_url=info["rpc_url"] if info else None,
            chain_id=info["chain_id"] if info else None,
            pid=info["pid"] if info else None,
            anvil_pid=info.get("anvil_pid") if info else None,
            block=block,
            durable_block=self.durable_block(),
            data=str(self.root),
        )

    # -- start and stop --------------------------------------------------------------------------

    def up(
        self,
        *,
        port: int = DEFAULT_PORT,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float = DEFAULT_BLOCK_TIME,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        timeout: float = 30.0,
    ) -> ChainStatus:
        """Start the chain unless it runs; return once it answers JSON-RPC.

        ``port=0`` picks a free port. The port and chain id of a chain that already has data
        are kept from its first start.
        """
        if self.running_info():
            return self.status()
        anvil = anvil_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self._info() or {}
        chain_id = int(previous.get("chain_id", chain_id))
        port = int(previous.get("port", port)) if previous.get("port") else port
        if port == 0 or not port_free(port, socket.SOCK_STREAM):
            if port and previous.get("port"):
                raise ConfigError(f"port {port} of the local chain is taken by another process")
            if port:
                raise ConfigError(f"port {port} is taken; pass another port (or 0 for any)")
            port = free_port(socket.SOCK_STREAM)
        cmd = [
            sys.executable, "-m", _SUPERVISOR_MODULE, "serve", str(self.root),
            "--anvil", str(anvil), "--port", str(port), "--chain-id", str(chain_id),
            "--block-time", str(block_time), "--gas-limit", str(gas_limit),
        ]  # fmt: skip
        self.info_file.unlink(missing_ok=True)
        spawn_detached(cmd, self.root / "supervisor.log")
        deadline = time.monotonic() + timeout
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            info = self._info()
            if info and info.get("ready"):
                return self.status()
            if info and not alive(int(info["pid"]), self._marker()):
                break  # the supervisor exited
            time.sleep(0.05)
        if info and info.get("pid"):  # it would keep trying in the background: stop it
            stop(int(info["pid"]), self._marker(), timeout=20.0)
        raise RpcUnavailableError(
            f"the local chain did not start within {timeout:.0f} s; see {self.root / 'supervisor.log'}"
        )

    def down(self, timeout: float = 20.0) -> bool:
        """Stop the chain (Anvil dumps its state, the supervisor snapshots it); True if it ran."""
        info = self._info()
        if not info:
            return False
        stopped = stop(int(info["pid"]), self._marker(), timeout=timeout)
        anvil_pid = info.get("anvil_pid")
        if anvil_pid:  # the supervisor stops it; make sure if the supervisor was killed
            stop(int(anvil_pid), str(self.state_file), timeout=5.0)
        return stopped

    def kill_anvil(self) -> None:
        """SIGKILL Anvil (not the supervisor): for crash tests."""
        info = self.running_info()
        if info and info.get("anvil_pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["anvil_pid"]), signal.SIGKILL)

    def wait_durable(self, block: int, timeout: float = 15.0) -> None:
        """Return once ``block`` is in the durable snapshot."""
        deadline = time.monotonic() + timeout
        while True:
            durable = self.durable_block()
            if durable is not None and durable >= block:
                return
            if time.monotonic() > deadline:
                raise LedgerError(
                    f"block {block} was not saved to disk within {timeout:.0f} s "
                    f"(durable: {durable}); is the local chain running?"
                )
            time.sleep(DURABLE_POLL_S)

    # -- the supervisor ---------------------------------------------------------------------------

    def _restore(self) -> None:
        """Make sure Anvil starts from the newest complete state."""
        current = self.state_file.read_bytes() if self.state_file.exists() else None
        if current is not None and _state_block(current) is not None:
            return
        if self.snapshot_file.exists():
            shutil.copyfile(self.snapshot_file, self.state_file)
            log.warning("restored %s from %s", self.state_file.name, self.snapshot_file.name)
        elif current is not None:
            bad = self.state_file.with_name("state.corrupt.json")
            self.state_file.replace(bad)
            log.error("moved an unreadable state file to %s; starting empty", bad.name)

    def _snapshot(self, last: tuple[int, int] | None) -> tuple[int, int] | None:
        """Copy a whole state.json to snapshot.json; returns the (mtime, size) it copied.

        Anvil rewrites the file in place: a dump read while it was being rewritten (its
        mtime or size changed meanwhile) is left for the next pass, as is one not yet whole.
        """
        try:
            before = self.state_file.stat()
        except FileNotFoundError:
            return last
        seen = (before.st_mtime_ns, before.st_size)
        if seen == last:
            return last
        raw = self.state_file.read_bytes()
        after = self.state_file.stat()
        if (after.st_mtime_ns, after.st_size) != seen or len(raw) != before.st_size:
            return last
        block = _dump_block(raw)
        if block is None:
            return last  # caught mid-write: the next pass will see the whole file
        _write_atomic(self.snapshot_file, raw)
        _write_atomic(self.durable_file, json.dumps({"block": block, "at": time.time()}).encode())
        return seen

    def _write_info(self, info: dict[str, Any]) -> None:
        _write_atomic(self.info_file, json.dumps(info, indent=2).encode())

    def _start_anvil(
        self,
        cmd: list[str],
        output: IO[bytes],
        rpc_url: str,
        stopping: threading.Event,
        gas_limit: int = DEFAULT_GAS_LIMIT,
    ) -> subprocess.Popen[bytes]:
        """Restore the newest complete state, start Anvil, return it once it answers.

        Anvil takes the block gas limit of a state it loads over ``--gas-limit``, so the limit
        is also set over RPC: a chain made before the limit changed gets the new one.
        Raises (OSError, LedgerError) if it cannot; no Anvil of this attempt is left running.
        """
        self._restore()
        child = subprocess.Popen(cmd, stdout=output, stderr=output, stdin=subprocess.DEVNULL)
        try:
            self._wait_rpc(rpc_url, child, stopping=stopping)
            with Rpc(rpc_url, timeout=5.0, retries=1) as rpc:
                rpc.call("evm_setBlockGasLimit", hex(gas_limit))
        except BaseException:
            _end(child)
            raise
        return child

    def serve(
        self,
        anvil: Path,
        port: int,
        chain_id: int,
        block_time: float,
        gas_limit: int = DEFAULT_GAS_LIMIT,
    ) -> None:
        """Run Anvil as a child until SIGTERM; snapshot its state; restart it whenever it dies.

        A start that fails (Anvil exits or does not answer, e.g. while its port is still held
        by the sockets of the Anvil before it) and an Anvil that dies within
        :data:`STABLE_RUN` seconds of starting count as failures: the next attempt waits
        :func:`restart_delay` (0.5 s, doubling up to 10 s). The supervisor keeps trying, and
        says so in ``supervisor.log``, until it is told to stop.
        """
        stopping = threading.Event()

        def _stop(signum: int, frame: object) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        rpc_url = f"http://{HOST}:{port}"
        cmd = [
            str(anvil), "--host", HOST, "--port", str(port), "--chain-id", str(chain_id),
            "--block-time", f"{block_time:g}", "--gas-limit", str(gas_limit),
            "--state", str(self.state_file), "--state-interval", "1", "--silent",
        ]  # fmt: skip
        info: dict[str, Any] = {
            "pid": os.getpid(), "anvil_pid": None, "rpc_url": rpc_url, "port": port,
            "chain_id": chain_id, "block_time": block_time, "gas_limit": gas_limit,
            "data": str(self.root), "ready": False,
        }  # fmt: skip
        self._write_info(info)  # our pid, before the first start: up() can stop us if it fails
        anvil_log = open(self.root / "anvil.log", "ab")  # noqa: SIM115 - lives as long as the loop
        last_copied: tuple[int, int] | None = None
        snapshot_error: str | None = None
        child: subprocess.Popen[bytes] | None = None
        started = 0.0  # when the running child answered
        failures = 0  # failed starts and early deaths since Anvil last ran STABLE_RUN seconds
        next_start = 0.0
        log.info("supervising anvil on %s (data: %s)", rpc_url, self.root)
        try:
            while not stopping.is_set():
                if child is not None and child.poll() is not None:
                    ran = time.monotonic() - started
                    failures = 0 if ran >= STABLE_RUN else failures + 1
                    delay = restart_delay(failures)
                    log.warning(
                        "anvil (pid %d) exited with %s after %.1f s; restarting %s",
                        child.pid, child.returncode, ran,
                        f"in {delay:g} s ({failures} failure(s) in a row)" if delay else "now",
                    )  # fmt: skip
                    child = None
                    next_start = time.monotonic() + delay
                    info["anvil_pid"] = None
                    with contextlib.suppress(OSError):
                        self._write_info(info)
                if child is None and time.monotonic() >= next_start:
                    try:
                        child = self._start_anvil(cmd, anvil_log, rpc_url, stopping, gas_limit)
                        info.update(anvil_pid=child.pid, ready=True)
                        self._write_info(info)
                    except (OSError, LedgerError) as exc:
                        if child is not None:
                            _end(child)
                            child = None
                        if stopping.is_set():
                            break
                        failures += 1
                        delay = restart_delay(failures)
                        next_start = time.monotonic() + delay
                        log.error(
                            "anvil did not start (%d failure(s) in a row): %s; "
                            "trying again in %g s (see anvil.log)",
                            failures, exc, delay,
                        )  # fmt: skip
                    else:
                        started = time.monotonic()
                        log.info("anvil (pid %d) answers on %s", child.pid, rpc_url)
                try:
                    last_copied = self._snapshot(last_copied)
                    snapshot_error = None
                except OSError as exc:  # e.g. a full disk: keep Anvil running, say it once
                    if str(exc) != snapshot_error:
                        log.error("cannot snapshot %s: %s", self.state_file.name, exc)
                    snapshot_error = str(exc)
                time.sleep(SNAPSHOT_POLL_S)
        finally:
            if child is not None:
                _end(child)  # Anvil dumps its state on a clean exit
            with contextlib.suppress(OSError):
                self._snapshot(last_copied)
            info.update(ready=False, anvil_pid=None)
            with contextlib.suppress(OSError):
                self._write_info(info)
            anvil_log.close()
            log.info("stopped")

    @staticmethod
    def _wait_rpc(
        url: str,
        child: subprocess.Popen[bytes],
        timeout: float = 20.0,
        *,
        stopping: threading.Event | None = None,
    ) -> None:
        """Return once ``child`` answers JSON-RPC at ``url``; the connection is closed after."""
        deadline = time.monotonic() + timeout
        with Rpc(url, timeout=1.0, retries=1) as rpc:
            while child.poll() is None:
                if time.monotonic() > deadline or (stopping is not None and stopping.is_set()):
                    raise RpcUnavailableError(f"anvil did not answer on {url} within {timeout:g} s")
                try:
                    rpc.call("eth_chainId")
                    return
                except RpcUnavailableError:
                    time.sleep(0.05)
        raise RpcUnavailableError(f"anvil exited with {child.returncode} before answering on {url}")


def _end(child: subprocess.Popen[bytes]) -> None:
    """Stop ``child`` (SIGTERM, SIGKILL after 15 s) and reap it."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m medmesh.ledger.chains")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run Anvil under supervision (started by `chain up`)")
    serve.add_argument("root", type=Path)
    serve.add_argument("--anvil", type=Path, required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--chain-id", type=int, required=True)
    serve.add_argument("--block-time", type=float, default=DEFAULT_BLOCK_TIME)
    serve.add_argument("--gas-limit", type=int, default=DEFAULT_GAS_LIMIT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    LocalChain(args.root).serve(
        args.anvil, args.port, args.chain_id, args.block_time, args.gas_limit
    )


if __name__ == "__main__":
    main()

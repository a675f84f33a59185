"""``medmesh up`` as a user runs it: a foreground process that starts the chain, the storage
nodes and the gateway (FHIR) on a fresh home, seeds the demo world on its first start only,
and stops all it started on SIGINT or SIGTERM; a second ``up`` carries on with the same data.

The tests share one home and run in order: a fresh home with ``--no-demo``, then a restart that
seeds a small demo world (4 patients, 2 hospitals, 1 lab), then one that must not seed again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from medmesh.consent.daemon import health
from medmesh.daemons import alive, free_port
from tests.integration.test_cli import PASS, medmesh

pytestmark = pytest.mark.slow

READY_TIMEOUT = 120.0
DEMO = ("--demo-patients", "4", "--demo-hospitals", "2", "--demo-labs", "1")


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    home: Path
    url: str
    stdout: Path
    stderr: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("up-home")
    # 2-of-3 so that three nodes can store records; no wallet: `up` creates one
    (home / "config.json").write_text(json.dumps({"k": 2, "n": 3}))
    try:
        yield home
    finally:  # whatever a failed test left behind
        medmesh(home, "gateway", "down", check=False)
        medmesh(home, "devnet", "down", check=False)
        medmesh(home, "chain", "down", check=False)


@contextmanager
def running_up(home: Path, tag: str, *args: str) -> Iterator[Up]:
    """``medmesh up`` as a subprocess, ready (its summary printed, the gateway answering)."""
    port = free_port(socket.SOCK_STREAM)
    stdout, stderr = home / f"up-{tag}.out", home / f"up-{tag}.err"
    env = {**os.environ, "MEDMESH_PASSPHRASE": PASS, "MEDMESH_HOME": str(home)}
    cmd = [sys.executable, "-m", "medmesh", "up", "--nodes", "3", "--port", str(port),
           "--chain-port", "0", "--base-port", "0", *args]  # fmt: skip
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    up = Up(proc, home, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "Ctrl-C stops what this started" not in stdout.read_text():  # the summary's end
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("`medmesh up` did not get ready:\n" + "\n".join(up.output()))
            time.sleep(0.2)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stop(up: Up, sig: int = signal.SIGINT) -> str:
    """Signal ``up``; return its stderr once it exited 0."""
    up.proc.send_signal(sig)
    code = up.proc.wait(60)
    out, err = up.output()
    assert code == 0, out + err
    return err


def pids(home: Path) -> dict[str, tuple[int, str]]:
    """Every process of the home's network: name -> (pid, what its command line names)."""
    found: dict[str, tuple[int, str]] = {}
    chain = json.loads((home / "chain" / "chain.json").read_text())
    found["chain supervisor"] = (chain["pid"], str(home / "chain"))
    found["anvil"] = (chain["anvil_pid"], str(home / "chain" / "state.json"))
    for node in json.loads(medmesh(home, "devnet", "status", "--json").stdout)["nodes"]:
        assert node["running"], node
        found[f"node {node['index']}"] = (node["pid"], node["data"])
    gateway = json.loads(medmesh(home, "gateway", "status", "--json").stdout)
    assert gateway["running"] and gateway["answering"], gateway
    found["gateway"] = (gateway["pid"], str(home / "gateway" / "gateway.pid"))
    return found


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.status)


def block_number(home: Path) -> int:
    st = json.loads(medmesh(home, "chain", "status", "--json").stdout)
    return int(st["block"])


def test_up_starts_everything_and_sigint_stops_it(home: Path, tmp_path: Path) -> None:
    with running_up(home, "first", "--no-demo") as up:
        assert health(up.url) is not None
        assert get(f"{up.url}/fhir/metadata") == 200
        out, err = up.output()
        for word in ("chain RPC", "node 2", f"{up.url}/fhir", f"{up.url}/portal/"):
            assert word in out
        assert "created" in err and (home / "wallet.json").is_file()
        running = pids(home)
        assert len([n for n in running if n.startswith("node")]) == 3
        assert all(alive(pid, marker) for pid, marker in running.values())
        # a record, to find again after a restart
        src = tmp_path / "lab.json"
        src.write_text('{"resourceType": "Observation", "status": "final"}')
        put = json.loads(medmesh(home, "records", "put", str(src), "--kind", "fhir:Observation",
                                 "--json").stdout)  # fmt: skip
        (home / "test-record.json").write_text(json.dumps({**put, "block": block_number(home)}))
        err = stop(up, signal.SIGINT)
    assert "stopped" in err
    assert not (home / "up" / "demo.json").exists()  # --no-demo
    gone = {name: pid for name, (pid, marker) in running.items() if alive(pid, marker)}
    assert gone == {}
    assert medmesh(home, "chain", "status", check=False).returncode == 1


def test_second_up_keeps_the_chain_and_records_and_seeds_the_demo(
    home: Path, tmp_path: Path
) -> None:
    before = json.loads((home / "test-record.json").read_text())
    book = (home / "addresses.json").read_text()
    with running_up(home, "second", *DEMO) as up:
        out, err = up.output()
        assert "contracts in place" in err and "contracts deployed" not in err
        assert (home / "addresses.json").read_text() == book
        assert block_number(home) >= before["block"]
        listed = json.loads(medmesh(home, "records", "list", "--json").stdout)
        assert before["cid"] in [r["cid"] for r in listed]
        back = tmp_path / "back.json"
        medmesh(home, "records", "get", before["cid"], "-o", str(back))
        assert json.loads(back.read_text())["resourceType"] == "Observation"
        # the demo world, seeded now (the first start had --no-demo)
        assert "demo world" in err
        seeded = json.loads((home / "up" / "demo.json").read_text())
        assert (seeded["patients"], seeded["hospitals"], seeded["labs"]) == (4, 2, 1)
        assert seeded["failed"] == 0 and seeded["records"] > 4 * 30
        population = json.loads((home / "synth" / "population.json").read_text())
        assert "demo logins" in out and "hospital-2" in out and "lab-1" in out
        assert population["participants"][0]["address"] in out
        assert population["passphrase"] not in out + err  # named where it is, never printed
        running = pids(home)
        stop(up, signal.SIGTERM)
    assert not any(alive(pid, marker) for pid, marker in running.values())


def test_third_up_does_not_seed_again_and_a_concurrent_up_is_refused(home: Path) -> None:
    population = (home / "synth" / "population.json").read_text()
    seeded = (home / "up" / "demo.json").read_text()
    with running_up(home, "third", *DEMO) as up:
        out, err = up.output()
        assert "demo world" not in err
        assert "contracts in place" in err  # a third start too (Anvil's genesis changes)
        assert "demo logins" in out  # still shown
        # one `up` per home at a time: a second is refused, clearly, and stops nothing
        again = medmesh(home, "up", "--nodes", "3", "--port", "0", check=False)
        assert again.returncode == 1
        assert "already runs" in " ".join(again.stderr.split())
        assert "Traceback" not in again.stderr
        assert health(up.url) is not None
        stop(up)
    assert (home / "synth" / "population.json").read_text() == population
    assert (home / "up" / "demo.json").read_text() == seeded

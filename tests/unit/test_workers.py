"""medmesh.workers: large batches run in worker processes, in order; small ones inline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medmesh import workers
from medmesh.crypto.envelope import open_record, seal_job, seal_one
from medmesh.crypto.keys import EncryptionPrivateKey
from medmesh.errors import InvalidInputError


def where(n: int) -> tuple[int, int]:
    return n * n, os.getpid()


def fails_on_seven(n: int) -> int:
    if n == 7:
        raise InvalidInputError("seven is refused")
    return n


def test_a_large_batch_runs_in_another_process_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMESH_WORKERS", "1")
    got = list(workers.map_batch(where, list(range(workers.MIN_BATCH))))
    assert [sq for sq, _ in got] == [n * n for n in range(workers.MIN_BATCH)]
    assert {pid for _, pid in got} - {os.getpid()}  # computed elsewhere


def test_a_small_batch_runs_inline() -> None:
    got = list(workers.map_batch(where, [1, 2, 3]))
    assert got == [(1, os.getpid()), (4, os.getpid()), (9, os.getpid())]


def test_an_error_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMESH_WORKERS", "1")
    results = workers.map_batch(fails_on_seven, list(range(workers.MIN_BATCH)))
    with pytest.raises(InvalidInputError, match="seven is refused"):
        list(results)


def test_workers_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMESH_WORKERS", "0")
    monkeypatch.setattr(workers, "_pool", None)
    assert workers.worker_count() == 0
    got = list(workers.map_batch(where, list(range(workers.MIN_BATCH))))
    assert {pid for _, pid in got} == {os.getpid()}


def test_records_sealed_in_a_worker_open_for_each_recipient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDMESH_WORKERS", "1")
    alice, bob = EncryptionPrivateKey.generate(), EncryptionPrivateKey.generate("mlkem768-x25519")
    plain = [b"record %d" % i for i in range(workers.MIN_BATCH)]
    jobs = [seal_job(p, [alice.public_key(), bob.public_key()]) for p in plain]
    sealed = list(workers.map_batch(seal_one, jobs))
    assert len({s[-32:] for s in sealed}) == len(plain)  # a fresh data key each
    for p, s in zip(plain, sealed, strict=True):
        assert p not in s
        assert b"".join(open_record([s], [alice])) == p
        assert b"".join(open_record([s], [bob])) == p


def test_objects_encoded_in_a_worker_are_those_encoded_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medmesh.storage.batch import _encode_job, encode_object
    from medmesh.storage.uploader import StoreParams

    monkeypatch.setenv("MEDMESH_WORKERS", "1")
    params = StoreParams(k=2, n=3)
    jobs = [(i, os.urandom(900 + i), params) for i in range(workers.MIN_BATCH)]
    remote = list(workers.map_batch(_encode_job, jobs))
    for job, got in zip(jobs, remote, strict=True):
        want = encode_object(*job)
        assert (got.index, got.root, got.manifest_cid, got.salt) == (
            want.index, want.root, want.manifest_cid, want.salt
        )  # fmt: skip
        assert [b.cid for b in got.meta] == [b.cid for b in want.meta]
        assert [st.shares for st in got.stripes] == [st.shares for st in want.stripes]


def test_a_worker_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    script = (
        "import os, sys, time\n"
        "from medmesh import workers\n"
        "workers.warm()\n"
        "print(workers._get_pool().submit(os.getpid).result(), flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "MEDMESH_WORKERS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        assert worker != proc.pid and _alive(worker)
        proc.kill()  # no clean shutdown: the pool cannot stop its worker
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False

"""The embedded chain as real processes: Anvil under its supervisor, killed and restarted.

Every test starts its own chain (they stop, kill and corrupt it) and stops it by PID in a
``finally``. A write counts as acknowledged once :class:`Ledger` (with
``durable=chain.wait_durable``) has returned: such writes must survive every crash here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from medmesh.daemons import HOST, alive, port_free
from medmesh.errors import RpcUnavailableError
from medmesh.identity import Wallet
from medmesh.ledger import chains
from medmesh.ledger.chains import DEFAULT_CHAIN_ID, LocalChain, restart_delay
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Scope, kind_tag, record_id
from medmesh.ledger.deploy import ensure_deployed
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import Receipt, TxSender
from tests.integration.ledger.helpers import (
    BLOCK_TIME,
    HOUR,
    Net,
    block_number,
    connections,
    exited,
    running_net,
    stop_chain,
    wait_until,
)

pytestmark = pytest.mark.slow


def cid(n: int) -> bytes:
    """A CIDv1 (dag-pb, sha2-256) with a made-up digest."""
    return b"\x01\x70\x12\x20" + bytes([n]) * 32


def register(net: Net, *wallets: Wallet) -> None:
    """Register every wallet (in parallel: one transaction each, from its own account)."""
    ledgers = [net.ledger(w) for w in wallets]
    sent = []
    for ledger, wallet in zip(ledgers, wallets, strict=True):
        assert ledger.sender is not None
        call = ledger.registry.tx("register", wallet.encryption_public_key.to_bytes(), "")
        sent.append((ledger.sender, ledger.sender.send(call)))
    for sender, tx_hash in sent:
        (receipt,) = sender.wait([tx_hash])
        assert receipt.status == 1


class Acknowledged:
    """Anchors and grants written through a durable :class:`Ledger`, and how to check them."""

    KINDS = ("fhir:Observation", "dicom:study", "document")

    def __init__(self, net: Net) -> None:
        self.patient, self.doctor, self.insurer = net.wallets(3)
        register(net, self.doctor, self.insurer)
        ledger = net.ledger(self.patient, durable=True)
        self.expiry = int(time.time()) + HOUR
        self.cids = [cid(i + 1) for i in range(3)]
        receipts = ledger.transact_many(
            [ledger.records.anchor_call(c, k) for c, k in zip(self.cids, self.KINDS, strict=True)]
        )
        receipts += ledger.transact_many(
            [
                ledger.consent.grant_call(
                    self.doctor.address,
                    Scope.record(self.patient.address, self.cids[0]),
                    Purpose.TREATMENT,
                    self.expiry,
                ),
                ledger.consent.grant_call(
                    self.doctor.address, Scope.kind("dicom:study"), Purpose.RESEARCH, self.expiry
                ),
                ledger.consent.grant_call(
                    self.insurer.address, Scope.all(), Purpose.PAYMENT, self.expiry, b"\x07" * 32
                ),
            ]
        )
        self.receipts: list[Receipt] = receipts
        self.block = max(r.block_number for r in receipts)
        self.anchored_at = [
            int(
                ledger.rpc.call("eth_getBlockByNumber", hex(r.block_number), False)["timestamp"], 16
            )
            for r in receipts[:3]
        ]

    def check(self, ledger: Ledger) -> None:
        """Every acknowledged anchor and grant is on the chain behind ``ledger``."""
        p, doctor, insurer = self.patient.address, self.doctor.address, self.insurer.address
        for c, kind, at in zip(self.cids, self.KINDS, self.anchored_at, strict=True):
            anchor = ledger.records.anchor_of(record_id(p, c))
            assert (anchor.owner, anchor.kind, anchor.anchored_at) == (p, kind_tag(kind), at)
            assert (anchor.superseded, anchor.erased) == (False, False)
        consent = ledger.consent
        r1, r2, r3 = (record_id(p, c) for c in self.cids)
        assert consent.has_access(doctor, r1, Purpose.TREATMENT) is True
        assert consent.has_access(doctor, r1, Purpose.RESEARCH) is False
        assert consent.has_access(doctor, r2, Purpose.RESEARCH) is True
        assert consent.has_access(doctor, r2, Purpose.TREATMENT) is False
        assert consent.has_access(doctor, r3, Purpose.TREATMENT) is False
        for r in (r1, r2, r3):
            assert consent.has_access(insurer, r, Purpose.PAYMENT) is True
            assert consent.has_access(insurer, r, Purpose.TREATMENT) is False
        assert consent.grant_of(p, doctor, Scope.record(p, self.cids[0])) == (
            Purpose.TREATMENT,
            self.expiry,
        )
        assert consent.grant_of(p, doctor, Scope.kind("dicom:study")) == (
            Purpose.RESEARCH,
            self.expiry,
        )
        assert consent.grant_of(p, insurer, Scope.all()) == (Purpose.PAYMENT, self.expiry)


def test_up_status_down(tmp_path: Path) -> None:
    chain = LocalChain(tmp_path / "chain")
    root = str(chain.root)
    before = chain.status()
    assert before.to_json() == {
        "running": False,
        "rpc_url": None,
        "chain_id": None,
        "pid": None,
        "anvil_pid": None,
        "block": None,
        "durable_block": None,
        "data": root,
    }
    seen: set[int] = set()
    try:
        st = chain.up(port=0, chain_id=4242, block_time=BLOCK_TIME)
        assert st.pid is not None and st.anvil_pid is not None and st.rpc_url is not None
        seen |= {st.pid, st.anvil_pid}
        assert st.running is True
        assert st.chain_id == 4242
        assert st.rpc_url.startswith("http://127.0.0.1:")
        assert isinstance(st.block, int) and st.block >= 0
        assert alive(st.pid, root) and alive(st.anvil_pid, str(chain.state_file))
        info = json.loads(chain.info_file.read_text())
        assert info["ready"] is True
        assert (info["pid"], info["anvil_pid"], info["rpc_url"], info["chain_id"]) == (
            st.pid,
            st.anvil_pid,
            st.rpc_url,
            4242,
        )
        assert st.rpc_url == f"http://127.0.0.1:{info['port']}"
        # the supervisor keeps no connection to Anvil open: if Anvil died, an open connection
        # would hold the port and fail the restart
        assert connections(st.pid, int(info["port"])) == 0
        with Rpc(st.rpc_url) as rpc:
            assert int(rpc.call("eth_chainId"), 16) == 4242
            first = block_number(rpc)
            wait_until(lambda: block_number(rpc) >= first + 2, 10.0, "two more blocks")

        again = chain.up(port=0)  # already running: nothing new is started
        assert (again.pid, again.anvil_pid, again.rpc_url) == (st.pid, st.anvil_pid, st.rpc_url)

        # the supervisor snapshots what Anvil dumps
        durable = wait_until(chain.durable_block, 10.0, "the first durable snapshot")
        assert isinstance(durable, int)
        assert (chain.status().durable_block or 0) >= durable  # it only grows
        snapshot = chain.snapshot_file.read_bytes()
        assert json.loads(snapshot)["best_block_number"] >= durable
        # it tells a whole dump from one caught mid-write without parsing it
        assert chains._dump_block(snapshot) == json.loads(snapshot)["best_block_number"]
        # (cut after each closing brace but the last)
        cuts = [i + 1 for i, byte in enumerate(snapshot.rstrip()) if byte == ord("}")][:-1]
        assert len(cuts) > 10
        assert [chains._dump_block(snapshot[:i]) for i in [0, *cuts]] == [None] * (len(cuts) + 1)

        assert chain.down() is True
        after = chain.status()
        assert (after.running, after.rpc_url, after.pid, after.anvil_pid, after.block) == (
            False,
            None,
            None,
            None,
            None,
        )
        assert not alive(st.pid, root)
        assert not alive(st.anvil_pid, str(chain.state_file))
        info = json.loads(chain.info_file.read_text())
        assert (info["ready"], info["anvil_pid"]) == (False, None)
        assert chain.down() is False  # nothing runs any more
        with pytest.raises(RpcUnavailableError), Rpc(st.rpc_url, retries=1) as rpc:
            rpc.call("eth_chainId")

        # the port and chain id of a chain with data are kept, whatever up() is given
        restarted = chain.up(port=0, chain_id=DEFAULT_CHAIN_ID, block_time=BLOCK_TIME)
        assert restarted.pid is not None and restarted.anvil_pid is not None
        seen |= {restarted.pid, restarted.anvil_pid}
        assert (restarted.running, restarted.rpc_url, restarted.chain_id) == (
            True,
            st.rpc_url,
            4242,
        )
        assert restarted.pid != st.pid
    finally:
        stop_chain(chain, seen)
    assert chain.status().running is False


def test_restart_keeps_data_and_address_book(tmp_path: Path) -> None:
    with running_net(tmp_path / "chain") as net:
        acked = Acknowledged(net)
        assert (net.chain.durable_block() or 0) >= acked.block
        with Rpc(net.url) as rpc:
            hashes = {
                n: rpc.call("eth_getBlockByNumber", hex(n), False)["hash"] for n in (0, acked.block)
            }
        old_pid = net.status.pid

        net.close_clients()  # (see Net.close_clients)
        assert net.chain.down() is True
        assert net.chain.status().running is False

        st = net.chain.up(port=0, block_time=BLOCK_TIME)
        net.remember_pids()
        assert (st.running, st.rpc_url) == (True, net.url)
        assert st.pid != old_pid
        rpc = net.rpc()
        # the same chain: same genesis, same history, same contracts
        for n, block_hash in hashes.items():
            assert rpc.call("eth_getBlockByNumber", hex(n), False)["hash"] == block_hash
        book, deployed_now = ensure_deployed(TxSender(rpc, net.governance), net.book_path)
        assert deployed_now is False
        assert book == net.book
        acked.check(net.ledger())

        # and it takes new writes, from the same accounts (nonces continue)
        patient = net.ledger(acked.patient, durable=True)
        receipt = patient.consent.revoke(acked.insurer.address, Scope.all())
        assert receipt.block_number > acked.block
        assert (
            patient.consent.has_access(
                acked.insurer.address,
                record_id(acked.patient.address, acked.cids[0]),
                Purpose.PAYMENT,
            )
            is False
        )
        tx = rpc.call("eth_getTransactionByHash", receipt.tx_hash)
        assert int(tx["nonce"], 16) == 6  # nonces 0-5 went to the anchors and grants before


def test_the_gas_limit_holds_for_a_chain_made_with_another(tmp_path: Path) -> None:
    """Anvil keeps the block gas limit of a state it loads; the supervisor sets ours."""
    chain = LocalChain(tmp_path / "chain")
    seen: set[int] = set()

    def gas_limit_after_a_block(st: chains.ChainStatus) -> int:
        seen.update(p for p in (st.pid, st.anvil_pid) if p)
        assert st.rpc_url is not None
        with Rpc(st.rpc_url) as rpc:
            first = block_number(rpc)
            wait_until(lambda: block_number(rpc) > first, 10.0, "a new block")
            return int(rpc.call("eth_getBlockByNumber", "latest", False)["gasLimit"], 16)

    try:
        st = chain.up(port=0, block_time=BLOCK_TIME, gas_limit=30_000_000)
        assert gas_limit_after_a_block(st) == 30_000_000
        assert chain.down() is True
        st = chain.up(port=0, block_time=BLOCK_TIME)
        assert gas_limit_after_a_block(st) == chains.DEFAULT_GAS_LIMIT == 100_000_000
    finally:
        stop_chain(chain, seen)


def _wait_restarted(net: Net, old_anvil: int) -> None:
    def restarted() -> bool:
        st = net.chain.status()
        return st.anvil_pid not in (None, old_anvil) and st.block is not None

    wait_until(restarted, 20.0, "the supervisor to restart Anvil")
    net.remember_pids()


def test_killed_anvil_loses_nothing_acknowledged_and_the_indexer_follows(tmp_path: Path) -> None:
    with running_net(tmp_path / "chain") as net:
        acked = Acknowledged(net)
        patient = net.ledger(acked.patient, durable=True)
        index = Indexer(patient, f"sqlite:///{tmp_path / 'index.db'}")
        fresh = Indexer(patient, f"sqlite:///{tmp_path / 'fresh.db'}")
        try:
            index.sync()
            assert len(index.grants(patient=acked.patient.address)) == 3
            st = net.chain.status()
            assert st.anvil_pid is not None and st.pid is not None

            # the last acknowledged write
            last = patient.records.anchor(cid(4), "document")
            # then one mined but never acknowledged: it may be lost. The indexer syncs past
            # the durable block, so it may hold blocks that the restarted chain mines again
            # differently (it must notice, by the block hash at its cursor, and rebuild)
            (rushed,) = net.wallets(1)
            quick = net.ledger(rushed)
            quick.transact_many(
                [
                    quick.consent.grant_call(
                        acked.doctor.address, Scope.all(), Purpose.TREATMENT, acked.expiry
                    )
                ]
            )
            index.sync()
            net.chain.kill_anvil()
            _wait_restarted(net, st.anvil_pid)
            after = net.chain.status()
            assert after.pid == st.pid  # the supervisor itself kept running
            assert not alive(st.anvil_pid, str(net.chain.state_file))

            acked.check(net.ledger())
            anchor = patient.records.anchor_of(record_id(acked.patient.address, cid(4)))
            assert (anchor.owner, anchor.kind) == (acked.patient.address, kind_tag("document"))
            assert (net.chain.durable_block() or 0) >= last.block_number

            # new acknowledged writes after the restart, from the same account
            patient.consent.revoke(acked.insurer.address, Scope.all())
            patient.consent.grant(
                acked.insurer.address, Scope.kind("document"), Purpose.PAYMENT, acked.expiry
            )

            index.sync()
            fresh.sync()
            assert index.counts() == fresh.counts()
            p = acked.patient.address
            assert index.consent_history(p) == fresh.consent_history(p)
            assert index.records(p) == fresh.records(p)
            assert set(index.grants()) == set(fresh.grants())
            grants = {(g.grantee, g.scope, g.purposes, g.expiry) for g in index.grants(patient=p)}
            assert grants == {
                (
                    acked.doctor.address,
                    Scope.record(p, acked.cids[0]).word,
                    Purpose.TREATMENT,
                    acked.expiry,
                ),
                (
                    acked.doctor.address,
                    Scope.kind("dicom:study").word,
                    Purpose.RESEARCH,
                    acked.expiry,
                ),
                (acked.insurer.address, Scope.kind("document").word, Purpose.PAYMENT, acked.expiry),
            }
            events = [(e["event"], e["grantee"]) for e in index.consent_history(p)]
            assert events == [
                ("granted", acked.doctor.address),
                ("granted", acked.doctor.address),
                ("granted", acked.insurer.address),
                ("revoked", acked.insurer.address),
                ("granted", acked.insurer.address),
            ]
            # the unacknowledged grant is indexed exactly when the chain still has it
            survived = patient.consent.grant_of(rushed.address, acked.doctor.address, Scope.all())
            assert survived in ((Purpose.TREATMENT, acked.expiry), (Purpose(0), 0))
            assert len(index.grants(patient=rushed.address)) == (1 if survived[1] else 0)
        finally:
            index.close()
            fresh.close()


def test_supervisor_and_anvil_killed_then_up_again(tmp_path: Path) -> None:
    with running_net(tmp_path / "chain") as net:
        acked = Acknowledged(net)
        info = json.loads(net.chain.info_file.read_text())
        supervisor, anvil = int(info["pid"]), int(info["anvil_pid"])
        root, state = str(net.chain.root), str(net.chain.state_file)
        assert alive(supervisor, root) and alive(anvil, state)
        patient = net.ledger(acked.patient, durable=True)

        last = patient.records.anchor(cid(4), "document")  # acknowledged: both die right after
        net.close_clients()  # (see Net.close_clients)
        os.kill(supervisor, signal.SIGKILL)  # first, so that it cannot restart Anvil
        wait_until(lambda: exited(supervisor), 10.0, "the supervisor to die")
        os.kill(anvil, signal.SIGKILL)
        wait_until(lambda: exited(anvil), 10.0, "Anvil to die")
        assert net.chain.status().running is False
        # sockets of killed processes linger for a moment (FIN-WAIT, LAST-ACK): a restart
        # after a crash is never that quick, and up() would call the port taken meanwhile
        port = int(info["port"])
        wait_until(lambda: port_free(port, socket.SOCK_STREAM), 10.0, "the port")

        st = net.chain.up(port=0, block_time=BLOCK_TIME)
        net.remember_pids()
        assert (st.running, st.rpc_url) == (True, net.url)
        assert st.pid not in (None, supervisor) and st.anvil_pid not in (None, anvil)
        assert (st.block or 0) >= last.block_number
        acked.check(net.ledger())
        anchor = net.ledger().records.anchor_of(record_id(acked.patient.address, cid(4)))
        assert (anchor.owner, anchor.kind) == (acked.patient.address, kind_tag("document"))
        book, deployed_now = ensure_deployed(TxSender(net.rpc(), net.governance), net.book_path)
        assert (book, deployed_now) == (net.book, False)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_state_file_is_restored_from_snapshot(tmp_path: Path, damage: str) -> None:
    with running_net(tmp_path / "chain") as net:
        acked = Acknowledged(net)
        net.close_clients()  # (see Net.close_clients)
        assert net.chain.down() is True
        snapshot = json.loads(net.chain.snapshot_file.read_bytes())
        assert snapshot["best_block_number"] >= acked.block

        state = net.chain.state_file.read_bytes()
        bad = state[: len(state) // 2] if damage == "truncated" else b"\x00\xffnot json at all"
        net.chain.state_file.write_bytes(bad)
        log = net.chain.root / "supervisor.log"
        restored = "restored state.json from snapshot.json"
        assert restored not in log.read_text()

        net.chain.up(port=0, block_time=BLOCK_TIME)
        net.remember_pids()
        assert restored in log.read_text()
        acked.check(net.ledger())
        with Rpc(net.url) as rpc:
            assert block_number(rpc) >= acked.block


def test_up_right_after_down_keeps_the_port(tmp_path: Path) -> None:
    chain = LocalChain(tmp_path / "chain")
    seen: set[int] = set()
    rpc: Rpc | None = None
    try:
        st = chain.up(port=0, block_time=BLOCK_TIME)
        seen |= {p for p in (st.pid, st.anvil_pid) if p}
        assert st.rpc_url is not None
        rpc = Rpc(st.rpc_url)  # any client: requests keeps its connection alive
        block_number(rpc)
        assert chain.down() is True

        again = chain.up(port=0, block_time=BLOCK_TIME)  # the port is kept, TIME_WAIT or not
        seen |= {p for p in (again.pid, again.anvil_pid) if p}
        assert (again.running, again.rpc_url) == (True, st.rpc_url)
    finally:
        if rpc is not None:
            rpc.close()
        stop_chain(chain, seen)


def test_restart_delay_doubles_up_to_ten_seconds() -> None:
    assert [restart_delay(n) for n in range(8)] == [0, 0.5, 1, 2, 4, 8, 10, 10]
    assert restart_delay(10_000) == 10


def test_supervisor_survives_a_failed_anvil_restart(tmp_path: Path) -> None:
    chain = LocalChain(tmp_path / "chain")
    seen: set[int] = set()
    supervisor = 0
    try:
        st = chain.up(port=0, block_time=BLOCK_TIME)
        assert st.pid is not None and st.anvil_pid is not None and st.rpc_url is not None
        supervisor, anvil = st.pid, st.anvil_pid
        seen |= {supervisor, anvil}
        port = int(st.rpc_url.rsplit(":", 1)[1])

        os.kill(supervisor, signal.SIGSTOP)  # so that the port can be taken before it restarts
        os.kill(anvil, signal.SIGKILL)
        wait_until(lambda: exited(anvil), 10.0, "Anvil to die")
        wait_until(lambda: port_free(port, socket.SOCK_STREAM), 10.0, "the port")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((HOST, port))
            squatter.listen()
            os.kill(supervisor, signal.SIGCONT)
            log = chain.root / "anvil.log"
            wait_until(
                lambda: "Address already in use" in log.read_text(), 10.0, "a failed restart"
            )
        # the port is free again: a supervisor that retries brings the chain back

        def settled() -> bool:
            if exited(supervisor):
                return True
            now = chain.status()
            return now.anvil_pid not in (None, anvil) and now.block is not None

        wait_until(settled, 20.0, "the supervisor to restart Anvil or die")
        net_status = chain.status()
        seen |= {p for p in (net_status.pid, net_status.anvil_pid) if p}
        supervisor_log = (chain.root / "supervisor.log").read_text()
        assert not exited(supervisor), supervisor_log[-400:]
        assert net_status.running is True and net_status.block is not None
        assert "anvil did not start" in supervisor_log
        assert supervisor_log.count(" answers on ") >= 2
        assert connections(supervisor, port) == 0
    finally:
        if supervisor and not exited(supervisor):
            os.kill(supervisor, signal.SIGCONT)
        stop_chain(chain, seen)

"""Storage nodes let the ledger's participants write: real Anvil, the real Registry.

Nodes (the in-process :class:`LocalCluster`, and ``medmesh devnet`` processes) trust one
address and read everyone else's roles from the Registry. A wallet neither trusted nor
registered is refused (403); once it registers as a patient it is accepted within seconds;
roles that may not write, and expelled participants, are refused; a chain that does not answer
(or a Registry address without a contract) refuses with 503, never accepts. The last test runs
the commands of ``make up`` (``chain up``, then ``devnet up``) and stops the chain under the
running nodes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from medmesh.daemons import free_port
from medmesh.devnet import Devnet
from medmesh.identity import Wallet, save_wallet
from medmesh.ledger.chains import LocalChain
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Role
from medmesh.ledger.deploy import AddressBook, ensure_deployed
from medmesh.ledger.rpc import Rpc
from medmesh.ledger.tx import TxSender
from medmesh.storage.auth import body_digest, sign_request
from medmesh.storage.cid import Cid
from medmesh.storage.node.config import DEFAULT_REGISTRY_NEGATIVE_TTL
from tests.harness import LocalCluster
from tests.integration.test_cli import PASS, medmesh

pytestmark = pytest.mark.slow

FAST_TTL = 1.0  # the "fast" node reuses answers this long (both kinds)


@dataclass
class Chain:
    rpc_url: str
    book: AddressBook
    chain: LocalChain
    gov: Wallet  # deployer: governance on chain; the nodes' one trusted address

    @property
    def registry(self) -> str:
        return self.book.contracts["Registry"]

    def funded(self) -> Wallet:
        wallet = Wallet.create()
        with Rpc(self.rpc_url) as rpc:
            rpc.call("anvil_setBalance", wallet.address, hex(10**21))
        return wallet

    def ledger(self, wallet: Wallet) -> Ledger:
        return Ledger(self.rpc_url, self.book, signer=wallet, durable=self.chain.wait_durable)

    def register(self, wallet: Wallet) -> None:
        with self.ledger(wallet) as ledger:
            ledger.registry.register(wallet.encryption_public_key.to_bytes(), "")

    def roles(self, wallet: Wallet) -> Role:
        with self.ledger(self.gov) as ledger:
            return ledger.registry.roles(wallet.address)


@dataclass
class Nodes:
    default: LocalCluster  # the node defaults: 60 s / 3 s
    fast: LocalCluster  # short cache, for expulsions
    down: LocalCluster  # its registry RPC is a closed port
    no_contract: LocalCluster  # its "Registry" is an address without code


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("registry-chain")
    local = LocalChain(root / "chain")
    st = local.up(port=0)
    assert st.rpc_url
    try:
        gov = Wallet.create()
        with Rpc(st.rpc_url) as rpc:
            rpc.call("anvil_setBalance", gov.address, hex(10**21))
            book, _ = ensure_deployed(TxSender(rpc, gov), root / "addresses.json")
        yield Chain(st.rpc_url, book, local, gov)
    finally:
        local.down()


@pytest.fixture(scope="module")
def nodes(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("registry-nodes")
    trusted = [chain.gov.address]
    link: dict[str, Any] = {"registry_rpc": chain.rpc_url, "registry": chain.registry}
    closed = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    clusters: list[LocalCluster] = []
    try:
        settings: list[tuple[str, dict[str, Any]]] = [
            ("default", link),
            ("fast", {**link, "registry_ttl": FAST_TTL, "registry_negative_ttl": FAST_TTL}),
            ("down", {"registry_rpc": closed, "registry": chain.registry}),
            ("no-contract", {"registry_rpc": chain.rpc_url, "registry": chain.gov.address}),
        ]
        for name, cfg in settings:
            clusters.append(LocalCluster(root / name, 1, trusted=trusted, **cfg))
        yield Nodes(*clusters)
    finally:
        for cluster in clusters:
            cluster.close()


@dataclass
class Answer:
    status: int
    error: str | None
    retry_after: str | None


def put(url: str, wallet: Wallet, data: bytes) -> Answer:
    """A signed ``PUT /ipfs/{cid}`` of ``data`` by ``wallet``."""
    node_id = requests.get(f"{url}/node/info", timeout=10).json()["id"]
    target = f"/ipfs/{Cid.of(data)}"
    hdrs = sign_request(wallet, node_id, "PUT", target, body_digest(data))
    resp = requests.put(url + target, data=data, headers=hdrs, timeout=30)
    doc: dict[str, Any] = resp.json() if resp.content else {}
    return Answer(resp.status_code, doc.get("error"), resp.headers.get("Retry-After"))


def put_until(url: str, wallet: Wallet, data: bytes, status: int, within: float) -> float:
    """Seconds until a put of ``data`` answers ``status`` (fails after ``within``)."""
    start = time.monotonic()
    while True:
        answer = put(url, wallet, data)
        elapsed = time.monotonic() - start
        if answer.status == status:
            return elapsed
        assert elapsed < within, f"still {answer} after {elapsed:.1f} s"
        time.sleep(0.2)


def test_a_wallet_neither_trusted_nor_registered_is_refused(chain: Chain, nodes: Nodes) -> None:
    stranger = Wallet.create()
    data = b"a stranger's block"

    answer = put(nodes.default.urls[0], stranger, data)

    assert (answer.status, answer.error) == (403, "untrusted_signer")
    assert not nodes.default.holds(0, Cid.of(data))
    assert chain.roles(stranger) == Role(0)


def test_the_trusted_address_writes_whatever_its_roles(chain: Chain, nodes: Nodes) -> None:
    # the deployer holds only the governance role on chain, which may not write by itself
    assert chain.roles(chain.gov) == Role.GOVERNANCE
    for cluster in (nodes.default, nodes.down, nodes.no_contract):
        data = f"home's block for {cluster.root.name}".encode()
        assert put(cluster.urls[0], chain.gov, data).status == 201
        assert cluster.holds(0, Cid.of(data))


def test_a_new_patient_gets_in_within_seconds_of_registering(chain: Chain, nodes: Nodes) -> None:
    # Prepare: refused before registering (and the node caches that refusal)
    patient = chain.funded()
    data = b"first record of a new patient"
    url = nodes.default.urls[0]
    assert put(url, patient, data).status == 403

    # Execute
    chain.register(patient)  # returns once mined (and durable)
    waited = put_until(url, patient, data, 201, within=15)

    # Assert: no longer than the node's negative cache, plus a margin for the round trips
    assert chain.roles(patient) == Role.PATIENT
    assert waited <= DEFAULT_REGISTRY_NEGATIVE_TTL + 2
    assert nodes.default.holds(0, Cid.of(data))


@pytest.mark.parametrize(
    ("roles", "status"),
    [
        (Role.STORAGE_NODE, 403),
        (Role.INSURER | Role.INSPECTOR | Role.COMPUTE_NODE, 403),
        (Role.RESEARCHER, 201),
        (Role.PROVIDER | Role.GATEWAY, 201),
    ],
)
def test_roles_admitted_by_governance(chain: Chain, nodes: Nodes, roles: Role, status: int) -> None:
    wallet = Wallet.create()  # admitted, never registered itself
    with chain.ledger(chain.gov) as gov:
        gov.registry.admit(wallet.address, roles)
    data = f"written by {roles!r}".encode()

    answer = put(nodes.default.urls[0], wallet, data)

    assert answer.status == status, answer
    assert nodes.default.holds(0, Cid.of(data)) is (status == 201)


def test_an_expelled_patient_is_refused(chain: Chain, nodes: Nodes) -> None:
    # Prepare: a patient writing to the fast node
    patient = chain.funded()
    chain.register(patient)
    put_until(nodes.fast.urls[0], patient, b"before the expulsion", 201, within=10)

    # Execute
    with chain.ledger(chain.gov) as gov:
        gov.registry.expel(patient.address, Role.PATIENT)

    # Assert: the fast node refuses once its cached answer expires; a node that had no
    # answer cached refuses at once
    assert chain.roles(patient) == Role(0)
    waited = put_until(nodes.fast.urls[0], patient, b"after the expulsion", 403, within=10)
    assert waited <= FAST_TTL + 2
    # (puts made while the fast node's "yes" was still cached were accepted: that is the TTL)
    elsewhere = b"after the expulsion, elsewhere"
    answer = put(nodes.default.urls[0], patient, elsewhere)
    assert (answer.status, answer.error) == (403, "untrusted_signer")
    assert not nodes.default.holds(0, Cid.of(elsewhere))


def test_an_unreachable_chain_refuses_with_503(chain: Chain, nodes: Nodes) -> None:
    patient = chain.funded()
    chain.register(patient)
    data = b"nobody can tell whether this writer may write"

    answers = [put(nodes.down.urls[0], patient, data) for _ in range(3)]

    for answer in answers:
        assert (answer.status, answer.error) == (503, "registry_unavailable")
        assert answer.retry_after is not None and int(answer.retry_after) > 0
    assert not nodes.down.holds(0, Cid.of(data))
    # the same patient writes where the Registry can be read
    assert put_until(nodes.default.urls[0], patient, data, 201, within=10) >= 0


def test_a_registry_address_without_a_contract_refuses_with_503(chain: Chain, nodes: Nodes) -> None:
    patient = chain.funded()
    chain.register(patient)
    data = b"the node's address book is wrong"

    answer = put(nodes.no_contract.urls[0], patient, data)

    assert (answer.status, answer.error) == (503, "registry_unavailable")
    assert not nodes.no_contract.holds(0, Cid.of(data))


# -- the devnet, as `make up` starts it ------------------------------------------------------------
def _node_pid(home: Path) -> int:
    doc = json.loads(medmesh(home, "devnet", "status", "--json").stdout)
    (node,) = doc["nodes"]
    assert node["running"]
    return int(node["pid"])


def test_devnet_nodes_take_writers_from_the_home_chain(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    try:
        # Execute: no chain yet; the nodes trust the home wallet only
        first = json.loads(
            medmesh(home, "devnet", "up", "--nodes", "1", "--base-port", "0", "--json").stdout
        )
        url = first["nodes"][0]["url"]
        pid_before = _node_pid(home)
        # Assert
        assert first["registry"] is None

        # Execute: `make up` order from here: chain up, then devnet up
        medmesh(home, "chain", "up", "--port", "0")
        second = json.loads(
            medmesh(home, "devnet", "up", "--nodes", "1", "--base-port", "0", "--json").stdout
        )
        book = AddressBook.load(home / "addresses.json")
        rpc_url = json.loads((home / "chain" / "chain.json").read_text())["rpc_url"]

        # Assert: the node was restarted with the home's Registry
        assert second["registry"] == {
            "rpc_url": rpc_url,
            "address": book.contracts["Registry"],
            "running": True,
        }
        assert second["nodes"][0]["url"] == url
        assert _node_pid(home) != pid_before
        saved = json.loads((home / "devnet" / "node-0" / "node.json").read_text())
        assert (saved["registry_rpc"], saved["registry"]) == (rpc_url, book.contracts["Registry"])

        # Execute / Assert: a patient created after the network started gets in
        local = LocalChain(home / "chain")
        net = Chain(rpc_url, book, local, Wallet.create())
        patient, other = net.funded(), net.funded()
        stranger = Wallet.create()
        assert put(url, patient, b"before registering").status == 403
        net.register(patient)
        net.register(other)
        put_until(url, patient, b"a patient's record", 201, within=10)
        assert put(url, stranger, b"a stranger's record").status == 403

        # Execute: the chain stops under the running node
        medmesh(home, "chain", "down")

        # Assert: a registered participant the node has not asked about is refused, not
        # accepted; the one it asked about a moment ago still has its cached answer (60 s)
        answer = put(url, other, b"written while the chain is down")
        assert (answer.status, answer.error) == (503, "registry_unavailable")
        assert put(url, patient, b"cached while the chain is down").status == 201
        assert put(url, Wallet.create(), b"a new stranger").status == 503

        # Execute / Assert: devnet up with the chain down keeps the registry wiring, warns
        third = medmesh(home, "devnet", "up", "--nodes", "1", "--base-port", "0", "--json")
        assert json.loads(third.stdout)["registry"]["running"] is False
        assert "not running" in third.stderr
    finally:
        Devnet(home / "devnet").down()
        medmesh(home, "chain", "down", check=False)

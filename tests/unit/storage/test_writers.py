"""Who may write to a storage node: trusted addresses, or writers on the ledger's Registry.

The cache, single flight and failure rules of :class:`WriterPolicy` run against fake role
lookups and a fake clock; :class:`RegistryRoles` against a small JSON-RPC server on loopback;
the node's HTTP answers (403, 503 + Retry-After, nonce not spent) with ``make_app``.
Real Anvil and the real Registry are in ``tests/integration/test_registry_writers.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from medmesh.daemons import free_port
from medmesh.errors import ConfigError, LedgerError, RpcUnavailableError, UntrustedSignerError
from medmesh.identity import Wallet
from medmesh.ledger.contracts import Role
from medmesh.storage.auth import body_digest, sign_request
from medmesh.storage.cid import Cid
from medmesh.storage.node.config import NodeConfig
from medmesh.storage.node.http import make_app
from medmesh.storage.node.service import NodeService
from medmesh.storage.node.writers import (
    RETRY_AFTER,
    WRITER_ROLES,
    RegistryRoles,
    RoleLookup,
    StaticRoles,
    WriterCheckUnavailableError,
    WriterPolicy,
    writer_policy,
)

A = "0x" + "11" * 20
B = "0x" + "22" * 20
C = "0x" + "33" * 20
D = "0x" + "44" * 20
HOME = "0x" + "aa" * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Blocking(RoleLookup):
    """Lookups that wait for :meth:`release`; counts calls and peak concurrency."""

    def __init__(self, roles: int = int(Role.PATIENT)) -> None:
        self.result = roles
        self.calls: list[str] = []
        self.active = 0
        self.peak = 0
        self.gate = asyncio.Event()

    async def roles(self, address: str) -> int:
        self.calls.append(address)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        return self.result


class Failing(RoleLookup):
    def __init__(self, exc: Exception | None = None) -> None:
        self.exc = exc or RpcUnavailableError("the chain at http://127.0.0.1:1 does not answer")
        self.calls = 0

    async def roles(self, address: str) -> int:
        self.calls += 1
        raise self.exc


def cs(addr: str) -> str:
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(addr))


async def outcome(policy: WriterPolicy, addr: str) -> str:
    try:
        await policy.authorize(cs(addr))
    except UntrustedSignerError:
        return "refused"
    except WriterCheckUnavailableError:
        return "unavailable"
    return "accepted"


# -- roles -------------------------------------------------------------------------------------
def test_writer_roles_are_patient_provider_researcher_gateway() -> None:
    assert Role(WRITER_ROLES) == Role.PATIENT | Role.PROVIDER | Role.RESEARCHER | Role.GATEWAY


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (Role.PATIENT, "accepted"),
        (Role.PROVIDER, "accepted"),
        (Role.RESEARCHER, "accepted"),
        (Role.GATEWAY, "accepted"),
        (Role.STORAGE_NODE | Role.INSURER | Role.PROVIDER, "accepted"),
        (Role(0), "refused"),
        (Role.STORAGE_NODE, "refused"),
        (Role.COMPUTE_NODE, "refused"),
        (Role.INSURER, "refused"),
        (Role.INSPECTOR, "refused"),
        (Role.GOVERNANCE, "refused"),
        (Role.STORAGE_NODE | Role.COMPUTE_NODE | Role.INSURER | Role.INSPECTOR, "refused"),
    ],
)
def test_only_writer_roles_may_write(roles: Role, expected: str) -> None:
    policy = WriterPolicy(registry=StaticRoles({A: int(roles)}))
    assert asyncio.run(outcome(policy, A)) == expected


def test_trusted_writes_without_any_lookup_and_others_need_the_registry() -> None:
    lookup = StaticRoles({A: int(Role.PATIENT)})
    with_registry = WriterPolicy(trusted=[HOME.lower()], registry=lookup)
    without = WriterPolicy(trusted=[HOME])

    async def run() -> list[str]:
        return [
            await outcome(with_registry, HOME),
            await outcome(with_registry, A),
            await outcome(with_registry, B),
            await outcome(without, HOME),
            await outcome(without, A),
        ]

    assert asyncio.run(run()) == ["accepted", "accepted", "refused", "accepted", "refused"]
    assert lookup.asked == [cs(A), cs(B)]


def test_a_trusted_address_writes_while_the_chain_is_down() -> None:
    failing = Failing()
    policy = WriterPolicy(trusted=[HOME], registry=failing)
    assert asyncio.run(outcome(policy, HOME)) == "accepted"
    assert asyncio.run(outcome(policy, A)) == "unavailable"
    assert failing.calls == 1


# -- cache -------------------------------------------------------------------------------------
def test_positive_answers_are_reused_for_the_positive_ttl_then_asked_again() -> None:
    clock = Clock()
    lookup = StaticRoles({A: int(Role.PATIENT)})
    policy = WriterPolicy(registry=lookup, positive_ttl=60, negative_ttl=3, clock=clock)

    async def run() -> list[str]:
        out = [await outcome(policy, A)]
        lookup.table[cs(A)] = 0  # expelled on chain
        clock.now += 59.9
        out.append(await outcome(policy, A))  # still the cached "may write"
        clock.now += 0.2
        out.append(await outcome(policy, A))  # expired: asked again
        return out

    assert asyncio.run(run()) == ["accepted", "accepted", "refused"]
    assert lookup.asked == [cs(A), cs(A)]
    assert policy.hits == 1 and policy.lookups == 2


def test_negative_answers_are_reused_only_for_the_negative_ttl() -> None:
    clock = Clock()
    lookup = StaticRoles()
    policy = WriterPolicy(registry=lookup, positive_ttl=60, negative_ttl=3, clock=clock)

    async def run() -> list[str]:
        out = [await outcome(policy, A)]
        lookup.table[cs(A)] = int(Role.PATIENT)  # registers
        clock.now += 2.9
        out.append(await outcome(policy, A))  # the refusal is still cached
        clock.now += 0.2
        out.append(await outcome(policy, A))  # asked again: now a patient
        clock.now += 30
        out.append(await outcome(policy, A))  # cached positive
        return out

    assert asyncio.run(run()) == ["refused", "refused", "accepted", "accepted"]
    assert len(lookup.asked) == 2


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    lookup = StaticRoles({a: int(Role.PATIENT) for a in (A, B, C, D)})
    policy = WriterPolicy(registry=lookup, max_entries=3, clock=Clock())

    async def run() -> None:
        for addr in (A, B, C):
            await outcome(policy, addr)
        await outcome(policy, A)  # A is now the most recently used: B is the oldest
        await outcome(policy, D)  # evicts B
        assert policy.cached == 3
        lookup.asked.clear()
        for addr in (A, C, D, B):
            await outcome(policy, addr)

    asyncio.run(run())
    assert lookup.asked == [cs(B)]  # only the evicted address is asked again
    assert policy.cached == 3


def test_a_crowd_of_signers_keeps_the_cache_at_its_bound() -> None:
    lookup = StaticRoles()
    policy = WriterPolicy(registry=lookup, max_entries=100, clock=Clock())

    async def run() -> None:
        for i in range(1000):
            await outcome(policy, f"0x{i:040x}")

    asyncio.run(run())
    assert policy.cached == 100
    assert len(lookup.asked) == 1000


# -- single flight -----------------------------------------------------------------------------
def test_one_lookup_in_flight_per_address() -> None:
    lookup = Blocking()
    policy = WriterPolicy(registry=lookup)

    async def run() -> list[str]:
        tasks = [asyncio.ensure_future(outcome(policy, A)) for _ in range(20)]
        tasks += [asyncio.ensure_future(outcome(policy, B)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert sorted(lookup.calls) == sorted([cs(A), cs(B)])
        lookup.gate.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == ["accepted"] * 25
    assert policy.lookups == 2


def test_lookups_in_flight_are_bounded() -> None:
    lookup = Blocking()
    policy = WriterPolicy(registry=lookup, max_lookups=3)
    addrs = [f"0x{i:040x}" for i in range(1, 11)]

    async def run() -> list[str]:
        tasks = [asyncio.ensure_future(outcome(policy, a)) for a in addrs]
        await asyncio.sleep(0.05)
        assert lookup.active == 3
        lookup.gate.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == ["accepted"] * 10
    assert lookup.peak == 3
    assert len(lookup.calls) == 10


def test_a_waiter_that_leaves_does_not_cancel_the_lookup_of_the_others() -> None:
    lookup = Blocking()
    policy = WriterPolicy(registry=lookup)

    async def run() -> tuple[bool, str]:
        first = asyncio.ensure_future(outcome(policy, A))
        second = asyncio.ensure_future(outcome(policy, A))
        await asyncio.sleep(0.01)
        first.cancel()  # its client hung up
        await asyncio.sleep(0.01)
        lookup.gate.set()
        return first.cancelled(), await second

    assert asyncio.run(run()) == (True, "accepted")
    assert len(lookup.calls) == 1


# -- failing closed ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc",
    [
        RpcUnavailableError("the chain does not answer"),
        LedgerError("no Registry answer"),
        RuntimeError("a bug in a lookup"),
    ],
)
def test_a_failed_lookup_refuses_and_is_not_cached(exc: Exception) -> None:
    clock = Clock()
    failing = Failing(exc)
    policy = WriterPolicy(registry=failing, retry_after=2, clock=clock)

    async def run() -> list[str]:
        out = [await outcome(policy, A), await outcome(policy, B)]  # B fails fast
        clock.now += 2.1
        out.append(await outcome(policy, A))  # asked again
        return out

    assert asyncio.run(run()) == ["unavailable"] * 3
    assert failing.calls == 2
    assert policy.cached == 0 and policy.failures == 2


def test_the_chain_coming_back_lets_writers_in_again() -> None:
    clock = Clock()
    lookup = StaticRoles({A: int(Role.PATIENT)})
    failing = Failing()
    policy = WriterPolicy(registry=failing, retry_after=2, clock=clock)

    async def run() -> list[str]:
        out = [await outcome(policy, A)]
        policy.registry = lookup
        out.append(await outcome(policy, A))  # within retry_after: still refused at once
        clock.now += 2.1
        out.append(await outcome(policy, A))
        return out

    assert asyncio.run(run()) == ["unavailable", "unavailable", "accepted"]
    assert lookup.asked == [cs(A)]


def test_an_expired_positive_answer_is_not_reused_while_the_chain_is_down() -> None:
    clock = Clock()
    lookup = StaticRoles({A: int(Role.PATIENT)})
    policy = WriterPolicy(registry=lookup, positive_ttl=60, clock=clock)

    async def run() -> list[str]:
        out = [await outcome(policy, A)]
        policy.registry = Failing()
        clock.now += 30
        out.append(await outcome(policy, A))  # cached, no lookup needed
        clock.now += 31
        out.append(await outcome(policy, A))  # expired, the chain is down: refused
        return out

    assert asyncio.run(run()) == ["accepted", "accepted", "unavailable"]


# -- RegistryRoles over JSON-RPC ---------------------------------------------------------------
@asynccontextmanager
async def rpc_server(
    answer: Callable[[dict[str, Any]], Any],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        seen.append(doc)
        reply = answer(doc)
        if isinstance(reply, web.StreamResponse):
            return reply
        return web.json_response(reply)

    app = web.Application()
    app.router.add_post("/", handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        yield str(server.make_url("/")), seen


REGISTRY = "0x" + "5f" * 20


def test_registry_roles_sends_an_eth_call_to_roles_and_decodes_the_word() -> None:
    def answer(doc: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": doc["id"], "result": "0x" + f"{258:064x}"}

    async def run() -> tuple[int, list[dict[str, Any]]]:
        async with rpc_server(answer) as (url, seen):
            lookup = RegistryRoles(url, REGISTRY)
            try:
                return await lookup.roles(cs(A)), seen
            finally:
                await lookup.aclose()

    roles, seen = asyncio.run(run())
    assert roles == 258
    (call,) = seen
    assert call["method"] == "eth_call"
    target, block = call["params"]
    assert block == "latest"
    assert target["to"] == cs(REGISTRY)
    # roles(address): selector 0x99374642, then the address as one 32-byte word
    assert target["data"] == "0x99374642" + "00" * 12 + "11" * 20


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ({"jsonrpc": "2.0", "id": 1, "result": "0x"}, "no Registry answer"),
        ({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "boom"}}, "boom"),
        ({"jsonrpc": "2.0", "id": 1, "result": None}, "no Registry answer"),
        (web.Response(status=502, text="bad gateway"), "HTTP 502"),
        (web.Response(status=200, text="<html>"), "without JSON"),
    ],
)
def test_registry_roles_turns_bad_answers_into_ledger_errors(reply: Any, match: str) -> None:
    async def run() -> None:
        async with rpc_server(lambda doc: reply) as (url, _):
            lookup = RegistryRoles(url, REGISTRY)
            try:
                await lookup.roles(cs(A))
            finally:
                await lookup.aclose()

    with pytest.raises(LedgerError, match=match):
        asyncio.run(run())


def test_registry_roles_of_a_closed_port_is_rpc_unavailable() -> None:
    import socket

    url = f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"

    async def run() -> None:
        lookup = RegistryRoles(url, REGISTRY, timeout=2.0)
        try:
            await lookup.roles(cs(A))
        finally:
            await lookup.aclose()

    with pytest.raises(RpcUnavailableError):
        asyncio.run(run())


# -- config ------------------------------------------------------------------------------------
def test_config_registry_options(tmp_path: Path) -> None:
    cfg = NodeConfig(data=str(tmp_path), registry_rpc="http://127.0.0.1:8545", registry=REGISTRY)
    assert cfg.registry == cs(REGISTRY)
    assert (cfg.registry_ttl, cfg.registry_negative_ttl) == (60.0, 3.0)
    cfg.save()
    back = NodeConfig.load(tmp_path)
    assert (back.registry_rpc, back.registry) == ("http://127.0.0.1:8545", cs(REGISTRY))
    cleared = NodeConfig.load(tmp_path, registry_rpc="", registry="")
    assert (cleared.registry_rpc, cleared.registry) == ("", "")
    policy = writer_policy(back)
    assert isinstance(policy.registry, RegistryRoles)
    assert writer_policy(cleared).registry is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"registry_rpc": "http://127.0.0.1:8545"}, "go together"),
        ({"registry": REGISTRY}, "go together"),
        ({"registry_rpc": "http://x", "registry": "registry"}, "Registry contract"),
        ({"registry_rpc": "127.0.0.1:8545", "registry": REGISTRY}, "http"),
        ({"registry_ttl": -1}, "registry_ttl"),
        ({"registry_negative_ttl": "3"}, "registry_negative_ttl"),
    ],
)
def test_config_refuses_bad_registry_settings(tmp_path: Path, kw: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig(data=str(tmp_path), **kw)


# -- over HTTP ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patient() -> Wallet:
    return Wallet.create()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[NodeService]:
    svc = NodeService(NodeConfig(data=str(tmp_path / "node"), trusted=(HOME,)))
    try:
        yield svc
    finally:
        svc.close()


def _put_headers(wallet: Wallet, service: NodeService, data: bytes) -> tuple[str, dict[str, str]]:
    target = f"/ipfs/{Cid.of(data)}"
    return target, sign_request(wallet, service.node_id, "PUT", target, body_digest(data))


async def _put(client: TestClient[Any, Any], target: str, hdrs: dict[str, str], data: bytes) -> Any:
    async with client.put(target, data=data, headers=hdrs) as resp:
        return resp.status, resp.headers.get("Retry-After"), json.loads(await resp.read() or b"{}")


def serve(
    service: NodeService,
    policy: WriterPolicy,
    body: Callable[[TestClient[Any, Any]], Awaitable[Any]],
) -> Any:
    async def run() -> Any:
        app = make_app(service, writers=policy)
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            return await body(client)

    return asyncio.run(run())


def test_http_registered_patient_201_stranger_403(service: NodeService, patient: Wallet) -> None:
    stranger = Wallet.create()
    policy = WriterPolicy([HOME], StaticRoles({patient.address: int(Role.PATIENT)}))
    data = b"a patient's ciphertext"

    async def body(client: TestClient[Any, Any]) -> list[Any]:
        return [
            await _put(client, *_put_headers(stranger, service, data), data),
            await _put(client, *_put_headers(patient, service, data), data),
        ]

    refused, accepted = serve(service, policy, body)
    assert refused[0] == 403 and refused[2]["error"] == "untrusted_signer"
    assert accepted[0] == 201
    assert service.store.has(Cid.of(data))


def test_http_chain_down_is_503_with_retry_after_and_the_nonce_is_not_spent(
    service: NodeService, patient: Wallet
) -> None:
    failing = Failing()
    policy = WriterPolicy([HOME], failing, retry_after=0.2)
    data = b"written once the chain is back"
    target, hdrs = _put_headers(patient, service, data)

    async def body(client: TestClient[Any, Any]) -> list[Any]:
        first = await _put(client, target, hdrs, data)
        policy.registry = StaticRoles({patient.address: int(Role.PATIENT)})
        await asyncio.sleep(0.3)
        second = await _put(client, target, hdrs, data)  # the same signed request, retried
        return [first, second]

    (status, retry, doc), second = serve(service, policy, body)
    assert status == 503
    assert retry == str(RETRY_AFTER)
    assert doc == {
        "error": "registry_unavailable",
        "message": "This node cannot check the ledger registry right now; try again later.",
    }
    assert "127.0.0.1:1" not in json.dumps(doc)  # the internal detail stays in the log
    assert second[0] == 201
    assert failing.calls == 1


def test_http_refused_writer_stores_nothing_on_any_write_route(service: NodeService) -> None:
    stranger = Wallet.create()
    policy = WriterPolicy([HOME], StaticRoles())
    cid = Cid.of(b"x")

    async def body(client: TestClient[Any, Any]) -> list[int]:
        statuses = []
        for method, target, payload in [
            ("DELETE", f"/ipfs/{cid}", b""),
            ("POST", "/blocks", b"not a car"),
            ("POST", "/objects", b"{}"),
            ("POST", "/objects/batch", b"{}"),
            ("DELETE", f"/objects/{cid}", b""),
        ]:
            hdrs = sign_request(stranger, service.node_id, method, target, body_digest(payload))
            async with client.request(method, target, data=payload or None, headers=hdrs) as r:
                statuses.append(r.status)
        return statuses

    assert serve(service, policy, body) == [403] * 5

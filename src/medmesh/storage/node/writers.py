"""Who may write to a storage node: its trusted addresses, or participants of the ledger.

A signed write (block upload, object registration, erase; see :mod:`medmesh.storage.auth`) is
accepted when its recovered signer is

1. in the node's ``trusted`` addresses (``--trust``): checked first, without any I/O; or
2. registered on the ledger with at least one of the roles patient, provider, researcher or
   gateway (:data:`WRITER_ROLES`), as ``Registry.roles(signer)`` says: one read-only
   ``eth_call`` at the latest block (``--registry-rpc URL --registry ADDRESS``).

Storage nodes, compute nodes, insurers, inspectors and governance alone may not write; neither
may an address with no role (never registered, or expelled from every role).

**Cache.** Answers are kept per address in an LRU of ``max_entries``: "may write" for
``positive_ttl`` (default 60 s), "may not" for ``negative_ttl`` (default 3 s), so a participant
that has just registered gets in within seconds of its block, and the chain sees at most one
lookup per writer per minute. The price: an expelled participant keeps writing for up to
``positive_ttl``. One lookup per address is in flight at a time (requests by the same signer
wait for it) and at most :data:`MAX_LOOKUPS` run at once. Lookups are asynchronous HTTP calls
on the node's event loop, so a slow chain delays only the writes waiting for it.

**Failing closed.** When the chain cannot answer (no connection, a timeout, a JSON-RPC error,
or an answer that is not a role word, such as the empty answer of an address without a
contract) the write is refused with :class:`WriterCheckUnavailableError`: HTTP 503 with
``Retry-After``, never accepted. 503 rather than 403 because the signer may well be allowed:
a client treats the node as unavailable for now and places the data elsewhere. For
:data:`RETRY_AFTER` seconds after a failure, lookups of uncached addresses fail at once instead
of piling up on a dead endpoint. An expired answer is never reused; trusted addresses keep
writing whatever the chain does.

Errors (``medmesh.errors`` has the rest of the tree)::

    AuthError
    ├── UntrustedSignerError            403: neither trusted nor a writer on the Registry
    └── WriterCheckUnavailableError     503: the Registry could not be read; try again later

Shape: :class:`RoleLookup` (ABC) with :class:`StaticRoles` (in memory) and
:class:`RegistryRoles` (JSON-RPC); :class:`WriterPolicy` decides; :func:`writer_policy` builds
one from a :class:`~medmesh.storage.node.config.NodeConfig`.

Example::

    policy = WriterPolicy(trusted={home}, registry=RegistryRoles(rpc_url, registry_address))
    await policy.authorize(signer)  # returns, or raises one of the errors above
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from medmesh.errors import AuthError, LedgerError, RpcUnavailableError, UntrustedSignerError
from medmesh.storage.node.config import (
    DEFAULT_REGISTRY_NEGATIVE_TTL,
    DEFAULT_REGISTRY_TTL,
    NodeConfig,
)

__all__ = [
    "MAX_LOOKUPS",
    "RETRY_AFTER",
    "WRITER_ROLES",
    "RegistryRoles",
    "RoleLookup",
    "StaticRoles",
    "WriterCheckUnavailableError",
    "WriterPolicy",
    "writer_policy",
]

#: ``Registry.Role`` flags that may write: PATIENT | PROVIDER | RESEARCHER | GATEWAY.
#: (``medmesh.ledger.contracts.Role`` has them by name; this module does not import the
#: ledger's web3 machinery, and a test checks the two agree.)
WRITER_ROLES: Final = 1 | 2 | 4 | 256
#: concurrent Registry lookups per node
MAX_LOOKUPS: Final = 16
#: seconds lookups fail at once after a failed one; also the 503's ``Retry-After``
RETRY_AFTER: Final = 2
#: addresses whose answer is cached
MAX_ENTRIES: Final = 10_000
#: seconds one Registry call may take (connect within 2)
LOOKUP_TIMEOUT: Final = 5.0
_ROLES_SELECTOR: Final = keccak(text="roles(address)")[:4]

log = logging.getLogger(__name__)


class WriterCheckUnavailableError(AuthError):
    """This node cannot check the ledger registry right now; try again later."""

    code = "registry_unavailable"
    retry_after = RETRY_AFTER


# -- role lookups ------------------------------------------------------------------------------
class RoleLookup(ABC):
    """Where a node reads a participant's roles."""

    @abstractmethod
    async def roles(self, address: str) -> int:
        """The ``Registry.Role`` flags of ``address`` (0 if it has none).

        Parameters
        ----------
        address : str
            A checksummed Ethereum address.

        Returns
        -------
        int
            The role flags.

        Raises
        ------
        LedgerError
            The roles could not be read (:class:`RpcUnavailableError` if the endpoint did
            not answer). The caller refuses the write.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections (called when the node's server stops)."""


class StaticRoles(RoleLookup):
    """Roles from a mapping (tests, and nodes of a fixed membership); changes show at once."""

    def __init__(self, roles: Mapping[str, int] | None = None) -> None:
        self.table: dict[str, int] = {
            to_checksum_address(a): int(r) for a, r in (roles or {}).items()
        }
        #: addresses looked up, in order
        self.asked: list[str] = []

    async def roles(self, address: str) -> int:
        self.asked.append(address)
        return self.table.get(to_checksum_address(address), 0)


class RegistryRoles(RoleLookup):
    """``Registry.roles(address)`` by ``eth_call`` over JSON-RPC (aiohttp, non-blocking)."""

    def __init__(self, rpc_url: str, registry: str, *, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.rpc_url = rpc_url
        self.registry = to_checksum_address(registry)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # proxies from the environment, as medmesh.ledger.rpc.Rpc does
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(2.0, self.timeout)),
                trust_env=True,
            )
        return self._session

    async def roles(self, address: str) -> int:
        data = _ROLES_SELECTOR + bytes(12) + bytes.fromhex(to_checksum_address(address)[2:])
        body = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "eth_call",
            "params": [{"to": self.registry, "data": "0x" + data.hex()}, "latest"],
        }
        try:
            async with self._client().post(self.rpc_url, json=body) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RpcUnavailableError(
                f"the chain at {self.rpc_url} does not answer ({type(exc).__name__})"
            ) from exc
        if status != 200:
            raise RpcUnavailableError(f"the chain at {self.rpc_url} answered HTTP {status}")
        return _decode_roles(raw, self.rpc_url, self.registry)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _decode_roles(raw: bytes, url: str, registry: str) -> int:
    try:
        doc: Any = json.loads(raw)
    except ValueError as exc:
        raise LedgerError(f"the chain at {url} answered without JSON") from exc
    if not isinstance(doc, dict):
        raise LedgerError(f"malformed JSON-RPC answer from {url}")
    if doc.get("error") is not None:
        err = doc["error"]
        message = err.get("message", "") if isinstance(err, dict) else str(err)
        raise LedgerError(f"the chain at {url} refused Registry.roles: {message}")
    result = doc.get("result")
    # a uint256 is one 32-byte word; "0x" means no contract at the address (wrong book?)
    if not isinstance(result, str) or not result.startswith("0x") or len(result) != 66:
        raise LedgerError(f"no Registry answer at {registry} on {url} (is it deployed there?)")
    try:
        return int(result, 16)
    except ValueError as exc:
        raise LedgerError(f"malformed Registry answer from {url}") from exc


# -- the decision ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Answer:
    allowed: bool
    expires: float


class WriterPolicy:
    """Decides whether a signer may write: ``trusted``, else a writer role on ``registry``.

    Without ``registry`` only ``trusted`` may write. See the module docstring for the cache
    and the failure rules. ``clock`` is monotonic seconds (tests pass a fake one). Use it from
    one event loop.
    """

    def __init__(
        self,
        trusted: Collection[str] = (),
        registry: RoleLookup | None = None,
        *,
        positive_ttl: float = DEFAULT_REGISTRY_TTL,
        negative_ttl: float = DEFAULT_REGISTRY_NEGATIVE_TTL,
        max_entries: int = MAX_ENTRIES,
        retry_after: float = RETRY_AFTER,
        max_lookups: int = MAX_LOOKUPS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_lookups < 1:
            raise ValueError("max_entries and max_lookups must be at least 1")
        self.trusted = frozenset(to_checksum_address(a) for a in trusted)
        self.registry = registry
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.retry_after = retry_after
        self._clock = clock
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._gate = asyncio.Semaphore(max_lookups)
        self._down_until = float("-inf")
        #: Registry lookups made, answered from the cache, and failed
        self.lookups = 0
        self.hits = 0
        self.failures = 0

    @property
    def cached(self) -> int:
        """Addresses with a cached answer (expired ones included until evicted)."""
        return len(self._cache)

    async def authorize(self, signer: str) -> None:
        """Return if ``signer`` (checksummed) may write; raise otherwise.

        Raises
        ------
        UntrustedSignerError
            The signer is neither trusted nor a writer on the Registry (HTTP 403).
        WriterCheckUnavailableError
            The Registry could not be read (HTTP 503): refused, not accepted.
        """
        if signer in self.trusted:
            return
        if self.registry is None:
            raise UntrustedSignerError("request signer is not trusted by this node")
        if not await self._allowed(signer):
            raise UntrustedSignerError(
                "request signer is neither trusted by this node nor a participant of the "
                "ledger with a role that may write"
            )

    async def _allowed(self, signer: str) -> bool:
        now = self._clock()
        answer = self._cache.get(signer)
        if answer is not None:
            if answer.expires > now:
                self._cache.move_to_end(signer)
                self.hits += 1
                return answer.allowed
            del self._cache[signer]  # never reuse an expired answer, even if the chain is down
        pending = self._inflight.get(signer)
        if pending is None:
            if now < self._down_until:
                raise WriterCheckUnavailableError()
            pending = asyncio.ensure_future(self._lookup(signer))
            self._inflight[signer] = pending
            pending.add_done_callback(lambda fut: self._settled(signer, fut))
        # shield: a client that hangs up must not cancel the lookup others are waiting for
        return await asyncio.shield(pending)

    def _settled(self, signer: str, fut: asyncio.Future[bool]) -> None:
        if self._inflight.get(signer) is fut:
            del self._inflight[signer]
        if not fut.cancelled():
            fut.exception()  # retrieved: no "exception was never retrieved" if all waiters left

    async def _lookup(self, signer: str) -> bool:
        assert self.registry is not None
        async with self._gate:
            if self._clock() < self._down_until:  # another lookup failed while we queued
                raise WriterCheckUnavailableError()
            self.lookups += 1
            try:
                roles = await self.registry.roles(signer)
            except Exception as exc:  # any failure refuses the write: never accept on error
                self.failures += 1
                self._down_until = self._clock() + self.retry_after
                detail = exc.message if isinstance(exc, LedgerError) else repr(exc)
                log.warning("cannot read writer roles from the registry: %s", detail)
                raise WriterCheckUnavailableError() from exc
        allowed = bool(int(roles) & WRITER_ROLES)
        ttl = self.positive_ttl if allowed else self.negative_ttl
        self._cache[signer] = _Answer(allowed, self._clock() + ttl)
        self._cache.move_to_end(signer)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return allowed

    async def aclose(self) -> None:
        """Release the lookup's connections."""
        if self.registry is not None:
            await self.registry.aclose()


def writer_policy(config: NodeConfig) -> WriterPolicy:
    """The policy a node's settings describe: ``trusted``, plus the Registry if configured."""
    registry = RegistryRoles(config.registry_rpc, config.registry) if config.registry_rpc else None
    return WriterPolicy(
        config.trusted,
        registry,
        positive_ttl=config.registry_ttl,
        negative_ttl=config.registry_negative_ttl,
    )

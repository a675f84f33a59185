"""A small Ethereum JSON-RPC client: batches, typed errors, retries where they are safe.

web3.py encodes and decodes (see :mod:`medmesh.ledger.contracts`); this module only moves
JSON-RPC messages, because the ledger needs two things web3's providers make awkward: batches
(hundreds of signed transactions or receipt polls in one HTTP request) and one clear error for
each way a call can fail:

- the endpoint does not answer → :class:`RpcUnavailableError`, after ``retries`` attempts
  (every method we send is safe to repeat: reads, and raw transactions, which the node
  recognises as already known);
- a call reverts → :class:`RevertError` with the decoded reason (``Error(string)`` or
  ``Panic(uint256)``);
- anything else the node refuses → :class:`LedgerError` with the node's message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import requests
from eth_abi.abi import decode as abi_decode
from requests.adapters import HTTPAdapter

from medmesh.errors import LedgerError, RevertError, RpcUnavailableError

__all__ = ["AsyncRpc", "Rpc", "RpcCallError", "decode_revert"]

# a batch is sent in as many HTTP requests as it takes to keep each under this size: Anvil
# refuses a body over 2 MiB ("Invalid request"), e.g. 20 anchor_many transactions
MAX_REQUEST_BYTES: Final = 1 << 20
_ERROR_SELECTOR: Final = bytes.fromhex("08c379a0")  # Error(string)
_PANIC_SELECTOR: Final = bytes.fromhex("4e487b71")  # Panic(uint256)
_PANICS: Final = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x32: "array index out of bounds",
}


def decode_revert(data: bytes) -> str | None:
    """The human reason inside revert ``data``, or None if it carries none."""
    try:
        if data[:4] == _ERROR_SELECTOR:
            (reason,) = abi_decode(["string"], data[4:])
            return str(reason)
        if data[:4] == _PANIC_SELECTOR:
            (code,) = abi_decode(["uint256"], data[4:])
            return f"panic: {_PANICS.get(code, hex(code))}"
    except Exception:  # malformed revert data: report no reason rather than fail
        return None
    return None


class RpcCallError(LedgerError):
    """A JSON-RPC error object returned for one call of a batch."""

    code = "rpc_error"

    def __init__(self, rpc_code: int, message: str, data: Any = None) -> None:
        self.rpc_code = rpc_code
        self.data = data
        super().__init__(f"node refused: {message}")

    def to_exception(self) -> LedgerError:
        """The medmesh error this refusal means (a revert, or this error itself)."""
        raw = self.data.get("data") if isinstance(self.data, dict) else self.data
        if isinstance(raw, str) and raw.startswith("0x"):
            try:
                return RevertError(decode_revert(bytes.fromhex(raw[2:])))
            except ValueError:
                pass
        if "revert" in self.message:
            return RevertError(None)
        return self


class Rpc:
    """A JSON-RPC endpoint over HTTP with keep-alive."""

    def __init__(self, url: str, *, timeout: float = 10.0, retries: int = 3) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self._session = requests.Session()
        # proxies (HTTP(S)_PROXY, NO_PROXY) are read from the environment once, here: with
        # trust_env on, requests looks them up again on every call (~0.4 ms of a ~1 ms call)
        self._session.proxies.update(requests.utils.get_environ_proxies(url))
        self._session.trust_env = False
        self._ids = itertools.count(1)

    def close(self) -> None:
        """Close the keep-alive connections now.

        ``Session.close()`` alone only makes urllib3 (2.x) forget its connection pools: their
        sockets close when a pool is garbage-collected, which a reference cycle (the traceback
        of a failed attempt holds the pool) can put off for as long as the process lives. An
        open connection to a local Anvil then outlives it on its port (see ``chains``).
        """
        for adapter in self._session.adapters.values():
            if isinstance(adapter, HTTPAdapter):
                pools = adapter.poolmanager.pools
                for key in pools.keys():  # noqa: SIM118 - the container cannot be iterated
                    pool = pools.get(key)
                    if pool is not None:
                        pool.close()
        self._session.close()

    def __enter__(self) -> Rpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, *params: Any) -> Any:
        """One call; raises the typed error of a refusal."""
        (result,) = self.batch([(method, list(params))])
        if isinstance(result, RpcCallError):
            raise result.to_exception()
        return result

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Many calls in one request; each result is a value or an :class:`RpcCallError`."""
        if not calls:
            return []
        ids, items = _encode(self._ids, calls)
        answers: list[Any] = []
        for body in _bodies(items):
            answers += _answers(self._post(body), self.url)
        return _results(answers, ids, self.url)

    def _post(self, body: bytes) -> Any:
        delay = 0.2
        for attempt in range(self.retries):
            try:
                response = self._session.post(
                    self.url, data=body, headers=_JSON, timeout=(2.0, self.timeout)
                )
            except requests.RequestException as exc:
                if attempt + 1 == self.retries:
                    raise RpcUnavailableError(
                        f"the chain at {self.url} does not answer ({type(exc).__name__}); "
                        "is it running? (`medmesh chain status`)"
                    ) from exc
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code >= 500 and attempt + 1 < self.retries:
                time.sleep(delay)
                delay *= 2
                continue
            try:
                return response.json()
            except ValueError as exc:
                raise LedgerError(
                    f"the chain at {self.url} answered HTTP {response.status_code} without JSON"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


_JSON: Final = {"Content-Type": "application/json"}


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (as ``requests`` reads it), or None."""
    proxies = requests.utils.get_environ_proxies(url)
    scheme = urlsplit(url).scheme
    found = proxies.get(scheme) or proxies.get("all")
    return str(found) if found else None


class AsyncRpc:
    """:meth:`Rpc.batch` for code on an event loop (aiohttp, one keep-alive session).

    The consent gateway decides every read with an ``eth_call`` batch. Through :class:`Rpc` in
    a worker thread, each decision paid a thread hand-off both ways and ``requests``' own
    per-call work (three quarters of the decision's CPU); from the loop it pays neither. The
    session belongs to the loop that first used it; :meth:`aclose` on that loop closes it
    (the gateway's application does, when it shuts down).
    """

    def __init__(self, url: str, *, timeout: float = 10.0, retries: int = 3) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # HTTP(S)_PROXY / NO_PROXY, read once as Rpc reads them: with trust_env on, aiohttp
        # looks them up (and parses ~/.netrc) in a worker thread on every request
        self._proxy: str | None = _proxy_for(url)

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            if self._session is not None and not self._session.closed:
                # made on another loop, which is gone: it cannot be closed from here
                self._session.detach()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16),
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=2.0),
                headers=_JSON,
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
            elif not self._session.closed:
                self._session.detach()  # its loop is gone: nothing left to close there
        self._session = None

    async def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Many calls in one request; each result is a value or an :class:`RpcCallError`."""
        if not calls:
            return []
        ids, items = _encode(self._ids, calls)
        answers: list[Any] = []
        for body in _bodies(items):
            answers += _answers(await self._post(body), self.url)
        return _results(answers, ids, self.url)

    async def _post(self, body: bytes) -> Any:
        session = self._client()
        delay = 0.2
        for attempt in range(self.retries):
            try:
                async with session.post(self.url, data=body, proxy=self._proxy) as response:
                    status, text = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if attempt + 1 == self.retries:
                    raise RpcUnavailableError(
                        f"the chain at {self.url} does not answer ({type(exc).__name__}); "
                        "is it running? (`medmesh chain status`)"
                    ) from exc
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if status >= 500 and attempt + 1 < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
                continue
            try:
                return json.loads(text)
            except ValueError as exc:
                raise LedgerError(
                    f"the chain at {self.url} answered HTTP {status} without JSON"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _encode(
    counter: Iterator[int], calls: list[tuple[str, list[Any]]]
) -> tuple[list[int], list[bytes]]:
    ids = [next(counter) for _ in calls]
    items = [
        json.dumps(
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params},
            separators=(",", ":"),
        ).encode()
        for i, (method, params) in zip(ids, calls, strict=True)
    ]
    return ids, items


def _answers(answer: Any, url: str) -> list[Any]:
    if isinstance(answer, dict):
        return [answer]
    if not isinstance(answer, list):
        raise LedgerError(f"malformed JSON-RPC answer from {url}")
    return answer


def _results(answers: list[Any], ids: list[int], url: str) -> list[Any]:
    by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
    results: list[Any] = []
    for i in ids:
        answer = by_id.get(i)
        if answer is None:
            raise LedgerError(f"JSON-RPC answer from {url} is missing a result")
        if "error" in answer:
            err = answer["error"] or {}
            results.append(
                RpcCallError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))
            )
        else:
            results.append(answer.get("result"))
    return results


def _bodies(items: list[bytes]) -> Iterator[bytes]:
    """JSON-RPC request bodies for encoded ``items``, in order, each up to MAX_REQUEST_BYTES
    (an item larger than that alone): one item is sent bare, several as a batch array."""
    start, size = 0, 0
    for end, item in enumerate(items):
        if end > start and size + len(item) + 1 > MAX_REQUEST_BYTES:
            yield _body(items[start:end])
            start, size = end, 0
        size += len(item) + 1
    yield _body(items[start:])


def _body(items: list[bytes]) -> bytes:
    return items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"

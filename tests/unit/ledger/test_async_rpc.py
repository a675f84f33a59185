"""AsyncRpc, the event loop's JSON-RPC client, against the same small local server as
Rpc.batch: answers in order, one error per refused call, retries, and clear failures."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from medmesh.errors import LedgerError, RevertError, RpcUnavailableError
from medmesh.ledger.rpc import MAX_REQUEST_BYTES, AsyncRpc, Rpc, RpcCallError
from tests.unit.ledger.test_rpc_batch import EchoServer, reply, server  # noqa: F401 - fixture

REVERT = "0x08c379a0" + "20".rjust(64, "0") + "04".rjust(64, "0") + b"nope".hex().ljust(64, "0")


def batch_once(url: str, calls: list[tuple[str, list[Any]]], **options: Any) -> list[Any]:
    """One batch on a fresh event loop, the client closed after it."""

    async def run() -> list[Any]:
        rpc = AsyncRpc(url, **options)
        try:
            return await rpc.batch(calls)
        finally:
            await rpc.aclose()

    return asyncio.run(run())


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5.0)


def url_of(srv: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_a_batch_comes_back_in_order_with_each_refusal_typed(server: EchoServer) -> None:  # noqa: F811
    calls: list[tuple[str, list[Any]]] = [("m", [3]), ("m", [1]), ("m", [2])]
    assert batch_once(url_of(server), calls) == [3, 1, 2] == Rpc(url_of(server)).batch(calls)
    assert json.loads(server.bodies[0])[0]["method"] == "m"


def test_a_large_batch_goes_out_in_requests_anvil_accepts(server: EchoServer) -> None:  # noqa: F811
    payloads = ["0x" + f"{i:02x}" * (MAX_REQUEST_BYTES // 8) for i in range(10)]
    calls: list[tuple[str, list[Any]]] = [("eth_sendRawTransaction", [p]) for p in payloads]
    assert batch_once(url_of(server), calls) == payloads
    assert len(server.bodies) > 1 and all(len(b) <= MAX_REQUEST_BYTES for b in server.bodies)


class Flaky(BaseHTTPRequestHandler):
    """First a 503, then a revert for the call, as a node under load then a refusal."""

    seen = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Flaky.seen += 1
        if Flaky.seen == 1:
            reply(self, 503, b"")
            return
        error = {"code": 3, "message": "execution reverted", "data": REVERT}
        reply(self, 200, json.dumps({"jsonrpc": "2.0", "id": body["id"], "error": error}).encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_server_error_is_retried_and_a_revert_is_typed() -> None:
    Flaky.seen = 0
    with serving(Flaky) as srv:
        (answer,) = batch_once(url_of(srv), [("eth_call", [{}, "latest"])])
    assert Flaky.seen == 2
    assert isinstance(answer, RpcCallError)
    error = answer.to_exception()
    assert isinstance(error, RevertError) and "nope" in error.message


def test_a_dead_endpoint_is_unavailable_after_the_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RpcUnavailableError, match="does not answer"):
        batch_once(f"http://127.0.0.1:{port}", [("eth_blockNumber", [])], retries=2)


class NotJson(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        reply(self, 200, b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_answer_that_is_not_json_rpc_is_a_ledger_error() -> None:
    with serving(NotJson) as srv, pytest.raises(LedgerError, match="without JSON"):
        batch_once(url_of(srv), [("eth_blockNumber", [])])


def test_a_second_event_loop_gets_its_own_session(server: EchoServer) -> None:  # noqa: F811
    rpc = AsyncRpc(url_of(server))
    assert asyncio.run(rpc.batch([("m", [1])])) == [1]  # this loop ends without aclose
    assert asyncio.run(rpc.batch([("m", [2])])) == [2]  # no warning about the first session

    async def close() -> None:
        await rpc.aclose()

    asyncio.run(close())

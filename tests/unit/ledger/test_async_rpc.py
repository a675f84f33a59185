"""AsyncRpc, the event loop's JSON-RPC client, against the same small local server as
Rpc.batch: answers in order, one error per refused call, retries, and clear failures."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medmesh.errors import LedgerError, RevertError, RpcUnavailableError
from medmesh.ledger.rpc import MAX_REQUEST_BYTES, AsyncRpc, Rpc, RpcCallError
from tests.unit.ledger.test_rpc_batch import EchoServer, server  # noqa: F401 - the fixture

REVERT = "0x08c379a0" + "20".rjust(64, "0") + "04".rjust(64, "0") + b"nope".hex().ljust(64, "0")


def test_a_batch_comes_back_in_order_with_each_refusal_typed(server: EchoServer) -> None:  # noqa: F811
    url = f"http://127.0.0.1:{server.server_address[1]}"
    calls = [("m", [3]), ("m", [1]), ("m", [2])]

    async def run() -> list[object]:
        rpc = AsyncRpc(url)
        try:
            return await rpc.batch(calls)
        finally:
            await rpc.aclose()

    assert asyncio.run(run()) == [3, 1, 2] == Rpc(url).batch(calls)
    assert json.loads(server.bodies[0])[0]["method"] == "m"


def test_a_large_batch_goes_out_in_requests_anvil_accepts(server: EchoServer) -> None:  # noqa: F811
    url = f"http://127.0.0.1:{server.server_address[1]}"
    payloads = ["0x" + f"{i:02x}" * (MAX_REQUEST_BYTES // 8) for i in range(10)]

    async def run() -> list[object]:
        rpc = AsyncRpc(url)
        try:
            return await rpc.batch([("eth_sendRawTransaction", [p]) for p in payloads])
        finally:
            await rpc.aclose()

    assert asyncio.run(run()) == payloads
    assert len(server.bodies) > 1 and all(len(b) <= MAX_REQUEST_BYTES for b in server.bodies)


class Flaky(BaseHTTPRequestHandler):
    """First a 503, then a revert for the call, as a node under load then a refusal."""

    server: ThreadingHTTPServer
    seen = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Flaky.seen += 1
        if Flaky.seen == 1:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        error = {"code": 3, "message": "execution reverted", "data": REVERT}
        raw = json.dumps({"jsonrpc": "2.0", "id": body["id"], "error": error}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join(5.0)


def test_a_server_error_is_retried_and_a_revert_is_typed(flaky: str) -> None:
    async def run() -> list[object]:
        rpc = AsyncRpc(flaky)
        try:
            return await rpc.batch([("eth_call", [{}, "latest"])])
        finally:
            await rpc.aclose()

    (answer,) = asyncio.run(run())
    assert Flaky.seen == 2
    assert isinstance(answer, RpcCallError)
    error = answer.to_exception()
    assert isinstance(error, RevertError) and "nope" in error.message


def test_a_dead_endpoint_is_unavailable_after_the_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        rpc = AsyncRpc(f"http://127.0.0.1:{port}", retries=2)
        try:
            await rpc.batch([("eth_blockNumber", [])])
        finally:
            await rpc.aclose()

    with pytest.raises(RpcUnavailableError, match="does not answer"):
        asyncio.run(run())


def test_an_answer_that_is_not_json_rpc_is_a_ledger_error(flaky: str) -> None:
    class NotJson(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, format: str, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotJson)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()

    async def run() -> None:
        rpc = AsyncRpc(f"http://127.0.0.1:{srv.server_address[1]}")
        try:
            await rpc.batch([("eth_blockNumber", [])])
        finally:
            await rpc.aclose()

    try:
        with pytest.raises(LedgerError, match="without JSON"):
            asyncio.run(run())
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5.0)


def test_a_second_event_loop_gets_its_own_session(server: EchoServer) -> None:  # noqa: F811
    rpc = AsyncRpc(f"http://127.0.0.1:{server.server_address[1]}")
    assert asyncio.run(rpc.batch([("m", [1])])) == [1]  # this loop ends without aclose
    assert asyncio.run(rpc.batch([("m", [2])])) == [2]  # no warning about the first session

    async def close() -> None:
        await rpc.aclose()

    asyncio.run(close())

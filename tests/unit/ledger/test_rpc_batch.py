"""Rpc.batch against a small local JSON-RPC server: a large batch goes out in several HTTP
requests, none over MAX_REQUEST_BYTES (Anvil refuses a body over 2 MiB), answers in order."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medmesh.ledger.rpc import MAX_REQUEST_BYTES, Rpc

ANVIL_BODY_LIMIT = 2 * 1024 * 1024


class EchoServer(ThreadingHTTPServer):
    """Answers each call with its first parameter; refuses bodies as Anvil does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.bodies: list[bytes] = []


def reply(handler: BaseHTTPRequestHandler, status: int, raw: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)


class EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        if len(body) > ANVIL_BODY_LIMIT:
            answer: object = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600}}
        else:
            request = json.loads(body)
            calls = request if isinstance(request, list) else [request]
            answers = [{"jsonrpc": "2.0", "id": c["id"], "result": c["params"][0]} for c in calls]
            answer = answers if isinstance(request, list) else answers[0]
        reply(self, 200, json.dumps(answer).encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[EchoServer]:
    srv = EchoServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5.0)


def test_a_large_batch_is_split_below_the_limit_and_answered_in_order(
    server: EchoServer,
) -> None:
    payloads = ["0x" + f"{i:02x}" * 60_000 for i in range(40)]  # 40 x 120 KB: 4.8 MB
    with Rpc(f"http://127.0.0.1:{server.server_port}") as rpc:
        assert rpc.batch([("eth_sendRawTransaction", [p]) for p in payloads]) == payloads
    assert len(server.bodies) == 5  # 8 calls of 120 KB per MiB
    assert all(len(b) <= MAX_REQUEST_BYTES for b in server.bodies)
    assert all(isinstance(json.loads(b), list) for b in server.bodies)


def test_small_batches_and_single_calls_are_one_request(server: EchoServer) -> None:
    with Rpc(f"http://127.0.0.1:{server.server_port}") as rpc:
        assert rpc.batch([("m", [1]), ("m", [2]), ("m", [3])]) == [1, 2, 3]
        assert rpc.call("m", "x") == "x"
        assert rpc.batch([("m", ["0x" + "ab" * (MAX_REQUEST_BYTES // 2 + 1000)])])  # alone
    first, single, huge = (json.loads(b) for b in server.bodies)
    assert [c["params"] for c in first] == [[1], [2], [3]]
    assert single["method"] == "m" and single["params"] == ["x"]  # bare, not a batch array
    assert isinstance(huge, dict)

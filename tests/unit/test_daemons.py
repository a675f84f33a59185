"""``medmesh.daemons.port_free``: what a server could bind now."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from medmesh.daemons import HOST, free_port, port_free


def _time_wait_states(port: int) -> int:
    """TIME_WAIT sockets on ``port`` (local side) in /proc/net/tcp."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    count = 0
    for line in lines:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
            count += 1
    return count


def test_a_listener_takes_the_port_a_time_wait_leftover_does_not() -> None:
    # Prepare: a server that closes a connection first, then stops listening
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, 0))
        server.listen()
        port = server.getsockname()[1]

        # Assert: taken while it listens
        assert port_free(port, socket.SOCK_STREAM) is False

        with socket.create_connection((HOST, port)) as client:
            conn, _ = server.accept()
            conn.close()  # the server side closes first: its socket goes to TIME_WAIT
            client.recv(1)  # read the FIN, so that the client side can close cleanly
    deadline = time.monotonic() + 5
    while not _time_wait_states(port) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _time_wait_states(port) >= 1

    # Execute / Assert: free, as for any server binding with SO_REUSEADDR
    assert port_free(port, socket.SOCK_STREAM) is True
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((HOST, port))
        again.listen()


def test_udp_port_in_use_is_taken() -> None:
    port = free_port(socket.SOCK_DGRAM)
    assert port_free(port, socket.SOCK_DGRAM) is True
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((HOST, port))
        assert port_free(port, socket.SOCK_DGRAM) is False

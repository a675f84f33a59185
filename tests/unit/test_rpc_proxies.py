"""Rpc reads proxy settings from the environment once, when it is made, and still honours them."""

from __future__ import annotations

import pytest

from medmesh.ledger.rpc import Rpc


def test_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with Rpc("https://besu.hospital.example:8545") as rpc:
        assert rpc._session.proxies.get("https") == "http://proxy.hospital.example:3128"
        assert rpc._session.trust_env is False  # not looked up again on every call


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with Rpc("http://127.0.0.1:8545") as rpc:
        assert "http" not in rpc._session.proxies


def test_async_rpc_reads_the_proxy_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from medmesh.ledger.rpc import AsyncRpc

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert AsyncRpc("https://besu.hospital.example:8545")._proxy == (
        "http://proxy.hospital.example:3128"
    )
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.hospital.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert AsyncRpc("http://127.0.0.1:8545")._proxy is None  # NO_PROXY holds

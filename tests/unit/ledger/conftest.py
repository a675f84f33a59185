"""Fixtures for the contract tests: one deployment per session, a state snapshot per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boa
import pytest

from tests.unit.ledger.world import TOKEN_SUPPLY, World, deploy_world, deployer


@pytest.fixture(autouse=True)
def _isolate() -> Iterator[None]:
    """Every test starts from the session's deployment: its changes (and time travel) are undone.

    titanoboa's pytest plugin anchors tests too; this keeps the isolation explicit and working
    without the plugin (``-p no:boa_test``).
    """
    with boa.env.anchor():
        yield


@pytest.fixture(scope="session")
def world() -> World:
    return deploy_world()


@pytest.fixture(scope="session")
def token() -> Any:
    return deployer("HealthToken").deploy(TOKEN_SUPPLY)

"""Browser tests of the web portal: Playwright driving headless Chromium.

The browser is Debian's ``chromium`` package (``make test`` installs it); Playwright never
downloads one (``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD``; nothing here calls ``playwright install``).
The network is real and started by the fixture as a user would: ``medmesh chain up``,
``devnet up``, ``synth`` (a small demo population) and ``gateway up --fhir``, all on 127.0.0.1
under a temporary home. Screenshots of every page a test visits are kept as artifacts under
``build/e2e/<test>/`` (or ``$MEDMESH_E2E_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medmesh.daemons import free_port
from medmesh.identity import Wallet, save_wallet
from tests.integration.test_cli import PASS, medmesh

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    """Debian's chromium, or a clear failure saying how to get it."""
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "the browser tests need Debian's chromium package: `make test` installs it "
        "(apt-get install chromium); Playwright must not download its own browser"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One browser per module, and Playwright stopped when the module ends.

    Playwright's sync API keeps an event loop running in this thread while it is started; any
    later test calling ``asyncio.run`` would fail ("cannot be called from a running event
    loop"), so it must not outlive the browser tests (the suite runs e2e first, by name).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Artifacts:
    """Where a test's screenshots go: one PNG per page visited, numbered in order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def shot(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Artifacts:
    base = Path(os.environ.get("MEDMESH_E2E_ARTIFACTS", ROOT / "build" / "e2e"))
    folder = base / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Artifacts(folder)


@dataclass
class Network:
    home: Path
    url: str  # the gateway (portal under /portal/)
    population: dict[str, Any]  # synth/population.json

    def person(self, name: str) -> dict[str, Any]:
        return next(p for p in self.population["participants"] if p["name"] == name)

    @property
    def passphrase(self) -> str:
        return str(self.population["passphrase"])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("e2e-home")
    save_wallet(Wallet.create(), home / "wallet.json", PASS, scrypt_n=2**10)
    (home / "config.json").write_text(json.dumps({"k": 2, "n": 3}))
    port = free_port(socket.SOCK_STREAM)
    try:
        medmesh(home, "chain", "up", "--port", "0")
        medmesh(home, "devnet", "up", "--nodes", "3", "--base-port", "0")
        medmesh(home, "synth", "--patients", "3", "--hospitals", "3", "--labs", "1")
        medmesh(home, "gateway", "up", "--fhir", "--port", str(port))
        population = json.loads((home / "synth" / "population.json").read_text())
        yield Network(home, f"http://127.0.0.1:{port}", population)
    finally:
        medmesh(home, "gateway", "down", check=False)
        medmesh(home, "devnet", "down", check=False)
        medmesh(home, "chain", "down", check=False)

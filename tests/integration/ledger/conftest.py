"""Fixtures for the ledger integration tests: real Anvil chains and a real PostgreSQL.

Every process started here is stopped in the fixture's teardown, by PID.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.ledger.helpers import Net, running_net, wait_until


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """One chain with the contracts deployed, shared by the tests of a module."""
    with running_net(tmp_path_factory.mktemp("chain")) as n:
        yield n


def _sqlalchemy_url(uri: str) -> str:
    """pgserver gives ``postgresql://…``; SQLAlchemy needs the psycopg 3 dialect named."""
    assert uri.startswith("postgresql://"), uri
    return "postgresql+psycopg://" + uri.removeprefix("postgresql://")


class Postgres:
    """A throwaway PostgreSQL server (pgserver): one fresh database per call of :meth:`url`."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self._names = (f"ix{i}" for i in itertools.count())

    def url(self) -> str:
        name = next(self._names)
        admin = sa.create_engine(
            _sqlalchemy_url(self.server.get_uri()), isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return _sqlalchemy_url(self.server.get_uri(name))


def _postmaster_alive(pid: int, pgdata: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(pgdata).encode() in cmdline


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A real PostgreSQL started with pgserver; the tests using it skip if it cannot start."""
    pgdata = tmp_path_factory.mktemp("pgdata")
    with warnings.catch_warnings():
        # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError as exc:
            pytest.skip(f"pgserver is not installed: {exc}")
        try:
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            pytest.skip(f"pgserver could not start PostgreSQL: {type(exc).__name__}: {exc}")
    pid = server.get_pid()
    try:
        yield Postgres(server)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
        if pid and _postmaster_alive(pid, pgdata):  # pg_ctl stop failed: kill it ourselves
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _postmaster_alive(pid, pgdata), 10.0, "postgres to exit")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty indexer database: an SQLite file, or a fresh database on the PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return request.getfixturevalue("postgres").url()

"""What every command shares: the home folder, the wallet, output, errors, progress."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from medmesh.config import ENV_PASSPHRASE, Home
from medmesh.errors import ConfigError, KeystoreError, MedmeshError
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.storage.backends import open_store
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams

console = Console(stderr=True)
out = Console()

#: Show a progress bar for transfers above this size.
PROGRESS_THRESHOLD = 4 * 1024 * 1024


@dataclass
class State:
    home: Home


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn medmesh errors into one clear line and a non-zero exit status."""
    try:
        yield
    except MedmeshError as exc:
        fail(exc.message, 2 if isinstance(exc, ConfigError) else 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def passphrase(confirm: bool = False) -> str:
    env = os.environ.get(ENV_PASSPHRASE)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise KeystoreError(f"set {ENV_PASSPHRASE} or run interactively to unlock the wallet")
    first = getpass.getpass("wallet passphrase: ")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise KeystoreError("passphrases do not match")
    return first


def open_wallet(home: Home) -> Wallet:
    if not home.wallet_file.is_file():
        raise KeystoreError(
            f"no wallet in {home.path}: run `medmesh wallet new` (or `medmesh devnet up`)"
        )
    return load_wallet(home.wallet_file, passphrase())


def ensure_wallet(home: Home, *, scrypt_n: int | None = None) -> tuple[str, bool]:
    """The wallet's address, creating a wallet if there is none. Returns (address, created)."""
    from medmesh.identity import read_address

    if home.wallet_file.is_file():
        return read_address(home.wallet_file), False
    home.ensure()
    wallet = Wallet.create()
    phrase = os.environ.get(ENV_PASSPHRASE, "")
    if scrypt_n is None:
        save_wallet(wallet, home.wallet_file, phrase)
    else:
        save_wallet(wallet, home.wallet_file, phrase, scrypt_n=scrypt_n)
    return wallet.address, True


def open_client(home: Home, *, k: int | None = None, n: int | None = None) -> Client:
    cfg = home.load_config()
    wallet = open_wallet(home)
    params = StoreParams(k=k or cfg.k, n=n or cfg.n)
    store = open_store(cfg.backend, nodes=home.node_urls(), signer=wallet, params=params)
    return Client(store, wallet)


@contextmanager
def transfer_bar(
    label: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar for transfers over a few MB (stderr, so --json stays clean)."""
    if not enabled or (total is not None and total < PROGRESS_THRESHOLD):
        yield None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)

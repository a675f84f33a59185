"""What every command shares: the home folder, the wallet, output, errors, progress."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from medmesh.config import ENV_PASSPHRASE, Home
from medmesh.consent.daemon import DEFAULT_GATEWAY_PORT
from medmesh.errors import ConfigError, KeystoreError, MedmeshError
from medmesh.identity import Wallet, load_wallet, save_wallet
from medmesh.storage.backends import open_store
from medmesh.storage.client import Client
from medmesh.storage.uploader import StoreParams

console = Console(stderr=True)
out = Console()

#: The FHIR gateway a command talks to (``medmesh fhir``, ``medmesh dicom``).
DEFAULT_FHIR = f"http://127.0.0.1:{DEFAULT_GATEWAY_PORT}/fhir"
FhirOption = Annotated[
    str,
    typer.Option(
        "--fhir",
        envvar="MEDMESH_FHIR_URL",
        help="FHIR base URL of this home's gateway (`medmesh gateway run --fhir`); DICOMweb "
        "is beside it at /dicomweb.",
    ),
]

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


def passphrase(
    confirm: bool = False,
    *,
    env_names: tuple[str, ...] = (ENV_PASSPHRASE,),
    what: str = "the wallet",
    prompt: str = "wallet passphrase: ",
) -> str:
    """A passphrase from the first of ``env_names`` that is set, else asked on the terminal."""
    for name in env_names:
        env = os.environ.get(name)
        if env is not None:
            return env
    if not sys.stdin.isatty():
        raise KeystoreError(f"set {' or '.join(env_names)} or run interactively to unlock {what}")
    first = getpass.getpass(prompt)
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


class Transfer:
    """A progress bar for a transfer whose size may be learnt late (``get`` learns it from
    the manifest). The bar appears only for transfers over a few MB, and on stderr, so
    ``--json`` output stays clean."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def size(self, total: int) -> None:
        if not self.enabled or total < PROGRESS_THRESHOLD or self.bar is not None:
            return
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total)

    def advance(self, done: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def transfer(label: str, enabled: bool, total: int | None = None) -> Iterator[Transfer]:
    t = Transfer(label, enabled)
    if total is not None:
        t.size(total)
    try:
        yield t
    finally:
        t.close()

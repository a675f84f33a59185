"""``medmesh wallet``: the keys at the centre of everything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medmesh.cli.common import errors, fail, out, passphrase, print_json, state
from medmesh.config import ENV_PASSPHRASE
from medmesh.errors import InvalidInputError, KeystoreError
from medmesh.identity import Wallet, import_wallet, load_wallet, read_address, save_wallet

app = typer.Typer(
    help="Create and inspect your wallet (signing + encryption keys).", no_args_is_help=True
)


@app.command()
def new(
    ctx: typer.Context,
    suite: Annotated[
        str, typer.Option(help="Encryption suite: x25519 or mlkem768-x25519 (post-quantum hybrid).")
    ] = "x25519",
    force: Annotated[
        bool, typer.Option(help="Replace an existing wallet (its keys are lost!).")
    ] = False,
) -> None:
    """Create a wallet: a secp256k1 key (Ethereum keystore v3) and an encryption key."""
    home = state(ctx).home
    with errors():
        if home.wallet_file.exists() and not force:
            out.print(f"[red]error:[/] {home.wallet_file} exists; use --force to replace it")
            raise typer.Exit(1)
        wallet = Wallet.create(suite)
        home.ensure()
        save_wallet(wallet, home.wallet_file, passphrase(confirm=True))
    out.print(f"address {wallet.address}")
    out.print(f"saved   {home.wallet_file}")


@app.command()
def show(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    chain_id: Annotated[int, typer.Option(help="Chain id for the DID.")] = 31337,
) -> None:
    """Show the address, DID and encryption public key (unlocks the wallet)."""
    home = state(ctx).home
    with errors():
        address = read_address(home.wallet_file)
        wallet = load_wallet(home.wallet_file, passphrase())
    pub = wallet.encryption_public_key
    info = {
        "address": address,
        "did": wallet.did(chain_id),
        "encryption_suite": pub.suite,
        "encryption_key_id": str(pub.key_id),
        "encryption_public_key": pub.to_bytes().hex(),
    }
    if json_out:
        print_json(info)
    else:
        for key, value in info.items():
            shown = value if len(value) < 80 else value[:77] + "..."
            out.print(f"{key:22} {shown}")


@app.command("import")
def import_(
    ctx: typer.Context,
    keystore: Annotated[
        Path | None,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="A medmesh wallet file or any Ethereum keystore v3 (geth, MetaMask export).",
        ),
    ] = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Instead of a keystore: a file holding a hex secp256k1 private key.",
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(help="Suite of the encryption key added to a plain Ethereum account."),
    ] = "x25519",
    force: Annotated[
        bool,
        typer.Option(help="Replace an existing wallet of another account (its keys are lost!)."),
    ] = False,
) -> None:
    """Bring an existing account into medmesh. A medmesh wallet is copied as is; a plain
    Ethereum account keeps its address and gets a new encryption key. The result is saved
    under this home's passphrase (MEDMESH_PASSPHRASE, or asked twice); the source passphrase
    comes from MEDMESH_IMPORT_PASSPHRASE, else MEDMESH_PASSPHRASE, else a prompt."""
    home = state(ctx).home
    if (keystore is None) == (private_key_file is None):
        fail("give either a KEYSTORE file or --private-key-file")
    with errors():
        added = True
        if keystore is not None:
            source = passphrase(
                env_names=("MEDMESH_IMPORT_PASSPHRASE", ENV_PASSPHRASE),
                what=str(keystore),
                prompt=f"passphrase of {keystore.name}: ",
            )
            wallet, added = import_wallet(keystore, source, suite=suite)
        else:
            assert private_key_file is not None
            text = private_key_file.read_text(encoding="ascii", errors="replace").strip()
            try:
                raw = bytes.fromhex(text.removeprefix("0x"))
            except ValueError:
                raise InvalidInputError(
                    f"{private_key_file} does not hold a hex private key"
                ) from None
            from medmesh.crypto import EncryptionPrivateKey

            wallet = Wallet.from_keys(raw, [EncryptionPrivateKey.generate(suite)])
        if home.wallet_file.exists():
            try:
                current = read_address(home.wallet_file)
            except KeystoreError:
                current = None
            if current != wallet.address and not force:
                fail(
                    f"{home.wallet_file} holds another account ({current}); use --force to replace it"
                )
        home.ensure()
        save_wallet(wallet, home.wallet_file, passphrase(confirm=True), force=force)
    out.print(f"address {wallet.address}")
    if added:
        out.print(f"added   a new {suite} encryption key (register it: it is what grants wrap to)")
    out.print(f"saved   {home.wallet_file}")

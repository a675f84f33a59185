"""``medmesh wallet``: the keys at the centre of everything."""

from __future__ import annotations

from typing import Annotated

import typer

from medmesh.cli.common import errors, out, passphrase, print_json, state
from medmesh.identity import Wallet, load_wallet, read_address, save_wallet

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

"""``medmesh chain``: the embedded local chain (Anvil) and the contracts on it."""

from __future__ import annotations

from typing import Annotated

import typer

from medmesh.cli.common import console, ensure_wallet, errors, open_wallet, out, print_json, state
from medmesh.ledger.chains import DEFAULT_PORT, LocalChain

app = typer.Typer(help="Start and inspect the ledger's local chain.", no_args_is_help=True)


@app.command()
def up(
    ctx: typer.Context,
    port: Annotated[
        int, typer.Option(help="JSON-RPC port on 127.0.0.1 (0 = any free).")
    ] = DEFAULT_PORT,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start Anvil (state kept in <home>/chain), deploy the contracts once, and register the
    home wallet (funded, with the provider and gateway roles, for a one-machine network)."""
    from medmesh.ledger.local import bootstrap_local

    home = state(ctx).home
    with errors():
        address, created = ensure_wallet(home)
        if created and not json_out:
            console.print(f"created wallet {address} in {home.wallet_file}")
        info = bootstrap_local(home, open_wallet(home), port=port)
    if json_out:
        print_json(info)
        return
    out.print(
        f"chain {info['chain_id']} at {info['rpc_url']} (pid {info['pid']}, data {info['data']})"
    )
    verb = "deployed" if info["deployed_now"] else "reusing"
    for name, addr in info["contracts"].items():
        out.print(f"  {verb} {name:<12} {addr}")


@app.command()
def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Is the local chain running; its RPC URL, head block and last block saved to disk."""
    with errors():
        st = LocalChain(state(ctx).home.chain_dir).status()
    if json_out:
        print_json(st.to_json())
        return
    if not st.running:
        out.print(f"local chain: [red]down[/] (data {st.data}; durable block {st.durable_block})")
        raise typer.Exit(1)
    out.print(
        f"local chain: [green]up[/] at {st.rpc_url}, chain {st.chain_id}, block {st.block} "
        f"(saved to disk up to {st.durable_block}), pid {st.pid}"
    )


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local chain (its state is saved)."""
    with errors():
        stopped = LocalChain(state(ctx).home.chain_dir).down()
    out.print("local chain stopped" if stopped else "local chain was not running")

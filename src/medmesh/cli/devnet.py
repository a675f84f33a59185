"""``medmesh devnet``: the local network under the home folder."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from medmesh.cli.common import console, ensure_wallet, errors, out, print_json, state
from medmesh.devnet import DEFAULT_BASE_PORT, Devnet

app = typer.Typer(help="Start, stop and inspect the local network.", no_args_is_help=True)


@app.command()
def up(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(help="Number of storage nodes.")] = 5,
    base_port: Annotated[
        int, typer.Option(help="First HTTP port (DHT uses +100; 0 = any free).")
    ] = DEFAULT_BASE_PORT,
    rate_limit: Annotated[int, typer.Option(help="Per-node egress cap in bytes/s (0 = none).")] = 0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start the storage nodes (as separate processes); return when all answer.

    Creates a wallet in the home folder if there is none (passphrase from MEDMESH_PASSPHRASE,
    empty if unset: fine for a local test network, not for real records) and lets it write.
    """
    home = state(ctx).home
    with errors():
        address, created = ensure_wallet(home)
        if created and not json_out:
            console.print(f"created wallet {address} in {home.wallet_file}")
        net = Devnet(home.devnet_dir)
        statuses = net.up(nodes, trusted=[address], base_port=base_port, rate_limit=rate_limit)
    if json_out:
        print_json({"nodes": [s.to_json() for s in statuses]})
        return
    for s in statuses:
        out.print(f"node {s.index}  {s.url}  pid {s.pid}  {s.data}")
    out.print(f"{len(statuses)} storage nodes up; stop them with `medmesh devnet down`")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop every node of the local network (by the PIDs they recorded)."""
    with errors():
        stopped = Devnet(state(ctx).home.devnet_dir).down()
    out.print(f"stopped {stopped} node(s)")


@app.command()
def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the nodes: URL, PID, data folder, running or not."""
    with errors():
        statuses = Devnet(state(ctx).home.devnet_dir).status()
    if json_out:
        print_json({"nodes": [s.to_json() for s in statuses]})
        return
    table = Table(title="medmesh devnet")
    for col in ("node", "url", "pid", "state", "data"):
        table.add_column(col)
    for s in statuses:
        table.add_row(
            str(s.index),
            s.url,
            str(s.pid or "-"),
            "[green]up[/]" if s.running else "[red]down[/]",
            s.data,
        )
    out.print(table)

"""``medmesh devnet``: the local network under the home folder."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from medmesh.cli.common import console, ensure_wallet, errors, out, print_json, state
from medmesh.devnet import DEFAULT_BASE_PORT, Devnet, RegistryLink, ledger_registry

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
    When the home has a ledger (`medmesh chain up` deployed the contracts), every participant
    registered on it as a patient, provider, researcher or gateway may write too: start the
    chain first (`make up` does).
    """
    home = state(ctx).home
    with errors():
        address, created = ensure_wallet(home)
        if created and not json_out:
            console.print(f"created wallet {address} in {home.wallet_file}")
        registry = ledger_registry(home)
        if registry is not None:
            problem = _registry_problem(registry)
            if problem:
                console.print(f"[yellow]warning:[/] {problem}")
        net = Devnet(home.devnet_dir)
        statuses = net.up(
            nodes,
            trusted=[address],
            base_port=base_port,
            rate_limit=rate_limit,
            registry=registry,
        )
    if json_out:
        print_json(
            {
                "nodes": [s.to_json() for s in statuses],
                "registry": registry.to_json() if registry else None,
            }
        )
        return
    for s in statuses:
        out.print(f"node {s.index}  {s.url}  pid {s.pid}  {s.data}")
    out.print(f"{len(statuses)} storage nodes up; stop them with `medmesh devnet down`")
    if registry is None:
        out.print(f"writers: {address} (no ledger in {home.path}: `medmesh chain up` adds one)")
    else:
        out.print(
            f"writers: {address} and participants of the Registry {registry.address} "
            f"at {registry.rpc_url}"
        )


def _registry_problem(registry: RegistryLink) -> str | None:
    """Why the nodes could not read ``registry`` now (None if they can)."""
    from medmesh.errors import LedgerError
    from medmesh.ledger.rpc import Rpc

    later = "until it is, nodes refuse (503) writers other than the home wallet"
    if not registry.running:
        return f"the local chain is not running ({later}): `medmesh chain up`"
    try:
        with Rpc(registry.rpc_url, timeout=3.0, retries=1) as rpc:
            code = rpc.call("eth_getCode", registry.address, "latest")
    except LedgerError as exc:
        return f"{exc.message} ({later})"
    if code in (None, "0x"):
        return (
            f"no Registry contract at {registry.address} on {registry.rpc_url} ({later}): "
            "`medmesh chain up` deploys it"
        )
    return None


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

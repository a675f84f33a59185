"""``medmesh storage``: content addressing and the health of stored objects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medmesh.cli.common import errors, open_client, out, print_json, state
from medmesh.storage.importer import ImportParams, root_cid

app = typer.Typer(
    help="Content addressing, repair and verification of stored objects.", no_args_is_help=True
)


@app.command()
def cid(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    chunk_size: Annotated[int, typer.Option(help="Leaf size in bytes.")] = 262144,
    max_links: Annotated[int, typer.Option(help="Links per interior node.")] = 174,
    cid_version: Annotated[
        int, typer.Option("--cid-version", help="0 (legacy, dag-pb leaves) or 1 (raw leaves).")
    ] = 1,
) -> None:
    """Print the CID of FILE's bytes as `ipfs add -n --cid-version=1 --raw-leaves` would.

    Nothing is stored or sent.
    """
    with errors():
        params = ImportParams(
            chunk_size=chunk_size,
            max_links=max_links,
            raw_leaves=cid_version == 1,
            cid_version=cid_version,
        )
        with open(file, "rb") as fh:
            typer.echo(str(root_cid(fh, params)))


@app.command()
def repair(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="Object CID.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-create shares that no live node holds, on other nodes."""
    with errors():
        report = open_client(state(ctx).home).repair(cid)
    if json_out:
        print_json(report)
        return
    out.print(
        f"{report['stripes']} stripes, {report['damaged']} damaged, "
        f"{report['recreated']} shares re-created"
    )
    if report["unplaced"]:
        out.print(
            f"[yellow]{len(report['unplaced'])} stripes need another node:[/] every live node "
            "already holds one of their shares; add nodes and run repair again"
        )
    if report["unrecoverable"]:
        out.print(
            f"[red]unrecoverable stripes (fewer than k shares left):[/] {report['unrecoverable']}"
        )
    if report["unplaced"] or report["unrecoverable"]:
        raise typer.Exit(1)


@app.command()
def verify(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="Object CID.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Challenge every holder of CID's shares to prove a random segment; report."""
    with errors():
        report = open_client(state(ctx).home).verify(cid)
    if json_out:
        print_json(
            {
                "cid": str(report.cid),
                "ok": report.ok,
                "checked": report.checked,
                "passed": report.passed,
                "failed": report.failed,
                "holders": report.holders,
            }
        )
    else:
        table = Table(title=f"storage proofs for {report.cid}")
        table.add_column("node")
        table.add_column("shares", justify="right")
        table.add_column("proofs passed", justify="right")
        for url, counts in sorted(report.holders.items()):
            table.add_row(url, str(counts["shares"]), str(counts["passed"]))
        out.print(table)
        for line in report.failed[:20]:
            out.print(f"[red]✗[/] {line}")
        out.print(f"{report.passed}/{report.checked} proofs verified")
    if not report.ok:
        raise typer.Exit(1)

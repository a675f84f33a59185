"""``medmesh put`` and ``medmesh get``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from medmesh.cli.common import console, errors, open_client, print_json, state, transfer


def put(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="File to store.")
    ],
    json_out: Annotated[bool, typer.Option("--json", help='Print {"cid": ...} as JSON.')] = False,
    k: Annotated[
        int | None, typer.Option(help="Shares needed to rebuild (default from config: 3).")
    ] = None,
    n: Annotated[
        int | None, typer.Option(help="Shares stored per stripe (default from config: 5).")
    ] = None,
) -> None:
    """Seal FILE with a fresh key (wrapped for your wallet), erasure-code it and upload it.

    Prints the record's CID: the CID IPFS gives the sealed bytes.
    """
    with errors():
        client = open_client(state(ctx).home, k=k, n=n)
        size = os.path.getsize(file)
        with transfer(f"put {file.name}", not json_out, size) as bar:
            result = client.put(file, progress=bar.advance)
    if json_out:
        print_json(result.to_json())
    else:
        typer.echo(str(result.cid))
        console.print(f"stored {result.size:,} bytes ({result.sealed_size:,} sealed)")


def get(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID printed by `medmesh put`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the plaintext.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Overwrite OUTPUT if it exists.")
    ] = False,
) -> None:
    """Fetch CID from the network (any k shares per stripe), verify it and decrypt it.

    OUTPUT appears only when the whole record verified; nothing is left behind on failure.
    """
    with errors():
        if output.exists() and not force:
            console.print(f"[bold red]error:[/] {output} exists (use --force to overwrite)")
            raise typer.Exit(1)
        client = open_client(state(ctx).home)
        with transfer(f"get {cid[:16]}…", not json_out) as bar:
            result = client.get(cid, output, progress=bar.advance, on_size=bar.size)
    if json_out:
        print_json(result.to_json())
    else:
        console.print(f"wrote {result.size:,} bytes to {output}")
        for url, why in result.bad_nodes.items():
            console.print(f"[yellow]warning:[/] {url} served bad data: {why}")

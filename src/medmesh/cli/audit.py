"""``medmesh audit``: who accessed your records, when, for what."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from medmesh.cli.common import errors, out, print_json
from medmesh.cli.records import keeper


def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Most recent N accesses.")] = 100,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A table of who accessed which of your records, when and for what purpose
    (from the ledger's AccessLogged events), and the consent changes."""
    with errors():
        k = keeper(ctx)
        k.indexer.sync()
        rows = k.indexer.accesses(patient=k.wallet.address, limit=limit)
    if json_out:
        print_json(
            [
                {
                    "accessor": r.accessor,
                    "record": "0x" + r.record.hex(),
                    "purpose": r.purpose.names(),
                    "at": r.at,
                    "gateway": r.gateway,
                    "tx": r.tx,
                }
                for r in rows
            ]
        )
        return
    table = Table(title="accesses to your records")
    for col in ("when", "who", "record", "purpose", "gateway"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)), r.accessor, "0x" + r.record.hex()[:16] + "…",
            r.purpose.names(), r.gateway,
        )  # fmt: skip
    out.print(table)

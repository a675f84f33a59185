"""``medmesh fhir``: bring a provider's FHIR export into this home's FHIR gateway."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from medmesh.cli.common import (
    DEFAULT_FHIR,
    FhirOption,
    console,
    errors,
    fail,
    open_wallet,
    out,
    print_json,
    state,
)
from medmesh.errors import InvalidInputError

app = typer.Typer(
    help="FHIR R4: import a provider's export into your gateway.", no_args_is_help=True
)

RETRIES: Final = 3


def _accounts(path: Path) -> dict[str, str]:
    """``patient id,address`` rows (a header row is allowed)."""
    from eth_utils.address import is_address, to_checksum_address

    found: dict[str, str] = {}
    with path.open(newline="") as fp:
        for n, row in enumerate(csv.reader(fp), start=1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise InvalidInputError(f"{path.name} line {n}: expected 'patient id,address'")
            pid, address = row[0].strip(), row[1].strip()
            if not is_address(address):
                if n == 1:
                    continue  # a header
                raise InvalidInputError(f"{path.name} line {n}: not an Ethereum address")
            found[pid] = to_checksum_address(address)
    return found


@app.command("import")
def import_(
    ctx: typer.Context,
    files: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Bulk-data NDJSON files (.ndjson, .jsonl, optionally .gz) and/or JSON "
            "Bundles (transaction, batch, collection, searchset).",
        ),
    ],
    fhir: FhirOption = DEFAULT_FHIR,
    chunk: Annotated[int, typer.Option(help="Resources per batch request.", min=1)] = 1000,
    parallel: Annotated[
        int,
        typer.Option(
            help="Batch requests in flight at once (the gateway seals one, stores another "
            "and anchors the ones before).",
            min=1,
            max=8,
        ),
    ] = 4,  # importer.DEFAULT_PARALLEL (not imported here: it loads the FHIR models)
    accounts: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="CSV of 'Patient id,patient address': adds each Patient's medmesh account "
            "identifier (did:pkh), which says whose records they are.",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Write failed resources here (NDJSON; default under <home>/imports)."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over instead of resuming.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Import FHIR resources through the gateway: validated, sealed for each patient, stored
    and anchored, in batches. Failed resources are reported one by one (nothing of them is
    stored) without stopping the rest; if the import stops, run the same command again to
    go on where it stopped."""
    from medmesh.interop.client import GatewayClient, GatewayError
    from medmesh.interop.fhir.importer import Importer

    home = state(ctx).home
    with errors():
        wallet = open_wallet(home)
        chain_id = None
        mapping = _accounts(accounts) if accounts else None
        if mapping:
            from medmesh.ledger.local import open_ledger

            chain_id = int(open_ledger(home, wallet).chain_id)
        gw = GatewayClient(fhir, wallet, timeout=600.0)
        gw.authenticate("system/*.cu")

        def send(bundle: dict[str, Any]) -> dict[str, Any]:
            for attempt in range(RETRIES):
                try:
                    return gw.bundle(bundle, minimal=True)  # statuses are all it needs
                except GatewayError:
                    if attempt == RETRIES - 1:
                        raise
                    time.sleep(2.0 * (attempt + 1))
            raise AssertionError("unreachable")

        importer = Importer(
            files,
            send,
            state_dir=home.path / "imports",
            chunk=chunk,
            parallel=parallel,
            accounts=mapping,
            chain_id=chain_id,
            report=report,
            restart=restart,
        )
        total = importer.count()
        started = time.monotonic()
        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=json_out or not console.is_terminal,
        )
        task = bar.add_task("importing", total=total)
        try:
            with bar:
                summary = importer.run(lambda n: bar.advance(task, n))
        except (GatewayError, InvalidInputError) as exc:
            s = importer.summary
            fail(
                f"{exc.message}\nstopped after {s.done:,} of {total:,} resources "
                f"({s.failed:,} failed so far, report {s.report}); run the same command "
                "again to resume"
            )
        finally:
            gw.close()
    seconds = time.monotonic() - started
    sent = summary.done - summary.resumed_at
    if json_out:
        print_json(summary.to_json() | {"seconds": round(seconds, 3)})
    else:
        table = Table(title="FHIR import", show_header=False)
        table.add_row("resources", f"{summary.total:,}")
        if summary.resumed_at:
            table.add_row("resumed at", f"{summary.resumed_at:,}")
        table.add_row("imported", f"{summary.imported:,}")
        table.add_row("failed", f"{summary.failed:,}")
        for type_, n in sorted(summary.by_type.items()):
            table.add_row(f"  {type_}", f"{n:,}")
        table.add_row("rate", f"{sent / seconds:,.0f} resources/s" if seconds > 0 else "-")
        if summary.failed:
            table.add_row("failures", summary.report)
        out.print(table)
    if summary.failed:
        raise typer.Exit(2)

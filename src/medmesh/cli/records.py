"""``medmesh records``: your medical records on the network and the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medmesh.cli.common import errors, open_client, open_wallet, out, print_json, state
from medmesh.errors import InvalidInputError
from medmesh.storage.cid import Cid

app = typer.Typer(help="Store, list, fetch and erase your records.", no_args_is_help=True)


def keeper(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from medmesh.consent.sharing import RecordKeeper
    from medmesh.ledger.local import open_indexer, open_ledger

    home = state(ctx).home
    wallet = open_wallet(home)
    ledger = open_ledger(home, wallet)
    return RecordKeeper(wallet, ledger, open_indexer(home, ledger), open_client(home))


@app.command()
def put(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The record to store.")],
    kind: Annotated[
        str, typer.Option(help="Record kind, e.g. fhir:Observation, dicom:study, document.")
    ],
    supersedes: Annotated[
        str | None, typer.Option(help="CID of the version this one replaces.")
    ] = None,
    patient: Annotated[
        str | None, typer.Option(help="Write for this patient (needs their CONTRIBUTE consent).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Encrypt the file, store it, and anchor it on the ledger. Current grantees of this kind
    get a capsule in the new version; revoked ones do not."""
    with errors():
        result = keeper(ctx).put(
            file, kind, supersedes=Cid.parse(supersedes) if supersedes else None, patient=patient
        )
    if json_out:
        print_json(result.to_json())
        return
    out.print(
        f"{result.cid}  record 0x{result.record.hex()}  ({result.size} bytes, {result.recipients} recipient(s))"
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    history: Annotated[bool, typer.Option(help="Include superseded versions.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Your anchored records (from the indexer)."""
    with errors():
        rows = keeper(ctx).records(include_history=history)
    if json_out:
        print_json(
            [
                {
                    "cid": str(Cid.from_bytes(r.cid)),
                    "record": "0x" + r.record.hex(),
                    "kind": "0x" + r.kind.hex(),
                    "anchored_at": r.anchored_at,
                    "superseded": r.superseded,
                    "erased": r.erased,
                }
                for r in rows
            ]
        )
        return
    table = Table(title="your records")
    for col in ("cid", "kind tag", "anchored", "state"):
        table.add_column(col)
    for r in rows:
        st = "erased" if r.erased else "superseded" if r.superseded else "current"
        table.add_row(str(Cid.from_bytes(r.cid)), "0x" + r.kind.hex(), str(r.anchored_at), st)
    out.print(table)


@app.command()
def get(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of the record.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the plaintext.")],
) -> None:
    """Fetch and decrypt one of your records (or one sealed for you)."""
    with errors():
        result = open_client(state(ctx).home).get(cid, output)
    out.print(f"wrote {result.size} bytes to {output}")


@app.command()
def erase(
    ctx: typer.Context,
    cid: Annotated[str, typer.Argument(help="CID of any version of the record.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Erase a record for good (every version): marked erased on the ledger, so no grant
    reaches it from the next block on; its key capsules destroyed (grants covering other
    records get new capsule blocks); its ciphertext deleted from the storage nodes. The
    ledger keeps only that an anchor existed and was erased. Run again if some node was
    unreachable."""
    import sys

    with errors():
        target = Cid.parse(cid)
        if not yes:
            if not sys.stdin.isatty():
                raise InvalidInputError("erasing cannot be undone: confirm with --yes")
            if not typer.confirm(f"erase every version of {target} for good?"):
                raise typer.Exit(1)
        result = keeper(ctx).erase(target)
    if json_out:
        print_json(result.to_json())
        return
    out.print(
        f"erased {len(result.cids)} version(s) on the ledger"
        + (f" ({len(result.txs)} tx)" if result.txs else " (already erased)")
    )
    out.print(
        f"destroyed {result.capsule_blocks} capsule block(s); re-granted {len(result.regranted)} "
        f"grant(s) without it; deleted {result.blocks_deleted} block(s) from the nodes"
    )
    if result.unreachable:
        out.print(
            f"[yellow]not reached:[/] {', '.join(result.unreachable)}: run `medmesh records "
            f"erase {cid}` again when they are back"
        )
        raise typer.Exit(2)

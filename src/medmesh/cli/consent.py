"""``medmesh consent``: grant, revoke and list access to your records."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from medmesh.cli.common import errors, out, print_json
from medmesh.cli.records import keeper

if TYPE_CHECKING:
    from medmesh.ledger.contracts import Scope
from medmesh.errors import InvalidInputError
from medmesh.storage.cid import Cid

app = typer.Typer(help="Grant, revoke and list access to your records.", no_args_is_help=True)

_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``1y`` → seconds."""
    try:
        value, unit = int(text[:-1]), text[-1]
        if value <= 0 or unit not in _UNITS:
            raise ValueError
    except (ValueError, IndexError):
        raise InvalidInputError("durations look like 30m, 12h, 90d, 2w or 1y") from None
    return value * _UNITS[unit]


def parse_scope(text: str, patient: str) -> Scope:
    """``all``, ``kind:fhir:Observation``, ``record:<cid>`` (a record of ``patient``'s)."""
    from medmesh.ledger.contracts import Scope

    if text == "all":
        return Scope.all()
    if text.startswith("kind:"):
        return Scope.kind(text[5:])
    if text.startswith("record:"):
        return Scope.record(patient, Cid.parse(text[7:]))
    raise InvalidInputError("scope is all, kind:<kind> or record:<cid>")


@app.command()
def grant(
    ctx: typer.Context,
    grantee: Annotated[str, typer.Argument(help="Address of who gets access.")],
    scope: Annotated[str, typer.Option(help="all | kind:<kind> | record:<cid>")],
    purpose: Annotated[
        str,
        typer.Option(
            help="Comma-separated: treatment, payment, operations, research, public_health, emergency, contribute."
        ),
    ],
    expires_in: Annotated[str, typer.Option(help="How long, e.g. 90d, 12h, 1y.")] = "90d",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Let GRANTEE use your records in SCOPE for PURPOSE until the expiry; they get key
    capsules for the records in scope."""
    from medmesh.ledger.contracts import Purpose

    with errors():
        k = keeper(ctx)
        result = k.grant(
            grantee,
            parse_scope(scope, k.wallet.address),
            Purpose.parse(purpose),
            int(time.time()) + parse_duration(expires_in),
        )
    if json_out:
        print_json(result.to_json())
        return
    out.print(
        f"granted {result.grantee} {result.purposes} on {result.scope} until {result.expiry} ({result.capsules} capsule(s)); tx {result.tx}"
    )


@app.command()
def revoke(
    ctx: typer.Context,
    grantee: Annotated[str, typer.Argument()],
    scope: Annotated[str, typer.Option(help="all | kind:<kind> | record:<cid> | break-glass")],
) -> None:
    """End a grant now: the gateway refuses from the next block on."""
    from medmesh.ledger.contracts import Scope

    with errors():
        k = keeper(ctx)
        tx = k.revoke(
            grantee,
            Scope.break_glass() if scope == "break-glass" else parse_scope(scope, k.wallet.address),
        )
    out.print(f"revoked; tx {tx}")


@app.command("list")
def list_(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Who can see your records now."""
    from medmesh.ledger.contracts import Scope

    with errors():
        k = keeper(ctx)
        k.indexer.sync()
        rows = k.indexer.grants(patient=k.wallet.address, active_at=time.time())
    if json_out:
        print_json(
            [
                {
                    "grantee": g.grantee,
                    "scope": Scope.from_word(g.scope).label,
                    "purposes": g.purposes.names(),
                    "expiry": g.expiry,
                    "break_glass": g.break_glass,
                }
                for g in rows
            ]
        )
        return
    table = Table(title="who can see your records")
    for col in ("grantee", "scope", "purposes", "expires"):
        table.add_column(col)
    for g in rows:
        table.add_row(
            g.grantee,
            Scope.from_word(g.scope).label,
            g.purposes.names(),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(g.expiry)),
        )
    out.print(table)

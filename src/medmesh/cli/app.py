"""The root of the ``medmesh`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medmesh import __version__
from medmesh.cli import (
    audit,
    chain,
    consent,
    devnet,
    dicom,
    fhir,
    gateway,
    node,
    objects,
    records,
    storage,
    synth,
    up,
    wallet,
)
from medmesh.cli.common import State
from medmesh.config import Home

app = typer.Typer(
    name="medmesh",
    help="medmesh: patient-controlled medical data on an encrypted, IPFS-compatible network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medmesh {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional
        typer.Option(
            "--home",
            envvar="MEDMESH_HOME",
            help="Home folder with config, wallet and local network data [default: ~/.medmesh].",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Seal, store and fetch medical records on the medmesh network."""
    ctx.obj = State(Home.resolve(home))


app.command("put", help="Seal a file on this machine and store it on the network.")(objects.put)
app.command("get", help="Fetch a record, verify every block, decrypt it into a file.")(objects.get)
app.add_typer(storage.app, name="storage")
app.add_typer(node.app, name="node")
app.add_typer(devnet.app, name="devnet")
app.add_typer(wallet.app, name="wallet")
app.add_typer(chain.app, name="chain")
app.add_typer(records.app, name="records")
app.add_typer(consent.app, name="consent")
app.add_typer(gateway.app, name="gateway")
app.add_typer(dicom.app, name="dicom")
app.add_typer(fhir.app, name="fhir")
app.command("audit")(audit.audit)
app.command("synth")(synth.synth)
app.command("up", help=up.HELP)(up.up)


def main() -> None:
    app()

"""``medmesh dicom``: import DICOM studies as records, export them, de-identify files."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from medmesh.cli.common import (
    DEFAULT_FHIR,
    FhirOption,
    console,
    errors,
    open_wallet,
    out,
    print_json,
    state,
)

if TYPE_CHECKING:
    from collections.abc import Callable

app = typer.Typer(
    help="Import DICOM studies as records, export them (de-identified if asked), de-identify files.",
    no_args_is_help=True,
)


def _problem(word: str, where: object, reason: str) -> None:
    """One line per file on stderr, never wrapped (scripts and tests grep it)."""
    console.print(f"[bold red]{word}:[/] {escape(str(where))}: {escape(reason)}", soft_wrap=True)


@contextmanager
def _bytes_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar over ``total`` bytes on stderr; yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=total or None)
    with bar:
        yield lambda n: bar.advance(task, n)


@app.command("import")
def import_(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(exists=True, help="A DICOM file or a folder (searched recursively).")
    ],
    subject: Annotated[
        str, typer.Option(help="The patient: Patient/<id> as the gateway knows it.")
    ],
    fhir: FhirOption = DEFAULT_FHIR,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Store DICOM files as records of a patient, with one ImagingStudy per study.

    The files under PATH are streamed to the gateway (DICOMweb STOW-RS, one request per
    study), which stores every instance as a record of the patient (sealed, erasure-coded,
    anchored) and saves an ImagingStudy linking each instance's record by CID. Files that
    are not DICOM or are truncated are refused here and nothing of them is sent; instances
    already linked are not sent again. The exit status is 1 if any file or study failed."""
    from medmesh.errors import InvalidInputError
    from medmesh.interop.client import GatewayClient
    from medmesh.interop.dicom.importer import IMPORT_SCOPE, DicomImporter, plan_import
    from medmesh.ledger.local import open_ledger

    home = state(ctx).home
    with errors():
        plan = plan_import(path)
        for failure in plan.failures:
            _problem("refused", failure.path, failure.reason)
        if not plan.studies and not plan.failures:
            raise InvalidInputError("no DICOM instance found there")
        wallet = open_wallet(home)
        ledger = open_ledger(home, wallet)  # read only: roles and consents
        with GatewayClient(fhir, wallet) as gateway:
            gateway.authenticate(IMPORT_SCOPE)
            importer = DicomImporter(gateway, ledger, wallet.address)
            reference, _owner = importer.subject(subject)
            with _bytes_bar("import", plan.size, not json_out) as advance:
                result = importer.run(plan, reference, progress=advance)
    for failed in result.failures[len(plan.failures) :]:
        _problem("failed", failed.path, failed.reason)
    if json_out:
        print_json(result.to_json())
    else:
        table = Table(title=f"DICOM import for {reference}", show_header=False)
        table.add_column("what")
        table.add_column("count", justify="right")
        table.add_row("studies", str(len(result.studies)))
        table.add_row("series", str(result.series))
        table.add_row("instances stored", str(result.instances))
        table.add_row("already stored", str(result.already))
        table.add_row("bytes stored", f"{result.bytes:,}")
        table.add_row("duplicates skipped", str(len(result.duplicates)))
        table.add_row("files passed over", str(len(plan.skipped)))
        table.add_row("failures", str(len(result.failures)))
        out.print(table)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def export(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Argument(file_okay=False, help="Folder to write into.")],
    study: Annotated[str, typer.Option(help="Study Instance UID.")],
    fhir: FhirOption = DEFAULT_FHIR,
    deidentify: Annotated[
        bool,
        typer.Option(
            "--deidentify",
            help="De-identify to DICOM PS3.15 Annex E (basic profile) before writing; files "
            "are named by their new SOP Instance UID.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Retrieve a study's instances into a folder, de-identified if asked.

    The instances come through the gateway's DICOMweb, each consent-checked. The exit status
    is 1 if any instance could not be exported."""
    from medmesh.interop.client import GatewayClient
    from medmesh.interop.dicom.deidentify import Deidentifier
    from medmesh.interop.dicom.export import EXPORT_SCOPE, export_study, study_instances

    home = state(ctx).home
    with errors():
        wallet = open_wallet(home)
        with GatewayClient(fhir, wallet) as gateway:
            gateway.authenticate(EXPORT_SCOPE)
            listed = study_instances(gateway, study)
            run = Deidentifier() if deidentify else None
            with _bytes_bar("export", 0, not json_out) as advance:
                result = export_study(
                    gateway, study, out_dir, deidentifier=run, progress=advance, instances=listed
                )
    for label, reason in result.failures:
        _problem("failed", label, reason)
    if json_out:
        print_json(result.to_json())
    else:
        word = "de-identified " if deidentify else ""
        out.print(
            f"exported {len(result.files)} {word}instance(s), {result.bytes:,} bytes, "
            f"to {out_dir}" + (f"; {len(result.failures)} failed" if result.failures else "")
        )
    if not result.ok:
        raise typer.Exit(1)


@app.command("deidentify")
def deidentify_(
    src: Annotated[Path, typer.Argument(exists=True, help="A DICOM file or a folder.")],
    dst: Annotated[
        Path,
        typer.Argument(
            help="Output file (for one input file) or folder (files named by their new SOP "
            "Instance UID)."
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """De-identify local DICOM files (PS3.15 Annex E basic profile), offline.

    UIDs are replaced consistently within one run. The exit status is 1 if any file was
    refused."""
    from medmesh.errors import MedmeshError
    from medmesh.interop.dicom.deidentify import Deidentifier
    from medmesh.interop.dicom.files import DicomFailure, DicomFile, scan

    written: list[str] = []
    failures: list[tuple[str, str]] = []
    run = Deidentifier()
    with errors():
        single = src.is_file() and not dst.is_dir()
        if not single:
            dst.mkdir(parents=True, exist_ok=True)
        for item in scan(src, errors="collect"):
            if isinstance(item, DicomFailure):
                failures.append((str(item.path), item.reason))
                continue
            if not isinstance(item, DicomFile):
                continue
            target = dst if single else dst / f"{run.uid(item.sop_instance_uid)}.dcm"
            try:
                run.file(item.path, target)
            except MedmeshError as exc:
                failures.append((str(item.path), exc.message))
                continue
            written.append(str(target))
    for path, reason in failures:
        _problem("refused", path, reason)
    if json_out:
        print_json({"files": written, "failures": [{"path": p, "reason": r} for p, r in failures]})
    else:
        out.print(f"wrote {len(written)} de-identified file(s) to {dst}")
    if failures:
        raise typer.Exit(1)

"""``medmesh synth``: a synthetic population on the local network."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn
from rich.table import Table

from medmesh.cli.common import console, errors, open_wallet, out, print_json, state


def synth(
    ctx: typer.Context,
    patients: Annotated[int, typer.Option(min=1, help="Synthetic patients.")] = 50,
    hospitals: Annotated[int, typer.Option(min=1, help="Hospitals (FHIR gateways).")] = 3,
    labs: Annotated[int, typer.Option(min=0, help="Research labs.")] = 1,
    seed: Annotated[
        int, typer.Option(help="carebundle seed: the same seed, the same records.")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Create hospitals, labs and patients with wallets, typical consents and clinically
    coherent records (carebundle) on the local network (`make up` first). Each participant
    gets a home under <home>/synth/<name>; running it again finishes an interrupted run."""
    from medmesh.synth import synthesize

    home = state(ctx).home
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=json_out or not console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def progress(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = bar.add_task(step, total=total)
        bar.update(tasks[step], completed=done, total=total)

    with errors():
        governor = open_wallet(home)
        with bar:
            population = synthesize(
                home, governor, patients=patients, hospitals=hospitals, labs=labs, seed=seed,
                progress=progress,
            )  # fmt: skip
    if json_out:
        print_json(population.to_json())
        return
    table = Table(title="synthetic population", show_header=True)
    table.add_column("who")
    table.add_column("address")
    table.add_column("home")
    for p in population.participants:
        if p.role != "patient" or p.name.endswith(("001", "002", "003")):
            table.add_row(f"{p.name} ({p.role})", p.address, p.home)
    out.print(table)
    kinds = ", ".join(f"{n:,} {t}" for t, n in sorted(population.by_type.items()))
    out.print(
        f"{len(population.of('patient'))} patients, {population.grants} grants, "
        f"{population.records:,} records ({kinds}), {population.failed} failed"
    )
    out.print(f"demo keystores' passphrase: in {home.path / 'synth' / 'population.json'}")

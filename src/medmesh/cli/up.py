"""``medmesh up``: the whole local network in the foreground, until Ctrl-C."""

from __future__ import annotations

import getpass
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TimeElapsedColumn,
)
from rich.status import Status
from rich.table import Table

from medmesh.cli.common import console, ensure_wallet, out, state
from medmesh.config import ENV_PASSPHRASE, Home
from medmesh.consent.daemon import DEFAULT_GATEWAY_PORT
from medmesh.daemons import HOST, port_free
from medmesh.devnet import DEFAULT_BASE_PORT
from medmesh.errors import ConfigError, KeystoreError, MedmeshError
from medmesh.identity import Wallet, load_wallet
from medmesh.ledger.chains import DEFAULT_PORT
from medmesh.up import DEMO_HOSPITALS, DEMO_LABS, DEMO_PATIENTS, Demo, LocalNetwork, up_lock

#: ``medmesh up --help`` (one line per paragraph: typer keeps a docstring's line breaks).
HELP = (
    "Run the whole local network in the foreground until Ctrl-C: the local chain (contracts "
    "deployed once), NODES storage nodes, and the consent gateway with the FHIR API (/fhir) and "
    "the portal (/portal/); on the first start also a demo world (3 hospitals, 1 research lab, "
    "50 synthetic patients with consents and records; --no-demo skips it).\n\n"
    "Creates a development wallet if the home has none (passphrase from MEDMESH_PASSPHRASE, "
    "empty if unset: fine for a local network, not for real records).\n\n"
    "Parts already running (`medmesh chain up`, `devnet up`, `gateway up`) are reused and left "
    "running; what `up` starts it stops on Ctrl-C or SIGTERM. All data stays in the home: the "
    "next `up` goes on with the same chain, records and demo world, and does not seed again."
)

#: How often the running network is checked (seconds).
WATCH_INTERVAL = 1.0
#: Demo patients listed by name in the summary (the rest are in population.json).
SHOWN_PATIENTS = 3


class _Step:
    """What a step reports when it is done, and its synth progress bar, if any."""

    def __init__(self, title: str, bar: Progress | None) -> None:
        self.title = title
        self.detail = ""
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}
        self.reported: set[str] = set()

    def progress(self, step: str, done: int, total: int) -> None:
        """``synthesize``'s progress callback: a bar per sub-step (a line when not a terminal)."""
        if self.bar is None:
            if done >= total and step not in self.reported:
                self.reported.add(step)
                console.print(f"    {step}: {done}/{total}")
            return
        if step not in self.tasks:
            self.tasks[step] = self.bar.add_task(step, total=total)
        self.bar.update(self.tasks[step], completed=done, total=total)


class Steps:
    """The step list: a spinner while a step runs, a tick and its seconds once it is done."""

    def __init__(self, terminal: Console) -> None:
        self.console = terminal
        self.live = terminal.is_terminal

    @contextmanager
    def step(self, title: str, *, bars: bool = False, spin: bool = True) -> Iterator[_Step]:
        """A step; ``bars``: with progress bars (synth), ``spin=False``: no spinner (it may
        prompt on the terminal)."""
        started = time.monotonic()
        spinner: Status | None = None
        bar: Progress | None = None
        if self.live and bars:
            bar = Progress(
                SpinnerColumn(), "[progress.description]{task.description}", BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True,
            )  # fmt: skip
            bar.start()
            bar.add_task(title, total=None)
        elif self.live and spin:
            spinner = self.console.status(f"{title}…")
            spinner.start()
        elif not self.live:
            self.console.print(f"… {title}")
        current = _Step(title, bar)
        ok = False
        try:
            yield current
            ok = True
        finally:
            if spinner is not None:
                spinner.stop()
            if bar is not None:
                bar.stop()
            seconds = time.monotonic() - started
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            detail = f": {current.detail}" if current.detail and ok else ""
            self.console.print(f"{mark} {title}{detail} [dim]({seconds:.1f} s)[/]")


def _unlock(home: Home, created_with: str | None) -> tuple[Wallet, str]:
    """The home wallet and its passphrase: the one it was just created with, else
    MEDMESH_PASSPHRASE, else the empty one of a development wallet, else a prompt."""
    if created_with is not None:
        return load_wallet(home.wallet_file, created_with), created_with
    env = os.environ.get(ENV_PASSPHRASE)
    if env is not None:
        return load_wallet(home.wallet_file, env), env
    from medmesh.identity.keystore import WrongPassphraseError

    try:
        return load_wallet(home.wallet_file, ""), ""
    except WrongPassphraseError:
        if not sys.stdin.isatty():
            raise KeystoreError(
                f"the wallet in {home.path} has a passphrase: set {ENV_PASSPHRASE} "
                "or run interactively"
            ) from None
    phrase = getpass.getpass("wallet passphrase: ")
    return load_wallet(home.wallet_file, phrase), phrase


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up(
    ctx: typer.Context,
    nodes: Annotated[int, typer.Option(min=1, help="Number of storage nodes.")] = 5,
    port: Annotated[
        int, typer.Option(help="Gateway HTTP port on 127.0.0.1 (0 = any free).")
    ] = DEFAULT_GATEWAY_PORT,
    chain_port: Annotated[
        int,
        typer.Option(
            help="Chain JSON-RPC port on 127.0.0.1, on the chain's first start (0 = any free); "
            "a chain keeps its port."
        ),
    ] = DEFAULT_PORT,
    base_port: Annotated[
        int, typer.Option(help="First storage node port (DHT uses +100; 0 = any free).")
    ] = DEFAULT_BASE_PORT,
    no_demo: Annotated[
        bool, typer.Option("--no-demo", help="Do not seed the demo world on the first start.")
    ] = False,
    demo_patients: Annotated[int, typer.Option(min=1, hidden=True)] = DEMO_PATIENTS,
    demo_hospitals: Annotated[int, typer.Option(min=1, hidden=True)] = DEMO_HOSPITALS,
    demo_labs: Annotated[int, typer.Option(min=0, hidden=True)] = DEMO_LABS,
) -> None:
    """Run the whole local network in the foreground until Ctrl-C (see :data:`HELP`)."""
    home = state(ctx).home
    # Ctrl-C even when started with SIGINT ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    net = LocalNetwork(home)
    steps = Steps(console)
    began = time.monotonic()
    code = 0
    try:
        with up_lock(home):
            try:
                code = _run(net, steps, began, nodes=nodes, port=port, chain_port=chain_port,
                            base_port=base_port,
                            demo=None if no_demo else Demo(demo_patients, demo_hospitals,
                                                           demo_labs))  # fmt: skip
            except KeyboardInterrupt:
                console.print("interrupted")
            except MedmeshError as exc:
                console.print(f"[bold red]error:[/] {exc.message}")
                code = 1
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)  # finish stopping, whatever comes
                stopped = net.stop_started(lambda line: console.print(line))
                left = [c.name for c in net.components() if not c.started]
                kept = f"; left running as found: {', '.join(left)}" if left else ""
                console.print(f"stopped ({stopped} process(es); data kept in {home.path}){kept}")
    except MedmeshError as exc:  # the lock: another `up` runs for this home
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(code)


def _run(
    net: LocalNetwork,
    steps: Steps,
    began: float,
    *,
    nodes: int,
    port: int,
    chain_port: int,
    base_port: int,
    demo: Demo | None,
) -> int:
    """Start, summarise, watch; the exit status when everything stopped from outside."""
    home = net.home
    net.survey()
    if port and net.gateway.status().pid is None and not port_free(port, socket.SOCK_STREAM):
        raise ConfigError(
            f"port {port} on {HOST} is taken; choose another gateway port with --port"
        )
    config = home.load_config()
    if nodes < config.n:
        problem = (
            f"records are stored {config.k}-of-{config.n} (config.json), which needs "
            f"{config.n} storage nodes; --nodes is {nodes}"
        )
        if demo is not None and net.demo_seeded() is None:
            raise ConfigError(f"{problem}: the demo world could not be stored (or use --no-demo)")
        console.print(f"[yellow]warning:[/] {problem}: writes will fail")
    with steps.step("wallet", spin=False) as step:
        address, created = ensure_wallet(home)
        wallet, phrase = _unlock(home, os.environ.get(ENV_PASSPHRASE, "") if created else None)
        step.detail = f"{'created ' if created else ''}{address}"
    with steps.step("local chain") as step:
        chain = net.start_chain(wallet, port=chain_port)
        verb = "reusing" if chain["reused"] else "started"
        contracts = "contracts deployed" if chain["deployed_now"] else "contracts in place"
        step.detail = f"{contracts}; {verb} {chain['rpc_url']}"
    with steps.step(f"{nodes} storage nodes") as step:
        statuses = net.start_nodes(nodes, address, base_port=base_port)
        step.detail = ", ".join(s.url.rsplit(":", 1)[1] for s in statuses)
        step.detail = f"ports {step.detail}"
    with steps.step("consent gateway with FHIR") as step:
        url = net.start_gateway(phrase, port=port)
        step.detail = url
    answered = time.monotonic() - began
    if not net.serves_fhir(url):
        console.print(
            f"[yellow]warning:[/] the gateway already running at {url} does not serve the FHIR "
            "API (started without --fhir): `medmesh gateway down`, then `medmesh up` again"
        )
    seeded = net.demo_seeded()
    if demo is not None and seeded is None:
        todo = net.demo_to_seed(demo)
        title = (f"demo world: {todo.hospitals} hospitals, {todo.labs} lab(s), "
                 f"{todo.patients} patients")  # fmt: skip
        with steps.step(title, bars=True) as step:
            summary = net.seed_demo(wallet, todo, progress=step.progress)
            step.detail = f"{summary['records']:,} records, {summary['grants']} grants"
            if summary["failed"]:
                step.detail += f", {summary['failed']} failed"
    _summary(net, url, time.monotonic() - began, answered)
    return _watch(net)


def _summary(net: LocalNetwork, url: str, seconds: float, answered: float) -> None:
    home = net.home
    table = Table(show_header=True, box=None, pad_edge=False)
    for col in ("", "url", "pid", ""):
        table.add_column(col)
    parts = net.components()
    for c in parts:
        label = "chain RPC" if c.name == "chain" else c.name
        table.add_row(label, c.url, str(c.pid), "" if c.started else "(was running: left running)")
    table.add_row("FHIR R4", f"{url}/fhir", "", "")
    table.add_row("portal", f"{url}/portal/", "", "")
    gateway = f" (gateway answered after {answered:.1f} s)" if seconds - answered >= 1 else ""
    out.print(f"\n[bold green]medmesh is up[/] in {seconds:.1f} s{gateway}; home {home.path}")
    out.print(table)
    logins = net.demo_logins()
    if logins:
        shown = [p for p in logins if p["role"] != "patient"]
        patients = [p for p in logins if p["role"] == "patient"]
        shown += patients[:SHOWN_PATIENTS]
        people = Table(title="demo logins", show_header=True, box=None, pad_edge=False)
        people.add_column("name", no_wrap=True)
        people.add_column("role", no_wrap=True)
        people.add_column("address", no_wrap=True, min_width=42)
        for p in shown:
            people.add_row(p["name"], p["role"], p["address"])
        out.print()
        out.print(people)
        more = len(patients) - min(len(patients), SHOWN_PATIENTS)
        if more:
            out.print(f"… and {more} more patients")
        population = home.path / "synth" / "population.json"
        out.print(f"each one's home (wallet, config): {home.path / 'synth'}/<name>")
        out.print(f"every demo participant, and the demo keystores' passphrase: {population}")
    out.print("\nCtrl-C stops what this started; the data stays in the home for the next `up`.")


def _watch(net: LocalNetwork) -> int:
    """Check the network every second until interrupted; warn when a part stops."""
    parts = net.components()
    down: set[str] = set()
    while True:
        time.sleep(WATCH_INTERVAL)
        for c in parts:
            if c.name not in down and not c.running():
                down.add(c.name)
                console.print(
                    f"[bold yellow]warning:[/] {c.name} (pid {c.pid}, {c.url}) has stopped; "
                    f"see {c.log}"
                )
        if parts and len(down) == len(parts):
            console.print("[bold red]nothing is running any more[/]: stopping")
            return 1

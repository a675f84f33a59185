"""``medmesh gateway``: the consent gateway service."""

from __future__ import annotations

from typing import Annotated

import typer

from medmesh.cli.common import (
    console,
    errors,
    fail,
    open_client,
    open_wallet,
    out,
    passphrase,
    print_json,
    state,
)
from medmesh.consent.daemon import DEFAULT_GATEWAY_PORT

app = typer.Typer(help="Run the consent gateway.", no_args_is_help=True)


@app.command()
def run(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1.")] = DEFAULT_GATEWAY_PORT,
    host: Annotated[
        str, typer.Option(help="Address to bind (127.0.0.1 in local mode).")
    ] = "127.0.0.1",
    pid_file: Annotated[
        str | None, typer.Option(help="Write the service's PID here (used by `gateway up`).")
    ] = None,
    fhir: Annotated[
        bool,
        typer.Option(
            "--fhir",
            help="Also serve the FHIR R4 API under /fhir, acting for this home's wallet "
            "(the institution): it opens the records the ledger lets that wallet open.",
        ),
    ] = False,
) -> None:
    """Serve consent-checked ciphertext and key capsules (sign in with Ethereum), in the
    foreground; `gateway up` runs it in the background. With --fhir, also the FHIR R4 API.
    The web portal is served under /portal/."""
    import threading

    import uvicorn

    from medmesh.consent.access_log import AccessLog
    from medmesh.consent.gateway import Gateway, create_app
    from medmesh.ledger.local import open_indexer, open_ledger

    home = state(ctx).home
    with errors():
        wallet = open_wallet(home)
        ledger = open_ledger(home, wallet)
        indexer = open_indexer(home, ledger)
        log = AccessLog(ledger, f"sqlite:///{home.path / 'gateway.db'}")
        store = open_client(home).store
        domain = f"{host}:{port}"
        gateway = Gateway(ledger, indexer, store, log, domain=domain, uri=f"http://{domain}")
    stop = threading.Event()
    follower = threading.Thread(
        target=indexer.follow, args=(stop,), daemon=True, name="medmesh-indexer"
    )
    follower.start()
    log.start()
    if pid_file:
        from medmesh.consent.daemon import write_pid_file

        write_pid_file(pid_file)
    console.print(
        f"consent gateway on http://{domain} (chain {ledger.chain_id}, wallet {wallet.address})"
    )
    if fhir:
        from medmesh.consent.sharing import RecordKeeper
        from medmesh.interop.fhir.server import FhirService, create_fhir_app

        keeper = RecordKeeper(wallet, ledger, indexer, open_client(home))
        service = FhirService(
            gateway, keeper, home.path / "fhir.db", base_url=f"http://{domain}/fhir"
        )
        application = create_fhir_app(service)
        console.print(f"FHIR R4 API on http://{domain}/fhir, acting for {wallet.address}")
    else:
        application = create_app(gateway)
    from medmesh.portal import Portal, mount_portal
    from medmesh.portal.network import probe_nodes, volume_of
    from medmesh.portal.volume import VolumeSampler

    portal = Portal(gateway, home)
    mount_portal(application, portal)
    sampler = VolumeSampler(portal.volume, lambda: volume_of(probe_nodes(portal)))
    threading.Thread(target=sampler.run, args=(stop,), daemon=True, name="medmesh-volume").start()
    console.print(f"web portal on http://{domain}/portal/")
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        log.stop()


@app.command()
def up(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1.")] = DEFAULT_GATEWAY_PORT,
    fhir: Annotated[
        bool,
        typer.Option("--fhir", help="Also serve the FHIR R4 API under /fhir (see `gateway run`)."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Start the gateway in the background (log and PID under <home>/gateway)."""
    from medmesh.consent.daemon import GatewayDaemon

    home = state(ctx).home
    with errors():
        phrase = passphrase()
        open_wallet(home)  # fail here, clearly, on a wrong passphrase
        st = GatewayDaemon(home).up(port, passphrase=phrase, fhir=fhir)
    if json_out:
        print_json(st.to_json())
        return
    out.print(f"consent gateway at {st.url} (pid {st.pid}, log {st.log})")


@app.command()
def status(ctx: typer.Context, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Is the background gateway running, and where."""
    from medmesh.consent.daemon import GatewayDaemon, health

    st = GatewayDaemon(state(ctx).home).status()
    answering = bool(st.running and st.url and health(st.url))
    if json_out:
        print_json({**st.to_json(), "answering": answering})
        return
    if not st.running:
        fail(f"consent gateway: down (log {st.log})")
    word = "[green]up[/]" if answering else "[yellow]not answering[/]"
    out.print(f"consent gateway: {word} at {st.url}, pid {st.pid}")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the background gateway (pending access logs are flushed to the chain first)."""
    from medmesh.consent.daemon import GatewayDaemon

    with errors():
        stopped = GatewayDaemon(state(ctx).home).down()
    out.print("consent gateway stopped" if stopped else "consent gateway was not running")

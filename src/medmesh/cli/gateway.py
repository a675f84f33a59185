"""``medmesh gateway``: the consent gateway service."""

from __future__ import annotations

from typing import Annotated

import typer

from medmesh.cli.common import console, errors, open_client, open_wallet, state

app = typer.Typer(help="Run the consent gateway.", no_args_is_help=True)


@app.command()
def run(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1.")] = 7700,
    host: Annotated[
        str, typer.Option(help="Address to bind (127.0.0.1 in local mode).")
    ] = "127.0.0.1",
) -> None:
    """Serve consent-checked ciphertext and key capsules (sign in with Ethereum)."""
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
    console.print(
        f"consent gateway on http://{domain} (chain {ledger.chain_id}, wallet {wallet.address})"
    )
    try:
        uvicorn.run(create_app(gateway), host=host, port=port, log_level="warning")
    finally:
        stop.set()
        log.stop()

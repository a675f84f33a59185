"""``medmesh node``: run a storage node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medmesh.cli.common import errors

app = typer.Typer(help="Run a storage node.", no_args_is_help=True)


@app.command()
def run(
    data: Annotated[Path, typer.Option(help="Data folder (blocks, index, node key, node.json).")],
    host: Annotated[
        str, typer.Option(help="Address to bind; keep 127.0.0.1 unless behind a proxy.")
    ] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="HTTP port (0 = any free port).")] = None,
    dht_port: Annotated[int | None, typer.Option(help="UDP port of the DHT (0 = any).")] = None,
    bootstrap: Annotated[
        list[str] | None, typer.Option(help="DHT peer HOST:PORT (repeatable).")
    ] = None,
    trust: Annotated[
        list[str] | None, typer.Option(help="Address allowed to write (repeatable).")
    ] = None,
    registry_rpc: Annotated[
        str | None,
        typer.Option(
            help="JSON-RPC URL of the ledger's chain: with --registry, participants with a "
            "patient, provider, researcher or gateway role may write too."
        ),
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="Address of the ledger's Registry contract.")
    ] = None,
    no_registry: Annotated[
        bool,
        typer.Option("--no-registry", help="Forget a saved registry: only --trust may write."),
    ] = False,
    quota: Annotated[int | None, typer.Option(help="Maximum bytes stored.")] = None,
    rate_limit: Annotated[
        int | None, typer.Option(help="Cap on outgoing bytes/s (0 = none).")
    ] = None,
    no_fsync: Annotated[
        bool, typer.Option("--no-fsync", help="Skip fsync (tests only: unsafe).")
    ] = False,
) -> None:
    """Serve a disk blockstore over the IPFS Trustless Gateway protocol, with signed writes.

    Settings come from DATA/node.json, then these flags (which are saved back to it).
    Writes are accepted from the --trust addresses and, with --registry-rpc and --registry,
    from participants the ledger's Registry lists with a writer role (cached 60 s, refusals
    3 s; when the chain does not answer such writes are refused with 503).
    """
    from eth_utils.address import to_checksum_address

    from medmesh.errors import ConfigError
    from medmesh.storage.node.config import NodeConfig
    from medmesh.storage.node.daemon import serve

    with errors():
        if no_registry and (registry_rpc or registry):
            raise ConfigError("--no-registry cannot go with --registry-rpc or --registry")
        if no_registry:
            registry_rpc = registry = ""
        cfg = NodeConfig.load(
            data,
            host=host,
            port=port,
            dht_port=dht_port,
            bootstrap=tuple(bootstrap) if bootstrap else None,
            trusted=tuple(to_checksum_address(t) for t in trust) if trust else None,
            quota=quota,
            rate_limit=rate_limit,
            fsync=False if no_fsync else None,
            registry_rpc=registry_rpc,
            registry=registry,
        )
        cfg.save()
        serve(cfg)


def main() -> None:
    """Entry point of ``medmesh-node`` (the same as ``medmesh node run``)."""
    typer.run(run)

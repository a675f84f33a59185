"""The home folder: where every command finds its wallet, its network and its data.

``--home DIR`` or ``MEDMESH_HOME`` (default ``~/.medmesh``)::

    config.json        client settings (below); unknown keys are refused
    wallet.json        the wallet: an Ethereum keystore v3 plus medmesh encryption keys
    devnet/            the local network: devnet.json, node-0/, node-1/, ... and logs/
    chain/             the embedded local chain (Anvil state, snapshots, logs)
    addresses.json     where the medmesh contracts live on the configured chain
    index.db           the ledger indexer's SQLite database (unless indexer_url is set)

``config.json``::

    {"backend": "medmesh",          or "kubo+http://127.0.0.1:5001"
     "nodes": ["http://127.0.0.1:7601", ...],   storage nodes (the devnet adds its own)
     "k": 3, "n": 5,
     "rpc_url": "",                  EVM JSON-RPC URL; "" = the embedded local chain
     "chain_id": 31337,              refuse an endpoint serving another chain
     "confirmations": 0,             blocks the indexer waits before trusting an event
     "indexer_url": ""}              SQLAlchemy URL (postgresql+psycopg://...); "" = index.db

The wallet passphrase comes from ``MEDMESH_PASSPHRASE`` or an interactive prompt.
Settings load in a fixed order: defaults, file, environment, flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from medmesh.errors import ConfigError

__all__ = ["DEFAULT_HOME", "ClientConfig", "Home"]

DEFAULT_HOME: Final = Path("~/.medmesh")
ENV_HOME: Final = "MEDMESH_HOME"
ENV_PASSPHRASE: Final = "MEDMESH_PASSPHRASE"  # noqa: S105 - a variable name


@dataclass(frozen=True)
class ClientConfig:
    """Client settings from ``config.json``."""

    backend: str = "medmesh"
    nodes: tuple[str, ...] = ()
    k: int = 3
    n: int = 5
    rpc_url: str = ""
    chain_id: int = 31337
    confirmations: int = 0
    indexer_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> ClientConfig:
        known = {
            "backend",
            "nodes",
            "k",
            "n",
            "rpc_url",
            "chain_id",
            "confirmations",
            "indexer_url",
        }
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown keys in {source}: {', '.join(sorted(unknown))}")
        if "nodes" in values:
            if not isinstance(values["nodes"], list) or not all(
                isinstance(u, str) for u in values["nodes"]
            ):
                raise ConfigError(f"{source}: nodes must be a list of URLs")
            values = {**values, "nodes": tuple(values["nodes"])}
        try:
            return replace(cls(), **values)
        except TypeError as exc:
            raise ConfigError(f"invalid {source}") from exc

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.pop("extra")
        body["nodes"] = list(self.nodes)
        return body


@dataclass(frozen=True)
class Home:
    """A medmesh home folder."""

    path: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        """``home`` if given, else ``$MEDMESH_HOME``, else ``~/.medmesh``."""
        raw = home if home is not None else os.environ.get(ENV_HOME) or DEFAULT_HOME
        return cls(Path(raw).expanduser().resolve())

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def wallet_file(self) -> Path:
        return self.path / "wallet.json"

    @property
    def devnet_dir(self) -> Path:
        return self.path / "devnet"

    @property
    def chain_dir(self) -> Path:
        return self.path / "chain"

    @property
    def address_book(self) -> Path:
        return self.path / "addresses.json"

    @property
    def index_db(self) -> Path:
        return self.path / "index.db"

    def ensure(self) -> Home:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    def load_config(self) -> ClientConfig:
        if not self.config_file.is_file():
            return ClientConfig()
        try:
            values = json.loads(self.config_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.config_file}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{self.config_file} is not a JSON object")
        return ClientConfig.from_dict(values, str(self.config_file))

    def save_config(self, config: ClientConfig) -> None:
        self.ensure()
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        os.replace(tmp, self.config_file)

    def node_urls(self) -> list[str]:
        """Storage nodes: those configured plus the running devnet's."""
        from medmesh.devnet import Devnet

        urls = list(self.load_config().nodes)
        for node in Devnet(self.devnet_dir).status():
            if node.url and node.running and node.url not in urls:
                urls.append(node.url)
        return urls

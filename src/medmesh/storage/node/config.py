"""Storage node settings.

Defaults are module constants; a node's settings live in ``<data>/node.json`` and are
loaded in a fixed order: defaults, file, then command-line flags. Unknown keys in the file
are refused so that a typo never silently changes behaviour.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from eth_utils.address import to_checksum_address

from medmesh.errors import ConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_REGISTRY_NEGATIVE_TTL", "DEFAULT_REGISTRY_TTL", "NodeConfig"]

DEFAULT_HOST: Final = "127.0.0.1"
CONFIG_FILE: Final = "node.json"
#: seconds a Registry answer "may write" is reused (an expelled writer keeps writing this long)
DEFAULT_REGISTRY_TTL: Final = 60.0
#: seconds a Registry answer "may not write" is reused (a new participant waits up to this)
DEFAULT_REGISTRY_NEGATIVE_TTL: Final = 3.0


@dataclass(frozen=True)
class NodeConfig:
    """Settings of one storage node.

    ``trusted`` lists the checksummed addresses allowed to write. With ``registry_rpc`` (an
    EVM JSON-RPC URL) and ``registry`` (the Registry contract's address) the node also lets
    write every participant the ledger gives a writer role (patient, provider, researcher or
    gateway), answers cached ``registry_ttl`` seconds when positive and
    ``registry_negative_ttl`` when negative (see :mod:`medmesh.storage.node.writers`). With
    neither, nobody may write.
    ``rate_limit`` caps outgoing bytes per second (0 = unlimited).
    """

    data: str
    host: str = DEFAULT_HOST
    port: int = 0
    dht_port: int | None = None
    bootstrap: tuple[str, ...] = ()
    trusted: tuple[str, ...] = ()
    quota: int | None = None
    max_block_size: int = 2 * 1024 * 1024
    rate_limit: int = 0
    fsync: bool = True
    registry_rpc: str = ""
    registry: str = ""
    registry_ttl: float = DEFAULT_REGISTRY_TTL
    registry_negative_ttl: float = DEFAULT_REGISTRY_NEGATIVE_TTL
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Signers are compared as checksummed addresses; a hand-edited node.json may not be.
        try:
            trusted = tuple(to_checksum_address(a) for a in self.trusted)
        except (ValueError, TypeError) as exc:
            raise ConfigError("trusted entries must be Ethereum addresses") from exc
        object.__setattr__(self, "trusted", trusted)
        if bool(self.registry_rpc) != bool(self.registry):
            raise ConfigError("registry_rpc and registry go together: give both or neither")
        if self.registry:
            try:
                object.__setattr__(self, "registry", to_checksum_address(self.registry))
            except (ValueError, TypeError) as exc:
                raise ConfigError("registry must be the Registry contract's address") from exc
            if not self.registry_rpc.startswith(("http://", "https://")):
                raise ConfigError("registry_rpc must be an http(s):// JSON-RPC URL")
        for name in ("registry_ttl", "registry_negative_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0")

    @property
    def data_path(self) -> Path:
        return Path(self.data)

    def save(self) -> None:
        path = self.data_path / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        body = asdict(self)
        body.pop("extra")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, data: str | os.PathLike[str], **overrides: Any) -> NodeConfig:
        """Defaults, then ``<data>/node.json`` if present, then ``overrides`` (not None)."""
        path = Path(data) / CONFIG_FILE
        values: dict[str, Any] = {}
        if path.is_file():
            try:
                values = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read node config {path}") from exc
            if not isinstance(values, dict):
                raise ConfigError(f"node config {path} is not a JSON object")
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown keys in {path}: {', '.join(sorted(unknown))}")
        values["data"] = str(data)
        for key in ("bootstrap", "trusted"):
            if key in values:
                values[key] = tuple(values[key])
        cfg = cls(**values)
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(cfg, **clean) if clean else cfg

"""Compiled contracts: ABI and bytecode, built from ``contracts/*.vy`` by the ``vyper`` package.

The Vyper sources are the truth; nothing compiled is committed. Compiling all four contracts
takes about two seconds, so results are cached in ``build/contracts/`` next to the sources,
keyed by a digest of every source file, the compiler version and snekmate's version: change a
line and the next use recompiles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from medmesh.errors import ConfigError

__all__ = ["CONTRACTS", "Artifact", "contracts_dir", "fingerprint", "load", "load_all"]

CONTRACTS: Final = ("Registry", "Records", "Consent", "HealthToken")
ENV_CONTRACTS: Final = "MEDMESH_CONTRACTS"


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes


def contracts_dir() -> Path:
    """``$MEDMESH_CONTRACTS`` or the ``contracts/`` folder of this checkout."""
    override = os.environ.get(ENV_CONTRACTS)
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "contracts"
    if not (path / "Registry.vy").is_file():
        raise ConfigError(f"no medmesh contracts in {path} (set {ENV_CONTRACTS})")
    return path


def fingerprint(root: Path | None = None) -> str:
    """Digest of the contract sources and compiler versions (names the build cache)."""
    root = root or contracts_dir()
    digest = hashlib.sha256()
    for name in ("vyper", "snekmate"):
        digest.update(f"{name}={metadata.version(name)}\n".encode())
    for path in sorted(root.rglob("*.vy*")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _compile(root: Path, name: str) -> Artifact:
    from vyper.cli.vyper_compile import compile_files  # slow import: only when compiling

    out = compile_files([str(root / f"{name}.vy")], ("abi", "bytecode"), paths=[str(root)])
    (result,) = out.values()
    return Artifact(name, result["abi"], bytes.fromhex(result["bytecode"].removeprefix("0x")))


@cache
def load_all(root: Path | None = None) -> dict[str, Artifact]:
    """Every medmesh contract, compiled (or read from the build cache)."""
    root = root or contracts_dir()
    cache_file = root.parent / "build" / "contracts" / f"{fingerprint(root)}.json"
    try:
        raw = json.loads(cache_file.read_text())
        return {n: Artifact(n, raw[n]["abi"], bytes.fromhex(raw[n]["bytecode"])) for n in CONTRACTS}
    except (OSError, ValueError, KeyError):
        pass
    artifacts = {name: _compile(root, name) for name in CONTRACTS}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {a.name: {"abi": a.abi, "bytecode": a.bytecode.hex()} for a in artifacts.values()}
            )
        )
        tmp.replace(cache_file)
    except OSError:
        pass  # a read-only checkout compiles each time
    return artifacts


def load(name: str) -> Artifact:
    """One compiled contract by name."""
    if name not in CONTRACTS:
        raise ConfigError(f"unknown contract {name!r}")
    return load_all()[name]

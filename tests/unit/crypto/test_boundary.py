"""Architecture rule: medmesh.crypto is the only package that imports ``cryptography``."""

from __future__ import annotations

import ast
from pathlib import Path

import medmesh
import medmesh.crypto as crypto_package

SRC = Path(medmesh.__file__).parent
CRYPTO = Path(crypto_package.__file__).parent


def _imports_cryptography(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "cryptography" or name.startswith("cryptography.") for name in names):
            return True
    return False


def test_only_medmesh_crypto_imports_cryptography() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if CRYPTO not in path.parents and _imports_cryptography(path)
    ]
    assert offenders == []


def test_the_check_sees_real_imports() -> None:
    assert _imports_cryptography(CRYPTO / "stream.py")

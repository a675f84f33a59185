"""A deeply nested JSON body raises an error; it must not crash the process.

py_ecc (via eth-account and web3) raises the recursion limit to 100,000 at import, where
``json.loads`` of ~100 KB of ``[`` overflows the C stack (SIGSEGV). ``import medmesh`` puts a
safe limit back; this runs in a subprocess so a regression shows as a crash, not a hang.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import json, sys
import medmesh
import eth_account, web3  # import order must not matter: py_ecc is already loaded
from medmesh.identity.wallet import Wallet
assert sys.getrecursionlimit() == medmesh._SAFE_RECURSION_LIMIT, sys.getrecursionlimit()
try:
    json.loads("[" * 200_000)
except RecursionError:
    print("refused")
"""


def test_deep_json_raises_instead_of_crashing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() == "refused"

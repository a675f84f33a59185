"""The network page: storage nodes (up or down, space used, blocks held), the chain's height,
recent consent events (shortened addresses, no health data) and a chart of records stored
and accesses logged over time, from the indexer's tables.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa

from medmesh.devnet import Devnet
from medmesh.ledger.indexer import access_t, consent_log_t, records_t
from medmesh.portal.labels import scope_label, short_address, when
from medmesh.portal.plot import Series, buckets, line_chart
from medmesh.portal.service import Portal

__all__ = ["ConsentEvent", "NetworkView", "NodeView", "network"]

NODE_TIMEOUT: Final = 0.5
EVENTS: Final = 20


@dataclass(frozen=True)
class NodeView:
    url: str
    up: bool
    node_id: str = ""
    blocks: int = 0
    bytes_used: int = 0
    quota: int | None = None

    @property
    def used_text(self) -> str:
        return _size(self.bytes_used) + (f" of {_size(self.quota)}" if self.quota else "")


@dataclass(frozen=True)
class ConsentEvent:
    at: int
    event: str
    patient: str
    grantee: str
    scope: str

    @property
    def moment(self) -> str:
        return when(self.at)


@dataclass(frozen=True)
class NetworkView:
    nodes: list[NodeView]
    height: int | None
    indexed: int | None
    events: list[ConsentEvent]
    chart: str
    records: int
    accesses: int


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def node_urls(portal: Portal) -> list[str]:
    """Configured nodes and every devnet node of the home, running or not."""
    urls = list(portal.home.load_config().nodes)
    for node in Devnet(portal.home.devnet_dir).status():
        if node.url and node.url not in urls:
            urls.append(node.url)
    return urls


def _probe(url: str) -> NodeView:
    try:
        with urllib.request.urlopen(f"{url}/node/info", timeout=NODE_TIMEOUT) as response:  # noqa: S310 - a configured node URL
            info: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return NodeView(url, False)
    quota = info.get("quota")
    return NodeView(
        url,
        True,
        str(info.get("id") or ""),
        int(info.get("blocks") or 0),
        int(info.get("bytes_used") or 0),
        int(quota) if isinstance(quota, int) and quota > 0 else None,
    )


def _tables(portal: Portal) -> tuple[list[ConsentEvent], list[float], list[float]]:
    with portal.indexer.engine.connect() as conn:
        rows = conn.execute(
            sa.select(consent_log_t)
            .order_by(consent_log_t.c.block.desc(), consent_log_t.c.log_index.desc())
            .limit(EVENTS)
        ).mappings()
        events = [
            ConsentEvent(
                int(r["at"]),
                str(r["event"]).replace("_", " "),
                short_address(r["patient"]),
                short_address(r["grantee"]),
                _scope(r["scope"]),
            )
            for r in rows
        ]
        stored = [float(t) for (t,) in conn.execute(sa.select(records_t.c.anchored_at))]
        accessed = [float(t) for (t,) in conn.execute(sa.select(access_t.c.at))]
    return events, stored, accessed


def _scope(text: str) -> str:
    label = scope_label(bytes.fromhex(text[2:]))
    return "one record" if label.startswith("one record") else label


def _chart(stored: list[float], accessed: list[float], now: float) -> str:
    times = stored + accessed
    if not times:
        return ""
    start = min(times)
    end = max(max(times), now if now - start < 30 * 86400 else max(times))
    return line_chart(
        "Records stored and accesses logged over time",
        [
            Series("records stored (total)", buckets(stored, start=start, end=end, cumulative=True), "stored"),
            Series("accesses logged (per interval)", buckets(accessed, start=start, end=end), "accessed"),
        ],
        chart_id="volume",
    )  # fmt: skip


async def network(portal: Portal) -> NetworkView:
    urls = await asyncio.to_thread(node_urls, portal)
    probes = asyncio.gather(*(asyncio.to_thread(_probe, u) for u in urls))
    tables = asyncio.to_thread(_tables, portal)
    height = asyncio.to_thread(_height, portal)
    nodes, (events, stored, accessed), (head, indexed) = await asyncio.gather(
        probes, tables, height
    )
    return NetworkView(
        list(nodes), head, indexed, events, _chart(stored, accessed, portal.clock()),
        len(stored), len(accessed),
    )  # fmt: skip


def _height(portal: Portal) -> tuple[int | None, int | None]:
    try:
        head: int | None = portal.gateway.ledger.block_number()
    except Exception:  # the chain is away: say so on the page
        head = None
    return head, portal.indexer.indexed_block()

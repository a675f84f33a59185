"""The network page: storage nodes (up or down, space used, blocks held), the chain's height,
recent consent events (shortened addresses, no health data) and a chart of the bytes the
nodes hold (sampled by the gateway, :mod:`medmesh.portal.volume`) and the accesses logged
(from the indexer's tables) over time.

:func:`status` is the same picture without the tables, as JSON for the page's script, which
polls it to show a node or the gateway itself going down while the page is open.
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
from medmesh.portal.volume import PAGE_SAMPLE_GAP, Sample, levels

__all__ = ["ConsentEvent", "NetworkView", "NodeView", "network", "probe_nodes", "status"]

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
        return size_text(self.bytes_used) + (f" of {size_text(self.quota)}" if self.quota else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": "up" if self.up else "down",
            "used": self.used_text if self.up else None,
            "blocks": self.blocks if self.up else None,
        }


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
    stored: int | None  # bytes the nodes that answered hold now


def size_text(n: float) -> str:
    """A byte count as people read it (1 KB = 1024 B)."""
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


def probe_nodes(portal: Portal) -> list[NodeView]:
    """Every known node, asked in turn (the sampler's thread: no event loop)."""
    return [_probe(u) for u in node_urls(portal)]


def volume_of(nodes: list[NodeView]) -> tuple[int, int, int]:
    """``(bytes held by the nodes that answered, nodes up, nodes known)``."""
    up = [n for n in nodes if n.up]
    return sum(n.bytes_used for n in up), len(up), len(nodes)


async def _probe_all(portal: Portal) -> list[NodeView]:
    urls = await asyncio.to_thread(node_urls, portal)
    return list(await asyncio.gather(*(asyncio.to_thread(_probe, u) for u in urls)))


def _tables(portal: Portal) -> tuple[list[ConsentEvent], int, list[float]]:
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
        records = int(conn.execute(sa.select(sa.func.count()).select_from(records_t)).scalar_one())
        accessed = [float(t) for (t,) in conn.execute(sa.select(access_t.c.at))]
    return events, records, accessed


def _scope(text: str) -> str:
    label = scope_label(bytes.fromhex(text[2:]))
    return "one record" if label.startswith("one record") else label


def _chart(samples: list[Sample], accessed: list[float], now: float) -> str:
    times = [x.at for x in samples] + accessed
    if not times:
        return ""
    start = min(times)
    end = max(max(times), now if now - start < 30 * 86400 else max(times))
    return line_chart(
        "Stored volume and accesses logged over time",
        [
            Series("stored on nodes", levels(samples, start=start, end=end), "stored", size_text),
            Series("accesses logged (per interval)", buckets(accessed, start=start, end=end), "accessed"),
        ],
        chart_id="volume",
    )  # fmt: skip


async def network(portal: Portal) -> NetworkView:
    nodes, (events, records, accessed), (head, indexed) = await asyncio.gather(
        _probe_all(portal), asyncio.to_thread(_tables, portal), asyncio.to_thread(_height, portal)
    )
    used, up, known = volume_of(nodes)
    if known:  # the probes were made anyway: a sample for the chart
        sample = Sample(portal.clock(), used, up, known)
        await asyncio.to_thread(portal.volume.add, sample, min_gap=PAGE_SAMPLE_GAP)
    samples = await asyncio.to_thread(portal.volume.samples)
    return NetworkView(
        nodes, head, indexed, events, _chart(samples, accessed, portal.clock()),
        records, len(accessed), used if up else None,
    )  # fmt: skip


async def status(portal: Portal) -> dict[str, Any]:
    """The gateway is answering (this is its answer), the chain's height and every node's
    state: what the network page's script shows while the page stays open."""
    nodes, (head, indexed) = await asyncio.gather(
        _probe_all(portal), asyncio.to_thread(_height, portal)
    )
    return {
        "gateway": "up",
        "height": head,
        "indexed": indexed,
        "nodes": [n.as_json() for n in nodes],
    }


def _height(portal: Portal) -> tuple[int | None, int | None]:
    try:
        head: int | None = portal.gateway.ledger.block_number()
    except Exception:  # the chain is away: say so on the page
        head = None
    return head, portal.indexer.indexed_block()

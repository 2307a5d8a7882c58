"""The demo: a network of real nodes on loopback, exercised and measured.

Every node has its own identity and SQLite store in a temporary folder; half
of them publish content blocks and signed records, others fetch them by key,
and the report gives success rates and latency percentiles.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from aether.node.config import NodeConfig
from aether.simulations.network import local_network
from aether.simulations.stats import percentiles

SAMPLE_TEXTS = [
    "# Pattern-DHT-001: Kademlia DHT for pattern discovery\n",
    "# Pattern-TRUST-001: Circle of trust key sharing\n",
    "# Pattern-STORAGE-001: Device-aware storage allocation\n",
    "# Pattern-MESH-001: Neural mesh\n",
]


async def run_demo(*, nodes: int = 50, seed: int = 1, items: int = 20,
                   progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    say = progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="aether-demo-") as tmp:
        started = time.monotonic()
        say(f"starting {nodes} nodes on 127.0.0.1 ...")
        async with local_network(Path(tmp), nodes, NodeConfig(), seed=seed) as network:
            join_s = time.monotonic() - started
            say(f"network joined in {join_s:.1f} s; publishing {items} blocks and {items} records ...")
            blocks, records, put_ms = [], [], []
            for i in range(items):
                publisher = rng.choice(network)
                data = (SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] + f"\nrevision {i} seed {seed}\n").encode()
                t0 = time.perf_counter()
                report = await publisher.put_block(data)
                put_ms.append((time.perf_counter() - t0) * 1000)
                blocks.append((report.key, data, report.stored))
                t0 = time.perf_counter()
                record = await publisher.publish_record("demo", f"note-{i}".encode(), f"note {i}".encode())
                put_ms.append((time.perf_counter() - t0) * 1000)
                records.append((record.key, record.payload))
            say("fetching each from a different node ...")
            get_ms, ok = [], 0
            for key, data, _ in blocks:
                t0 = time.perf_counter()
                got = await rng.choice(network).get_block(key)
                get_ms.append((time.perf_counter() - t0) * 1000)
                ok += got == data
            for key, payload in records:
                t0 = time.perf_counter()
                got = await rng.choice(network).get_record(key)
                get_ms.append((time.perf_counter() - t0) * 1000)
                ok += got is not None and got.payload == payload
            replicas = [stored for _, _, stored in blocks]
            return {
                "nodes": nodes,
                "seed": seed,
                "join_seconds": round(join_s, 2),
                "published": 2 * items,
                "fetched_ok": ok,
                "fetch_success": ok / (2 * items),
                "replicas_per_block": {"min": min(replicas), "max": max(replicas)},
                "publish_ms": percentiles(put_ms),
                "fetch_ms": percentiles(get_ms),
            }


def render(report: dict[str, Any]) -> str:
    p, f = report["publish_ms"], report["fetch_ms"]
    return "\n".join([
        f"aether-node demo: {report['nodes']} nodes on 127.0.0.1 (seed {report['seed']})",
        f"  joined in           {report['join_seconds']:.2f} s",
        f"  published           {report['published']} values (blocks and signed records)",
        f"  replicas per block  {report['replicas_per_block']['min']}..{report['replicas_per_block']['max']}",
        f"  fetch success       {report['fetched_ok']}/{report['published']} ({report['fetch_success']:.0%})",
        f"  publish latency     p50 {p['p50']:.1f} ms  p90 {p['p90']:.1f} ms  p99 {p['p99']:.1f} ms",
        f"  fetch latency       p50 {f['p50']:.1f} ms  p90 {f['p90']:.1f} ms  p99 {f['p99']:.1f} ms",
    ])

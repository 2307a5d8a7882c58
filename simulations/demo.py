"""The demo: a network of real nodes on loopback, sharing the project's example patterns.

Every node has its own identity and SQLite store in a temporary folder. The
example patterns (``simulations/patterns/*.md``) are each published from a
random node, then fetched by pattern ID and by hash from other nodes (byte for
byte, checked), and searched for by words of their titles and by type. The
report gives success rates, replicas per pattern and latency percentiles.
"""

from __future__ import annotations

import random
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from aether.node.config import NodeConfig
from aether.node.entries import words
from aether.node.pattern import parse_pattern
from aether.node.patterns import PatternLibrary
from aether.simulations.network import local_network
from aether.simulations.stats import percentiles


def example_patterns() -> dict[str, bytes]:
    """The example pattern documents shipped with the project, by file name."""
    folder = resources.files("aether.simulations") / "patterns"
    return {item.name: item.read_bytes() for item in sorted(folder.iterdir(), key=lambda i: i.name)
            if item.name.endswith(".md")}


async def run_demo(*, nodes: int = 50, seed: int = 1,
                   progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    say = progress or (lambda _: None)
    documents = example_patterns()
    with tempfile.TemporaryDirectory(prefix="aether-demo-") as tmp:
        started = time.monotonic()
        say(f"starting {nodes} nodes on 127.0.0.1 ...")
        async with local_network(Path(tmp), nodes, NodeConfig(), seed=seed) as network:
            libraries = [PatternLibrary(node) for node in network]
            join_s = time.monotonic() - started
            say(f"network joined in {join_s:.1f} s; publishing {len(documents)} example patterns ...")
            published, publish_ms, replicas = [], [], []
            for name, data in documents.items():
                publisher = rng.randrange(nodes)
                t0 = time.perf_counter()
                result = await libraries[publisher].publish(data, name)
                publish_ms.append((time.perf_counter() - t0) * 1000)
                replicas.append(result.replicas)
                published.append((publisher, result.pattern, data))
                say(f"  {result.pattern.hash[:16]} {result.pattern.id:<20} from node {publisher} "
                    f"({result.replicas} replicas)")

            say("fetching each by ID and by hash from other nodes ...")
            fetch_ms, fetched_ok, fetches = [], 0, 0
            for publisher, pattern, data in published:
                for ref in (pattern.id, pattern.hash):
                    reader = rng.choice([i for i in range(nodes) if i != publisher])
                    t0 = time.perf_counter()
                    try:
                        got = await libraries[reader].fetch(ref)
                        fetched_ok += got.data == data
                    except LookupError:
                        pass
                    fetch_ms.append((time.perf_counter() - t0) * 1000)
                    fetches += 1

            say("searching ...")
            searches, search_hits, search_ms = [], 0, []
            for _, pattern, _ in published:
                term = next(iter(words(pattern.name)), pattern.type.lower())
                t0 = time.perf_counter()
                found = await rng.choice(libraries).search([term])
                search_ms.append((time.perf_counter() - t0) * 1000)
                hit = any(a.summary.hash == pattern.hash for a in found)
                search_hits += hit
                searches.append({"term": term, "pattern": pattern.id, "found": hit, "results": len(found)})
            types = sorted({p.type for _, p, _ in published})
            by_type = {t: len(await libraries[0].search([f"type:{t}"])) for t in types}
            return {
                "nodes": nodes,
                "seed": seed,
                "join_seconds": round(join_s, 2),
                "patterns": [{"id": p.id, "hash": p.hash, "bytes": len(d), "publisher": i} for i, p, d in published],
                "published": len(published),
                "replicas_per_pattern": {"min": min(replicas), "max": max(replicas)},
                "fetches": fetches,
                "fetched_ok": fetched_ok,
                "fetch_success": fetched_ok / fetches,
                "searches": searches,
                "search_success": search_hits / len(searches),
                "patterns_by_type": by_type,
                "publish_ms": percentiles(publish_ms),
                "fetch_ms": percentiles(fetch_ms),
                "search_ms": percentiles(search_ms),
            }


def render(report: dict[str, Any]) -> str:
    p, f, s = report["publish_ms"], report["fetch_ms"], report["search_ms"]
    types = ", ".join(f"{t} {n}" for t, n in report["patterns_by_type"].items())
    hits = sum(x["found"] for x in report["searches"])
    return "\n".join([
        f"aether-node demo: {report['nodes']} nodes on 127.0.0.1 (seed {report['seed']})",
        f"  joined in             {report['join_seconds']:.2f} s",
        f"  published             {report['published']} example patterns, signed by their publishing nodes",
        f"  replicas per pattern  {report['replicas_per_pattern']['min']}..{report['replicas_per_pattern']['max']}",
        f"  fetch success         {report['fetched_ok']}/{report['fetches']} byte-identical, by ID and by hash "
        f"({report['fetch_success']:.0%})",
        f"  search success        {hits}/{len(report['searches'])} found by a word of the title; by type: {types}",
        f"  publish latency       p50 {p['p50']:.1f} ms  p90 {p['p90']:.1f} ms  p99 {p['p99']:.1f} ms",
        f"  fetch latency         p50 {f['p50']:.1f} ms  p90 {f['p90']:.1f} ms  p99 {f['p99']:.1f} ms",
        f"  search latency        p50 {s['p50']:.1f} ms  p90 {s['p90']:.1f} ms  p99 {s['p99']:.1f} ms",
    ])

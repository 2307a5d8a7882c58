"""Benchmark: honest lookups through a node while one peer floods it, with and without rate limits.

    python -m aether.simulations.bench_flood [--nodes 50] [--lookups 200] [--seed 1] [--out FILE.json]

A network of ``--nodes`` real nodes on 127.0.0.1 (one process, one event
loop, as :func:`aether.simulations.network.local_network` builds it) plus
one more, the victim, with the default settings. Twenty blocks are published
from random honest nodes. Then three phases of ``--lookups`` block lookups
each, one at a time: a random honest node looks up a random published block
starting from the victim alone (``seeds=[victim]``), as a node joining through
it would; a lookup succeeds when it returns the block's exact bytes within
``LOOKUP_LIMIT`` seconds; a phase stops starting lookups after ``PHASE_LIMIT``
seconds, and those not started count as failed.

1. **quiet**: no flood;
2. **flood, limits on**: :mod:`aether.simulations.flood` runs in a process of
   its own on 127.0.0.2 and sends FIND_NODE, FIND_VALUE and STORE of valid
   blocks at the victim as fast as its socket goes, for the whole phase;
3. **flood, limits off**: the same, with the victim's limits raised out of
   reach (``1e9``), as a node without them.

Reported per phase: success rate, latency p50/p90/p99 in ms (wall clock,
nearest rank), the datagrams the flooder sent, the requests the victim
dropped and the bytes of the flooder's blocks it holds at the end (charged as
the quota charges them), and how long the flood lasted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kademlia.node import Node

from aether.node.config import NodeConfig
from aether.node.ratelimit import RequestLimits
from aether.node.values import Block, block_key
from aether.simulations.flood import BLOCK_BYTES
from aether.simulations.network import address_of, local_network, start_node
from aether.simulations.stats import percentiles
from aether.storage.store import value_charge

LOOKUP_LIMIT = 10.0
"""Seconds after which a lookup counts as failed."""
PHASE_LIMIT = 90.0
"""Seconds a phase may take; lookups not started by then count as failed."""
BLOCKS = 20
PAUSE = 0.01
"""Seconds between lookups, so one lookup's follow-up work is not on the next one's clock."""
UNLIMITED = dict(requests_per_second=1e9, requests_burst=10**9, store_bytes_per_second=10**12,
                 store_burst_bytes=10**12)


async def lookups(nodes: list, victim: Any, blocks: list[bytes], count: int, rng: random.Random) -> dict:
    via = Node(victim.node.id, *address_of(victim))
    ok, latencies = 0, []
    deadline = time.monotonic() + PHASE_LIMIT
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        node, data = rng.choice(nodes), rng.choice(blocks)
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(node.lookup(block_key(data), want_value=True, seeds=[via]), LOOKUP_LIMIT)
        except asyncio.TimeoutError:
            result = None
        latencies.append((time.perf_counter() - started) * 1000)
        if result is not None and isinstance(result.value, Block) and result.value.data == data:
            ok += 1
        await asyncio.sleep(PAUSE)
    return {"lookups": count, "started": len(latencies), "success": round(ok / count, 4),
            "latency_ms": percentiles(latencies)}


async def flooded(victim: Any, run: Any) -> dict:
    """Run ``run()`` while a flooding process sends at the victim; what it sent and what the victim did."""
    host, port = address_of(victim)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aether.simulations.flood", host, str(port), "--seconds", "600", "--max", str(10**9),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 22,
    )
    assert (await process.stdout.readline()).strip() == b"ready"
    before = dict(victim.protocol.stats)
    started = time.monotonic()
    try:
        report = await run()
    finally:
        process.stdin.close()
        sent = json.loads(await process.stdout.readline())
        await process.wait()
    seconds = time.monotonic() - started
    held = sum(value_charge(20, BLOCK_BYTES) for key in sent.pop("keys") if victim.store.contains(bytes.fromhex(key)))
    stats = victim.protocol.stats
    report["flood"] = {
        "seconds": round(seconds, 1),
        "sent": sent,
        "victim_rate_dropped": stats["rate_dropped"] - before.get("rate_dropped", 0),
        "victim_store_refused_busy": stats["store_refused_busy"] - before.get("store_refused_busy", 0),
        "victim_held_flood_bytes": held,
    }
    return report


async def bench(nodes: int, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    config = NodeConfig(refresh_interval=3600, republish_interval=3600, replicate_interval=3600)
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as base:
        async with local_network(Path(base) / "net", nodes, config, seed=seed) as honest:
            victim = await start_node(Path(base) / "victim", config)
            try:
                await victim.bootstrap([address_of(honest[0])])
                blocks = [rng.randbytes(2000) for _ in range(BLOCKS)]
                for data in blocks:
                    await rng.choice(honest).put_block(data)
                phases = {"quiet": await lookups(honest, victim, blocks, count, rng)}
                phases["flood, limits on"] = await flooded(victim, lambda: lookups(honest, victim, blocks, count, rng))
                victim.protocol.limits = RequestLimits(config.replace(**UNLIMITED), clock=victim.protocol._clock)
                phases["flood, limits off"] = await flooded(victim, lambda: lookups(honest, victim, blocks, count, rng))
            finally:
                victim.stop()
                victim.store.close()
    return phases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.time()
    phases = asyncio.run(bench(args.nodes, args.lookups, args.seed))
    report = {
        "nodes": args.nodes, "lookups": args.lookups, "seed": args.seed, "nproc": os.cpu_count(),
        "python": platform.python_version(), "seconds": round(time.time() - started, 1), "phases": phases,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

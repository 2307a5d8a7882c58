"""Many real nodes in one process: real UDP sockets on loopback, a real home each.

Used by the demo, the tests and the benchmarks, so that all of them build
networks the same way: every node gets its own identity and SQLite store in a
directory of its own, listens on 127.0.0.1 with a port the OS picks, and joins
through a node that is already in the network.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from aether.crypto.identity import Identity
from aether.node.config import NodeConfig
from aether.node.server import AetherNode
from aether.storage.store import Store

LOOPBACK = "127.0.0.1"
QUIET = NodeConfig(
    refresh_interval=3600, republish_interval=3600, replicate_interval=3600, expire_interval=3600,
    contacts_save_interval=3600,
)
"""Maintenance an hour apart: a measurement or a fuzzer, not the node's own jobs, drives the traffic."""


async def start_node(
    home: Path, config: NodeConfig | None = None, *, port: int = 0, host: str = LOOPBACK
) -> AetherNode:
    """A node with a fresh (or existing) identity and store in ``home``, listening on loopback.

    ``host`` may be any address of 127.0.0.0/8 (Linux answers on all of them), so
    tests of per-address and per-subnet limits can put nodes on several hosts.
    """
    home.mkdir(parents=True, exist_ok=True)
    identity = Identity.load(home) if Identity.exists(home) else _new_identity(home)
    node = AetherNode(identity, Store(home / "node.db"), config)
    await node.listen(port, host)
    return node


def _new_identity(home: Path) -> Identity:
    identity = Identity.generate()
    identity.save(home)
    return identity


async def join_all(nodes: list, *, seed: int = 0, batch: int = 50) -> None:
    """Join each node through a random node that has already joined, in growing waves.

    A network grows from its first node: each wave is at most as large as the
    network it joins (1, 2, 4, ... nodes) and at most ``batch`` joins run at
    once. Works for stock ``kademlia`` servers too: only ``bootstrap`` and the
    listening address are used.
    """
    rng = random.Random(seed)
    joined = 1
    while joined < len(nodes):
        wave = range(joined, min(len(nodes), joined + min(batch, joined)))
        await asyncio.gather(*(nodes[i].bootstrap([address_of(nodes[rng.randrange(joined)])]) for i in wave))
        joined = wave.stop


def address_of(node) -> tuple[str, int]:
    return node.transport.get_extra_info("sockname")[:2]


def stop_all(nodes: list[AetherNode]) -> None:
    for node in nodes:
        node.stop()
        node.store.close()


@asynccontextmanager
async def local_network(
    base: Path, size: int, config: NodeConfig | None = None, *, seed: int = 0
) -> AsyncIterator[list[AetherNode]]:
    """``size`` joined nodes under ``base``; stopped and closed on exit."""
    nodes: list[AetherNode] = []
    try:
        for i in range(size):
            nodes.append(await start_node(base / f"node-{i:04d}", config))
        await join_all(nodes, seed=seed)
        yield nodes
    finally:
        stop_all(nodes)

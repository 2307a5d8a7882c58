"""The large-scale model: the node's own protocol, routing and lookup code over an in-memory network.

Real nodes cost a socket and a database each; a network of 100,000 does not fit one
machine that way. Here every node is the node's own :class:`AetherProtocol` (wire
encoding, RTT-adapted timeouts, failure counting) with its own
:class:`AetherRoutingTable`, and lookups are the node's own :class:`Lookup`; only
three things are the model's:

* the transport: datagrams go through memory with a delay drawn per datagram,
  and to a dead node they are lost (the asker's own timeout then fires);
* the clock: an event loop whose time jumps to the next timer when nothing is
  ready, so a 100 ms round trip costs no real time and timeouts are exact;
* the routing tables at the start: a converged table per node, each bucket
  filled with up to k nodes drawn at random from the IDs in its XOR range (what a
  long-running node's table looks like), built only for the nodes a run touches.

Nodes answer only FIND_NODE and PING here; they hold no values. Addresses are
labels in 127.0.0.0/8 that never reach a socket.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import selectors
from dataclasses import dataclass
from typing import Any

from kademlia.node import Node

from aether.node.config import NodeConfig
from aether.node.lookup import Lookup
from aether.node.protocol import AetherProtocol, error_reply
from aether.simulations.stats import percentiles

ID_BITS = 160


# ---------------------------------------------------------------------- simulated time
class _JumpingSelector:
    """A selector that never sleeps: asked to wait, it moves the loop's clock forward instead."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualClockLoop):
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        if timeout is not None and timeout > 0:
            self._loop.advance(timeout)
        return self._inner.select(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on simulated time: ``loop.time()`` moves only by jumping to the next timer."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


# ---------------------------------------------------------------------- the network
class _Owner:
    """What :class:`AetherProtocol` asks of its node, for a node that holds no values."""

    def __init__(self, node: Node, config: NodeConfig):
        self.node, self.config, self.store = node, config, None
        self.ksize, self.alpha = config.ksize, config.alpha

    def on_new_contact(self, node: Node) -> None:
        pass  # nothing to hand off

    def accept_store(self, key: Any, value: Any) -> Any:
        return error_reply("refused", "model nodes hold no values")

    def local_value(self, key: bytes, offset: int = 0) -> None:
        return None


class _MemoryTransport:
    def __init__(self, network: MemoryNetwork, address: tuple[str, int]):
        self.network, self.address = network, address

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.network.send(self.address, (addr[0], addr[1]), data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.address if name == "sockname" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _address(index: int) -> tuple[str, int]:
    return f"127.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 4000 + (index >> 24)


class MemoryNetwork:
    """``n`` nodes with random IDs; each node's protocol and table is made the first time it is needed."""

    def __init__(self, n: int, *, config: NodeConfig | None = None, seed: int = 1, latency_ms: float = 40.0,
                 dead: float = 0.0):
        self.rng = random.Random(seed)
        self.config = config or NodeConfig()
        self.latency = latency_ms / 1000
        ids = sorted({self.rng.getrandbits(ID_BITS) for _ in range(n)})
        while len(ids) < n:  # a repeat among 2^160 is next to impossible, but the count must hold
            ids = sorted(set(ids) | {self.rng.getrandbits(ID_BITS)})
        self.ids = ids
        self.index = {value: i for i, value in enumerate(ids)}
        self.by_address = {_address(i): i for i in range(n)}
        self.dead = set(self.rng.sample(range(n), int(dead * n)))
        """Nodes still in others' tables that no longer answer (killed abruptly)."""
        self.protocols: dict[int, AetherProtocol] = {}
        self._nodes: dict[int, Node] = {}
        self.datagrams = 0

    def node(self, i: int) -> Node:
        found = self._nodes.get(i)
        if found is None:
            host, port = _address(i)
            found = self._nodes[i] = Node(self.ids[i].to_bytes(20, "big"), host, port)
        return found

    def protocol(self, i: int) -> AetherProtocol:
        """Node ``i``'s protocol, with a converged routing table, made on first use."""
        protocol = self.protocols.get(i)
        if protocol is None:
            node = self.node(i)
            protocol = AetherProtocol(_Owner(node, self.config))
            protocol.connection_made(_MemoryTransport(self, (node.ip, node.port)))
            for j in self._table(i):
                protocol.router.add_contact(self.node(j))
            self.protocols[i] = protocol
        return protocol

    def _table(self, i: int) -> list[int]:
        """Up to k nodes from each XOR distance range [2^b, 2^(b+1)) of node ``i``, at random."""
        own, k = self.ids[i], self.config.ksize
        chosen = []
        for b in range(ID_BITS - 1, -1, -1):
            low = ((own >> (b + 1)) << (b + 1)) | ((~own >> b & 1) << b)
            first = bisect.bisect_left(self.ids, low)
            last = bisect.bisect_left(self.ids, low + (1 << b))
            if last - first <= k:
                chosen.extend(range(first, last))
            else:
                chosen.extend(self.rng.sample(range(first, last), k))
        return chosen

    def send(self, source: tuple[str, int], destination: tuple[str, int], data: bytes) -> None:
        self.datagrams += 1
        j = self.by_address.get(destination)
        if j is None or j in self.dead:
            return  # lost: the sender's timeout will tell it
        delay = self.rng.lognormvariate(math.log(self.latency), 0.5) if self.latency else 0.0
        asyncio.get_running_loop().call_later(delay, self._deliver, j, data, source)

    def _deliver(self, j: int, data: bytes, source: tuple[str, int]) -> None:
        self.protocol(j).datagram_received(data, source)

    def nearest(self, target: int, exclude: int) -> int:
        """The live node nearest to ``target`` by XOR, besides ``exclude``: what a lookup must find."""
        best, best_distance = -1, None
        position = bisect.bisect_left(self.ids, target)
        # The XOR-nearest ID shares the longest prefix; it is among the IDs sorted around the target,
        # but not always adjacent, so scan outward until the common prefix can no longer improve.
        for i in range(max(0, position - 64), min(len(self.ids), position + 64)):
            if i == exclude or i in self.dead:
                continue
            d = self.ids[i] ^ target
            if best_distance is None or d < best_distance:
                best, best_distance = i, d
        return best


@dataclass
class LookupStats:
    n: int
    lookups: int
    found: float
    """Share of lookups whose closest answer is the live node nearest to the key."""
    hops: dict[str, float]
    messages: dict[str, float]
    seconds: dict[str, float]
    touched: int
    """Nodes whose protocol and table the run built."""


async def _lookups(network: MemoryNetwork, count: int) -> LookupStats:
    rng = network.rng
    live = [i for i in range(len(network.ids)) if i not in network.dead]
    hops, messages, seconds, found = [], [], [], 0
    for _ in range(count):
        asker = rng.choice(live)
        protocol = network.protocol(asker)
        target = rng.getrandbits(ID_BITS)
        key = target.to_bytes(20, "big")
        k = network.config.ksize
        seeds = protocol.router.find_neighbors(Node(key), k=k)
        result = await Lookup(protocol, key, seeds, k=k, alpha=network.config.alpha, want_value=False).run()
        hops.append(result.hops)
        messages.append(result.messages)
        seconds.append(result.seconds)
        nearest = network.nearest(target, asker)
        found += bool(result.closest) and result.closest[0].long_id == network.ids[nearest]
    return LookupStats(len(network.ids), count, found / count, percentiles(hops, (50, 90, 99)),
                       percentiles(messages, (50, 90, 99)), percentiles(seconds, (50, 90, 99)),
                       len(network.protocols))


def run_lookups(n: int, count: int = 200, *, seed: int = 1, dead: float = 0.0, latency_ms: float = 40.0,
                config: NodeConfig | None = None) -> LookupStats:
    """``count`` lookups of random keys from random live nodes in a modelled network of ``n`` nodes."""
    network = MemoryNetwork(n, config=config, seed=seed, latency_ms=latency_ms, dead=dead)
    return _run(_lookups(network, count))


def _run(work: Any) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(work)
    finally:
        # Pings a full bucket sent to its oldest contact may still wait for their timeout.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)

        loop.run_until_complete(drain())
        loop.close()

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


# ---------------------------------------------------------------------- availability under churn
@dataclass
class Availability:
    n: int
    patterns: int
    median_session_s: float
    hours: float
    samples: list[dict[str, float]]
    """Per sample: hour, share of nodes online, share of patterns findable, share held by no node online."""

    @property
    def findable(self) -> dict[str, float]:
        values = [s["findable"] for s in self.samples]
        return {"mean": round(sum(values) / len(values), 5), "min": min(values)}


def _weibull_median(rng: random.Random, median: float, shape: float = 0.5) -> float:
    """A session (or absence) length: Weibull with shape 0.5, the heavy tail measured in deployed DHTs."""
    scale = median / math.log(2) ** (1 / shape)
    return rng.weibullvariate(scale, shape)


def run_availability(n: int = 10_000, patterns: int = 200, *, median_session_s: float = 3600.0,
                     hours: float = 24.0, step_s: float = 300.0, seed: int = 1,
                     config: NodeConfig | None = None) -> Availability:
    """Patterns' availability while nodes come and go, under the node's replication policy.

    A model of the policy, not of the code (100,000 SQLite stores do not fit one
    machine): each node alternates sessions online and absences with the same
    heavy-tailed length distribution (Weibull, shape 0.5, the given median), keeping
    its data while away, as a node's store does. A pattern is placed on the k closest
    online nodes; a node that comes online gets the patterns it is now among the k
    closest to from an online holder (the hand-off to a new contact); every
    ``replicate_interval`` each online holder copies its patterns to the k closest
    online nodes. A pattern counts as findable when one of the k online nodes
    closest to its key holds it, which is where a lookup looks.
    """
    config = config or NodeConfig()
    rng = random.Random(seed)
    k = config.ksize
    ids = sorted({rng.getrandbits(ID_BITS) for _ in range(n)})
    n = len(ids)
    online = [rng.random() < 0.5 for _ in range(n)]
    change_at = [_weibull_median(rng, median_session_s) for _ in range(n)]
    keys = [rng.getrandbits(ID_BITS) for _ in range(patterns)]

    def closest_online(key: int) -> list[int]:
        # The k XOR-closest lie in the smallest aligned block around the key holding k online nodes.
        for bits in range(ID_BITS - 24, ID_BITS + 1, 2):
            low = (key >> bits) << bits
            first = bisect.bisect_left(ids, low)
            last = bisect.bisect_left(ids, low + (1 << bits))
            live = [i for i in range(first, last) if online[i]]
            if len(live) >= k or bits >= ID_BITS:
                return sorted(live, key=lambda i: ids[i] ^ key)[:k]
        return []

    holders = [set(closest_online(key)) for key in keys]
    samples, t, next_replication = [], 0.0, config.replicate_interval
    end = hours * 3600
    while t < end:
        t += step_s
        joined = []
        for i in range(n):
            while change_at[i] <= t:
                online[i] = not online[i]
                change_at[i] += _weibull_median(rng, median_session_s)
                if online[i]:
                    joined.append(i)
        replicate = t >= next_replication
        if replicate:
            next_replication += config.replicate_interval
        fresh = set(joined)
        findable = lost = 0
        for p, key in enumerate(keys):
            near = closest_online(key)
            held_online = any(online[h] for h in holders[p])
            if held_online and (replicate or fresh.intersection(near)):
                holders[p].update(near)  # re-replication, or the hand-off to nodes that just came
            findable += any(h in holders[p] for h in near)
            lost += not held_online
        samples.append({"hour": round(t / 3600, 3), "online": round(sum(online) / n, 4),
                        "findable": round(findable / patterns, 5), "unheld": round(lost / patterns, 5)})
    return Availability(n, patterns, median_session_s, hours, samples)


# ---------------------------------------------------------------------- report
CHURN_MEDIANS = (600.0, 3600.0, 4 * 3600.0)
"""Median session lengths the availability model runs: 10 minutes, one hour, four hours."""


def model_report(n: int, *, lookups: int = 200, seed: int = 1, dead: float = 0.0, patterns: int = 200,
                 hours: float = 24.0, availability_nodes: int = 10_000) -> dict[str, Any]:
    """Lookup rounds and messages at ``n`` nodes beside log2 N and log2 log2 N, and availability under churn."""
    stats = run_lookups(n, lookups, seed=seed, dead=dead)
    churn = []
    for median in CHURN_MEDIANS:
        a = run_availability(min(n, availability_nodes), patterns, median_session_s=median, hours=hours, seed=seed)
        churn.append({"median_session_s": median, "nodes": a.n, "patterns": a.patterns, "hours": hours,
                      "findable": a.findable, "online": round(sum(s["online"] for s in a.samples) / len(a.samples), 3),
                      "unheld_max": max(s["unheld"] for s in a.samples)})
    return {
        "mode": "model", "nodes": n, "seed": seed, "dead": dead, "lookups": stats.lookups, "found": stats.found,
        "rounds": stats.hops, "messages": stats.messages, "seconds": stats.seconds, "touched": stats.touched,
        "log2_n": round(math.log2(n), 2), "log2_log2_n": round(math.log2(math.log2(n)), 2),
        "availability": churn,
    }


def render_model(r: dict[str, Any]) -> str:
    rounds, messages = r["rounds"], r["messages"]
    lines = [
        f"aether-node simulate --model: {r['nodes']:,} nodes on simulated time (seed {r['seed']}"
        + (f", {r['dead']:.0%} dead" if r["dead"] else "") + ")",
        f"  lookups             {r['lookups']}, found the nearest live node in {r['found']:.1%}",
        f"  rounds per lookup   p50 {rounds['p50']:.0f}, p90 {rounds['p90']:.0f}, p99 {rounds['p99']:.0f}"
        f"   (log2 N = {r['log2_n']}, log2 log2 N = {r['log2_log2_n']})",
        f"  messages per lookup p50 {messages['p50']:.0f}, p90 {messages['p90']:.0f}, p99 {messages['p99']:.0f}",
        f"  simulated time      p50 {r['seconds']['p50'] * 1000:.0f} ms, p99 {r['seconds']['p99'] * 1000:.0f} ms "
        f"(40 ms median one-way latency)",
    ]
    for a in r["availability"]:
        lines.append(f"  churn, sessions of {a['median_session_s'] / 60:>4.0f} min median: {a['patterns']} patterns on "
                     f"{a['nodes']:,} nodes for {a['hours']:.0f} h: findable {a['findable']['mean']:.2%} on average, "
                     f"{a['findable']['min']:.2%} at worst ({a['online']:.0%} of nodes online)")
    return "\n".join(lines)

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

Honest nodes answer FIND_NODE, FIND_VALUE (for values the run placed on them)
and PING. A share of nodes may be malicious (:data:`KINDS`, :class:`MaliciousProtocol`),
to measure how lookups fare against peers that lie or keep silent. Addresses are
labels in 127.0.0.0/8 that never reach a socket.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import selectors
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from kademlia.node import Node

from aether.node.config import NodeConfig
from aether.node.lookup import Lookup, LookupResult, find_value, seeds_for
from aether.node.protocol import AetherProtocol, error_reply, is_node_id
from aether.node.values import Block, block_key
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
    """What :class:`AetherProtocol` asks of its node: the values the run placed on it, and no stores."""

    def __init__(self, node: Node, config: NodeConfig, held: dict[bytes, bytes]):
        self.node, self.config, self.store, self.held = node, config, None, held
        self.ksize, self.alpha = config.ksize, config.alpha

    def on_new_contact(self, node: Node) -> None:
        pass  # nothing to hand off

    def accept_store(self, key: Any, value: Any) -> Any:
        return error_reply("refused", "model nodes hold no values")

    def local_value(self, key: bytes, offset: int = 0) -> bytes | None:
        return self.held.get(key) if offset == 0 else None


KINDS = ("silent", "eclipse", "fabricate", "tamper")
"""How a malicious node misbehaves. *silent*: never answers. *eclipse*: answers FIND_NODE and
FIND_VALUE with no value and with the colluders nearest the key as its contacts, so that a
lookup meets only colluders near the key. *fabricate*: answers with no value and with made-up
contacts next to the key, at addresses where nobody answers. *tamper*: answers FIND_VALUE with
a wrong value (and FIND_NODE honestly)."""


class MaliciousProtocol(AetherProtocol):
    """A node's own protocol with its find answers replaced by the lies of its ``kind``.

    Everything else (wire format, routing table, PING) stays honest, so the node
    stays in its peers' tables as a colluder would take care to.
    """

    def __init__(self, owner: _Owner, network: MemoryNetwork, kind: str):
        super().__init__(owner)
        self.network, self.kind = network, kind

    def rpc_find_node(self, sender: tuple, nodeid: Any, key: Any) -> Any:
        if self.kind == "tamper":
            return super().rpc_find_node(sender, nodeid, key)
        return self._lie(key)

    def rpc_find_value(self, sender: tuple, nodeid: Any, key: Any, offset: Any = 0) -> Any:
        if self.kind == "tamper":
            return {"value": self.network.rng.randbytes(64)}
        return self._lie(key)

    def _lie(self, key: Any) -> Any:
        if not is_node_id(key):
            return error_reply("malformed", "key must be 20 bytes")
        target, k = int.from_bytes(key, "big"), self.router.ksize
        if self.kind == "eclipse":
            nodes = [self.network.node(j) for j in self.network.colluders_near(target, k + 1)]
        else:
            # IDs that share 40 leading bits with the key, nearer than any real node of a
            # network under 2^40 nodes; their addresses are past the network's.
            rng, n = self.network.rng, len(self.network.ids)
            nodes = [Node((target ^ rng.getrandbits(120)).to_bytes(20, "big"), *_address(n + rng.randrange(n)))
                     for _ in range(k)]
        return [[node.id, node.ip, node.port] for node in nodes if node.id != self.source_node.id][:k]


def xor_nearest(ids: list[int], target: int, count: int) -> list[int]:
    """Positions in the sorted ``ids`` of the ``count`` IDs nearest to ``target`` by XOR, nearest first.

    The IDs sharing the longest prefix with the target are nearest; they sit in the
    smallest aligned block around the target that holds ``count`` of them.
    """
    for bits in range(0, ID_BITS + 1, 4):
        low = (target >> bits) << bits
        first = bisect.bisect_left(ids, low)
        last = bisect.bisect_left(ids, low + (1 << bits))
        if last - first >= count or bits >= ID_BITS:
            return sorted(range(first, last), key=lambda i: ids[i] ^ target)[:count]
    return []


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
                 dead: float = 0.0, malicious: float = 0.0, kind: str = "eclipse"):
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
        self.malicious: dict[int, str] = {}
        """Malicious nodes and their kinds (:data:`KINDS`); set before the run touches them."""
        self._colluders: list[int] = []
        self.held: dict[int, dict[bytes, bytes]] = {}
        """Values placed on honest nodes, by node."""
        self.protocols: dict[int, AetherProtocol] = {}
        self._nodes: dict[int, Node] = {}
        self.datagrams = 0
        if malicious:
            honest = [i for i in range(n) if i not in self.dead]
            self.make_malicious(self.rng.sample(honest, int(malicious * n)), kind)

    def make_malicious(self, indices: list[int], kind: str) -> None:
        """Turn the nodes at ``indices`` malicious of ``kind``; eclipse attackers collude with each other."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        for i in indices:
            self.malicious[i] = kind
        self._colluders = sorted(self.ids[i] for i, k in self.malicious.items() if k == "eclipse")

    def colluders_near(self, target: int, count: int) -> list[int]:
        """The eclipse attackers nearest to ``target``, nearest first: what each of them answers about it."""
        return [self.index[self._colluders[p]] for p in xor_nearest(self._colluders, target, count)]

    def place(self, data: bytes) -> bytes:
        """Store ``data`` as a block where a publish puts it, on the k nodes nearest its key; its key.

        Malicious nodes among them keep nothing (or keep it and deny it: the same to an asker).
        """
        key = block_key(data)
        for i in xor_nearest(self.ids, int.from_bytes(key, "big"), self.config.ksize):
            if i not in self.malicious:
                self.held.setdefault(i, {})[key] = data
        return key

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
            owner = _Owner(node, self.config, self.held.setdefault(i, {}))
            kind = self.malicious.get(i)
            protocol = AetherProtocol(owner) if kind is None else MaliciousProtocol(owner, self, kind)
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
        if j is None or j in self.dead or self.malicious.get(j) == "silent":
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


async def _lookups(network: MemoryNetwork, count: int, paths: int = 1) -> LookupStats:
    rng = network.rng
    live = [i for i in range(len(network.ids)) if i not in network.dead]
    hops, messages, seconds, found = [], [], [], 0
    for _ in range(count):
        asker = rng.choice(live)
        protocol = network.protocol(asker)
        target = rng.getrandbits(ID_BITS)
        key = target.to_bytes(20, "big")
        k = network.config.ksize
        seeds = seeds_for(protocol, key, k, paths)
        result = await Lookup(protocol, key, seeds, k=k, alpha=network.config.alpha, want_value=False,
                              paths=paths).run()
        hops.append(result.hops)
        messages.append(result.messages)
        seconds.append(result.seconds)
        nearest = network.nearest(target, asker)
        found += bool(result.closest) and result.closest[0].long_id == network.ids[nearest]
    return LookupStats(len(network.ids), count, found / count, percentiles(hops, (50, 90, 99)),
                       percentiles(messages, (50, 90, 99)), percentiles(seconds, (50, 90, 99)),
                       len(network.protocols))


def run_lookups(n: int, count: int = 200, *, seed: int = 1, dead: float = 0.0, latency_ms: float = 40.0,
                config: NodeConfig | None = None, paths: int = 1) -> LookupStats:
    """``count`` lookups of random keys from random live nodes in a modelled network of ``n`` nodes.

    A lookup on ``paths`` disjoint paths costs what a record lookup costs, which
    always goes on to each path's k closest."""
    network = MemoryNetwork(n, config=config, seed=seed, latency_ms=latency_ms, dead=dead)
    return _run(_lookups(network, count, paths))


@dataclass
class ValueLookupStats:
    n: int
    kind: str
    share: float
    paths: int
    """Disjoint paths of the defence (1: a plain lookup only)."""
    lookups: int
    found: float
    """Share of lookups that returned the stored value."""
    messages: dict[str, float]
    """Requests per lookup, the retry on d paths included: mean, p50, p99."""
    retried: float
    """Share of lookups that found nothing on one path and took the d paths."""


async def fetch_block(network: MemoryNetwork, asker: int, key: bytes, paths: int) -> LookupResult:
    """A lookup of a block the way a node fetches one (:meth:`AetherNode.get_block`), d paths its fallback."""
    protocol, k, alpha = network.protocol(asker), network.config.ksize, network.config.alpha

    def run(d: int) -> Awaitable[LookupResult]:
        return Lookup(protocol, key, seeds_for(protocol, key, k, d), k=k, alpha=alpha, want_value=True, paths=d).run()

    return await find_value(run, paths=paths)


async def _fetch(network: MemoryNetwork, asker: int, key: bytes, data: bytes, paths: int) -> tuple[bool, int, bool]:
    """One fetch of ``key``: found it, requests sent, took the d paths."""
    result = await fetch_block(network, asker, key, paths)
    return isinstance(result.value, Block) and result.value.data == data, result.messages, result.paths > 1


async def _value_lookups(network: MemoryNetwork, count: int, paths: int, seed: int) -> list[tuple[bool, int, bool]]:
    """``count`` fetches of freshly placed values by random honest nodes.

    Keys and askers come from a generator of their own, so two networks built
    with the same seed see the same fetches whatever their lookups did.
    """
    rng = random.Random(seed)
    honest = [i for i in range(len(network.ids)) if i not in network.malicious and i not in network.dead]
    fetches = []
    for _ in range(count):
        data = rng.randbytes(48)
        key = network.place(data)
        asker = rng.choice([i for i in rng.sample(honest, 4) if key not in network.held.get(i, {})] or honest)
        fetches.append(await _fetch(network, asker, key, data, paths))
    return fetches


def _value_stats(n: int, kind: str, share: float, paths: int, fetches: list[tuple[bool, int, bool]]) -> ValueLookupStats:
    messages = [m for _, m, _ in fetches]
    count = len(fetches)
    return ValueLookupStats(n, kind, share, paths, count, sum(f for f, _, _ in fetches) / count,
                            {"mean": round(sum(messages) / count, 1), **percentiles(messages, (50, 99))},
                            sum(r for _, _, r in fetches) / count)


def run_value_lookups(n: int, count: int = 100, *, kind: str = "eclipse", share: float = 0.0, paths: int = 1,
                      seed: int = 1, latency_ms: float = 40.0, config: NodeConfig | None = None) -> ValueLookupStats:
    """Fetches of stored values in a network of ``n`` where ``share`` of the nodes are malicious of ``kind``.

    Each value is placed on the k nodes nearest its key (the malicious ones among
    them deny holding it) and fetched by a random honest node the way a node
    fetches a block (:func:`aether.node.lookup.find_value`), on ``paths`` paths.
    """
    network = MemoryNetwork(n, config=config, seed=seed, latency_ms=latency_ms, malicious=share, kind=kind)
    return _value_stats(n, kind, share, paths, _run(_value_lookups(network, count, paths, seed)))


def targeted_network(n: int, attackers: int, *, seed: int, config: NodeConfig | None = None,
                     latency_ms: float = 40.0) -> tuple[MemoryNetwork, bytes, bytes, int]:
    """A network where ``attackers`` eclipse colluders sit nearest one value's key; the network, key, value, an asker.

    The colluders came after the value was stored, with IDs ground to lie
    nearer its key than any holder (an ID is a hash of a public key: about n
    key pairs per node placed), so the value is held by the k honest nodes
    just past them.
    """
    network = MemoryNetwork(n, config=config, seed=seed, latency_ms=latency_ms)
    rng = random.Random(seed)
    data = rng.randbytes(48)
    key = block_key(data)
    near = xor_nearest(network.ids, int.from_bytes(key, "big"), attackers + network.config.ksize)
    network.make_malicious(near[:attackers], "eclipse")
    for i in near[attackers:]:
        network.held.setdefault(i, {})[key] = data
    asker = rng.choice([i for i in range(n) if i not in near])
    return network, key, data, asker


def run_targeted(n: int, count: int, attackers: int, *, paths: int = 1, seed: int = 1,
                 config: NodeConfig | None = None) -> ValueLookupStats:
    """``count`` fetches, each in its own network where ``attackers`` colluders sit nearest the key."""
    fetches = []
    for trial in range(count):
        network, key, data, asker = targeted_network(n, attackers, seed=seed * 100_003 + trial, config=config)
        fetches.append(_run(_fetch(network, asker, key, data, paths)))
    return _value_stats(n, "eclipse", attackers / n, paths, fetches)


ADVERSARIAL_SHARES = (0.0, 0.1, 0.2, 0.3)
TARGETED_MULTIPLES = (0.5, 1.0, 2.0)
"""Colluders placed nearest one key, in multiples of k (a quarter of the lookups each, one network per lookup)."""


def _cell(stats: ValueLookupStats) -> dict[str, Any]:
    return {"found": stats.found, "messages": stats.messages, "retried": stats.retried}


def adversarial_report(n: int, *, lookups: int = 100, seed: int = 1, paths: int | None = None,
                       shares: tuple[float, ...] = ADVERSARIAL_SHARES, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Value lookups against each kind and share of malicious nodes: one path, then the defence of d paths."""
    config = NodeConfig() if paths is None else NodeConfig(lookup_paths=paths)
    rows = []
    for kind in kinds:
        for share in shares:
            if share == 0 and kind != kinds[0]:
                continue  # nobody malicious: the same network whatever the kind
            row: dict[str, Any] = {"kind": kind if share else "none", "share": share}
            for label, d in (("single", 1), ("paths", config.lookup_paths)):
                row[label] = _cell(run_value_lookups(n, lookups, kind=kind, share=share, paths=d, seed=seed,
                                                     config=config))
            rows.append(row)
    for multiple in TARGETED_MULTIPLES:
        attackers = int(multiple * config.ksize)
        row = {"kind": "eclipse", "share": 0.0, "targeted": attackers}
        for label, d in (("single", 1), ("paths", config.lookup_paths)):
            row[label] = _cell(run_targeted(n, max(1, lookups // 4), attackers, paths=d, seed=seed, config=config))
        rows.append(row)
    # What a record lookup costs, which always takes the d paths: to the k closest, nobody malicious.
    collect = {label: run_lookups(n, lookups, seed=seed, config=config, paths=d).messages
               for label, d in (("single", 1), ("paths", config.lookup_paths))}
    return {"mode": "adversarial", "nodes": n, "seed": seed, "lookups": lookups, "k": config.ksize,
            "alpha": config.alpha, "paths": config.lookup_paths, "rows": rows, "collect_messages": collect}


def render_adversarial(r: dict[str, Any]) -> str:
    lines = [
        f"aether-node simulate --model --adversarial: {r['nodes']:,} nodes on simulated time (seed {r['seed']}), "
        f"{r['lookups']} value lookups per row, k = {r['k']}, α = {r['alpha']}, d = {r['paths']}",
        f"  {'malicious':<16} {'1 path: found':>14} {'msgs mean':>10} {'p99':>5}   "
        f"{'d paths: found':>15} {'msgs mean':>10} {'p99':>5} {'retried':>8}",
    ]
    for row in r["rows"]:
        one, d = row["single"], row["paths"]
        if row.get("targeted"):
            label = f"{row['targeted']} at the key"
        else:
            label = "none" if not row["share"] else f"{row['share']:.0%} {row['kind']}"
        lines.append(f"  {label:<16} {one['found']:>14.1%} {one['messages']['mean']:>10.1f} {one['messages']['p99']:>5.0f}   "
                     f"{d['found']:>15.1%} {d['messages']['mean']:>10.1f} {d['messages']['p99']:>5.0f} "
                     f"{d['retried']:>8.0%}")
    single, paths = r["collect_messages"]["single"], r["collect_messages"]["paths"]
    lines.append(f"  a lookup that goes on to the k closest (records, index terms), nobody malicious: messages "
                 f"p50 {single['p50']:.0f} on 1 path, {paths['p50']:.0f} on {r['paths']} (p99 {single['p99']:.0f}, "
                 f"{paths['p99']:.0f})")
    return "\n".join(lines)


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

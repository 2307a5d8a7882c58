"""Benchmark: our node against the stock ``kademlia`` server, same machine, same workload.

    python -m aether.simulations.bench_dht [--sizes 200,1000] [--ops 200] [--patterns 50] [--seed 1] [--out FILE.json]

For each network size N, two networks are built one after the other, each in a
child process of its own (this module run again with a hidden ``--child`` flag),
so that memory is measured per implementation:

* **ours**: N :class:`~aether.node.server.AetherNode` s, each with its own home
  (identity + SQLite store) in a temporary folder, built with
  :func:`aether.simulations.network.start_node`;
* **stock**: N ``kademlia.network.Server`` s (kademlia 2.2, in-memory storage).

Both listen on 127.0.0.1 with a port the OS picks and join with
:func:`aether.simulations.network.join_all` (each node bootstraps through a
node that has already joined, in waves of at most 50). The child then idles a few seconds
and measures resident memory: (RSS now - RSS before the first node was
created) / N.

The workload, identical for both (derived from ``--seed`` alone): ``--ops``
random values of 100-1000 bytes, each stored from a random node and then
fetched from a different random node. Ours stores with ``put_block(data)``
(key = hash of the data) and fetches with ``get_block(key)``; stock stores with
``set(key_string, data)`` under a key string derived from the seed and fetches
with ``get(key_string)``. All stores run first, one at a time, then all
fetches, one at a time, with a 10 ms pause between operations (``OP_PAUSE``). A fetch succeeds when it returns exactly the stored
bytes. Every phase (start, join, stores, fetches) has a time limit; operations
cut off by it count as failures.

Then, in the same networks and child processes, a **pattern phase** (skipped
with ``--patterns 0``): ``--patterns`` documents of exactly ``PATTERN_BYTES``
(20 KiB), valid pattern Markdown built from the seed (:func:`pattern_document`).
Ours publishes each from a random node with
:meth:`~aether.node.patterns.PatternLibrary.publish` (manifest and blocks on the
k closest to the pattern's key, head and index entries placed) and later fetches
it by hash with :meth:`~aether.node.patterns.PatternLibrary.fetch` from a
random node that holds no entry under the pattern's key, so the fetch goes over
the network; it succeeds when it returns the exact bytes and did not come
from the fetching node's own store. Stock cannot store 20 KiB under one key,
so it stores as many values of ``STOCK_MAX_VALUE`` bytes (the largest a stock
``set`` accepts: see its docstring) with ``set`` and reads each with ``get``
from a random node that does not hold it. Same pacing as the value phases:
all publishes, then all fetches, one at a time, ``OP_PAUSE`` between, one
time limit per phase.

Latencies are wall-clock (``time.perf_counter``) per operation in ms, reported
as nearest-rank p50/p90/p99 (:func:`aether.simulations.stats.percentiles`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aether.simulations.stats import percentiles

IMPLEMENTATIONS = ("ours", "stock")
IDLE_SECONDS = 3.0
OP_PAUSE = 0.01
"""Seconds between two operations. All nodes share one event loop here, so work
a node does after answering (a stock node's or ours: caching, hand-offs, late
replies) would otherwise land on the next operation's clock."""
MIN_VALUE, MAX_VALUE = 100, 1000
PATTERN_BYTES = 20 * 1024
"""Size of every benchmark pattern document (4 blocks of at most 6 KiB)."""
STOCK_MAX_VALUE = 8137
"""Largest value stock ``kademlia`` 2.2.3 / ``rpcudp`` 5.0.1 can ``set`` (and so ``get``).

rpcudp packs a request as ``umsgpack.packb([name, args])`` and raises
``MalformedMessage`` when that exceeds 8192 bytes; a STORE is
``["store", (node_id, key, value)]``, 55 bytes of framing around a value of
256..65535 bytes, so 8137 bytes pack to exactly 8192 and 8138 are refused
(``set`` raises). Replies are not checked, and a FIND_VALUE reply carrying 8137
bytes (8168 bytes on the wire) arrives over loopback. Found by binary search
on a 3-node stock network and confirmed with 200 set/get rounds at 8137 (all
returned the exact bytes) and 8138 (all raised); see docs/benchmarks.md.
"""
K = 20
"""Replication factor (Kademlia's k) of both networks: ours from NodeConfig, stock given it."""
PUBLISH_TARGET_MS, PUBLISH_TARGET_N = 50.0, 1000
FETCH_RATIO_TARGET = 2.0


# --------------------------------------------------------------------------- helpers
def raise_nofile_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (a node holds ~4 fds: socket, db, wal, shm)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not on Linux: fall back to psutil

    return psutil.Process().memory_info().rss


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def workload(seed: int, ops: int, n: int) -> list[tuple[bytes, str, int, int]]:
    """``(value, key_string, store_node, fetch_node)`` per operation, from the seed alone."""
    rng = random.Random(f"bench-dht-workload-{seed}")
    plan = []
    for i in range(ops):
        value = rng.randbytes(rng.randint(MIN_VALUE, MAX_VALUE))
        src = rng.randrange(n)
        dst = rng.randrange(n - 1)
        dst += dst >= src  # a different node
        plan.append((value, f"bench-{seed}-{i}", src, dst))
    return plan


_WORDS = (
    "routing table bucket contact lookup replica digest manifest block record signature author "
    "gossip overlay latency bandwidth quorum lease epoch shard partition merkle proof cache expiry "
    "peer node neighbour distance metric xor prefix hop iterative parallel timeout retry backoff "
    "churn join leave refresh republish handoff bootstrap nat hole punch relay loopback datagram "
    "frame header payload checksum nonce counter clock vector causal order conflict merge resolve "
    "index term search query rank score filter bloom sketch sample window stream batch queue "
    "window budget ledger audit trust reputation identity key rotation revocation expiry archive "
    "snapshot journal compaction segment offset cursor page chunk assemble verify reject accept"
).split()
_NAME_WORDS = (
    "adaptive bounded cached durable eager gradual hybrid layered lazy mirrored ordered "
    "pinned quorum resilient sharded signed sparse staged tiered verified"
).split()
_CATEGORIES = ("networking", "storage", "security", "discovery", "replication", "operations")
_SECTIONS = ("Context", "Problem", "Solution", "Consequences", "Known Uses")


def pattern_document(rng: random.Random, number: int, size: int = PATTERN_BYTES) -> bytes:
    """A valid pattern document of exactly ``size`` bytes, its words drawn from ``rng``.

    Title ``# Pattern-BENCH-NNN: Name``, CREATED, STATUS and CATEGORY fields,
    five sections of random words, so that no two documents (and no two of
    their blocks) are alike.
    """
    name = " ".join(w.capitalize() for w in rng.sample(_NAME_WORDS, 2)) + " " + rng.choice(_WORDS).capitalize()
    head = (
        f"# Pattern-BENCH-{number:03d}: {name}\n\n"
        f"**CREATED:** 2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:30:00Z\n"
        "**STATUS:** Active\n"
        f"**CATEGORY:** {rng.choice(_CATEGORIES)}\n"
    )
    parts, length = [head], len(head)
    quota = (size - len(head)) // len(_SECTIONS) + 1
    for title in _SECTIONS:
        section = f"\n## {title}\n\n"
        parts.append(section)
        length += len(section)
        end = min(size, length + quota)
        while length < end:
            line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 12)))
            line = line[0].upper() + line[1:] + ".\n"
            parts.append(line)
            length += len(line)
    text = "".join(parts)[: size - 1] + "\n"  # ASCII only: characters are bytes
    data = text.encode("ascii")
    assert len(data) == size
    return data


def pattern_workload(seed: int, count: int, n: int) -> list[tuple[bytes, bytes, str, int]]:
    """``(document, stock_value, stock_key_string, publish_node)`` per pattern, from the seed alone."""
    rng = random.Random(f"bench-dht-patterns-{seed}")
    plan = []
    for i in range(count):
        document = pattern_document(rng, i + 1)
        plan.append((document, rng.randbytes(STOCK_MAX_VALUE), f"bench-pattern-{seed}-{i}", rng.randrange(n)))
    return plan


def pick_fetcher(seed: int, i: int, n: int, src: int, holds: Any) -> int | None:
    """A random node other than ``src`` for which ``holds(index)`` is False (same order for both sides)."""
    order = list(range(n))
    random.Random(f"bench-dht-pattern-fetcher-{seed}-{i}").shuffle(order)
    return next((j for j in order if j != src and not holds(j)), None)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- one network (child)
def contacts_of(node) -> int:
    """Contacts in a node's routing table (same for stock and ours)."""
    return sum(len(bucket.get_nodes()) for bucket in node.protocol.router.buckets)


class _Ours:
    name = "ours"

    def __init__(self) -> None:
        from aether.node.config import NodeConfig
        from aether.node.values import block_key
        from aether.simulations import network

        self.network = network
        self.block_key = block_key
        self.config = NodeConfig()
        self._libraries: dict[int, Any] = {}

    async def start(self, base: Path, i: int):
        return await self.network.start_node(base / f"node-{i:04d}", self.config)

    def handle(self, key_string: str, value: bytes) -> bytes:
        return self.block_key(value)

    key_of = staticmethod(lambda handle: handle)

    async def store(self, node, handle: Any, key_string: str, value: bytes) -> tuple[bool, dict[str, Any]]:
        report = await node.put_block(value)
        lookup = report.lookup
        return report.stored > 0, {
            "stored": report.stored, "refused": dict(report.refused), "unreachable": report.unreachable,
            "lookup_messages": lookup.messages if lookup else None,
            "lookup_failures": lookup.failures if lookup else None,
        }

    async def fetch(self, node, handle: Any) -> bytes | None:
        return await node.get_block(handle)

    def holds(self, node, handle: Any) -> bool:
        return node.store.contains(handle)

    # -- pattern phase
    def pattern_handle(self, document: bytes, stock_value: bytes, key_string: str) -> tuple:
        """``(bytes, hash, pattern key, block keys)``."""
        from aether.node.chunks import split
        from aether.node.entries import pattern_key
        from aether.node.pattern import pattern_hash

        digest = pattern_hash(document)
        return document, digest, pattern_key(digest), split(document)[0].blocks

    def library(self, node):
        """One PatternLibrary per node, made when the node first publishes or fetches."""
        from aether.node.patterns import PatternLibrary

        lib = self._libraries.get(id(node))
        if lib is None:
            lib = self._libraries[id(node)] = PatternLibrary(node)
        return lib

    async def publish(self, node, handle: tuple, i: int) -> tuple[bool, dict[str, Any]]:
        published = await self.library(node).publish(handle[0], source=f"bench-pattern-{i}")
        detail = {"replicas": published.replicas, "index_terms": published.index_terms}
        placed_after = getattr(published, "placed_after", None)  # seconds until manifest + blocks were placed
        if placed_after:
            detail["placed_ms"] = placed_after * 1000
        return published.replicas > 0 and not published.unchanged, detail

    async def fetch_pattern(self, node, handle: tuple) -> tuple[bytes | None, dict[str, Any]]:
        fetched = await self.library(node).fetch(handle[1])
        # Bytes read from the fetching node's own store are no network fetch: a miss.
        return (None if fetched.local else fetched.data), {"local": fetched.local, "tampered": fetched.tampered}

    def holds_pattern(self, node, handle: tuple) -> bool:
        return bool(node.store.entries(handle[2]))

    def holds_complete(self, node, handle: tuple) -> bool:
        """An entry under the pattern's key and every block: a copy a fetch can be served from."""
        return self.holds_pattern(node, handle) and all(node.store.contains(k) for k in handle[3])

    def pattern_value(self, handle: tuple) -> bytes:
        return handle[0]

    def sent(self, node) -> int:
        return node.protocol.stats.get("requests_sent", 0)

    def stop(self, nodes: list) -> None:
        self.network.stop_all(nodes)

    def rpc_stats(self, nodes: list) -> dict[str, int]:
        totals: dict[str, int] = {}
        for node in nodes:
            for name, count in node.protocol.stats.items():
                totals[name] = totals.get(name, 0) + count
        keep = ("requests_sent", "timeouts", "late_reply", "unexpected_reply", "overloaded", "malformed", "bad_request")
        return {k: totals.get(k, 0) for k in keep}


class _Stock:
    name = "stock"

    def __init__(self) -> None:
        from kademlia.network import Server
        from kademlia.utils import digest

        self.server_class = Server
        self.digest = digest

    async def start(self, base: Path, i: int):
        server = self.server_class(ksize=K, alpha=3)
        await server.listen(0, "127.0.0.1")  # stock: port first, then interface
        return server

    def handle(self, key_string: str, value: bytes) -> str:
        return key_string

    def key_of(self, handle: Any) -> bytes:
        return self.digest(handle)

    async def store(self, node, handle: Any, key_string: str, value: bytes) -> tuple[bool, dict[str, Any]]:
        return bool(await node.set(key_string, value)), {}

    async def fetch(self, node, handle: Any) -> bytes | None:
        return await node.get(handle)

    def holds(self, node, handle: Any) -> bool:
        return node.storage.get(self.key_of(handle)) is not None

    # -- pattern phase: the largest value a stock set accepts, under a key string
    def pattern_handle(self, document: bytes, stock_value: bytes, key_string: str) -> tuple:
        """``(value, key string, key, None)``."""
        return stock_value, key_string, self.digest(key_string), None

    async def publish(self, node, handle: tuple, i: int) -> tuple[bool, dict[str, Any]]:
        # Stock ``set`` returns True whenever it found nodes, answered or not
        # (``any`` over (ok, reply) tuples): copies are counted after the clock stops.
        return bool(await node.set(handle[1], handle[0])), {}

    async def fetch_pattern(self, node, handle: tuple) -> tuple[bytes | None, dict[str, Any]]:
        return await node.get(handle[1]), {}

    def holds_pattern(self, node, handle: tuple) -> bool:
        return handle[2] in node.storage.data  # no cull: a read-only peek

    holds_complete = holds_pattern

    def pattern_value(self, handle: tuple) -> bytes:
        return handle[0]

    def sent(self, node) -> int | None:
        return None  # rpcudp counts nothing

    def stop(self, nodes: list) -> None:
        for node in nodes:
            node.stop()

    def rpc_stats(self, nodes: list) -> dict[str, int]:
        return {}


async def _timed_phase(coro, timeout: float) -> bool:
    """Run one phase under its time limit; True if it finished in time."""
    try:
        await asyncio.wait_for(coro, timeout)
        return True
    except asyncio.TimeoutError:
        return False


def _table_stats(nodes: list) -> dict[str, Any]:
    counts = [contacts_of(nd) for nd in nodes]
    if not counts:
        return {}
    return {"min": min(counts), "mean": round(sum(counts) / len(counts), 1),
            "under_3": sum(c < 3 for c in counts), "empty": counts.count(0)}


async def run_network(impl_name: str, n: int, ops: int, seed: int, timeout: float,
                      patterns: int = 0) -> dict[str, Any]:
    """Build one N-node network of ``impl_name`` in this process, measure it, tear it down."""
    from aether.simulations.network import join_all

    impl = _Ours() if impl_name == "ours" else _Stock()
    random.seed(seed)  # stock node IDs, maintenance jitter
    plan = workload(seed, ops, n)
    say = lambda msg: print(f"  [{impl_name} N={n}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    result: dict[str, Any] = {"impl": impl_name, "n": n, "ops": ops, "seed": seed, "timed_out": []}
    rpc: dict[str, dict[str, int]] = {}
    result["rpc"] = rpc
    _quiet_cancelled_replies(result)

    with tempfile.TemporaryDirectory(prefix=f"aether-bench-{impl_name}-") as tmp:
        base = Path(tmp)
        nodes: list = []
        gc.collect()
        rss_before = rss_bytes()
        try:
            # -- start every node
            t0, c0 = time.perf_counter(), cpu_seconds()

            async def start_all() -> None:
                for i in range(n):
                    nodes.append(await impl.start(base, i))

            if not await _timed_phase(start_all(), timeout):
                result["timed_out"].append("start")
            result["start_s"] = round(time.perf_counter() - t0, 2)
            result["start_cpu_s"] = round(cpu_seconds() - c0, 2)
            result["started"] = len(nodes)
            say(f"{len(nodes)} nodes listening in {result['start_s']} s; joining ...")

            # -- join
            t0, c1 = time.perf_counter(), cpu_seconds()
            if not await _timed_phase(join_all(nodes, seed=seed), timeout):
                result["timed_out"].append("join")
            result["join_s"] = round(time.perf_counter() - t0, 2)
            result["join_cpu_s"] = round(cpu_seconds() - c1, 2)
            result["contacts_after_join"] = _table_stats(nodes)
            rpc["join"] = impl.rpc_stats(nodes)
            say(f"joined in {result['join_s']} s (contacts per node {result['contacts_after_join']}); "
                f"idling {IDLE_SECONDS:g} s ...")

            # -- idle, then memory
            await asyncio.sleep(IDLE_SECONDS)
            gc.collect()
            # The network's long-lived objects leave the collector's scans, so a
            # collection does not stall a timed operation (same for both sides).
            gc.freeze()
            rss_idle = rss_bytes()
            result["rss_before_bytes"] = rss_before
            result["rss_idle_bytes"] = rss_idle
            result["mem_per_node_bytes"] = round((rss_idle - rss_before) / max(1, len(nodes)))
            say(f"idle RSS {rss_idle / 2**20:.1f} MiB (+{(rss_idle - rss_before) / 2**20:.1f} MiB): "
                f"{result['mem_per_node_bytes'] / 1024:.0f} KiB per node; storing {ops} values ...")

            # -- stores, one at a time
            handles = [impl.handle(key_string, value) for value, key_string, _, _ in plan]
            store_ms: list[float] = []
            store_ok = [False] * len(plan)
            store_detail: list[dict[str, Any]] = [{} for _ in plan]
            c2 = cpu_seconds()

            async def store_all() -> None:
                for i, (value, key_string, src, _) in enumerate(plan):
                    t = time.perf_counter()
                    try:
                        store_ok[i], store_detail[i] = await impl.store(nodes[src], handles[i], key_string, value)
                    except Exception as exc:  # a failed operation, not a failed benchmark
                        say(f"store {i} raised {exc!r}")
                        store_detail[i] = {"error": repr(exc)}
                    store_ms.append((time.perf_counter() - t) * 1000)
                    await asyncio.sleep(OP_PAUSE)

            if not await _timed_phase(store_all(), timeout):
                result["timed_out"].append("store")
            result["store_cpu_s"] = round(cpu_seconds() - c2, 2)
            rpc["store"] = impl.rpc_stats(nodes)
            say(f"stored {sum(store_ok)}/{ops}; fetching ...")

            # -- fetches, one at a time, each from a node other than its publisher
            fetch_ms: list[float] = []
            fetch_ok = [False] * len(plan)
            c3 = cpu_seconds()

            async def fetch_all() -> None:
                for i, (value, _, _, dst) in enumerate(plan):
                    t = time.perf_counter()
                    try:
                        got = await impl.fetch(nodes[dst], handles[i])
                    except Exception as exc:
                        say(f"fetch {i} raised {exc!r}")
                        got = None
                    fetch_ms.append((time.perf_counter() - t) * 1000)
                    fetch_ok[i] = got == value
                    await asyncio.sleep(OP_PAUSE)

            if not await _timed_phase(fetch_all(), timeout):
                result["timed_out"].append("fetch")
            result["fetch_cpu_s"] = round(cpu_seconds() - c3, 2)
            rpc["fetch"] = impl.rpc_stats(nodes)

            result["store_ms"] = percentiles(store_ms)
            result["fetch_ms"] = percentiles(fetch_ms)
            result["store_ms_mean"] = round(sum(store_ms) / len(store_ms), 3) if store_ms else None
            result["fetch_ms_mean"] = round(sum(fetch_ms) / len(fetch_ms), 3) if fetch_ms else None
            result["stores_ok"] = sum(store_ok)
            result["fetches_ok"] = sum(fetch_ok)
            result["store_success"] = sum(store_ok) / ops
            result["fetch_success"] = sum(fetch_ok) / ops
            copies = [d["stored"] for d in store_detail if "stored" in d]
            if copies:
                result["replicas"] = {"min": min(copies), "mean": round(sum(copies) / len(copies), 1)}
            result["contacts_after_workload"] = _table_stats(nodes)
            failed = [i for i in range(ops) if not (store_ok[i] and fetch_ok[i])]
            result["failures"] = [
                diagnose(impl, nodes, plan, handles[i], i, store_ok[i], fetch_ok[i], store_detail[i])
                for i in failed[:20]
            ]
            gc.collect()
            result["rss_after_workload_bytes"] = rss_bytes()
            say(f"fetched {sum(fetch_ok)}/{ops}; store p50 {result['store_ms']['p50']} ms, "
                f"fetch p50 {result['fetch_ms']['p50']} ms")
            if patterns > 0:
                result["patterns"] = await pattern_phase(impl, nodes, n, patterns, seed, timeout, say)
        finally:
            impl.stop(nodes)
            await _cancel_leftovers()  # stock ``stop`` leaves its RPC tasks running
            await asyncio.sleep(0.1)  # let closing transports run their callbacks
    return result


async def pattern_phase(impl, nodes: list, n: int, count: int, seed: int, timeout: float, say) -> dict[str, Any]:
    """Publish ``count`` 20 KiB patterns (stock: largest values), then fetch each from a node not holding it."""
    plan = pattern_workload(seed, count, n)
    handles = [impl.pattern_handle(document, value, key_string) for document, value, key_string, _ in plan]
    out: dict[str, Any] = {
        "count": count, "size_bytes": len(impl.pattern_value(handles[0])) if handles else None, "timed_out": [],
    }
    say(f"pattern phase: publishing {count} values of {out['size_bytes']} bytes ...")

    def network_sent() -> int | None:
        counts = [impl.sent(nd) for nd in nodes]
        return None if any(c is None for c in counts) else sum(counts)

    # -- publishes, one at a time
    publish_ms: list[float] = []
    publish_ok = [False] * count
    publish_detail: list[dict[str, Any]] = [{} for _ in plan]
    c0 = cpu_seconds()

    async def publish_all() -> None:
        for i, (_, _, _, src) in enumerate(plan):
            node = nodes[src]
            sent0, net0 = impl.sent(node), network_sent()
            t = time.perf_counter()
            try:
                publish_ok[i], publish_detail[i] = await impl.publish(node, handles[i], i)
            except Exception as exc:  # a failed operation, not a failed benchmark
                say(f"publish {i} raised {exc!r}")
                publish_detail[i] = {"error": repr(exc)}
            publish_ms.append((time.perf_counter() - t) * 1000)
            if sent0 is not None:
                publish_detail[i]["messages"] = impl.sent(node) - sent0
            # Copies on other nodes, counted off the clock (stock ``set`` cannot tell):
            # ``holders`` hold something under the key, ``complete`` everything a fetch needs.
            others = [nd for j, nd in enumerate(nodes) if j != src]
            publish_detail[i]["holders"] = sum(impl.holds_pattern(nd, handles[i]) for nd in others)
            publish_detail[i]["complete"] = sum(impl.holds_complete(nd, handles[i]) for nd in others)
            if impl.name == "stock":
                publish_ok[i] = publish_ok[i] and publish_detail[i]["holders"] > 0
            await asyncio.sleep(OP_PAUSE)
            if net0 is not None:
                publish_detail[i]["network_messages"] = network_sent() - net0

    if not await _timed_phase(publish_all(), timeout):
        out["timed_out"].append("publish")
    out["publish_cpu_s"] = round(cpu_seconds() - c0, 2)
    out["rpc"] = {"publish": impl.rpc_stats(nodes)}  # running totals, as for the value phases
    say(f"published {sum(publish_ok)}/{count}; fetching ...")

    # -- fetches, one at a time, each from a node that holds nothing under the key
    fetch_ms: list[float] = []
    fetch_ok = [False] * count
    fetch_detail: list[dict[str, Any]] = [{} for _ in plan]
    c1 = cpu_seconds()

    async def fetch_all() -> None:
        for i, (_, _, _, src) in enumerate(plan):
            dst = pick_fetcher(seed, i, n, src, lambda j: impl.holds_pattern(nodes[j], handles[i]))
            fetch_detail[i]["fetch_node"] = dst
            if dst is None:  # every node holds it: nothing to fetch over the network
                fetch_detail[i]["error"] = "no node without a copy"
                continue
            node = nodes[dst]
            sent0, net0 = impl.sent(node), network_sent()
            t = time.perf_counter()
            try:
                got, fetch_detail[i] = await impl.fetch_pattern(node, handles[i])
            except Exception as exc:
                say(f"pattern fetch {i} raised {exc!r}")
                got, fetch_detail[i] = None, {"error": repr(exc)}
            fetch_ms.append((time.perf_counter() - t) * 1000)
            fetch_detail[i]["fetch_node"] = dst
            fetch_ok[i] = got == impl.pattern_value(handles[i])
            if sent0 is not None:
                fetch_detail[i]["messages"] = impl.sent(node) - sent0
            await asyncio.sleep(OP_PAUSE)
            if net0 is not None:
                fetch_detail[i]["network_messages"] = network_sent() - net0

    if not await _timed_phase(fetch_all(), timeout):
        out["timed_out"].append("fetch")
    out["fetch_cpu_s"] = round(cpu_seconds() - c1, 2)
    out["rpc"]["fetch"] = impl.rpc_stats(nodes)

    out["publish_ms"] = percentiles(publish_ms)
    placed = [d["placed_ms"] for d in publish_detail if "placed_ms" in d]
    if placed:
        out["placed_ms"] = percentiles(placed)
    out["fetch_ms"] = percentiles(fetch_ms)
    out["publish_ms_mean"] = round(sum(publish_ms) / len(publish_ms), 3) if publish_ms else None
    out["fetch_ms_mean"] = round(sum(fetch_ms) / len(fetch_ms), 3) if fetch_ms else None
    out["publishes_ok"] = sum(publish_ok)
    out["fetches_ok"] = sum(fetch_ok)
    out["publish_success"] = sum(publish_ok) / count
    out["fetch_success"] = sum(fetch_ok) / count
    for name, details in (("publish", publish_detail), ("fetch", fetch_detail)):
        for field in ("messages", "network_messages"):
            values = [d[field] for d in details if field in d]
            if values:
                out[f"{name}_{field}"] = {"mean": round(sum(values) / len(values), 1), **percentiles(values)}
    for field, name in (("holders", "holders_after_publish"), ("complete", "complete_copies_after_publish")):
        counts = [d[field] for d in publish_detail if field in d]
        if counts:
            out[name] = {"min": min(counts), "mean": round(sum(counts) / len(counts), 1),
                         "under_k": sum(c < K for c in counts), "under_3": sum(c < 3 for c in counts)}
    replicas = [d["replicas"] for d in publish_detail if "replicas" in d]
    if replicas:  # ours: Published.replicas, the nodes that acknowledged the manifest and every block
        out["published_replicas"] = {"min": min(replicas), "mean": round(sum(replicas) / len(replicas), 1)}
    out["per_op"] = {  # in plan order (a fetch skipped for want of a node without a copy has no time)
        "publish_ms": [round(v, 1) for v in publish_ms], "fetch_ms": [round(v, 1) for v in fetch_ms],
        "complete": [d.get("complete") for d in publish_detail],
        "replicas": [d.get("replicas") for d in publish_detail],
        "fetch_messages": [d.get("messages") for d in fetch_detail],
    }
    terms = [d["index_terms"] for d in publish_detail if "index_terms" in d]
    if terms:
        out["index_terms"] = {"min": min(terms), "mean": round(sum(terms) / len(terms), 1), "max": max(terms)}
    out["failures"] = [
        {"op": i, "publish_node": plan[i][3], "published": publish_ok[i], "fetched": fetch_ok[i],
         "publish_detail": publish_detail[i], "fetch_detail": fetch_detail[i]}
        for i in range(count) if not (publish_ok[i] and fetch_ok[i])
    ][:20]
    say(f"patterns fetched {sum(fetch_ok)}/{count}; publish p50 {out['publish_ms']['p50']} ms, "
        f"fetch p50 {out['fetch_ms']['p50']} ms")
    return out


def _quiet_cancelled_replies(result: dict[str, Any]) -> None:
    """Count, rather than print, replies that reach a request a phase limit has cancelled.

    Stock rpcudp calls ``set_result`` on the cancelled future and the task dies with
    InvalidStateError; that is expected after a phase is cut off, and harmless.
    """
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.InvalidStateError):
            result["replies_to_cancelled_requests"] = result.get("replies_to_cancelled_requests", 0) + 1
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def _cancel_leftovers() -> None:
    """Cancel every task but this one, and wait for them to finish."""
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def diagnose(impl, nodes: list, plan: list, handle: Any, i: int, stored: bool, fetched: bool,
             detail: dict[str, Any]) -> dict[str, Any]:
    """A failed operation: who stored and fetched, and which of the nodes closest to the key hold it."""
    _, _, src, dst = plan[i]
    key = impl.key_of(handle)
    target = int.from_bytes(key, "big")
    by_distance = sorted(nodes, key=lambda nd: nd.node.long_id ^ target)
    holders = [rank for rank, nd in enumerate(by_distance) if impl.holds(nd, handle)]
    return {
        "op": i, "key": key.hex(), "stored": stored, "fetched": fetched, "store_detail": detail,
        "store_node": src, "store_node_contacts": contacts_of(nodes[src]),
        "fetch_node": dst, "fetch_node_contacts": contacts_of(nodes[dst]),
        "fetch_node_rank": by_distance.index(nodes[dst]),
        "holders": len(holders), "holder_ranks": holders[:40],
    }


def child_main(args: argparse.Namespace) -> int:
    raise_nofile_limit()
    # Import everything a node needs before the "before" RSS sample, so the per-node
    # figure is what the nodes cost, not what importing the libraries costs.
    import aether.node.server  # noqa: F401
    import aether.simulations.network  # noqa: F401
    import kademlia.network  # noqa: F401

    impl, n = args.child
    result = asyncio.run(run_network(impl, int(n), args.ops, args.seed, args.timeout, args.patterns))
    Path(args.child_out).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- driver (parent)
def run_child(impl: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(prefix=f"bench-{impl}-{n}-", suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [
        sys.executable, "-m", "aether.simulations.bench_dht",
        "--child", impl, str(n), "--child-out", str(out),
        "--ops", str(args.ops), "--seed", str(args.seed), "--timeout", str(args.timeout),
        "--patterns", str(args.patterns),
    ]
    try:
        # Seven phases under the limit, plus start-up and tear-down.
        proc = subprocess.run(cmd, timeout=7 * args.timeout + 120)
        if proc.returncode != 0:
            return {"impl": impl, "n": n, "error": f"child exited with {proc.returncode}"}
        return json.loads(out.read_text())
    except subprocess.TimeoutExpired:
        return {"impl": impl, "n": n, "error": "child exceeded the overall time limit"}
    finally:
        out.unlink(missing_ok=True)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return None
    return round(a / b, 2)


METRICS: list[tuple[str, str, Any]] = [
    ("join (whole network), s", "join_s", lambda r: r.get("join_s")),
    ("memory per idle node, KiB", "mem_kib", lambda r: _kib(r.get("mem_per_node_bytes"))),
    ("store p50, ms", "store_p50", lambda r: r.get("store_ms", {}).get("p50")),
    ("store p90, ms", "store_p90", lambda r: r.get("store_ms", {}).get("p90")),
    ("store p99, ms", "store_p99", lambda r: r.get("store_ms", {}).get("p99")),
    ("fetch p50, ms", "fetch_p50", lambda r: r.get("fetch_ms", {}).get("p50")),
    ("fetch p90, ms", "fetch_p90", lambda r: r.get("fetch_ms", {}).get("p90")),
    ("fetch p99, ms", "fetch_p99", lambda r: r.get("fetch_ms", {}).get("p99")),
    ("store success", "store_success", lambda r: r.get("store_success")),
    ("fetch success", "fetch_success", lambda r: r.get("fetch_success")),
]


def _pat(field: str, sub: str | None = None):
    def get(r: dict[str, Any]) -> Any:
        value = r.get("patterns", {}).get(field)
        return value.get(sub) if sub is not None and isinstance(value, dict) else (None if sub else value)
    return get


PATTERN_METRICS: list[tuple[str, str, Any]] = [
    ("publish p50, ms", "pattern_publish_p50", _pat("publish_ms", "p50")),
    ("publish p90, ms", "pattern_publish_p90", _pat("publish_ms", "p90")),
    ("publish p99, ms", "pattern_publish_p99", _pat("publish_ms", "p99")),
    ("  of which placed p50, ms", "pattern_placed_p50", _pat("placed_ms", "p50")),
    ("fetch p50, ms", "pattern_fetch_p50", _pat("fetch_ms", "p50")),
    ("fetch p90, ms", "pattern_fetch_p90", _pat("fetch_ms", "p90")),
    ("fetch p99, ms", "pattern_fetch_p99", _pat("fetch_ms", "p99")),
    ("publish success", "pattern_publish_success", _pat("publish_success")),
    ("fetch success", "pattern_fetch_success", _pat("fetch_success")),
    ("complete copies (min)", "pattern_complete_min", _pat("complete_copies_after_publish", "min")),
    ("msgs per publish (mean)", "pattern_publish_messages", _pat("publish_messages", "mean")),
    ("msgs per fetch (mean)", "pattern_fetch_messages", _pat("fetch_messages", "mean")),
]
"""Pattern phase: ours publishes/fetches 20 KiB patterns, stock sets/gets STOCK_MAX_VALUE-byte values.
"Complete copies" are the nodes other than the publisher that hold, right after the
publish, everything a fetch needs (ours: an entry under the pattern's key and every
block; stock: the value); the row shows the fewest over all publishes. "Placed" is
``Published.placed_after`` (manifest and blocks on their k nodes, before the head
and index entries), where the node reports it. Messages are the requests the
publishing (fetching) node itself sent."""


def targets(n: int, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pattern phase's targets: met, missed, or None when not measured."""
    out: dict[str, dict[str, Any]] = {}
    ratio = rows.get("pattern_fetch_p50", {}).get("ratio")
    out["pattern_fetch_p50_ratio"] = {
        "target": f"pattern fetch p50 ours/stock <= {FETCH_RATIO_TARGET:g}", "value": ratio,
        "met": None if ratio is None else ratio <= FETCH_RATIO_TARGET,
    }
    if n == PUBLISH_TARGET_N:
        p50 = rows.get("pattern_publish_p50", {}).get("ours")
        out["pattern_publish_p50"] = {
            "target": f"ours publish p50 < {PUBLISH_TARGET_MS:g} ms at N={PUBLISH_TARGET_N}", "value": p50,
            "met": None if p50 is None else p50 < PUBLISH_TARGET_MS,
        }
    return out


def _kib(b: Any) -> float | None:
    return round(b / 1024, 1) if isinstance(b, (int, float)) else None


def compare(ours: dict[str, Any], stock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {}
    for _, key, get in METRICS + PATTERN_METRICS:
        a, b = get(ours), get(stock)
        rows[key] = {"ours": a, "stock": b, "ratio": _ratio(a, b)}
    return rows


def format_cell(v: Any, key: str) -> str:
    """A table cell: rates as percentages, small floats with two decimals, "-" for not measured."""
    if v is None:
        return "-"
    if key.endswith("success"):
        return f"{v:.1%}"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def render(n: int, rows: dict[str, dict[str, Any]], ours: dict, stock: dict) -> str:
    fmt = format_cell
    lines = [f"N = {n}  ({ours.get('ops', '?')} ops)", f"  {'metric':<28}{'ours':>12}{'stock':>12}{'ours/stock':>12}"]
    for label, key, _ in METRICS:
        r = rows[key]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"  {label:<28}{fmt(r['ours'], key):>12}{fmt(r['stock'], key):>12}{ratio:>12}")
    if ours.get("patterns") or stock.get("patterns"):
        sizes = [side.get("patterns", {}).get("size_bytes") for side in (ours, stock)]
        count = (ours.get("patterns") or stock.get("patterns"))["count"]
        lines.append(f"  pattern phase: {count} ops; ours {sizes[0] or '-'} B patterns (publish/fetch), "
                     f"stock {sizes[1] or '-'} B values (set/get)")
        for label, key, _ in PATTERN_METRICS:
            r = rows[key]
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"  {label:<28}{fmt(r['ours'], key):>12}{fmt(r['stock'], key):>12}{ratio:>12}")
        for t in targets(n, rows).values():
            status = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
            lines.append(f"  target: {t['target']}: {status} ({t['value']})")
    for side in (ours, stock):
        if side.get("contacts_after_join"):
            c = side["contacts_after_join"]
            lines.append(f"  {side['impl']}: contacts per node after join mean {c['mean']}, min {c['min']}; "
                         f"join CPU {side.get('join_cpu_s')} s")
        timeouts = side.get("rpc", {}).get("fetch", {}).get("timeouts")
        if timeouts:
            late = side["rpc"]["fetch"].get("late_reply", 0)
            lines.append(f"  {side['impl']}: {timeouts} RPC timeouts in all (replies arriving after their timeout: {late})")
        if side.get("error") or side.get("timed_out"):
            lines.append(f"  note: {side['impl']}: {side.get('error') or 'phase time limit hit: ' + ', '.join(side['timed_out'])}")
        later = side.get("patterns", {}).get("rpc", {}).get("fetch", {}).get("timeouts")
        if later and later > (timeouts or 0):
            lines.append(f"  {side['impl']}: {later - (timeouts or 0)} RPC timeouts in the pattern phase")
        cut = side.get("patterns", {}).get("timed_out")
        if cut:
            lines.append(f"  note: {side['impl']}: pattern phase time limit hit: {', '.join(cut)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aether.simulations.bench_dht", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200,1000", help="network sizes, comma-separated (default 200,1000)")
    p.add_argument("--ops", type=int, default=200, help="values stored and fetched per network (default 200)")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload and the joins (default 1)")
    p.add_argument("--out", type=Path, help="write the full results as JSON to this file")
    p.add_argument("--patterns", type=int, default=50,
                   help="20 KiB patterns published and fetched per network after the values (default 50; 0 skips)")
    p.add_argument("--timeout", type=float, default=180.0, help="time limit per phase, seconds (default 180)")
    p.add_argument("--only", choices=IMPLEMENTATIONS, help="run one implementation only (for profiling)")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ops < 1:
        p.error("--ops must be at least 1")
    if args.patterns < 0:
        p.error("--patterns must be 0 or more")
    try:
        args.size_list = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        p.error("--sizes must be whole numbers separated by commas")
    if not args.size_list or min(args.size_list) < 2:
        p.error("every size must be at least 2")
    return args


def source_revision() -> str | None:
    """The checked-out commit of the code measured (read-only), with "+dirty" for local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """The full results as indented JSON, when a file was asked for."""
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    soft, hard = raise_nofile_limit()
    report: dict[str, Any] = {
        "command": " ".join(["python -m aether.simulations.bench_dht", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "revision": source_revision(),
        "seed": args.seed,
        "ops": args.ops,
        "patterns": args.patterns,
        "pattern_bytes": PATTERN_BYTES,
        "stock_value_bytes": STOCK_MAX_VALUE,
        "timeout_per_phase_s": args.timeout,
        "idle_seconds": IDLE_SECONDS,
        "nofile_limit": [soft, hard],
        "machine": machine(),
        "results": [],
    }
    impls = [args.only] if args.only else list(IMPLEMENTATIONS)
    for n in args.size_list:
        sides = {}
        for impl in impls:
            print(f"N={n}: {impl} network ...", file=sys.stderr, flush=True)
            sides[impl] = run_child(impl, n, args)
        ours, stock = sides.get("ours", {"impl": "ours"}), sides.get("stock", {"impl": "stock"})
        rows = compare(ours, stock)
        report["results"].append({"n": n, "ours": ours, "stock": stock, "table": rows,
                                  "targets": targets(n, rows) if args.patterns else {}})
        print(render(n, rows, ours, stock), flush=True)
        print(flush=True)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

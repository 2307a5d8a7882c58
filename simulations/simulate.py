"""Run a scenario on real nodes spread over worker processes, and report what happened.

The network is started and joined first; then each step of the scenario's timeline
(simulations/scenario.py) runs at its time, counted from the moment the network had
joined. Operations of one step run concurrently (at most ``PARALLEL`` at once), as
many users would. The report holds latency percentiles and success rates per
operation, hops and messages per lookup, replicas per pattern and fetch success
over time, storage fill per device class, and datagrams and bytes per operation.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from importlib import resources
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from aether.node import entries as E
from aether.node.pattern import parse_pattern
from aether.simulations.cluster import Cluster, NodeGone
from aether.simulations.scenario import Scenario, Step
from aether.simulations.stats import percentiles
from aether.storage.device import QUOTA_RANGES
from aether.storage.store import RESERVED_BYTES

PARALLEL = 16
"""Operations of one step in flight at once."""
QUOTA_SCALE = 0.001
"""Simulated quotas are the seed's smallest quota per device class times this, plus the store's fixed reserve,
so that a simulated network of small patterns can fill its devices."""
STATUS_EVERY = 0.5
"""Seconds between two status lines while the scenario runs."""
REPLICA_SAMPLES = 30
"""How many times over a run the replicas of every published pattern are counted."""
SIM_CONFIG = {"ksize": 8}
"""Replication factor and bucket size of simulated nodes (the default 20 needs far more nodes to mean much)."""

_WORDS = ("relay", "gossip", "ledger", "anchor", "beacon", "bridge", "cache", "quorum", "lattice", "mirror",
          "harbor", "signal", "vault", "shard", "token", "orbit", "prism", "cipher", "tide", "ember")


def example_patterns() -> dict[str, bytes]:
    """The example pattern documents shipped with the project (``simulations/patterns/``), by file name."""
    folder = resources.files("aether.simulations") / "patterns"
    return {item.name: item.read_bytes() for item in sorted(folder.iterdir(), key=lambda i: i.name)
            if item.name.endswith(".md")}


def synthetic_pattern(rng: random.Random, number: int, kind: str = "SIM") -> bytes:
    """A valid pattern document for the simulation, 1 to 20 KiB, with a title of three words."""
    title = " ".join(w.capitalize() for w in rng.sample(_WORDS, 3))
    body = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(150, 3000)))
    return (f"# Pattern-{kind}-{number:03d}: {title}\n\n**CREATED:** 2026-01-01T00:00:00Z\n**STATUS:** Active\n"
            f"**CATEGORY:** Simulation\n\n## Problem\n{body}\n\n## Solution\nShare it.\n").encode()


@dataclass
class Published:
    id: str
    hash: str
    title_word: str


@dataclass
class Record:
    """What a run measured, filled in as the steps run."""

    ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    success: list[dict[str, Any]] = field(default_factory=list)
    interrupted: dict[str, int] = field(default_factory=dict)
    team: dict[str, Any] | None = None
    """The team step's ceremony: members, K, shares delivered, what outsiders could read."""
    late: float = 0.0

    def add(self, op: str, result: dict[str, Any]) -> None:
        """Count an operation; one whose node was killed under it is counted apart, as interrupted."""
        if result.get("gone"):
            self.interrupted[op] = self.interrupted.get(op, 0) + 1
        else:
            self.ops.setdefault(op, []).append(result)


class Run:
    def __init__(self, scenario: Scenario, cluster: Cluster, seed: int):
        self.cluster, self.seed = cluster, seed
        self.rng = random.Random(seed)
        self.record = Record()
        self.devices = scenario.devices(seed)
        self._documents = list(example_patterns().values())
        self._next_synthetic = 1
        self.settings = self._settings()
        self.publishing: dict[int, list[Published]] = {}
        """Patterns each publish step publishes, by step number."""
        self._published_events: dict[int, asyncio.Event] = {}
        self._next_team = 0

    def _settings(self) -> dict[int, dict[str, Any]]:
        """Per-node settings from the device population: quota, and light for phones and tablets on battery."""
        settings = {}
        for index, device_class in enumerate(self.devices):
            quota = RESERVED_BYTES + int(QUOTA_RANGES[device_class][0] * QUOTA_SCALE)
            on_battery = device_class != "desktop" and self.rng.random() < 0.5
            settings[index] = {"quota_bytes": quota, "light": on_battery and device_class in ("phone", "tablet")}
        return settings

    def document(self) -> bytes:
        if self._documents:
            return self._documents.pop(0)
        self._next_synthetic += 1
        return synthetic_pattern(self.rng, self._next_synthetic - 1)

    async def _bounded(self, calls: list) -> list:
        places = asyncio.Semaphore(PARALLEL)

        async def one(call):
            async with places:
                try:
                    return await call
                except NodeGone:
                    return {"ok": False, "gone": True, "ms": 0.0, "datagrams": 0, "bytes": 0}

        return await asyncio.gather(*(one(c) for c in calls))

    async def step(self, step: Step, number: int) -> None:
        """Run one step; a user operation's results go into the record as they come.

        Steps overlap, so each draws its random choices from a generator of its own
        (seed and step number): the same seed makes the same choices whatever the timing.
        """
        rng = random.Random(f"{self.seed}/{number}")
        c = self.cluster
        action, a = step.action, step.args
        if action == "publish":
            docs = [self.document() for _ in a["nodes"]]
            patterns = [parse_pattern(doc) for doc in docs]
            self.publishing[number] = [Published(p.id, p.hash, next(iter(E.words(p.name)), "")) for p in patterns]
            self._published_events[number] = asyncio.Event()
            try:
                results = await self._bounded([c.call(n, "publish", data=d) for n, d in zip(a["nodes"], docs)])
                for result in results:
                    self.record.add("publish", result)
            finally:
                self._published_events[number].set()
        elif action in ("fetch", "search"):
            # What the steps before this one published is there to find, and only that,
            # so that the same seed picks the same patterns however the steps overlap.
            before = [n for n in self.publishing if n < number]
            await asyncio.gather(*(self._published_events[n].wait() for n in before))
            published = [p for n in before for p in self.publishing[n]]
            if not published:
                return
            targets = [rng.choice(published) for _ in a["nodes"]]
            refs = [rng.choice((p.id, p.hash)) for p in targets]
            keys = [rng.randbytes(20) for _ in a["nodes"]]
            if action == "fetch":
                calls = [c.call(n, "fetch", ref=r, expect=p.hash) for n, r, p in zip(a["nodes"], refs, targets)]
            else:
                calls = [c.call(n, "search", terms=[p.title_word], expect=p.hash) for n, p in zip(a["nodes"], targets)]
            results = await self._bounded(calls)
            for result in results:
                self.record.add(action, result)
            counted = [r for r in results if not r.get("gone")]
            if action == "fetch" and counted:
                self.record.success.append({"t": round(step.at, 1), "alive": len(c.alive),
                                            "fetch_success": sum(r["ok"] for r in counted) / len(counted)})
                lookups = await self._bounded([c.call(n, "lookup", target=k) for n, k in zip(a["nodes"], keys)])
                for n, key, result in zip(a["nodes"], keys, lookups):
                    if not result.get("gone"):
                        result["ok"] = self.found_closest(n, key, result.pop("closest"))
                    self.record.add("lookup", result)
        elif action == "team":
            try:
                await self.team(a["members"], a["k"], a["patterns"], rng)
            except NodeGone:  # churn took a member or the creator during the ceremony
                self.record.team = {**(self.record.team or {}), "interrupted": True}
        elif action in ("kill", "leave"):
            await c.kill(a["nodes"], graceful=action == "leave")
        elif action == "join":
            through = [i for i in c.alive if i not in a["nodes"]]
            await c.start(a["nodes"])
            await c.join(a["nodes"], through=through)
        elif action == "partition":
            await c.partition(a["groups"])
        elif action == "heal":
            await c.broadcast("heal")
        elif action == "transport":
            await c.broadcast("transport", **a)

    async def team(self, members: list[int], k: int, patterns: int, rng: random.Random) -> None:
        """A key ceremony among ``members`` (the first creates the team), K of them unlocking, and private traffic.

        The creator publishes ``patterns`` team patterns; every member that unlocked
        fetches each of them, and as many nodes outside the team try to: they must
        read nothing.
        """
        c, record = self.cluster, self.record
        creator, others = members[0], members[1:]
        await asyncio.gather(*(c.call(m, "contact") for m in members))
        team_id = await c.call(creator, "team_create", name="sim", k=k, members=[c.identities[m] for m in others])
        delivered = await asyncio.gather(*(c.call(m, "team_share", team_id=team_id) for m in others))
        record.team = {"members": len(members), "k": k, "shares_delivered": sum(delivered) + 1}
        unlocked = []
        for member in members[:k]:
            result = await c.call(member, "team_unlock", team_id=team_id)
            record.add("unlock", result)
            if result["ok"]:
                unlocked.append(member)
        if creator not in unlocked:
            return
        hashes = []
        for _ in range(patterns):
            self._next_team += 1
            result = await c.call(creator, "team_publish", team_id=team_id,
                                  data=synthetic_pattern(rng, self._next_team, kind="TEAM"))
            record.add("team publish", result)
            hashes.append(result["hash"])
        outsiders = [i for i in c.alive if i not in members]
        fetches = [c.call(m, "fetch", ref=h, expect=h) for m in unlocked for h in hashes]
        tries = [c.call(rng.choice(outsiders), "fetch", ref=h, expect=h) for h in hashes] if outsiders else []
        for result in await self._bounded(fetches):
            record.add("team fetch", result)
        read = [r for r in await self._bounded(tries) if not r.get("gone")]
        record.team["outsider_fetches"] = {"tries": len(read), "read": sum(r["ok"] for r in read)}

    def found_closest(self, asker: int, target: bytes, closest: list[bytes]) -> bool:
        """Whether a lookup found the live node nearest to ``target`` (the asker aside), as Kademlia must."""
        t = int.from_bytes(target, "big")
        nearest = min((i for i in self.cluster.alive if i != asker),
                      key=lambda i: int.from_bytes(self.cluster.ids[i], "big") ^ t)
        return bool(closest) and closest[0] == self.cluster.ids[nearest]

    async def sample_replicas(self, samples: int, duration: float) -> None:
        """Count replicas per pattern ``samples`` times over the scenario's duration."""
        t0 = time.monotonic()
        interval = max(1.0, duration / samples)
        while True:
            await asyncio.sleep(interval)
            await self.count_replicas(time.monotonic() - t0)

    async def count_replicas(self, t: float) -> None:
        """Holders of every pattern whose publish step is over."""
        keys = [E.pattern_key(p.hash) for n, done in self._published_events.items() if done.is_set()
                for p in self.publishing[n]]
        if not keys:
            return
        per_worker = await self.cluster.broadcast("holders", keys=keys)
        held = [sum(counts) for counts in zip(*per_worker)]
        self.record.replicas.append({"t": round(t, 1), "alive": len(self.cluster.alive), "min": min(held),
                                     "mean": round(sum(held) / len(held), 2), "lost": sum(h == 0 for h in held)})

    async def fill(self) -> dict[str, dict[str, float]]:
        """Stored bytes over quota per device class, at the end."""
        settings = self.settings
        by_class: dict[str, list[float]] = {}
        for stats in await self.cluster.broadcast("stats"):
            for index, node in stats["nodes"].items():
                index = int(index)
                if index < len(self.devices):
                    by_class.setdefault(self.devices[index], []).append(
                        node["stored_bytes"] / settings[index]["quota_bytes"])
        return {cls: {"nodes": len(v), **percentiles([x * 100 for x in v], (50, 90, 100))}
                for cls, v in sorted(by_class.items())}


def status_line(record: Record, elapsed: float, duration: float, alive: int) -> str:
    """One line of how the run is going: its time, the nodes alive, each operation's count and successes."""
    parts = [f"t={elapsed:5.1f}/{duration:.0f} s", f"{alive} nodes alive"]
    for op, results in record.ops.items():
        ok = sum(r["ok"] for r in results)
        parts.append(f"{op} {ok}/{len(results)} ok")
    interrupted = sum(record.interrupted.values())
    if interrupted:
        parts.append(f"{interrupted} interrupted")
    return "  ".join(parts)


async def _report_status(run: Run, t0: float, duration: float, status: Callable[[str], Any]) -> None:
    while True:
        status(status_line(run.record, time.monotonic() - t0, duration, len(run.cluster.alive)))
        await asyncio.sleep(STATUS_EVERY)


async def run_scenario(scenario: Scenario, *, nodes: int | None = None, seed: int | None = None,
                       workers: int | None = None, root: Path | None = None,
                       progress: Callable[[str], Any] | None = None,
                       status: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run ``scenario`` (its node count and seed unless given) and return the report.

    ``progress`` is told of each stage and step as a line; ``status`` gets a fresh
    :func:`status_line` every ``STATUS_EVERY`` seconds while the steps run (a
    terminal redraws it in place).
    """
    say = progress or (lambda _: None)
    if nodes is not None:
        scenario = replace(scenario, nodes=nodes)
    seed = scenario.seed if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="aether-sim-", dir=root) as tmp:
        async with Cluster(Path(tmp), workers, seed=seed, config=SIM_CONFIG) as cluster:
            run = Run(scenario, cluster, seed)
            started = time.monotonic()
            say(f"starting {scenario.nodes} nodes in {cluster.count} worker processes ...")
            await cluster.grow(scenario.nodes, each=run.settings)
            join_s = time.monotonic() - started
            say(f"joined in {join_s:.1f} s; running {scenario.name} ...")
            timeline = scenario.timeline(seed)
            duration = timeline[-1].at if timeline else 0
            sampler = asyncio.ensure_future(run.sample_replicas(REPLICA_SAMPLES, duration))
            running: list[asyncio.Task] = []
            t0 = time.monotonic()
            ticker = asyncio.ensure_future(_report_status(run, t0, duration, status)) if status else None
            for number, step in enumerate(timeline, start=1):
                wait = t0 + step.at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    run.record.late = max(run.record.late, -wait)
                # Steps overlap as they would in the world: a slow fetch does not hold back the churn.
                running.append(asyncio.ensure_future(run.step(step, number)))
                if step.action in ("publish", "fetch", "search", "team") or number == len(timeline):
                    say(f"  t={step.at:.1f}s {step.action} ({len(cluster.alive)} nodes alive)")
            try:
                await asyncio.gather(*running)
            finally:
                sampler.cancel()
                if ticker is not None:
                    ticker.cancel()
            await run.count_replicas(time.monotonic() - t0)
            fill = await run.fill()
            return report(scenario, seed, cluster.count, join_s, run.record, fill)


def report(scenario: Scenario, seed: int, workers: int, join_s: float, record: Record,
           fill: dict[str, dict[str, float]]) -> dict[str, Any]:
    ops = {}
    for op, results in record.ops.items():
        entry: dict[str, Any] = {"count": len(results), "success": sum(r["ok"] for r in results) / len(results),
                                 "ms": percentiles(r["ms"] for r in results),
                                 "samples_ms": [round(r["ms"], 3) for r in results]}
        if op == "lookup":
            entry["hops"] = percentiles((r["hops"] for r in results), (50, 90, 99))
            entry["messages"] = percentiles((r["messages"] for r in results), (50, 90, 99))
        if op == "publish":
            entry["replicas"] = percentiles((r["replicas"] for r in results), (50, 10))
        entry["datagrams_per_op"] = round(sum(r["datagrams"] for r in results) / len(results), 1)
        entry["bytes_per_op"] = round(sum(r["bytes"] for r in results) / len(results))
        ops[op] = entry
    for op, count in record.interrupted.items():
        ops.setdefault(op, {"count": 0})["interrupted"] = count
    return {
        "scenario": scenario.name, "nodes": scenario.nodes, "seed": seed, "workers": workers,
        "join_seconds": round(join_s, 2), "late_seconds": round(record.late, 2),
        "operations": ops, "replicas_over_time": record.replicas, "success_over_time": record.success,
        "storage_fill_percent": fill, "team": record.team,
    }


def render(r: dict[str, Any]) -> str:
    lines = [f"aether-node simulate {r['scenario']}: {r['nodes']} nodes in {r['workers']} processes "
             f"(seed {r['seed']}), joined in {r['join_seconds']:.1f} s",
             f"  {'operation':<10} {'count':>6} {'success':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
             f" {'msgs/op':>8} {'KiB/op':>7}"]
    for op, e in r["operations"].items():
        if e["count"]:
            lines.append(f"  {op:<10} {e['count']:>6} {e['success']:>8.1%} {e['ms']['p50']:>8.1f} {e['ms']['p90']:>8.1f}"
                         f" {e['ms']['p99']:>8.1f} {e['datagrams_per_op']:>8.1f} {e['bytes_per_op'] / 1024:>7.1f}")
        if e.get("interrupted"):
            lines.append(f"  {'':<10} {e['interrupted']:>6} more {op} interrupted: their node was killed under them")
    if "lookup" in r["operations"]:
        lines.append(f"  hops per lookup: p50 {r['operations']['lookup']['hops']['p50']:.0f}, "
                     f"p99 {r['operations']['lookup']['hops']['p99']:.0f}")
    if r["replicas_over_time"]:
        last = r["replicas_over_time"][-1]
        lines.append(f"  replicas per pattern at the end: mean {last['mean']}, min {last['min']}, "
                     f"lost {last['lost']} ({last['alive']} nodes alive)")
    for cls, f in r["storage_fill_percent"].items():
        lines.append(f"  storage fill, {cls:<8} {f['nodes']:>5} nodes: p50 {f['p50']:.0f} %, max {f['p100']:.0f} %")
    if r.get("team"):
        t = r["team"]
        outside = t.get("outsider_fetches", {"tries": 0, "read": 0})
        if t.get("interrupted"):
            lines.append("  team: interrupted, a member's node was killed during the ceremony")
        else:
            lines.append(f"  team: {t['k']} of {t['members']}, shares delivered to {t['shares_delivered']}; "
                         f"outsiders read {outside['read']} of {outside['tries']} team patterns they tried")
    if r["late_seconds"] > 1:
        lines.append(f"  note: steps ran up to {r['late_seconds']:.1f} s behind the scenario's times")
    return "\n".join(lines)

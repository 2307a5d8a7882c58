"""Simulation scenarios: plain TOML files, checked with precise errors, expanded into a fixed timeline.

A scenario names a network (how many nodes, which devices, what the transport does)
and what happens to it: a list of events, each at a time in seconds after the
network has joined. ``timeline(seed)`` turns the events into concrete steps (which
node publishes, which one is killed, when each churn join or leave happens) with
one random generator seeded by ``seed``, so the same scenario and seed always give
the same sequence of events.

The shipped scenarios live in ``simulations/scenarios/``; ``aether-node simulate
NAME`` takes a shipped name or a path to a file of one's own.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEVICE_CLASSES = ("desktop", "laptop", "tablet", "phone")
MAX_NODES = 5000
"""Real nodes on one machine; the large-scale model goes beyond this without real sockets."""
MAX_DURATION = 24 * 3600.0
MAX_EVENTS = 1000
MAX_COUNT = 100_000

ACTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    # action: {field: accepted types}; "at" is common to all.
    "publish": {"count": (int,)},
    "fetch": {"count": (int,)},
    "search": {"count": (int,)},
    "kill": {"fraction": (float, int), "count": (int,)},
    "leave": {"fraction": (float, int), "count": (int,)},
    "join": {"count": (int,)},
    "churn": {"duration": (float, int), "joins_per_s": (float, int), "leaves_per_s": (float, int),
              "leave": (str,)},
    "partition": {"groups": (int,), "duration": (float, int)},
    "transport": {"loss": (float, int), "latency_ms": (float, int), "jitter_ms": (float, int)},
    "team": {"members": (int,), "k": (int,), "patterns": (int,)},
}
"""What an event may do and the fields each action takes."""

REQUIRED = {
    "publish": {"count"}, "fetch": {"count"}, "search": {"count"}, "join": {"count"},
    "churn": {"duration"}, "partition": {"duration"}, "team": {"members", "k"},
}
"""Fields an action cannot go without; kill and leave take one of fraction or count."""


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Transport:
    """What the simulated transport does to every datagram: drop a share of them, delay the rest."""

    loss: float = 0.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One concrete thing that happens: an action at a time, with its node indices chosen."""

    at: float
    action: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int
    population: dict[str, float]
    """Share of each device class, summing to 1."""
    transport: Transport
    events: tuple[Event, ...]
    seed: int = 1

    def devices(self, seed: int | None = None) -> list[str]:
        """The device class of each node, in the population's shares (largest remainders), shuffled by seed."""
        counts = {c: math.floor(share * self.nodes) for c, share in self.population.items()}
        left = self.nodes - sum(counts.values())
        by_remainder = sorted(self.population, key=lambda c: (-(self.population[c] * self.nodes - counts[c]), c))
        for c in by_remainder[:left]:
            counts[c] += 1
        classes = [c for c in DEVICE_CLASSES for _ in range(counts.get(c, 0))]
        random.Random(self.seed if seed is None else seed).shuffle(classes)
        return classes

    def timeline(self, seed: int | None = None) -> list[Step]:
        """The events as concrete steps, in time order; the same seed gives the same list.

        Events are first cut into primitive steps at their times (a churn becomes
        single joins and leaves at exponential intervals); then the steps are walked
        in time order, choosing their nodes among those alive at that moment.
        """
        rng = random.Random(self.seed if seed is None else seed)
        raw: list[tuple[float, int, str, dict[str, Any]]] = []  # (time, order, action, args)
        for order, event in enumerate(self.events):
            a = event.args
            if event.action == "churn":
                t, end = event.at, event.at + a["duration"]
                joins, leaves = a.get("joins_per_s", 0.0), a.get("leaves_per_s", 0.0)
                rate = joins + leaves
                while rate > 0:
                    t += rng.expovariate(rate)
                    if t >= end:
                        break
                    leave = "kill" if a.get("leave", "abrupt") == "abrupt" else "leave"
                    raw.append((round(t, 3), order, "join" if rng.random() < joins / rate else leave, {"count": 1}))
            elif event.action == "partition":
                raw.append((event.at, order, "partition", a))
                raw.append((event.at + a["duration"], order, "heal", {}))
            else:
                raw.append((event.at, order, event.action, a))
        raw.sort(key=lambda r: (r[0], r[1]))

        alive = list(range(self.nodes))
        next_index = self.nodes
        steps: list[Step] = []
        for at, _, action, a in raw:
            if action in ("kill", "leave"):
                n = a["count"] if "count" in a else round(a["fraction"] * len(alive))
                n = min(n, len(alive) - 1)  # one node always stays: a network of none tells nothing
                if n <= 0:
                    continue
                chosen = sorted(rng.sample(alive, n))
                gone = set(chosen)
                alive = [i for i in alive if i not in gone]
                steps.append(Step(at, action, {"nodes": chosen}))
            elif action == "join":
                new = list(range(next_index, next_index + a["count"]))
                next_index += a["count"]
                alive += new
                steps.append(Step(at, "join", {"nodes": new}))
            elif action == "partition":
                groups = a.get("groups", 2)
                shuffled = alive[:]
                rng.shuffle(shuffled)
                steps.append(Step(at, "partition", {"groups": [sorted(shuffled[g::groups]) for g in range(groups)]}))
            elif action in ("publish", "fetch", "search"):
                steps.append(Step(at, action, {"count": a["count"],
                                               "nodes": [rng.choice(alive) for _ in range(a["count"])]}))
            elif action == "team":
                members = sorted(rng.sample(alive, min(a["members"], len(alive))))
                steps.append(Step(at, "team", {"members": members, "k": a["k"], "patterns": a.get("patterns", 1)}))
            else:  # heal, transport
                steps.append(Step(at, action, dict(a)))
        return steps


# ------------------------------------------------------------------ loading
def shipped() -> dict[str, Path]:
    """The scenarios shipped with the project, by name."""
    folder = resources.files("aether.simulations") / "scenarios"
    return {item.name.removesuffix(".toml"): Path(str(item)) for item in folder.iterdir() if item.name.endswith(".toml")}


def load(ref: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    known = shipped()
    if isinstance(ref, str) and ref in known:
        path = known[ref]
    else:
        path = Path(ref)
        if not path.is_file():
            names = ", ".join(sorted(known))
            raise ScenarioError(f"no scenario {str(ref)!r}: give a file or one of the shipped ones ({names})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read it: {exc}") from None
    return parse(text, source=str(path))


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Check a scenario's TOML text completely; every error names the field and what it takes."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None

    def fail(where: str, message: str) -> ScenarioError:
        return ScenarioError(f"{source}: {where}: {message}")

    unknown = sorted(set(data) - {"name", "description", "nodes", "seed", "population", "transport", "events"})
    if unknown:
        raise fail(", ".join(unknown), "unknown field(s); a scenario has name, description, nodes, seed, "
                   "population, transport and [[events]]")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    nodes = _whole(data.get("nodes"), fail, "nodes", 2, MAX_NODES)
    seed = _whole(data.get("seed", 1), fail, "seed", 0, 2**63 - 1)
    population = _population(data.get("population", {"desktop": 1.0}), fail)
    transport = _transport(data.get("transport", {}), fail, "transport")
    raw_events = data.get("events", [])
    if not isinstance(raw_events, list) or not all(isinstance(e, dict) for e in raw_events):
        raise fail("events", "must be a list of tables ([[events]])")
    if len(raw_events) > MAX_EVENTS:
        raise fail("events", f"at most {MAX_EVENTS} events, not {len(raw_events)}")
    events = tuple(_event(e, fail, f"events[{i}]", nodes) for i, e in enumerate(raw_events))
    return Scenario(name.strip(), description, nodes, population, transport, events, seed)


def _number(value: Any, fail, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise fail(where, f"must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)


def _whole(value: Any, fail, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(where, f"must be a whole number from {low} to {high}, not {value!r}")
    return value


def _population(value: Any, fail) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise fail("population", f"must be a table of device classes ({', '.join(DEVICE_CLASSES)}) and their shares")
    shares = {}
    for device_class, share in value.items():
        if device_class not in DEVICE_CLASSES:
            raise fail(f"population.{device_class}", f"unknown device class; use {', '.join(DEVICE_CLASSES)}")
        shares[device_class] = _number(share, fail, f"population.{device_class}", 0.0, 1.0)
    if not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
        raise fail("population", f"the shares must add up to 1, not {sum(shares.values()):g}")
    return shares


def _transport(value: Any, fail, where: str) -> Transport:
    if not isinstance(value, dict):
        raise fail(where, "must be a table with loss, latency_ms and jitter_ms")
    unknown = sorted(set(value) - {"loss", "latency_ms", "jitter_ms"})
    if unknown:
        raise fail(f"{where}.{unknown[0]}", "unknown field; the transport has loss, latency_ms and jitter_ms")
    return Transport(
        loss=_number(value.get("loss", 0.0), fail, f"{where}.loss", 0.0, 0.9),
        latency_ms=_number(value.get("latency_ms", 0.0), fail, f"{where}.latency_ms", 0.0, 10_000.0),
        jitter_ms=_number(value.get("jitter_ms", 0.0), fail, f"{where}.jitter_ms", 0.0, 10_000.0),
    )


def _event(raw: dict, fail, where: str, nodes: int) -> Event:
    action = raw.get("action")
    if action not in ACTIONS:
        raise fail(f"{where}.action", f"must be one of {', '.join(ACTIONS)}, not {action!r}")
    at = _number(raw.get("at", 0.0), fail, f"{where}.at", 0.0, MAX_DURATION)
    allowed = ACTIONS[action]
    args: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("action", "at"):
            continue
        if key not in allowed:
            raise fail(f"{where}.{key}", f"{action} takes {', '.join(allowed) or 'no field'} (and at)")
        args[key] = value
    missing = REQUIRED.get(action, set()) - set(args)
    if missing:
        raise fail(where, f"{action} needs {', '.join(sorted(missing))}")
    for key in ("count", "members", "k", "patterns", "groups"):
        if key in args:
            args[key] = _whole(args[key], fail, f"{where}.{key}", 1, MAX_COUNT)
    for key in ("duration", "joins_per_s", "leaves_per_s"):
        if key in args:
            args[key] = _number(args[key], fail, f"{where}.{key}", 0.0, MAX_DURATION)
    if action in ("kill", "leave"):
        if ("fraction" in args) == ("count" in args):
            raise fail(where, f"{action} takes either fraction or count, exactly one")
        if "fraction" in args:
            args["fraction"] = _number(args["fraction"], fail, f"{where}.fraction", 0.0, 1.0)
    if action == "churn" and args.setdefault("leave", "abrupt") not in ("abrupt", "graceful"):
        raise fail(f"{where}.leave", f"must be abrupt or graceful, not {args['leave']!r}")
    if action == "partition" and not 2 <= args.setdefault("groups", 2) <= nodes:
        raise fail(f"{where}.groups", f"must be from 2 to the number of nodes ({nodes})")
    if action == "team":
        if args["members"] > min(nodes, 101):
            raise fail(f"{where}.members", f"at most {min(nodes, 101)} (the nodes, and 101 per team)")
        if args["k"] > args["members"]:
            raise fail(f"{where}.k", f"must be at most members ({args['members']})")
    if action == "transport":
        args = vars(_transport(args, fail, where))
    return Event(at, action, args)

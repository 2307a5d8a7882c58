"""The operations a node offers its user, as requests and plain replies.

One table maps each operation the CLI (and later other local clients) can ask
for to the pattern library. The daemon serves it over its control socket; the
one-shot CLI calls it in-process on a temporary node. Either way the request
and the reply are the same plain data, which is also what ``--json`` prints.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aether.crypto.identity import node_id_for
from aether.node.control import ControlError
from aether.node.entries import Summary, TeamMark
from aether.node.home import format_address
from aether.node.pattern import PatternError
from aether.node.patterns import AmbiguousPattern, Authored, PatternLibrary, PatternNotFound, TeamLocked
from aether.node.server import QuotaExceeded
from aether.node.team_api import TEAM_OPS, resolve_team
from aether.node.teams import TeamError
from aether.storage.store import StoreError

if TYPE_CHECKING:
    from aether.node.daemon import DaemonInfo

log = logging.getLogger(__name__)

NETWORK_OPS = frozenset({"publish", "fetch", "search", "history", "pin"})
"""Operations that need peers; ``ls``, ``unpin``, ``status`` and ``peers`` work on the local node alone."""


def iso_date(t: float) -> str:
    """A Unix time as ISO 8601 UTC to the second, the one date format of every command's output."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "id": summary.id, "title": summary.title, "hash": summary.hash, "time": summary.time,
        "date": iso_date(summary.time), "size": summary.size,
        "type": summary.type, "category": summary.category, "status": summary.status,
    }


def team_dict(team: TeamMark | None) -> dict[str, Any] | None:
    """The team a pattern belongs to (name, ID, epoch), or None for a public pattern."""
    return None if team is None else {"name": team.name, "id": team.id, "epoch": team.epoch}


def authored_dict(item: Authored) -> dict[str, Any]:
    return {**summary_dict(item.summary), "author": item.author_id, "team": team_dict(item.space.team)}


def _text(args: dict, name: str, *, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ControlError("bad-request", f"{name!r} must be a non-empty string")
    return value.strip()


async def _publish(library: PatternLibrary, args: dict) -> dict[str, Any]:
    data = args.get("data")
    if not isinstance(data, bytes):
        raise ControlError("bad-request", "'data' must be the file's bytes")
    source = _text(args, "source", required=False) or "<pattern>"
    team_ref = _text(args, "team", required=False)
    team = resolve_team(library.store, team_ref) if team_ref is not None else None
    result = await library.publish(data, source, team)
    return {
        "hash": result.pattern.hash, "id": result.pattern.id, "path": source, "unchanged": result.unchanged,
        "replicas": result.replicas, "terms": result.index_terms, "team": team_dict(result.team),
    }


async def _fetch(library: PatternLibrary, args: dict) -> dict[str, Any]:
    fetched = await library.fetch(_text(args, "ref"), _text(args, "author", required=False))
    return {
        **summary_dict(fetched.summary), "data": fetched.data, "authors": fetched.authors,
        "mirrors": fetched.mirrors, "signature": "valid" if fetched.signature_ok else "invalid",
        "local": fetched.local, "tampered_holders": fetched.tampered, "team": team_dict(fetched.space.team),
    }


async def _search(library: PatternLibrary, args: dict) -> dict[str, Any]:
    terms = args.get("terms")
    if not (isinstance(terms, list) and terms and all(isinstance(t, str) for t in terms)):
        raise ControlError("bad-request", "'terms' must be a non-empty list of strings")
    return {"results": [authored_dict(a) for a in await library.search(terms)]}


async def _history(library: PatternLibrary, args: dict) -> dict[str, Any]:
    found = await library.history(_text(args, "id"), _text(args, "author", required=False))
    return {
        "authors": [
            {"author": head.author_id, "id": head.summary.id, "title": head.summary.title,
             "team": team_dict(head.space.team),
             "versions": [{"hash": h, "time": t, "date": iso_date(t)} for h, t in versions]}
            for head, versions in found
        ]
    }


async def _ls(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return {
        "patterns": [
            {**(summary_dict(h.summary) if h.summary is not None else dict.fromkeys(_SUMMARY_KEYS)),
             "role": h.role, "pinned": h.pinned, "complete": h.complete, "team": team_dict(h.team), "key": h.key,
             "readable": h.summary is not None}
            for h in library.held()
        ]
    }


_SUMMARY_KEYS = ("id", "title", "hash", "time", "date", "size", "type", "category", "status")
"""What ``ls`` shows of a pattern: None for a team pattern held for others, which this node cannot read."""


async def _pin(library: PatternLibrary, args: dict) -> dict[str, Any]:
    fetched = await library.pin(_text(args, "ref"), _text(args, "author", required=False))
    return {**summary_dict(fetched.summary), "pinned": True}


async def _unpin(library: PatternLibrary, args: dict) -> dict[str, Any]:
    pattern_hash = await library.unpin(_text(args, "ref"), _text(args, "author", required=False))
    return {"hash": pattern_hash, "pinned": False}


async def _whoami(library: PatternLibrary, args: dict) -> dict[str, Any]:
    node = library.node
    return {
        "node_id": node.node.id.hex(), "author": node_id_for(library.me).hex(),
        "address": list(node.address) if node.address else None, "contacts": len(node.protocol.contacts()),
    }


async def _set_quota(library: PatternLibrary, args: dict) -> dict[str, Any]:
    quota = args.get("bytes")
    if isinstance(quota, bool) or not isinstance(quota, int) or quota <= 0:
        raise ValueError(f"bytes must be a positive whole number, got {quota!r}")
    node = library.node
    eviction = node.set_quota(quota)
    usage = node.store.usage()
    return {
        "quota": quota, "used": usage.used, "pinned": usage.pinned,
        "evicted": {"bytes": eviction.freed, "expired": eviction.expired, "cached": eviction.cached,
                    "replicas": eviction.replicas},
        "over_by": max(0, usage.used - node.budget),
    }


OPS: dict[str, Callable[[PatternLibrary, dict], Awaitable[dict[str, Any]]]] = {
    "publish": _publish, "fetch": _fetch, "search": _search, "history": _history,
    "ls": _ls, "pin": _pin, "unpin": _unpin, "whoami": _whoami, "set-quota": _set_quota, **TEAM_OPS,
}
"""Operations on the pattern library and the node's teams: the same on a daemon and on a temporary node."""


def _no_args(op: str, args: dict) -> None:
    if args:
        raise ControlError("bad-request", f"{op} takes no arguments, got {', '.join(map(repr, args))}")


def _meta_time(library: PatternLibrary, name: str) -> float | None:
    value = library.store.meta_get(name)
    return float(value) if value is not None else None


async def _status(library: PatternLibrary, daemon: DaemonInfo | None, args: dict) -> dict[str, Any]:
    """The node at a glance. Without a daemon (a temporary node) only what the home knows is filled in.

    Every key is always present, ``None`` where it does not apply, so scripts
    read one shape whether or not the daemon runs.
    """
    _no_args("status", args)
    node = library.node
    held = library.held()  # the same listing as ``ls``
    roles = Counter(h.role for h in held)
    usage = node.store.usage()
    result: dict[str, Any] = {
        "running": daemon is not None,
        "node_id": node.node.id.hex(),
        "identity": node.identity.public.to_string(),
        "version": version("aether-node"),
        "role": None,
        "storage": {
            "used_bytes": usage.used,
            "by_role": usage.by_role,
            "pinned_bytes": usage.pinned,
            "evictable_bytes": usage.evictable,
            "quota_bytes": node.config.quota_bytes,
        },
        "patterns": {
            "held": len(held), "own": roles["own"], "pinned": sum(h.pinned for h in held),
            "replica": roles["replica"], "cached": roles["cache"],
        },
        "last_republish": _meta_time(library, "last_republish"),
        "last_replicate": _meta_time(library, "last_replicate"),
        "pid": None, "address": None, "started_at": None, "uptime": None, "peers": None, "network": None,
    }
    if daemon is None:
        return result
    uptime = time.monotonic() - daemon.started
    buckets = node.protocol.router.buckets
    host, port = node.address
    contacts = len(node.protocol.contacts())
    result.update(
        pid=daemon.pid, address=format_address(host, port), started_at=time.time() - uptime, uptime=uptime,
        peers={
            "contacts": contacts,
            "buckets_in_use": sum(1 for bucket in buckets if len(bucket)),
            "buckets": len(buckets),
        },
        network=daemon.join.report(contacts),
        role="light" if node.light else "full",
    )
    return result


async def _peers(library: PatternLibrary, daemon: DaemonInfo | None, args: dict) -> dict[str, Any]:
    """Every contact of the routing table, nearest to this node first."""
    _no_args("peers", args)
    if daemon is None:
        raise ControlError(
            "no-daemon", "no daemon is running: peers are those of a running daemon's routing table; "
            "start it with `aether-node daemon`",
        )
    node = library.node
    protocol = node.protocol
    peers = []
    for contact in sorted(protocol.contacts(), key=node.node.distance_to):
        address = (contact.ip, contact.port)
        peers.append({
            "node_id": contact.id.hex(), "address": format_address(contact.ip, contact.port),
            "rtt": protocol.rtt.srtt(address), "timeout": protocol.rtt.timeout_for(address),
            "last_seen": protocol.last_seen(contact.id), "failures": protocol.failures(contact.id),
        })
    return {"peers": peers}


NODE_OPS: dict[str, Callable[[PatternLibrary, DaemonInfo | None, dict], Awaitable[dict[str, Any]]]] = {
    "status": _status, "peers": _peers,
}
"""Operations about the running node: what only a daemon knows comes from ``daemon``, None on a temporary node."""


async def handle(library: PatternLibrary, op: str, args: dict, daemon: DaemonInfo | None = None) -> dict[str, Any]:
    """Run one operation; every expected failure becomes a ControlError with a reason.

    The daemon passes ``daemon``; a temporary node (no daemon on the home) does not.
    """
    if op not in OPS and op not in NODE_OPS:
        raise ControlError("bad-request", f"unknown operation {op!r}; known: {', '.join(sorted([*OPS, *NODE_OPS]))}")
    try:
        if op in NODE_OPS:
            return await NODE_OPS[op](library, daemon, args)
        return await OPS[op](library, args)
    except PatternError as exc:
        raise ControlError("invalid", str(exc)) from None
    except AmbiguousPattern as exc:
        raise ControlError("ambiguous", str(exc)) from None
    except TeamLocked as exc:
        raise ControlError("team-locked", str(exc)) from None
    except PatternNotFound as exc:
        raise ControlError("not-found", str(exc)) from None
    except QuotaExceeded as exc:
        raise ControlError("quota", str(exc)) from None
    except TeamError as exc:
        raise ControlError("invalid", str(exc)) from None
    except ValueError as exc:
        raise ControlError("bad-request", str(exc)) from None
    except StoreError as exc:
        # A full or failing disk: the store rolled the write back; the daemon serves on.
        log.error("%s: %s", op, exc)
        raise ControlError("storage", str(exc)) from None

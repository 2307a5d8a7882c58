"""The operations a node offers its user, as requests and plain replies.

One table maps each operation the CLI (and later other local clients) can ask
for to the pattern library. The daemon serves it over its control socket; the
one-shot CLI calls it in-process on a temporary node. Either way the request
and the reply are the same plain data, which is also what ``--json`` prints.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from aether.crypto.identity import node_id_for
from aether.node.control import ControlError
from aether.node.entries import Summary
from aether.node.pattern import PatternError
from aether.node.patterns import AmbiguousPattern, Authored, PatternLibrary, PatternNotFound
from aether.node.server import QuotaExceeded

NETWORK_OPS = frozenset({"publish", "fetch", "search", "history", "pin"})
"""Operations that need peers; ``ls`` and ``unpin`` work on the local store alone."""


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "id": summary.id, "title": summary.title, "hash": summary.hash, "time": summary.time,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(summary.time)), "size": summary.size,
        "type": summary.type, "category": summary.category, "status": summary.status,
    }


def authored_dict(item: Authored) -> dict[str, Any]:
    return {**summary_dict(item.summary), "author": item.author_id}


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
    result = await library.publish(data, source)
    return {
        "hash": result.pattern.hash, "id": result.pattern.id, "path": source, "unchanged": result.unchanged,
        "replicas": result.replicas, "terms": result.index_terms,
    }


async def _fetch(library: PatternLibrary, args: dict) -> dict[str, Any]:
    fetched = await library.fetch(_text(args, "ref"), _text(args, "author", required=False))
    return {
        **summary_dict(fetched.summary), "data": fetched.data, "authors": fetched.authors,
        "mirrors": fetched.mirrors, "signature": "valid" if fetched.signature_ok else "invalid",
        "local": fetched.local, "tampered_holders": fetched.tampered,
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
             "versions": [{"hash": h, "time": t, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))}
                          for h, t in versions]}
            for head, versions in found
        ]
    }


async def _ls(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return {
        "patterns": [
            {**summary_dict(h.summary), "role": h.role, "pinned": h.pinned, "complete": h.complete}
            for h in library.held()
        ]
    }


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
    "ls": _ls, "pin": _pin, "unpin": _unpin, "whoami": _whoami, "set-quota": _set_quota,
}


async def handle(library: PatternLibrary, op: str, args: dict) -> dict[str, Any]:
    """Run one operation; every expected failure becomes a ControlError with a reason."""
    action = OPS.get(op)
    if action is None:
        raise ControlError("bad-request", f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}")
    try:
        return await action(library, args)
    except PatternError as exc:
        raise ControlError("invalid", str(exc)) from None
    except AmbiguousPattern as exc:
        raise ControlError("ambiguous", str(exc)) from None
    except PatternNotFound as exc:
        raise ControlError("not-found", str(exc)) from None
    except QuotaExceeded as exc:
        raise ControlError("quota", str(exc)) from None
    except ValueError as exc:
        raise ControlError("bad-request", str(exc)) from None

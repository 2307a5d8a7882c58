"""The team operations a node offers its user, as requests and plain replies.

The same table serves the daemon's control socket and a temporary node (see
node/api.py, which merges it into its own). Teams are named by the user's label or
by their ID: a label that several teams share is an error listing their IDs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aether.crypto.identity import PublicIdentity
from aether.crypto.records import decode_record
from aether.node.contact import reach_all
from aether.node.control import ControlError
from aether.node.home import format_address
from aether.node.team_ceremony import (
    Accepted,
    Created,
    approve_change,
    change_members,
    create_team,
    import_share,
    parse_members,
    pending_changes,
    plan_change,
    read_team,
    team_records,
)
from aether.node.team_keys import lock
from aether.node.team_unlock import Answerer, MemberResult, Pending, unlock
from aether.node.teams import Approval, Descriptor, Link, Proposal, descriptor_of, team_key
from aether.storage.store import TEAM_POLICIES, Store, TeamRow

if TYPE_CHECKING:
    from aether.node.patterns import PatternLibrary

REACH_TIMEOUT = 5.0
"""Default bound, in seconds, on finding out which members' nodes answer (``team status``)."""
_ID_PREFIX = re.compile(r"[0-9a-f]{8,40}")


def resolve_team(store: Store, ref: str) -> TeamRow:
    """The team of this node that ``ref`` names: its name, its ID, or 8+ hex digits of its ID.

    Two teams may share a name; then the ID must be given, and the error lists them.
    """
    rows = store.teams(ref)
    if not rows and _ID_PREFIX.fullmatch(ref.lower()):
        rows = [r for r in store.teams() if r.team_id.hex().startswith(ref.lower())]
    if len(rows) == 1:
        return rows[0]
    if rows:
        listed = ", ".join(f"{r.team_id.hex()} ({r.name})" for r in rows)
        raise ControlError("ambiguous", f"{len(rows)} teams match {ref!r}: {listed}; give the team ID instead")
    raise ControlError("not-found", f"this node is in no team named {ref!r}; `aether-node team list` shows its teams")


def held_descriptor(row: TeamRow) -> Descriptor:
    """The descriptor a store row keeps (the signed record's encoding, checked when it was taken in)."""
    return descriptor_of(decode_record(row.descriptor))


def _team_dict(store: Store, row: TeamRow) -> dict[str, Any]:
    descriptor = held_descriptor(row)
    return {
        "name": row.name, "id": row.team_id.hex(), "epoch": row.epoch, "k": descriptor.k, "n": descriptor.n,
        "holds_share": store.team_share(row.team_id, row.epoch) is not None,
        "unlocked": row.epoch in store.team_keys(row.team_id), "policy": row.policy,
    }


def _text(args: dict, name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ControlError("bad-request", f"{name!r} must be a non-empty string")
    return value


def _members_arg(args: dict) -> list[str]:
    members = args.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ControlError("bad-request", "'members' must be a list of identity strings")
    return members


def _shares_out_arg(args: dict) -> Path | None:
    shares_out = args.get("shares_out")
    if shares_out is not None and not (isinstance(shares_out, str) and Path(shares_out).is_absolute()):
        raise ControlError("bad-request", "'shares_out' must be an absolute path")
    return Path(shares_out) if shares_out else None


def _made_dict(made: Created, me: PublicIdentity) -> dict[str, Any]:
    """An epoch just made: its K of N, where its descriptor went, and how each member's share left."""
    d = made.descriptor
    return {
        "name": d.name, "id": d.team_id.hex(), "epoch": d.epoch, "k": d.k, "n": d.n, "replicas": made.replicas,
        "members": [
            {"index": x.index, "node_id": x.member.node_id.hex(), "identity": x.member.to_string(),
             "self": x.member == me, "replicas": x.replicas, "file": str(x.file) if x.file else None,
             "error": x.error}
            for x in made.deliveries
        ],
    }


async def _create(library: PatternLibrary, args: dict) -> dict[str, Any]:
    created = await create_team(library.node, _text(args, "name"), args.get("threshold"),
                                parse_members(_members_arg(args)), _shares_out_arg(args))
    return _made_dict(created, library.node.identity.public)


def _accepted_dict(accepted: Accepted) -> dict[str, Any]:
    d = accepted.descriptor
    return {"name": d.name, "id": d.team_id.hex(), "epoch": d.epoch, "k": d.k, "n": d.n, "index": accepted.index,
            "new": accepted.new, "newest_epoch": accepted.newest.epoch}


async def _import_share(library: PatternLibrary, args: dict) -> dict[str, Any]:
    data = args.get("data")
    if not isinstance(data, bytes):
        raise ControlError("bad-request", "'data' must be the share file's bytes")
    return _accepted_dict(import_share(library.node, data))


async def _change(library: PatternLibrary, args: dict, *, adding: bool) -> dict[str, Any]:
    """Add or remove members: a new epoch, built on the newest one the DHT knows of.

    The request is checked against the epoch held before anything is read or written;
    the team's descriptors are then read from the network so that the change follows
    any epoch another member made meanwhile (checked again against it).
    """
    node = library.node
    members = parse_members(_members_arg(args))
    if not members:
        raise ControlError("bad-request", "'members' must name at least one member")
    threshold = args.get("threshold")
    shares_out = _shares_out_arg(args)
    changes = {"add": members} if adding else {"remove": members}
    row = resolve_team(node.store, _text(args, "team"))
    plan_change(node.identity.public, held_descriptor(row), k=threshold, shares_out=shares_out, **changes)
    await read_team(node, row.team_id)
    row = node.store.team(row.team_id) or row
    changed = await change_members(node, row, k=threshold, shares_out=shares_out, **changes)
    winner = changed.winner
    return {
        **_made_dict(changed.made, node.identity.public), "previous_epoch": changed.previous.epoch,
        "added": [m.node_id.hex() for m in changes.get("add", [])],
        "removed": [m.node_id.hex() for m in changes.get("remove", [])],
        "won": changed.won, "pending": changed.pending, "approvals": changed.signers, "needed": changed.needed,
        "proposal": Approval.of(Link(changed.made.descriptor, changed.made.record)).proposal().hex(),
        "winner": None if winner is None else {
            "epoch": winner.epoch, "k": winner.k, "n": winner.n, "digest": winner.digest().hex(),
            "members": [m.node_id.hex() for m in winner.members]},
    }


def proposal_dict(p: Proposal, me: PublicIdentity) -> dict[str, Any]:
    """A pending change as `team status` and `team approve-change` show it: what it changes, who made and signed it."""
    d, before = p.link.descriptor, p.previous
    return {
        "proposal": Approval.of(p.link).proposal().hex(), "epoch": d.epoch, "k": d.k, "n": d.n,
        "previous_k": before.k, "digest": d.digest().hex(),
        "maker": next((m.node_id.hex() for m in before.members if m.signing_public == p.link.record.author), None),
        "added": [m.node_id.hex() for m in d.members if m not in before.members],
        "removed": [m.node_id.hex() for m in before.members if m not in d.members],
        "approvals": len(p.signers), "needed": p.needed, "signed_here": me.signing_public in p.signers,
    }


async def _approve_change(library: PatternLibrary, args: dict) -> dict[str, Any]:
    node = library.node
    row = resolve_team(node.store, _text(args, "team"))
    chosen = args.get("proposal")
    if chosen is not None and not (isinstance(chosen, str) and re.fullmatch(r"[0-9a-fA-F]{1,64}", chosen)):
        raise ControlError("bad-request", "'proposal' must be hex digits of a proposal ID (see `team status`)")
    approved = await approve_change(node, row, chosen)
    return {"name": row.name, "id": row.team_id.hex(), **proposal_dict(approved.proposal, node.identity.public),
            "replicas": approved.replicas, "complete": approved.proposal.complete,
            "followed_epoch": approved.followed.epoch}


async def _add_member(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return await _change(library, args, adding=True)


async def _remove_member(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return await _change(library, args, adding=False)


async def _list(library: PatternLibrary, args: dict) -> dict[str, Any]:
    store = library.node.store
    return {"teams": [_team_dict(store, row) for row in store.teams()]}


async def _status(library: PatternLibrary, args: dict) -> dict[str, Any]:
    node = library.node
    row = resolve_team(node.store, _text(args, "team"))
    descriptor = held_descriptor(row)
    bound = args.get("timeout", REACH_TIMEOUT)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound <= 3600:
        raise ControlError("bad-request", "'timeout' must be a number of seconds from 0 to 3600")
    me = node.identity.public
    others = [m for m in descriptor.members if m != me]
    connected = bool(node.protocol.contacts())
    reaches = dict(zip(others, await reach_all(node, others, float(bound)))) if connected else {}
    members = []
    for index, member in enumerate(descriptor.members, start=1):
        entry: dict[str, Any] = {"index": index, "node_id": member.node_id.hex(), "identity": member.to_string(),
                                 "self": member == me, "reachable": None, "address": None, "reason": None}
        if member == me:
            entry.update(reachable=True if connected else None, reason="this node")
        elif member in reaches:
            found = reaches[member]
            entry.update(reachable=found.reachable, reason=found.reason,
                         address=format_address(*found.address) if found.address else None)
        else:
            entry["reason"] = "not connected to the network"
        members.append(entry)
    records = await team_records(node, row.team_id) if connected else [
        decode_record(held.value) for held in node.store.entries(team_key(row.team_id))]
    changes = [proposal_dict(p, me) for p in pending_changes(node, row.team_id, records)]
    return {**_team_dict(node.store, row), "index": descriptor.index_of(me.signing_public),
            "connected": connected, "members": members, "changes": changes, **unlock_status(library, row)}


# ------------------------------------------------------------------ unlocking (node/team_unlock.py)
UNLOCK_TIMEOUT = 10.0
"""Default bound, in seconds, on collecting shares (``team unlock``)."""


def _bound(args: dict, default: float) -> float:
    bound = args.get("timeout", default)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound <= 3600:
        raise ControlError("bad-request", "'timeout' must be a number of seconds from 0 to 3600")
    return float(bound)


def _member_dict(m: MemberResult) -> dict[str, Any]:
    return {"index": m.index, "node_id": m.member.node_id.hex(), "identity": m.member.to_string(), "state": m.state,
            "reason": m.reason, "message": m.message, "epoch": m.epoch}


async def _unlock(library: PatternLibrary, args: dict) -> dict[str, Any]:
    node = library.node
    row = resolve_team(node.store, _text(args, "team"))
    if not node.protocol.contacts():
        raise ControlError("no-network", "this node has no peers: members' nodes cannot be found to ask for shares")
    result = await unlock(node, row, _bound(args, UNLOCK_TIMEOUT), ttl=library.teams.unlock_ttl)
    expires = node.store.team_key_expiry(row.team_id, row.epoch) if result.unlocked else None
    return {
        "name": result.name, "id": result.team_id.hex(), "epoch": result.epoch, "k": result.k,
        "unlocked": result.unlocked, "epochs": result.epochs, "got": result.got, "expires": expires,
        "used": [m.node_id.hex() for m in result.used], "bad_unnamed": result.bad_unnamed,
        "members": [_member_dict(m) for m in result.members],
    }


async def _lock(library: PatternLibrary, args: dict) -> dict[str, Any]:
    row = resolve_team(library.node.store, _text(args, "team"))
    return {"name": row.name, "id": row.team_id.hex(), "forgotten": lock(library.node, row.team_id)}


def _pending_dict(p: Pending) -> dict[str, Any]:
    return {"node_id": p.requester.node_id.hex(), "identity": p.requester.to_string(), "epoch": p.epoch,
            "received": p.received, "state": p.state}


def _answerer(library: PatternLibrary, what: str) -> Answerer:
    answerer = library.node.team_answerer
    if not answerer.on_daemon:
        raise ControlError("no-daemon", f"no daemon is running: {what} only on the running daemon, which keeps "
                           "share requests waiting for approval; start it with `aether-node daemon`")
    return answerer


async def _decide(library: PatternLibrary, args: dict, approve: bool) -> dict[str, Any]:
    answerer = _answerer(library, "requests are approved or denied")
    row = resolve_team(library.node.store, _text(args, "team"))
    who = args.get("requester")
    if who is not None and (not isinstance(who, str) or not who.strip()):
        raise ControlError("bad-request", "'requester' must be an identity string or 8+ hex digits of a node ID")
    chosen = answerer.decide(row.team_id, who, approve)
    if not chosen:
        waiting = [p.requester.node_id.hex() for p in answerer.pending(row.team_id) if p.state == "waiting"]
        named = f"from {who!r} " if who else ""
        raise ControlError("not-found", f"no share request {named}waits for approval in team {row.name}"
                           + (f"; waiting: {', '.join(waiting)}" if waiting else ""))
    return {"name": row.name, "id": row.team_id.hex(), "approved" if approve else "denied":
            [_pending_dict(p) for p in chosen]}


async def _approve(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return await _decide(library, args, True)


async def _deny(library: PatternLibrary, args: dict) -> dict[str, Any]:
    return await _decide(library, args, False)


async def _policy(library: PatternLibrary, args: dict) -> dict[str, Any]:
    store = library.node.store
    row = resolve_team(store, _text(args, "team"))
    policy = args.get("policy")
    if policy not in TEAM_POLICIES:
        raise ControlError("bad-request", f"'policy' must be one of {', '.join(TEAM_POLICIES)}")
    store.set_team_policy(row.team_id, policy)
    return {"name": row.name, "id": row.team_id.hex(), "policy": policy, "was": row.policy}


def unlock_status(library: PatternLibrary, row: TeamRow) -> dict[str, Any]:
    """What ``team status`` adds about unlocking: the key's expiry, and requests waiting for approval."""
    answerer = library.node.team_answerer
    return {"expires": library.node.store.team_key_expiry(row.team_id, row.epoch),
            "pending": [_pending_dict(p) for p in answerer.pending(row.team_id)] if answerer.on_daemon else None}


TEAM_OPS: dict[str, Callable[[PatternLibrary, dict], Awaitable[dict[str, Any]]]] = {
    "team-create": _create, "team-import-share": _import_share, "team-list": _list, "team-status": _status,
    "team-add-member": _add_member, "team-remove-member": _remove_member,
    "team-approve-change": _approve_change,
    "team-unlock": _unlock, "team-lock": _lock, "team-approve": _approve, "team-deny": _deny,
    "team-policy": _policy,
}
"""Team operations, served like the pattern operations (node/api.py)."""

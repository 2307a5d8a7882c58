"""``aether-node team …``: create a team, change its members and approve changes, take in a share, list teams, show one, unlock and lock it.

Each command is one control operation (node/team_api.py) on the home's daemon, or on
a temporary node when no daemon runs. ``team create`` checks its whole request here
first, so a mistyped identity or threshold is reported even with no network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from aether.node.api import iso_date
from aether.node.team_ceremony import MAX_SHARE_FILE_BYTES, parse_members, plan_team
from aether.node.teams import TeamError

if TYPE_CHECKING:
    from aether.node.cli import Context


def _run(obj: Context, op: str, args: dict[str, Any], *, network: bool, timeout: float) -> Any:
    from aether.node.cli import _run as run  # the CLI module registers this group: import it late

    return run(obj, op, args, network=network, timeout=timeout)


def _run_online_if_possible(obj: Context, op: str, args: dict[str, Any], *, timeout: float) -> Any:
    """Run ``op`` joined to the network when a daemon or a peer answers, else on this node alone."""
    from aether.node.cli import _guard, _one
    from aether.node.control import ControlError

    def attempt() -> Any:
        try:
            return asyncio.run(_one(obj, op, args, network=True, timeout=timeout))
        except ControlError as exc:
            if exc.reason != "no-network":
                raise
        return asyncio.run(_one(obj, op, args, network=False, timeout=timeout))

    return _guard(attempt)


def _check(action: Any) -> Any:
    try:
        return action()
    except TeamError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def team() -> None:
    """Teams: a key shared among members, any K of whom unlock it (no key server)."""


@team.command()
@click.argument("name")
@click.option("--threshold", "-k", type=int, required=True, help="How many members together unlock the team (K).")
@click.option("--member", "members", multiple=True, metavar="ID",
              help="A member's identity string (aether1…); repeatable. This node is a member too.")
@click.option("--shares-out", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write each member's share to DIR/<node id>.share, to hand over (works with no network).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Give up after this many seconds.")
@click.pass_obj
def create(obj: Context, name: str, threshold: int, members: tuple[str, ...], shares_out: str | None,
           timeout: float) -> None:
    """Create team NAME: a fresh key, split K-of-N, each share sealed to its member and delivered.

    Members who are offline get their share from the network when their node comes
    online. This node keeps its own share, never the key.
    """
    from aether.node.cli import _guard

    out = Path(shares_out).absolute() if shares_out else None
    creator = _guard(obj.home.identity).public
    _check(lambda: plan_team(creator, name, threshold, parse_members(members), out))
    args = {"name": name, "threshold": threshold, "members": list(members), "shares_out": str(out) if out else None}
    if out is None:
        result = _run(obj, "team-create", args, network=True, timeout=timeout)
    else:  # the share files go by hand: the network is used if there is one, not needed
        result = _run_online_if_possible(obj, "team-create", args, timeout=timeout)
    head = (f"created team {result['name']} {result['id']}: {result['k']} of {result['n']} members unlock it, "
            f"epoch {result['epoch']}")
    obj.emit(result, "\n".join([head, *_made_lines(result)]))


def _made_lines(result: dict[str, Any]) -> list[str]:
    """Where a new epoch's descriptor went, and how each member's share left this node."""
    placed = (f"descriptor stored on {result['replicas']} peer(s)" if result["replicas"] else
              "descriptor kept here, on no peer yet (the daemon publishes it when it runs)")
    lines = [placed]
    for m in result["members"]:
        if m["self"]:
            what = "this node: keeps its own share"
        else:
            what = f"share stored on {m['replicas']} peer(s)" if m["error"] is None else f"not delivered: {m['error']}"
            if m["file"]:
                what += f", file {m['file']}"
        lines.append(f"  {m['index']:>3}  {m['node_id']}  {what}")
    return lines


def _change(obj: Context, op: str, team_ref: str, ids: tuple[str, ...], threshold: int | None,
            shares_out: str | None, timeout: float) -> None:
    """Run a change of members on the daemon (or a temporary node) and show the new epoch."""
    _check(lambda: parse_members(ids))
    out = Path(shares_out).absolute() if shares_out else None
    args = {"team": team_ref, "members": list(ids), "threshold": threshold, "shares_out": str(out) if out else None}
    if out is None:
        result = _run(obj, op, args, network=True, timeout=timeout)
    else:  # the share files go by hand: the network is used if there is one, not needed
        result = _run_online_if_possible(obj, op, args, timeout=timeout)
    changed = ", ".join([*(f"added {m}" for m in result["added"]), *(f"removed {m}" for m in result["removed"])])
    head = (f"team {result['name']} {result['id']}: epoch {result['epoch']} (was {result['previous_epoch']}), "
            f"{result['k']} of {result['n']} members unlock it; {changed}")
    lines = [head, *_made_lines(result)]
    if result["pending"]:
        more = result["needed"] - result["approvals"]
        lines.append(f"change proposed: needs {more} more approval(s) from members of epoch {result['previous_epoch']}: "
                     f"run `aether-node team approve-change {result['name']}` on their nodes "
                     f"(proposal {result['proposal'][:16]})")
    obj.emit(result, "\n".join(lines))
    if not result["won"] and not result["pending"]:
        raise click.ClickException(
            f"another member made epoch {result['epoch']} of team {result['name']} at the same time, and every "
            f"node follows that one (its descriptor has the smaller digest): this change did not take. "
            f"See `aether-node team status {result['id']}` and make it again if it is still wanted"
        )


def _change_command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A `team` command that changes members: NAME|ID ID... [--threshold K] [--shares-out DIR] [--timeout S]."""
    options = [
        click.argument("team_ref", metavar="NAME|ID"),
        click.argument("ids", metavar="ID...", nargs=-1, required=True),
        click.option("--threshold", "-k", type=int, default=None,
                     help="Also change how many members together unlock the team (K)."),
        click.option("--shares-out", type=click.Path(file_okay=False), metavar="DIR",
                     help="Also write each member's new share to DIR/<node id>.share (works with no network)."),
        click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
                     help="Give up after this many seconds."),
        click.pass_obj,
    ]

    def decorate(function: Callable[..., None]) -> click.Command:
        for option in reversed(options):
            function = option(function)
        return team.command(name)(function)

    return decorate


@_change_command("add-member")
def add_member(obj: Context, team_ref: str, ids: tuple[str, ...], threshold: int | None, shares_out: str | None,
               timeout: float) -> None:
    """Add members (identity strings) to a team: a new epoch with a new key, shared among all its members.

    The team's current epoch must be unlocked here: its key is chained to the new one,
    so the new members read older patterns too.
    """
    _change(obj, "team-add-member", team_ref, ids, threshold, shares_out, timeout)


@_change_command("remove-member")
def remove_member(obj: Context, team_ref: str, ids: tuple[str, ...], threshold: int | None, shares_out: str | None,
                  timeout: float) -> None:
    """Remove members (identity strings) from a team: a new epoch whose key they never get.

    They keep what they could read before; what is published for the new epoch is closed
    to them, and members no longer answer their unlock requests.
    """
    _change(obj, "team-remove-member", team_ref, ids, threshold, shares_out, timeout)


@team.command("approve-change")
@click.argument("team_ref", metavar="NAME|ID")
@click.option("--proposal", metavar="HEX", default=None,
              help="Which pending change to approve, by the first hex digits of its proposal ID (see `team status`).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Give up after this many seconds.")
@click.pass_obj
def approve_change(obj: Context, team_ref: str, proposal: str | None, timeout: float) -> None:
    """Approve a member change another member proposed: it takes effect once K members of the current epoch signed it.

    Shows what the change does (members added and removed, the new K, who made it);
    the approval covers that exact change only. Not `team approve`, which answers
    share requests.
    """
    args = {"team": team_ref, "proposal": proposal}
    r = _run(obj, "team-approve-change", args, network=True, timeout=timeout)
    state = (f"complete: this node now follows epoch {r['followed_epoch']}" if r["complete"] else
             f"needs {r['needed'] - r['approvals']} more approval(s) from members of epoch {r['epoch'] - 1}")
    obj.emit(r, "\n".join([f"approved the change of team {r['name']} {r['id']} to epoch {r['epoch']} "
                           f"({r['approvals']} of {r['needed']} approvals): {state}", *_change_lines(r)]))


def _change_lines(p: dict[str, Any]) -> list[str]:
    """What a proposed change does, indented under its heading."""
    return [f"  proposal {p['proposal'][:16]} by {p['maker']}: {p['previous_k']} -> {p['k']} of {p['n']} members",
            *(f"  + {m}" for m in p["added"]), *(f"  - {m}" for m in p["removed"])]


@team.command("import-share")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_obj
def import_share(obj: Context, file: str) -> None:
    """Take in a share file written by `team create --shares-out` (no network needed)."""
    path = Path(file)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SHARE_FILE_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SHARE_FILE_BYTES:
        raise click.ClickException(f"{path} is larger than any share file ({MAX_SHARE_FILE_BYTES} bytes)")
    result = _run(obj, "team-import-share", {"data": data}, network=False, timeout=60.0)
    done = "took in" if result["new"] else "already held"
    obj.emit(result, f"{done} this node's share (member {result['index']}) of team {result['name']} {result['id']}, "
                     f"epoch {result['epoch']}: {result['k']} of {result['n']} members unlock it")


@team.command("list")
@click.pass_obj
def list_(obj: Context) -> None:
    """List the teams this node is in."""
    result = _run(obj, "team-list", {}, network=False, timeout=60.0)
    rows = result["teams"]
    lines = [f"{'NAME':<20} {'ID':<40} {'EPOCH':>5}  {'K OF N':<10} SHARE"]
    for t in rows:
        share = "held" if t["holds_share"] else "missing"
        lines.append(f"{t['name']:<20} {t['id']} {t['epoch']:>5}  {str(t['k']) + ' of ' + str(t['n']):<10} {share}"
                     + ("  unlocked" if t["unlocked"] else ""))
    obj.emit(result, "\n".join(lines) if rows else "this node is in no team")


@team.command()
@click.argument("team_ref", metavar="NAME|ID")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(0.5, 600),
              help="How long to wait for members' nodes to answer.")
@click.pass_obj
def status(obj: Context, team_ref: str, timeout: float) -> None:
    """Show a team: its members and which of them answer, K, the epoch, this node's share and key."""
    args = {"team": team_ref, "timeout": timeout}
    # Joining (without a daemon) and looking up contact records come before the pings.
    result = _run_online_if_possible(obj, "team-status", args, timeout=timeout + 60.0)
    obj.emit(result, _status_text(result))


def _status_text(s: dict[str, Any]) -> str:
    share = f"held here (member {s['index']})" if s["holds_share"] else "not held here"
    if s["index"] is None:
        share = f"none: this node is not a member of epoch {s['epoch']}"
    rows = [
        ("team", f"{s['name']} {s['id']}"),
        ("epoch", str(s["epoch"])),
        ("threshold", f"{s['k']} of {s['n']} members unlock it"),
        ("share", share),
        ("key", _key_text(s)),
        ("policy", "share requests answered at once (auto)" if s["policy"] == "auto"
         else "share requests answered after `team approve`"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name + ':':<{width}}{value}" for name, value in rows]
    lines.append("members:" + ("" if s["connected"] else "  (not connected to the network: reachability unknown)"))
    for m in s["members"]:
        if m["self"]:
            state = "this node"
        elif m["reachable"]:
            state = f"reachable at {m['address']}"
        elif m["reachable"] is None:
            state = "unknown"
        else:
            state = f"unreachable ({m['reason']})"
        lines.append(f"  {m['index']:>3}  {m['node_id']}  {state}")
    lines.append("pending changes:" + ("" if s["changes"] else " none"))
    for c in s["changes"]:
        lines.append(f"  epoch {c['epoch']}: {c['approvals']} of {c['needed']} approvals"
                     + (" (signed here)" if c["signed_here"] else " (`team approve-change` to approve)"))
        lines.extend("  " + line for line in _change_lines(c))
    if s["pending"] is None:
        lines.append("pending requests: (no daemon running: only the daemon keeps requests for approval)")
    else:
        lines.append("pending requests:" + ("" if s["pending"] else " none"))
        for p in s["pending"]:
            lines.append(f"  {p['node_id']}  {p['state']} since "
                         f"{iso_date(p['received'])}")
    return "\n".join(lines)


def _key_text(s: dict[str, Any]) -> str:
    if not s["unlocked"]:
        return "locked (not unlocked here)"
    if s["expires"] is None:
        return "unlocked here"
    return f"unlocked here until {iso_date(s['expires'])}"


# ------------------------------------------------------------------ unlocking
def _who(m: dict[str, Any]) -> str:
    return "you" if m["state"] == "self" else m["node_id"][:16]


def _unlock_text(r: dict[str, Any]) -> str:
    """One line of outcome, then one line per kind of trouble, naming the members."""
    members = r["members"]
    used = {m for m in r["used"]}
    given = [_who(m) for m in members if m["state"] in ("self", "answered") and (not r["unlocked"] or m["node_id"] in used)]
    if r["unlocked"]:
        until = iso_date(r["expires"]) if r["expires"] else "?"
        epochs = ", ".join(map(str, r["epochs"]))
        lines = [f"unlocked team {r['name']} {r['id']} epoch {r['epoch']} with {len(given)} of {r['k']} shares "
                 f"(from {', '.join(given)}); key kept until {until} (epochs {epochs})"]
    else:
        lines = [f"team {r['name']} not unlocked: got {r['got']} of {r['k']} shares needed (from {', '.join(given)})"]
    for state, label in (("pending", "waiting for approval from"), ("no-answer", "no answer from")):
        names = [m["node_id"][:16] for m in members if m["state"] == state]
        if names:
            lines.append(f"{label}: {', '.join(names)}")
    for m in members:
        if m["state"] == "refused":
            epoch = f" (it holds epoch {m['epoch']})" if m["epoch"] is not None else ""
            lines.append(f"refused by {_who(m)}: {m['reason']}{epoch}: {m['message'] or ''}".rstrip(": "))
        elif m["state"] == "bad":
            lines.append(f"bad share from {m['node_id'][:16]}: left out ({m['message']})")
    if r["bad_unnamed"]:
        lines.append("the shares combined give a wrong key: one of them is bad, and no other share could tell whose")
    if any(m["state"] == "pending" for m in members) and not r["unlocked"]:
        lines.append("once they approve (`aether-node team approve`), run unlock again with a longer --timeout")
    return "\n".join(lines)


@team.command()
@click.argument("team_ref", metavar="NAME|ID")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.5, 3600),
              help="How long to collect members' shares.")
@click.pass_obj
def unlock(obj: Context, team_ref: str, timeout: float) -> None:
    """Unlock a team: ask the other members' nodes for their shares and combine K of them.

    The key is kept here, sealed at rest, for [teams] unlock_ttl (8 h by default),
    or until `team lock`. Exits non-zero when fewer than K good shares came in.
    """
    result = _run(obj, "team-unlock", {"team": team_ref, "timeout": timeout}, network=True, timeout=timeout + 60.0)
    obj.emit(result, _unlock_text(result))
    if not result["unlocked"]:
        raise SystemExit(1)


@team.command()
@click.argument("team_ref", metavar="NAME|ID")
@click.pass_obj
def lock(obj: Context, team_ref: str) -> None:
    """Forget the team's unlocked keys on this node at once."""
    result = _run(obj, "team-lock", {"team": team_ref}, network=False, timeout=60.0)
    what = f"forgot {result['forgotten']} unlocked key(s)" if result["forgotten"] else "no key was unlocked"
    obj.emit(result, f"team {result['name']} {result['id']} locked: {what}")


def _decide(obj: Context, op: str, team_ref: str, requester: str | None, every: bool) -> None:
    if (requester is None) == (not every):
        raise click.UsageError("name one REQUESTER (identity or 8+ hex digits of its node ID), or give --all")
    result = _run(obj, op, {"team": team_ref, "requester": requester}, network=False, timeout=60.0)
    done = "approved" if op == "team-approve" else "denied"
    names = ", ".join(p["node_id"] for p in result[done])
    obj.emit(result, f"{done} {len(result[done])} share request(s) for team {result['name']}: {names}")


def _decision(op: str, name: str, help: str) -> None:
    """``team approve`` and ``team deny``: the same arguments, the opposite decision."""

    @team.command(name, help=help)
    @click.argument("team_ref", metavar="NAME|ID")
    @click.argument("requester", required=False, metavar="[REQUESTER]")
    @click.option("--all", "every", is_flag=True, help="Every request of the team waiting for approval.")
    @click.pass_obj
    def command(obj: Context, team_ref: str, requester: str | None, every: bool) -> None:
        _decide(obj, op, team_ref, requester, every)


_decision("team-approve", "approve", "Answer a share request waiting for approval (see `team status`): REQUESTER "
          "is its identity or 8+ hex digits of its node ID. Needs the running daemon.")
_decision("team-deny", "deny", "Refuse a share request waiting for approval (REQUESTER, or --all). Needs the "
          "running daemon.")


@team.command()
@click.argument("team_ref", metavar="NAME|ID")
@click.argument("policy", type=click.Choice(["auto", "approve"]))
@click.pass_obj
def policy(obj: Context, team_ref: str, policy: str) -> None:
    """How this node answers the team's share requests: at once (auto) or after `team approve` (approve)."""
    result = _run(obj, "team-policy", {"team": team_ref, "policy": policy}, network=False, timeout=60.0)
    obj.emit(result, f"team {result['name']} {result['id']}: share requests are answered "
                     + ("at once" if policy == "auto" else "after `team approve`") + f" (was {result['was']})")

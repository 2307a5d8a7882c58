"""``aether-node team …``: create a team, change its members, take in a share, list teams, show one.

Each command is one control operation (node/team_api.py) on the home's daemon, or on
a temporary node when no daemon runs. ``team create`` checks its whole request here
first, so a mistyped identity or threshold is reported even with no network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

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
    obj.emit(result, "\n".join([head, *_made_lines(result)]))
    if not result["won"]:
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
        ("key", "unlocked here" if s["unlocked"] else "locked (not unlocked here)"),
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
    return "\n".join(lines)

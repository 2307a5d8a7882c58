"""``aether-node storage``: the device profile, the quota and what the node holds; ``storage set``.

The commands read the home's config and database and the platform's facts
directly, with or without a daemon: showing the profile needs no network. A
new quota is written to ``config.toml`` and, when a daemon runs, sent to it
with the control operation ``set-quota``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from aether.node.control import ControlClient, ControlError, DaemonNotRunning
from aether.node.home import Home, HomeError
from aether.storage import device
from aether.storage.store import ROLES, Store, StoreError, Usage

if TYPE_CHECKING:
    from aether.node.cli import Context

SET_QUOTA_OP = "set-quota"
"""The control operation that changes a running daemon's quota: args ``{"bytes": N}``."""


def gather(home: Home, settings: device.StorageSettings | None = None) -> tuple[device.DeviceProfile, Usage]:
    """The profile in force on ``home`` and its usage, from its config, its database and the platform.

    The database is opened only if it exists (showing the profile must not create
    one); the bytes it takes count as room the node has (see recommend_quota).
    """
    if settings is None:
        settings = home.settings().storage
    usage = Usage({role: 0 for role in ROLES}, 0, 0, 0)
    if home.db_path.exists():
        with Store(home.db_path) as store:
            usage = store.usage()
    facts = device.read_facts(disk_path=home.path)
    return device.device_profile(settings, facts, usage.file_bytes), usage


def usage_dict(profile: device.DeviceProfile, usage: Usage) -> dict[str, Any]:
    return {"quota": profile.quota, "own": usage.by_role["own"], "replica": usage.by_role["replica"],
            "cache": usage.by_role["cache"], "pinned": usage.pinned, "evictable": usage.evictable,
            "used": usage.used, "free": profile.quota - usage.used, "file": usage.file_bytes}


def render(profile: device.DeviceProfile, usage: Usage) -> str:
    """The text of ``aether-node storage``: one fact per line, sizes in decimal units."""
    size = device.format_size
    detection = profile.detection
    if profile.class_source == "config":
        agree = "agrees" if detection.device_class == profile.device_class else f"says {detection.device_class}"
        lines = [f"class:     {profile.device_class} (from config; detection {agree}: {detection.reason})"]
    else:
        lines = [f"class:     {profile.device_class} (detected: {detection.reason})"]
    lines += [f"{'evidence:' if i == 0 else '':<11}{line}" for i, line in enumerate(detection.evidence)]
    facts = profile.facts
    if facts.disk_total is not None and facts.disk_free is not None:
        lines.append(f"disk:      {size(facts.disk_total)}, {size(facts.disk_free)} free ({facts.disk_path})")
    else:
        lines.append(f"disk:      size unknown ({facts.disk_path})")
    low, high = device.quota_range(profile.device_class)
    recommendation = profile.recommendation
    if profile.quota_source == "config":
        lines.append(f"quota:     {size(profile.quota)} (from config; recommended {size(recommendation.quota)})")
    else:
        lines.append(f"quota:     {size(profile.quota)} (recommended: {recommendation.explain()})")
    lines.append(f"range:     {size(low)} to {size(high)} for a {profile.device_class}")
    share = f" ({100 * usage.used / profile.quota:.1f} % of the quota)" if profile.quota else ""
    lines.append(f"used:      {size(usage.used)}{share}, {size(max(profile.quota - usage.used, 0))} left")
    for label, value in (("own", usage.by_role["own"]), ("replicas", usage.by_role["replica"]),
                         ("cached", usage.by_role["cache"]), ("pinned", usage.pinned),
                         ("evictable", usage.evictable)):
        lines.append(f"  {label:<11}{size(value)}")
    lines.append(f"on disk:   {size(usage.file_bytes)} (the database with its log)")
    lines += [f"warning:   {warning}" for warning in profile.warnings]
    return "\n".join(lines)


async def push_quota(home_path: Path, quota: int, timeout: float = 10.0) -> tuple[str, str]:
    """Send the new quota to the home's daemon, if one runs: (outcome, sentence for the user).

    Outcomes: ``applied``; ``not-running`` (the config is read at the next start);
    ``restart`` (a daemon without the ``set-quota`` operation: it keeps its quota
    until restarted); ``failed`` (the daemon refused or did not answer).
    """
    try:
        client = await ControlClient.connect(home_path, timeout=timeout, request_timeout=timeout)
    except DaemonNotRunning:
        return "not-running", "no daemon is running: the quota takes effect when the node next starts"
    except ControlError as exc:
        return "failed", f"could not reach the running daemon ({exc}); restart it for the quota to take effect"
    async with client:
        try:
            reply = await client.request(SET_QUOTA_OP, {"bytes": quota})
        except ControlError as exc:
            if exc.reason == "bad-request" and "unknown operation" in exc.message:
                return "restart", ("the running daemon cannot change its quota while it runs: "
                                   "restart it for the new quota to take effect")
            return "failed", f"the running daemon did not take the quota ({exc}); restart it for it to take effect"
    said = "the running daemon now uses it"
    evicted = reply.get("evicted", {}) if isinstance(reply, dict) else {}
    if evicted.get("bytes"):
        said += (f"; it evicted {device.format_size(evicted['bytes'])} ({evicted.get('cached', 0)} cached copies, "
                 f"{evicted.get('replicas', 0)} replicas)")
    if isinstance(reply, dict) and reply.get("over_by"):
        said += (f"; own and pinned data are {device.format_size(reply['over_by'])} over it "
                 "and are never evicted: unpin patterns to make room")
    return "applied", said


@click.group(invoke_without_command=True)
@click.pass_context
def storage(ctx: click.Context) -> None:
    """Show the device class, what was detected, the disk, the quota and what is stored."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    profile, usage = _guard(lambda: gather(obj.home))
    obj.emit({**profile.as_dict(), "usage": usage_dict(profile, usage)}, render(profile, usage))


@storage.command("set")
@click.argument("size")
@click.option("--force", is_flag=True, help="Accept a size outside the device class's range.")
@click.pass_obj
def set_(obj: Context, size: str, force: bool) -> None:
    """Set the quota: SIZE like 500MB, 2GiB or 750000000 (decimal and binary units), or auto.

    Sizes outside the device class's range are refused unless --force is given.
    """
    home = obj.home
    settings = _guard(home.settings).storage
    if size.strip().lower() == "auto":
        quota = None
    else:
        try:
            quota = device.parse_size(size)
        except device.SizeError as exc:
            raise click.BadParameter(str(exc), param_hint="SIZE") from None
    current, _ = _guard(lambda: gather(home, settings))
    outside = None if quota is None else device.check_quota(quota, current.device_class)
    if outside and not force:
        raise click.ClickException(f"{outside}; use --force to set it anyway")
    _guard(lambda: home.update_config("storage", {"quota": "auto" if quota is None else quota}))
    profile, _ = _guard(lambda: gather(home, dataclasses.replace(settings, quota=quota)))
    outcome, said = asyncio.run(push_quota(home.path, profile.quota))
    low, high = device.quota_range(profile.device_class)
    result: dict[str, Any] = {
        "quota": profile.quota, "quota_source": profile.quota_source, "device_class": profile.device_class,
        "range": [low, high], "forced": bool(outside), "config": str(home.config_path),
        "daemon": outcome, "message": said,
    }
    where = "recommended quota" if quota is None else "quota"
    lines = [f"{where} {device.format_size(profile.quota)} ({profile.quota} bytes) written to {home.config_path}"]
    if outside:
        lines.append(f"warning: {outside} (forced)")
    if outcome != "failed":
        lines.append(said)
    obj.emit(result, "\n".join(lines))
    if outcome == "failed":
        click.echo(f"Error: {said}", err=True)
        raise SystemExit(1)


def _guard(action: Any) -> Any:
    """Config, home and database problems as clean one-line errors."""
    try:
        return action()
    except (HomeError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None

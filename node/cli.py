"""The ``aether-node`` command: one program for every role of a node.

Global options come before the command (``aether-node --home DIR --json id``).
Errors go to stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from aether.crypto.identity import IdentityError, PublicIdentity
from aether.node.api import iso_date
from aether.node.cli_storage import storage
from aether.node.cli_teams import team
from aether.node.control import ControlError
from aether.node.daemon import DaemonError
from aether.node.home import Home, HomeError, parse_address, resolve_home
from aether.storage.device import CLASSES


class Context:
    def __init__(self, home: Home, as_json: bool):
        self.home = home
        self.as_json = as_json

    def emit(self, data: dict[str, Any], text: str) -> None:
        click.echo(json.dumps(data, sort_keys=True) if self.as_json else text)


def _address(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        if isinstance(value, tuple):
            return [parse_address(v) for v in value]
        return parse_address(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", type=click.Path(file_okay=False), envvar="AETHER_HOME",
              help="The node's home folder (default: the platform's user data folder). Env: AETHER_HOME.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.version_option(package_name="aether-node")
@click.pass_context
def cli(ctx: click.Context, home: str | None, as_json: bool, log_level: str) -> None:
    """aether-node: share pattern documents over a peer-to-peer network."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(Home(resolve_home(home)), as_json)


@cli.command()
@click.option("--device-class", type=click.Choice(["auto", *CLASSES]),
              help="Set the device class in config.toml instead of detecting it (auto: detect).")
@click.pass_obj
def init(obj: Context, device_class: str | None) -> None:
    """Create this node's identity (Ed25519 + X25519 keys) and config file."""
    identity, created = _guard(obj.home.init)
    public = identity.public
    message = ("created" if created else "kept the existing") + f" identity in {obj.home.path}"
    data = {"home": str(obj.home.path), "created": created, "node_id": public.node_id.hex(), "identity": public.to_string()}
    if device_class is not None:
        _guard(lambda: obj.home.update_config("storage", {"device_class": device_class}))
        data["device_class"] = device_class
        message += f"\ndevice class {device_class} set in {obj.home.config_path}"
    obj.emit(data, f"{message}\nnode id:  {public.node_id.hex()}\nidentity: {public.to_string()}")


@cli.command("id")
@click.option("--check", metavar="IDENTITY", help="Check a shared identity string instead of printing ours.")
@click.pass_obj
def id_(obj: Context, check: str | None) -> None:
    """Print this node's shareable identity string (or check one)."""
    if check is not None:
        try:
            public = PublicIdentity.from_string(check)
        except IdentityError as exc:
            raise click.ClickException(f"invalid identity: {exc}") from None
    else:
        public = _guard(obj.home.identity).public
    obj.emit({"node_id": public.node_id.hex(), "identity": public.to_string()}, public.to_string())


@cli.command()
@click.option("--listen", callback=_address, metavar="HOST:PORT", help="Address to listen on (default from config).")
@click.option("--bootstrap", multiple=True, callback=_address, metavar="HOST:PORT", help="A peer to join through; repeatable.")
@click.option("--mdns/--no-mdns", default=None, envvar="AETHER_MDNS",
              help="Advertise this node on the local network and join the aether nodes found there "
                   "(default: `mdns` in config.toml, on). Env: AETHER_MDNS=0|1.")
@click.pass_obj
def daemon(obj: Context, listen: tuple[str, int] | None, bootstrap: list[tuple[str, int]], mdns: bool | None) -> None:
    """Run this device's node in the foreground until SIGINT or SIGTERM."""
    from aether.node import daemon as daemon_module

    settings = _guard(obj.home.settings)
    if listen:
        settings = dataclasses.replace(settings, listen=listen)
    if bootstrap:
        settings = dataclasses.replace(settings, bootstrap=list(bootstrap) + settings.bootstrap)
    if mdns is not None:
        settings = dataclasses.replace(settings, mdns=mdns)
    _guard(lambda: asyncio.run(daemon_module.run(obj.home, settings)))


@cli.command()
@click.argument("scenario", default="demo", metavar="[SCENARIO]")
@click.option("--nodes", type=click.IntRange(2, 1_000_000), help="Nodes in the network (default: the scenario's).")
@click.option("--seed", type=int, help="Seed for a repeatable run (default: the scenario's).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default: one per core).")
@click.option("--out", type=click.Path(file_okay=False), help="Write report.json and PNG plots into this folder.")
@click.option("--model", is_flag=True,
              help="The large-scale model instead: the node's own routing and lookup code on simulated time, "
                   "for 10,000 to 100,000 nodes (--nodes, default 10,000), and availability under churn.")
@click.option("--lookups", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="Lookups the model runs (with --adversarial: per row).")
@click.option("--adversarial", is_flag=True,
              help="With --model: fetches of stored values while 10 to 30 % of the nodes are silent, lie about "
                   "contacts (eclipse, fabricated) or values, and colluders placed nearest a key; one lookup "
                   "path against the disjoint paths of lookup_paths.")
@click.pass_obj
def simulate(obj: Context, scenario: str, nodes: int | None, seed: int | None, workers: int | None,
             out: str | None, model: bool, lookups: int, adversarial: bool) -> None:
    """Run SCENARIO on real nodes on loopback, spread over worker processes, and report what happened.

    SCENARIO is a shipped scenario (demo, churn, devices, team) or a scenario file
    (TOML); demo by default. The same scenario and seed give the same events.
    """
    if adversarial and not model:
        raise click.BadParameter("runs on the model: add --model", param_hint="--adversarial")
    if model:
        from aether.simulations.model import adversarial_report, model_report, render_adversarial, render_model

        if adversarial:
            report = adversarial_report(nodes or 10_000, lookups=lookups, seed=1 if seed is None else seed)
            text, name = render_adversarial(report), "adversarial.json"
        else:
            report = model_report(nodes or 10_000, lookups=lookups, seed=1 if seed is None else seed)
            text, name = render_model(report), "model.json"
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / name).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        obj.emit(report, text)
        return
    from aether.simulations.scenario import MAX_NODES, ScenarioError, load
    from aether.simulations.simulate import render, run_scenario

    if nodes is not None and nodes > MAX_NODES:
        raise click.BadParameter(f"real nodes on one machine: at most {MAX_NODES}; --model runs more", param_hint="--nodes")
    try:
        plan = load(scenario)
    except ScenarioError as exc:
        raise click.ClickException(str(exc)) from None
    live = _LiveLine() if sys.stderr.isatty() else None
    report = asyncio.run(run_scenario(plan, nodes=nodes, seed=seed, workers=workers,
                                      progress=live.line if live else None, status=live.redraw if live else None))
    if live:
        live.clear()
    written = []
    if out:
        from aether.simulations.plots import PlotsUnavailable, write_plots

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        written.append(folder / "report.json")
        try:
            written += write_plots(report, folder)
        except PlotsUnavailable as exc:
            click.echo(f"note: {exc}", err=True)
    text = render(report) + "".join(f"\n  wrote {path}" for path in written)
    obj.emit(report, text)


class _LiveLine:
    """A status line redrawn in place on a terminal, with stage lines printed above it."""

    def redraw(self, text: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        click.echo(f"\r\x1b[K{text[:width]}", nl=False, err=True)

    def line(self, text: str) -> None:
        click.echo(f"\r\x1b[K{text}", err=True)

    def clear(self) -> None:
        click.echo("\r\x1b[K", nl=False, err=True)


# ---------------------------------------------------------------- patterns
TIMEOUT = click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
                       help="Give up after this many seconds.")
AUTHOR = click.option("--author", metavar="ID", help="Choose among authors: identity string, node ID, or 8+ hex of it.")


def _run(obj: Context, op: str, args: dict[str, Any], *, network: bool, timeout: float = 60.0) -> Any:
    """One operation through the daemon or a temporary node, with errors as clean messages."""
    return _guard(lambda: asyncio.run(_one(obj, op, args, network=network, timeout=timeout)))


async def _one(obj: Context, op: str, args: dict[str, Any], *, network: bool, timeout: float) -> Any:
    from aether.node.session import open_session

    async with open_session(obj.home, network=network, timeout=timeout) as call:
        return await call(op, args)


def _pattern_files(paths: tuple[str, ...]) -> list[Path]:
    """Files as given, and the ``.md`` files under each folder, in a stable order."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.md") if p.is_file()))
        else:
            files.append(path)
    return files


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="FILE|DIR...")
@click.option("--team", "team", metavar="NAME", help=(
    "Publish privately to this team (name or ID): encrypted with its key, readable by its members only. "
    "The team must be unlocked on this node."))
@TIMEOUT
@click.pass_obj
def publish(obj: Context, paths: tuple[str, ...], team: str | None, timeout: float) -> None:
    """Publish pattern files (and the .md files in folders), signed by this node.

    Prints "<hash> <pattern-id> <path>" for each one published; an invalid file
    prints its error and the others still go out. Publishing the same bytes
    again changes nothing.
    """
    from aether.node.pattern import PatternError, load_pattern
    from aether.node.session import open_session

    files = _pattern_files(paths)
    if not files:
        raise click.ClickException("no pattern files (*.md) found in " + ", ".join(paths))
    limit = _guard(obj.home.settings).node.max_pattern_bytes
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    show_bar = len(files) > 1 and not obj.as_json and sys.stderr.isatty()


    def refuse(path: Path, exc: Exception) -> None:
        errors.append({"path": str(path), "error": str(exc)})
        click.echo(f"error: {exc}", err=True)

    # Every file is checked before the network is touched, so a bad file is
    # reported even when no peer can be reached.
    valid = []
    for path in files:
        try:
            load_pattern(path, max_bytes=limit)
        except PatternError as exc:
            refuse(path, exc)
        else:
            valid.append(path)

    async def go() -> None:
        if not valid:
            return
        async with open_session(obj.home, network=True, timeout=timeout) as call:
            with click.progressbar(length=len(valid), label="publishing", file=sys.stderr) if show_bar else _Null() as bar:
                for path in valid:
                    try:
                        pattern = load_pattern(path, max_bytes=limit)
                        request = {"data": pattern.data, "source": str(path)}
                        if team is not None:
                            request["team"] = team
                        result = await call("publish", request)
                    except (PatternError, ControlError) as exc:
                        refuse(path, exc)
                    else:
                        results.append(result)
                        if not obj.as_json:
                            click.echo(f"{result['hash']} {result['id']} {path}{_team_note(result['team'])}")
                    bar.update(1)

    _guard(lambda: asyncio.run(go()))
    if obj.as_json:
        click.echo(json.dumps({"published": results, "errors": errors}, sort_keys=True))
    if errors:
        sys.exit(1)


class _Null:
    """Stands in for a progress bar when output is piped."""

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@cli.command()
@click.argument("ref", metavar="HASH|PATTERN-ID")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to this file (atomically).")
@AUTHOR
@TIMEOUT
@click.pass_obj
def fetch(obj: Context, ref: str, output: str | None, author: str | None, timeout: float) -> None:
    """Fetch a pattern's exact bytes by hash or pattern ID (to stdout, or -o FILE)."""
    result = _run(obj, "fetch", {"ref": ref, "author": author}, network=True, timeout=timeout)
    data: bytes = result.pop("data")
    about = (f"{result['id']} {result['hash']} by {', '.join(a[:16] for a in result['authors']) or 'no publisher'}"
             f" (signature {result['signature']}){_team_note(result['team'])}")
    if output is not None:
        _write_atomically(Path(output), data)
        result["path"] = output
        obj.emit(result, f"wrote {len(data)} bytes to {output}: {about}")
        return
    if obj.as_json:
        result["text"] = data.decode("utf-8")
        obj.emit(result, "")
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    click.echo(about, err=True)


def _team_note(team: dict[str, Any] | None) -> str:
    """How a team pattern is marked in listings: its team's name, ID prefix and epoch."""
    return "" if team is None else f"  [team {team['name']} {team['id'][:8]} epoch {team['epoch']}]"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target and rename over it, so a failure never leaves half a file."""
    from aether.node.files import write_atomically

    try:
        write_atomically(path, data)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None


@cli.command()
@click.argument("terms", nargs=-1, required=True)
@TIMEOUT
@click.pass_obj
def search(obj: Context, terms: tuple[str, ...], timeout: float) -> None:
    """Find patterns by ID, word of the title, type:T, category:C or status:S (all terms must match)."""
    result = _run(obj, "search", {"terms": list(terms)}, network=True, timeout=timeout)
    rows = result["results"]
    lines = [f"{r['id']}  {r['title']}{_team_note(r['team'])}\n"
             f"    author {r['author'][:16]}  hash {r['hash'][:16]}  {r['date']}" for r in rows]
    obj.emit(result, "\n".join(lines) if lines else "no pattern found")


@cli.command()
@click.argument("pattern_id", metavar="PATTERN-ID")
@AUTHOR
@TIMEOUT
@click.pass_obj
def history(obj: Context, pattern_id: str, author: str | None, timeout: float) -> None:
    """List the versions of a pattern ID, newest first, per author."""
    result = _run(obj, "history", {"id": pattern_id, "author": author}, network=True, timeout=timeout)
    lines = []
    for entry in result["authors"]:
        lines.append(f"{entry['id']} by {entry['author']}{_team_note(entry['team'])}")
        lines.extend(f"  {v['hash']}  {v['date']}" for v in entry["versions"])
    obj.emit(result, "\n".join(lines))


@cli.command("ls")
@click.pass_obj
def ls_(obj: Context) -> None:
    """List the patterns held on this node: published or pinned here, replicas, cached copies."""
    result = _run(obj, "ls", {}, network=False)
    lines = [
        (f"{p['hash'][:16]}  {p['id']:<20} {p['role'] + (' pinned' if p['pinned'] else ''):<14} {p['title']}"
         if p["readable"] else
         f"{p['key'][:16]}  {'(team pattern)':<20} {p['role'] + (' pinned' if p['pinned'] else ''):<14} "
         "encrypted for a team this node cannot read")
        + _team_note(p["team"]) + ("" if p["complete"] else "  (incomplete)")
        for p in result["patterns"]
    ]
    obj.emit(result, "\n".join(lines) if lines else "no pattern held")


@cli.command()
@click.argument("ref", metavar="HASH|PATTERN-ID")
@AUTHOR
@TIMEOUT
@click.pass_obj
def pin(obj: Context, ref: str, author: str | None, timeout: float) -> None:
    """Keep a pattern on this node for good and keep announcing it."""
    result = _run(obj, "pin", {"ref": ref, "author": author}, network=True, timeout=timeout)
    obj.emit(result, f"pinned {result['hash']} {result['id']}")


@cli.command()
@click.argument("ref", metavar="HASH|PATTERN-ID")
@AUTHOR
@TIMEOUT
@click.pass_obj
def unpin(obj: Context, ref: str, author: str | None, timeout: float) -> None:
    """Stop keeping a pattern here; copies elsewhere expire on their own."""
    network = re.fullmatch(r"[0-9a-f]{64}", ref) is None  # an ID is resolved on the network
    result = _run(obj, "unpin", {"ref": ref, "author": author}, network=network, timeout=timeout)
    obj.emit(result, f"unpinned {result['hash']}")


@cli.command()
@click.option("--allow-publish", is_flag=True, help="Offer a tool that publishes pattern text signed by this node.")
@TIMEOUT
@click.pass_obj
def mcp(obj: Context, allow_publish: bool, timeout: float) -> None:
    """Serve the home's daemon to AI tools: the Model Context Protocol on stdio.

    Tools search, fetch and list patterns and show the node's status; the
    daemon need not run yet (each tool call says so until it does).
    """
    from aether.node.mcp_server import serve

    _guard(lambda: serve(obj.home.path, allow_publish=allow_publish, timeout=timeout))


# ---------------------------------------------------------------- the running node
NOT_RUNNING = 3
"""Exit status of ``status`` when no daemon runs, as ``systemctl status`` gives for a stopped unit."""


@cli.command()
@click.pass_obj
def status(obj: Context) -> None:
    """Show the node: identity, daemon, network, storage, patterns, maintenance.

    Without a daemon it shows what the home knows, says that no daemon is
    running and exits with status 3.
    """
    result = _run(obj, "status", {}, network=False)
    obj.emit(result, _status_text(result, obj.home.path))
    if not result["running"]:
        sys.exit(NOT_RUNNING)


def _status_text(s: dict[str, Any], home: Path) -> str:
    def when(t: float | None) -> str:
        return f"{iso_date(t)} ({_duration(time.time() - t)} ago)" if t is not None else "never"

    rows = [("node id", s["node_id"]), ("identity", s["identity"])]
    if s["running"]:
        network, peers = s["network"], s["peers"]
        rows += [
            ("daemon", f"running, pid {s['pid']}, version {s['version']}"),
            ("listening on", s["address"]),
            ("uptime", f"{_duration(s['uptime'])} (since {iso_date(s['started_at'])})"),
            ("network", _network_text(network)),
        ]
        if network["last_error"]:
            rows.append(("last error", network["last_error"]))
        rows.append(("peers", f"{peers['contacts']} in {peers['buckets_in_use']} of {peers['buckets']} buckets"))
    else:
        rows.append(("daemon", f"not running: no daemon is running on {home}"))
    storage, patterns = s["storage"], s["patterns"]
    if s["role"] is not None:
        rows.append(("role", s["role"]))
    rows += [
        ("storage", f"{_size(storage['used_bytes'])} used of {_size(storage['quota_bytes'])} "
                    f"({_size(storage['pinned_bytes'])} own and pinned, {_size(storage['evictable_bytes'])} evictable)"),
        ("patterns", f"{patterns['held']} held ({patterns['own']} own, {patterns['replica']} replicas, "
                     f"{patterns['cached']} cached), {patterns['pinned']} pinned"),
        ("last republish", when(s["last_republish"])),
        ("last re-replication", when(s["last_replicate"])),
    ]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(f"{name + ':':<{width}}{value}" for name, value in rows)


def _network_text(network: dict[str, Any]) -> str:
    state = network["state"]
    if state == "retrying" and network["next_retry_at"] is None:
        return f"retrying: try {network['attempts']} under way (back-off {network['backoff']:g} s)"
    if state == "retrying":
        return f"retrying: next try at {iso_date(network['next_retry_at'])} (back-off {network['backoff']:g} s)"
    if state == "alone":
        return "alone: no peer known yet; waiting to be contacted (give one with --bootstrap or in config.toml)"
    if state == "joining":
        return "joining: a try is under way"
    return state


@cli.command()
@click.pass_obj
def peers(obj: Context) -> None:
    """List the contacts in the running daemon's routing table, nearest first."""
    result = _run(obj, "peers", {}, network=False)
    now = time.time()
    lines = [f"{'NODE ID':<16}  {'ADDRESS':<21}  {'RTT':>8}  {'LAST SEEN':>10}  FAILURES"]
    for p in result["peers"]:
        rtt = f"{p['rtt'] * 1000:.1f} ms" if p["rtt"] is not None else "-"
        seen = f"{_duration(now - p['last_seen'])} ago" if p["last_seen"] is not None else "-"
        lines.append(f"{p['node_id'][:16]}  {p['address']:<21}  {rtt:>8}  {seen:>10}  {p['failures']}")
    obj.emit(result, "\n".join(lines) if result["peers"] else "no peers in the routing table")


def _duration(seconds: float) -> str:
    """``3d 04h``, ``2h 05m``, ``4m 09s`` or ``12s``: the two largest units, enough to read at a glance."""
    s = max(0, int(seconds))
    days, hours, minutes = s // 86400, s // 3600 % 24, s // 60 % 60
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s % 60:02d}s"
    return f"{s}s"


def _size(n: int) -> str:
    """Bytes in binary units (``12.3 KiB``), as the rest of the project writes sizes."""
    units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{n} bytes" if unit == 0 else f"{value:.1f} {units[unit]}"


def _guard(action: Any) -> Any:
    try:
        return action()
    except (HomeError, DaemonError) as exc:
        raise click.ClickException(str(exc)) from None
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None


cli.add_command(storage)
cli.add_command(team)


def main() -> None:
    cli(prog_name="aether-node")

"""The ``aether-node`` command: one program for every role of a node.

Global options come before the command (``aether-node --home DIR --json id``).
Errors go to stderr with a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any

import click

from aether.crypto.identity import IdentityError, PublicIdentity
from aether.node.daemon import DaemonError
from aether.node.home import Home, HomeError, parse_address, resolve_home


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
@click.pass_obj
def init(obj: Context) -> None:
    """Create this node's identity (Ed25519 + X25519 keys) and config file."""
    identity, created = _guard(obj.home.init)
    public = identity.public
    message = ("created" if created else "kept the existing") + f" identity in {obj.home.path}"
    obj.emit(
        {"home": str(obj.home.path), "created": created, "node_id": public.node_id.hex(), "identity": public.to_string()},
        f"{message}\nnode id:  {public.node_id.hex()}\nidentity: {public.to_string()}",
    )


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
@click.pass_obj
def daemon(obj: Context, listen: tuple[str, int] | None, bootstrap: list[tuple[str, int]]) -> None:
    """Run this device's node in the foreground until SIGINT or SIGTERM."""
    from aether.node import daemon as daemon_module

    settings = _guard(obj.home.settings)
    if listen:
        settings = dataclasses.replace(settings, listen=listen)
    if bootstrap:
        settings = dataclasses.replace(settings, bootstrap=list(bootstrap) + settings.bootstrap)
    _guard(lambda: asyncio.run(daemon_module.run(obj.home, settings)))


@cli.command()
@click.option("--nodes", default=50, show_default=True, type=click.IntRange(2, 2000), help="Nodes in the network.")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed for a repeatable run.")
@click.pass_obj
def simulate(obj: Context, nodes: int, seed: int) -> None:
    """Start a local network of real nodes on loopback and exercise it."""
    from aether.simulations.demo import render, run_demo

    report = asyncio.run(run_demo(nodes=nodes, seed=seed, progress=None if obj.as_json else click.echo))
    obj.emit(report, render(report))


def _guard(action: Any) -> Any:
    try:
        return action()
    except (HomeError, DaemonError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.Abort() from None


def main() -> None:
    cli(prog_name="aether-node")

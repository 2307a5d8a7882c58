"""How a CLI command reaches the network: through the running daemon, or a node of its own.

With a daemon on the home, a command is one request on the control socket:
fast, and the home keeps one node. Without one, the command runs a temporary
node on the home (same identity, same store, so what it publishes stays
pinned there) that joins through the configured peers and the contacts saved
at the last run, does its one job and stops. With neither a daemon nor any
peer, commands that need the network say so and fail. Every step has a time
bound: a command never hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aether.node import api
from aether.node.control import ControlClient, ControlError, DaemonNotRunning
from aether.node.daemon import lock_home, running_node
from aether.node.home import Home, format_address
from aether.node.patterns import PatternLibrary
from aether.node.server import AetherNode

Call = Callable[[str, dict[str, Any]], Awaitable[Any]]

DEFAULT_TIMEOUT = 60.0


@asynccontextmanager
async def open_session(home: Home, *, network: bool, timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[Call]:
    """Yield ``call(op, args)``; ``network`` says whether the command needs peers."""
    try:
        client = await ControlClient.connect(home.path, timeout=min(timeout, 5.0), request_timeout=timeout)
    except DaemonNotRunning:
        client = None
    if client is not None:
        async with client:
            yield client.request
        return
    async with _temporary_node(home, network=network, timeout=timeout) as call:
        yield call


@asynccontextmanager
async def _temporary_node(home: Home, *, network: bool, timeout: float) -> AsyncIterator[Call]:
    settings = home.settings()
    home.identity()
    lock = lock_home(
        home, f"another aether-node process is using {home.path} (a daemon starting, or another command); "
        "try again in a moment",
    )
    try:
        async with running_node(home, settings, (settings.listen[0], 0)) as node:
            node.light = True  # it lives for one command: replicas handed to it would leave with it
            if network:
                await _join(node, home, settings.bootstrap, timeout)
            library = PatternLibrary(node, settings.teams)

            async def call(op: str, args: dict[str, Any]) -> Any:
                try:
                    return await asyncio.wait_for(api.handle(library, op, args), timeout)
                except asyncio.TimeoutError:
                    raise ControlError("timeout", f"{op} did not finish within {timeout:.0f} s") from None

            yield call
    finally:
        lock.close()


async def _join(node: AetherNode, home: Home, bootstrap: list[tuple[str, int]], timeout: float) -> None:
    saved = [(host, port) for _, host, port in node.store.load_contacts()]
    peers = list(dict.fromkeys(bootstrap + saved))
    if not peers:
        raise ControlError(
            "no-network",
            f"no daemon is running on {home.path} and no peers are known: start one with "
            f"`aether-node --home {home.path} daemon`, or list peers under [daemon] bootstrap in {home.config_path}",
        )
    try:
        found = await asyncio.wait_for(node.bootstrap(peers), timeout)
    except asyncio.TimeoutError:
        found = []
    if not found:
        raise ControlError(
            "no-network",
            f"no daemon is running on {home.path} and none of the {len(peers)} known peer(s) answered "
            f"(first: {format_address(*peers[0])}); start the daemon or check the network",
        )

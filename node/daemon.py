"""The long-running node of a device, in the foreground as service managers expect.

It prints one line when ready (``listening on HOST:PORT node <id>``), joins
through the configured peers, the contacts saved at its last run and the aether
nodes it finds on the local network (mDNS, unless switched off), keeps
retrying with back-off while it has no peer, and on SIGINT or SIGTERM
withdraws its announcement, saves its contacts and closes its database before
exiting.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aether.node import api
from aether.node.control import ControlError, ControlServer
from aether.node.home import DaemonSettings, Home, HomeError, format_address
from aether.node.patterns import PatternLibrary
from aether.node.server import AetherNode
from aether.storage import device
from aether.storage.store import StoreError

if TYPE_CHECKING:
    from aether.node.discovery import Discovery, Peer

log = logging.getLogger(__name__)

LOCK_NAME = "daemon.lock"
MAX_BACKOFF = 60.0
POWER_CHECK = 60.0
"""Seconds between battery readings, for the light role."""
JOIN_CHECK = 1.0
"""Seconds between looks at the routing table while the team task waits for the node to join."""


class DaemonError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass
class JoinState:
    """What the join loop (:func:`_keep_joined`) last did, so that ``status`` can tell.

    The loop is the only writer. ``state`` is ``joining`` (a first try under
    way), ``joined`` (the routing table has contacts), ``retrying`` (peers are
    known but none answered the last try; ``next_retry_at`` is None while the
    next one runs) or ``alone`` (no peer is known: the node waits to be
    contacted, and looks again for saved contacts).
    """

    state: str = "joining"
    attempts: int = 0
    """Tries to join through the known peers since the daemon started."""
    backoff: float | None = None
    """Seconds between the last check and the next, while not joined."""
    next_retry_at: float | None = None
    """Unix time of the next check, while not joined and not trying."""
    last_error: str | None = None
    """Why the last try failed; cleared once joined."""

    def report(self, contacts: int) -> dict[str, Any]:
        """The record as ``status`` shows it, given the routing table's size now.

        The table is the truth: a node that others contacted while it waited
        is joined before the loop wakes to notice (after up to a minute).
        """
        if contacts and self.state != "joined":
            return {**asdict(self), "state": "joined", "backoff": None, "next_retry_at": None, "last_error": None}
        return asdict(self)


@dataclass
class DaemonInfo:
    """The facts only a running daemon knows about itself, for the ``status`` and ``peers`` operations."""

    pid: int
    started: float
    """``time.monotonic()`` when the daemon started, for an uptime that clock changes do not bend."""
    join: JoinState = field(default_factory=JoinState)


def lock_home(home: Home, busy: str | None = None) -> IO:
    """Hold an exclusive lock on the home while a node runs on it (a daemon, or a one-shot command)."""
    path = home.path / LOCK_NAME
    try:
        handle = open(path, "a+")
    except OSError as exc:
        raise DaemonError(f"cannot write in {home.path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DaemonError(busy or f"another daemon is already running on {home.path}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@asynccontextmanager
async def running_node(home: Home, settings: DaemonSettings, listen: tuple[str, int]) -> AsyncIterator[AetherNode]:
    """The home's node, listening; on exit its contacts are saved and its database closed.

    The caller holds the home's lock (:func:`lock_home`).
    """
    try:
        store = home.open_store()
    except StoreError as exc:
        raise DaemonError(str(exc)) from None
    facts = device.read_facts(disk_path=home.path)
    profile = device.device_profile(settings.storage, facts, store.file_bytes())
    for warning in profile.warnings:
        log.warning("storage: %s", warning)
    # A quota the margin squeezed to nothing still names a positive size: the node then holds only its own data.
    node = AetherNode(home.identity(), store, settings.node.replace(quota_bytes=max(1, profile.quota)))
    node.light, why = device.light_role(profile.device_class, facts.battery, settings.role)
    log.info("%s, quota %s (%s); %s node: %s", profile.device_class, device.format_size(profile.quota),
             profile.quota_source, "light" if node.light else "full", why)
    over = node.set_quota(node.config.quota_bytes)  # a quota lowered while stopped applies at once
    if over.freed:
        log.info("evicted %s to fit the quota", device.format_size(over.freed))
    try:
        host, port = listen
        try:
            await node.listen(port, host)
        except OSError as exc:
            raise DaemonError(f"cannot listen on {format_address(host, port)}: {exc.strerror}") from None
        yield node
    finally:
        node.stop()
        store.close()


async def run(home: Home, settings: DaemonSettings, out: IO[str] = sys.stdout) -> None:
    home.identity()  # a missing or unreadable identity is reported before anything else
    lock = lock_home(home)
    # Handle signals before the ready line: a supervisor may signal as soon as it reads it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = DaemonInfo(pid=os.getpid(), started=time.monotonic())
        async with running_node(home, settings, settings.listen) as node:
            node.team_answerer.on_daemon = True  # share requests may wait here for `team approve`
            control = ControlServer(home.path, functools.partial(api.handle, PatternLibrary(node, settings.teams), daemon=info))
            try:
                await control.start()
            except ControlError as exc:
                raise DaemonError(f"cannot serve the control socket in {home.path}: {exc}") from None
            discovery = None
            try:
                bound_host, bound_port = node.address
                print(f"listening on {format_address(bound_host, bound_port)} node {node.node.id.hex()}", file=out, flush=True)
                heard = asyncio.Event()
                discovery = await _discover(node, settings, heard)
                joiner = asyncio.ensure_future(_keep_joined(node, settings, stop, info.join, discovery, heard))
                power = asyncio.ensure_future(_follow_power(node, home, settings, stop))
                teams = asyncio.ensure_future(_look_after_teams(node, settings, stop))
                await stop.wait()
                joiner.cancel()
                power.cancel()
                teams.cancel()
                log.info("stopping")
            finally:
                if discovery is not None:
                    await discovery.close()
                await control.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        lock.close()


async def _follow_power(node: AetherNode, home: Home, settings: DaemonSettings, stop: asyncio.Event) -> None:
    """Switch between full and light as the battery drains or the device is plugged in (role = auto)."""
    if settings.role != "auto":
        return
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=POWER_CHECK)
        except asyncio.TimeoutError:
            pass
        facts = device.read_facts(disk_path=home.path)
        profile = device.device_profile(settings.storage, facts)
        light, why = device.light_role(profile.device_class, facts.battery, settings.role)
        if light != node.light:
            node.light = light
            log.info("now a %s node: %s", "light" if light else "full", why)


async def _look_after_teams(node: AetherNode, settings: DaemonSettings, stop: asyncio.Event) -> None:
    """Read this node's inbox for shares, and tell team members where this node listens.

    The inbox is read at start, as soon as the node has joined, and then every
    ``[teams] inbox_interval`` seconds, so a member that was offline when a team was
    created gets its share once it is back (docs/teams.md "Inbox"). Once joined, the
    node's contact record is published, and again whenever its addresses change (the
    node's republishing keeps it alive in between), and the team entries this node
    signed are placed once more, for teams created while it had no network. A failure is logged and the task
    goes on: nothing in the inbox can stop the daemon.
    """
    from aether.node.contact import own_addresses, publish_contact
    from aether.node.team_ceremony import redeliver
    from aether.node.team_inbox import Inbox

    inbox = Inbox(node)
    published: list[tuple[str, int]] | None = None
    first, delivered = True, False
    while not stop.is_set():
        joined = bool(node.protocol.contacts())
        if first or joined:
            first = False
            try:
                if joined and (addresses := own_addresses(node)) != published:
                    await publish_contact(node, addresses)
                    published = addresses
                if joined and not delivered:
                    delivered = True
                    await redeliver(node)
            except StoreError as exc:  # a full or failing disk: said in one line, as the maintenance jobs say it
                log.error("publishing this node's contact record or team entries failed: %s; trying again later", exc)
            except Exception:
                log.exception("publishing this node's contact record or team entries failed; trying again later")
            try:
                await inbox.poll()
            except StoreError as exc:
                log.error("reading this node's inbox failed: %s; trying again later", exc)
            except Exception:
                log.exception("reading this node's inbox failed; trying again later")
        wait = settings.teams.inbox_interval if joined else min(JOIN_CHECK, settings.teams.inbox_interval)
        try:
            await asyncio.wait_for(stop.wait(), timeout=wait)
        except asyncio.TimeoutError:
            pass


async def _discover(node: AetherNode, settings: DaemonSettings, heard: asyncio.Event) -> Discovery | None:
    """Advertise the node on the local network and meet the aether nodes there; None when off or impossible.

    While the node has no contact, a peer found sets ``heard`` to wake the
    join loop, which tries it with the other bootstrap peers; once joined, a
    peer found later is pinged into the routing table directly. Discovery is
    a convenience: where multicast does not work the daemon says so and
    serves on.
    """
    if not settings.mdns:
        return None
    # Imported here: commands that never start a daemon need not load zeroconf.
    from aether.node.discovery import Discovery, DiscoveryError

    def on_peer(peer: Peer) -> None:
        if node.protocol.contacts():
            node.background(_meet(node, peer))
        heard.set()

    discovery = Discovery(node.node.id, node.address, on_peer)
    try:
        await discovery.start()
    except DiscoveryError as exc:
        log.warning("no discovery on the local network: %s", exc)
        return None
    return discovery


async def _meet(node: AetherNode, peer: Peer) -> None:
    """Add a peer found on the local network to the routing table, through the first address that answers."""
    for address in peer.addresses:
        if await node.bootstrap_node(address) is not None:
            return


async def _keep_joined(
    node: AetherNode, settings: DaemonSettings, stop: asyncio.Event, join: JoinState,
    discovery: Discovery | None = None, heard: asyncio.Event | None = None,
) -> None:
    """Join, and while the routing table is empty keep trying with exponential back-off.

    Peers come from the settings, the saved contacts and ``discovery``; a
    wait is cut short when ``heard`` says discovery has found a new one.
    Every pass is written to ``join``: ``status`` reads it to say whether the
    node is joined or still retrying, when it looks next and why it failed.
    """
    heard = heard or asyncio.Event()
    delay = 1.0
    while not stop.is_set():
        heard.clear()
        if not node.protocol.contacts():
            saved = [(host, port) for _, host, port in node.store.load_contacts()]
            local = discovery.addresses() if discovery is not None else []
            peers = list(dict.fromkeys(settings.bootstrap + saved + local))
            if peers:
                join.attempts, join.next_retry_at = join.attempts + 1, None
                if join.state != "retrying":
                    join.state = "joining"
                try:
                    found = await node.bootstrap(peers)
                except Exception as exc:  # the loop must outlive any one try, or status would go stale
                    log.exception("joining failed")
                    found, join.last_error = [], f"joining failed: {exc.__class__.__name__}: {exc}"
                else:
                    first = format_address(*peers[0])
                    join.last_error = None if found else (
                        f"none of the {len(peers)} known peer(s) answered (first: {first})"
                    )
                if found:
                    log.info("joined the network through %d peer(s); %d contacts", len(peers), len(node.protocol.contacts()))
                else:
                    log.warning("%s; retrying in %.0f s", join.last_error, delay)
            join.state = "retrying" if peers else "alone"
        if node.protocol.contacts():
            delay = 1.0
            join.state, join.backoff, join.next_retry_at, join.last_error = "joined", None, None, None
        else:
            join.backoff, join.next_retry_at = delay, time.time() + delay
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(heard.wait())]
        await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        if not node.protocol.contacts():
            delay = min(MAX_BACKOFF, delay * 2)

"""Zero-config discovery on the local network: DNS-SD over multicast DNS.

A node advertises itself as an instance of ``_aether._udp.local.`` and browses
for the other instances, so two devices on one network find each other with no
address typed. The instance name carries the node ID (so it is unique per node
and stable across restarts), the SRV record the node's UDP port, the A/AAAA
records the addresses it is reachable on, and the TXT record

- ``id``: the node ID, 40 lowercase hex digits;
- ``v``: the version of the aether protocol the node speaks.

Anyone on the network can announce anything, so what the browser hears is
checked before use (:func:`parse_peer`, :class:`PeerTracker`: pure logic, no
sockets): the TXT record must be well formed, the port valid, the addresses
reachable from where this node listens; a node's own announcement is ignored;
at most :data:`MAX_PEERS` peers are remembered and :data:`MAX_RESOLVING`
resolved at a time. Multicast DNS itself is python-zeroconf's, through its
asyncio API, so nothing here blocks the node's event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from aether.node.home import format_address

log = logging.getLogger(__name__)

SERVICE_TYPE = "_aether._udp.local."
PROTOCOL_VERSION = "1"
MAX_PEERS = 64
"""Peers remembered at once; the least recently heard is forgotten first."""
MAX_ADDRESSES = 8
"""Addresses taken from one announcement."""
MAX_RESOLVING = 16
"""Announcements being resolved at once; more are dropped until one finishes."""
RESOLVE_TIMEOUT_MS = 3000
CLOSE_TIMEOUT = 3.0

Address = tuple[str, int]


class DiscoveryError(Exception):
    """Discovery cannot run here (no multicast, no interface, the mDNS port refused)."""


@dataclass(frozen=True)
class Peer:
    """Another aether node announced on the local network, as far as its announcement can be trusted."""

    node_id: bytes
    addresses: tuple[Address, ...]


def instance_name(node_id: bytes) -> str:
    """The DNS-SD instance label of a node: unique per node, the same after every restart."""
    return f"aether-{node_id.hex()}"


def txt_record(node_id: bytes) -> dict[str, str]:
    return {"id": node_id.hex(), "v": PROTOCOL_VERSION}


def reachable(address: str, listen_host: str) -> bool:
    """Whether a node listening on ``listen_host`` can send to ``address``.

    The socket's family must match; a node bound to loopback reaches only
    loopback; multicast, unspecified, reserved (broadcast included) addresses
    and IPv6 link-local ones (which need a scope this record cannot give) are
    never a peer.
    """
    try:
        ip = ipaddress.ip_address(address)
        own = ipaddress.ip_address(listen_host)
    except ValueError:
        return False
    if ip.version != own.version or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if ip.version == 6 and ip.is_link_local:
        return False
    return ip.is_loopback or not own.is_loopback


def parse_peer(
    properties: Mapping[Any, Any], addresses: Iterable[Any], port: Any, *, own_id: bytes, listen_host: str
) -> Peer | None:
    """The peer an announcement describes, or None if it is ours, of another protocol version, or malformed."""
    if not isinstance(properties, Mapping):
        return None
    raw_id, version = properties.get(b"id"), properties.get(b"v")
    if not isinstance(raw_id, bytes) or len(raw_id) != 40 or version != PROTOCOL_VERSION.encode():
        return None
    try:
        node_id = bytes.fromhex(raw_id.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if node_id == own_id or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    usable: list[Address] = []
    for address in addresses:
        if isinstance(address, str) and reachable(address, listen_host) and (address, port) not in usable:
            usable.append((address, port))
        if len(usable) == MAX_ADDRESSES:
            break
    return Peer(node_id, tuple(usable)) if usable else None


class PeerTracker:
    """The peers the browser has heard, checked and bounded; tells which announcements are news."""

    def __init__(self, own_id: bytes, listen_host: str, limit: int = MAX_PEERS):
        self.own_id = own_id
        self.listen_host = listen_host
        self.limit = limit
        self._peers: OrderedDict[str, Peer] = OrderedDict()

    def heard(self, name: str, properties: Mapping[Any, Any], addresses: Iterable[Any], port: Any) -> Peer | None:
        """The peer behind an announcement if it is new or has moved, else None."""
        peer = parse_peer(properties, addresses, port, own_id=self.own_id, listen_host=self.listen_host)
        if peer is None:
            return None
        known = self._peers.get(name)
        self._peers[name] = peer
        self._peers.move_to_end(name)
        while len(self._peers) > self.limit:
            self._peers.popitem(last=False)
        return None if known == peer else peer

    def gone(self, name: str) -> Peer | None:
        """Forget an instance that said goodbye (or whose records expired); the peer it was, if known."""
        return self._peers.pop(name, None)

    def addresses(self) -> list[Address]:
        """Every address of every peer remembered, most recently heard first."""
        return [a for peer in reversed(self._peers.values()) for a in peer.addresses]

    def __len__(self) -> int:
        return len(self._peers)


def advertised_addresses(listen_host: str, adapters: Iterable[ifaddr.Adapter] | None = None) -> list[str]:
    """The addresses a node listening on ``listen_host`` is reachable on.

    A specific address is itself; the unspecified address stands for this
    host's addresses of its family, loopback and IPv6 link-local left out
    (other devices cannot use them) unless nothing else is there.
    """
    own = ipaddress.ip_address(listen_host)
    if not own.is_unspecified:
        return [listen_host]
    found: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters() if adapters is None else adapters:
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                continue
            if address.version != own.version or (address.version == 6 and address.is_link_local):
                continue
            target = loopback if address.is_loopback else found
            if text not in target:
                target.append(text)
    return found or loopback


class Discovery:
    """Advertise this node on the local network and hand each aether node found there to ``on_peer``.

    ``address`` is where the node listens (its bound socket address). Call
    :meth:`start` once the node listens and :meth:`close` before it stops:
    closing withdraws the announcement (a goodbye packet, so the others forget
    this node at once rather than when the record expires).
    """

    def __init__(self, node_id: bytes, address: Address, on_peer: Callable[[Peer], None]):
        self.node_id = node_id
        self.address = address
        self.on_peer = on_peer
        self.tracker = PeerTracker(node_id, address[0])
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registering: asyncio.Task | None = None
        self._resolving: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()

    @property
    def name(self) -> str:
        """Our full service name (zeroconf may have renamed it after a conflict)."""
        return self._info.name if self._info else f"{instance_name(self.node_id)}.{SERVICE_TYPE}"

    def addresses(self) -> list[Address]:
        """Addresses of the peers heard and not yet gone, most recent first: candidates for joining."""
        return self.tracker.addresses()

    async def start(self) -> None:
        """Open multicast DNS on the interfaces the node listens on, browse, and begin announcing.

        Raises :class:`DiscoveryError` when multicast DNS cannot run here; the
        node works on without it.
        """
        host, port = self.address
        family = ipaddress.ip_address(host)
        if family.is_unspecified:
            interfaces: Any = InterfaceChoice.All
            version = IPVersion.V4Only if family.version == 4 else IPVersion.V6Only
        else:
            interfaces, version = [host], None
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
            zc = self._zc.zeroconf
            await zc.async_wait_for_start()
            if not zc.engine.senders:
                raise DiscoveryError(f"no interface for {host} accepts mDNS multicast")
            addresses = advertised_addresses(host)
            instance = instance_name(self.node_id)
            self._info = AsyncServiceInfo(
                SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}", port=port, properties=txt_record(self.node_id),
                server=f"{instance}.local.", parsed_addresses=addresses,
            )
            self._browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
        except Exception as exc:
            await self.close()
            if isinstance(exc, DiscoveryError):
                raise
            raise DiscoveryError(f"multicast DNS on {host}: {exc or type(exc).__name__}") from exc
        self._registering = asyncio.ensure_future(self._register())
        log.info("advertising %s on the local network at %s port %d", instance, ", ".join(addresses), port)

    async def _register(self) -> None:
        """Probe for the name, then announce it (about two seconds, off the caller's path)."""
        assert self._zc is not None and self._info is not None
        try:
            announced = await self._zc.async_register_service(self._info, allow_name_change=True)
            await announced
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot advertise this node on the local network (mDNS): %s: %s", type(exc).__name__, exc)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        """Browser events, in the event loop: resolve what appeared or changed, forget what left."""
        if name == self.name:
            return
        if state_change is ServiceStateChange.Removed:
            peer = self.tracker.gone(name)
            if peer is not None:
                log.info("aether node %s left the local network", peer.node_id.hex())
            return
        if name in self._resolving:
            self._again.add(name)
        elif len(self._resolving) < MAX_RESOLVING:
            task = asyncio.ensure_future(self._resolve(name))
            self._resolving[name] = task
            task.add_done_callback(lambda _t, name=name: self._resolved(name))

    def _resolved(self, name: str) -> None:
        self._resolving.pop(name, None)
        if name in self._again and self._zc is not None:
            self._again.discard(name)
            self._on_change(self._zc.zeroconf, SERVICE_TYPE, name, ServiceStateChange.Updated)

    async def _resolve(self, name: str) -> None:
        """Ask for an instance's SRV, TXT and address records; hand a new peer to ``on_peer``."""
        assert self._zc is not None
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            peer = self.tracker.heard(name, info.properties, info.parsed_addresses(), info.port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever a hostile announcement does to the parser, the node goes on
            log.debug("ignoring announcement %r: %s: %s", name, type(exc).__name__, exc)
            return
        if peer is not None:
            log.info("found aether node %s on the local network at %s", peer.node_id.hex(),
                     ", ".join(format_address(h, p) for h, p in peer.addresses))
            self.on_peer(peer)

    async def close(self) -> None:
        """Stop browsing, withdraw the announcement (goodbye) and close the sockets, in bounded time."""
        for task in [self._registering, *self._resolving.values()]:
            if task is not None:
                task.cancel()
        zc, self._zc = self._zc, None
        if zc is None:
            return
        try:
            await asyncio.wait_for(self._withdraw(zc), CLOSE_TIMEOUT)
        except Exception as exc:
            log.warning("closing local discovery: %s: %s", type(exc).__name__, exc)

    async def _withdraw(self, zc: AsyncZeroconf) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
        await zc.async_close()  # sends the goodbyes of what was registered, then closes the sockets

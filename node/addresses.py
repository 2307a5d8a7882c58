"""What a peer's address says about who controls it: the keys the abuse defences count by.

One party controls one IPv4 address, or an IPv6 /64 (what an ISP hands a
subscriber), and usually a whole IPv4 /24 or IPv6 /48 (a hosting provider's
block): rate limits count by the first, routing-table diversity by the second.

Loopback is the exception: every address in 127.0.0.0/8 and ::1 is this
machine, where a simulation runs hundreds of honest nodes side by side. Unless
``restrict_loopback`` is set, a loopback source is counted by address *and*
port (each node on its own), and loopback contacts are exempt from subnet
limits. A peer on the same machine can do worse than flood us anyway.
"""

from __future__ import annotations

import functools
import ipaddress

Source = tuple[str, int] | str
"""A rate-limit key: an IPv4 address, an IPv6 /64, or (address, port) on loopback."""


@functools.lru_cache(maxsize=8192)
def _parse(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Cached: this runs for every datagram and every contact, mostly for the same few hosts.
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


def endpoint_of(host: str, port: int) -> tuple[str, int]:
    """One spelling of an (address, port): ``::1`` and ``0::1``, ``::ffff:a.b.c.d`` and ``a.b.c.d`` reach one socket.

    A lookup keeps one node ID per endpoint; a peer must not pass one socket off
    as several by writing its address several ways.
    """
    return _canonical(host), int(port)


@functools.lru_cache(maxsize=8192)
def _canonical(host: str) -> str:
    """The one spelling of a host's address (printing an address is dear, and a lookup asks it of every contact)."""
    parsed = _parse(host)
    return host if parsed is None else str(parsed)


def source_of(address: tuple, restrict_loopback: bool = False) -> Source:
    """The key one sender's requests are counted under."""
    host = str(address[0])
    key = _host_key(host, restrict_loopback)
    return (host, int(address[1])) if key is None else key


@functools.lru_cache(maxsize=8192)
def _host_key(host: str, restrict_loopback: bool) -> str | None:
    """A host's rate-limit key, or None when its port must be part of the key (loopback)."""
    parsed = _parse(host)
    if parsed is None:
        return host
    if parsed.is_loopback and not restrict_loopback:
        return None
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


@functools.lru_cache(maxsize=8192)
def subnet_of(host: str, restrict_loopback: bool = False) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) a contact's address belongs to; None when it is exempt (loopback)."""
    parsed = _parse(host)
    if parsed is None or (parsed.is_loopback and not restrict_loopback):
        return None
    prefix = 24 if parsed.version == 4 else 48
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))

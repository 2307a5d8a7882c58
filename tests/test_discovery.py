"""Zero-config discovery: what a node announces over mDNS and whom it believes.

The announcements a browser hears are checked by pure functions, tested here
with well-formed, malformed and hostile input; the zeroconf I/O is not involved.
"""

from __future__ import annotations

import asyncio

import ifaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceStateChange

from aether.node.discovery import (
    MAX_ADDRESSES,
    MAX_RESOLVING,
    SERVICE_TYPE,
    Discovery,
    Peer,
    PeerTracker,
    advertised_addresses,
    instance_name,
    parse_peer,
    txt_record,
)

OWN = bytes(range(20))
OTHER = bytes(range(100, 120))


def txt(node_id: bytes = OTHER, version: bytes | None = b"1") -> dict[bytes, bytes | None]:
    return {b"id": node_id.hex().encode(), b"v": version}


# ---------------------------------------------------------------- announcements
def test_a_well_formed_announcement_is_a_peer() -> None:
    peer = parse_peer(txt(), ["192.0.2.7", "192.0.2.8"], 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer == Peer(OTHER, (("192.0.2.7", 7411), ("192.0.2.8", 7411)))
    # What a node announces is what the others accept.
    announced = {k.encode(): v.encode() for k, v in txt_record(OTHER).items()}
    assert parse_peer(announced, ["127.0.0.1"], 1, own_id=OWN, listen_host="127.0.0.1") is not None
    assert instance_name(OTHER) == "aether-" + OTHER.hex()


def test_own_announcement_is_ignored() -> None:
    assert parse_peer(txt(OWN), ["192.0.2.7"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


@pytest.mark.parametrize("properties", [
    {},
    {b"id": OTHER.hex().encode()},                                   # no protocol version
    txt(version=b"2"),                                              # a version this node does not speak
    txt(version=None),
    {b"id": None, b"v": b"1"},
    {b"id": OTHER.hex()[:-2].encode(), b"v": b"1"},                 # too short
    {b"id": (OTHER.hex() + "00").encode(), b"v": b"1"},             # too long
    {b"id": b"zz" * 20, b"v": b"1"},                                # not hex
    {b"id": "é".encode() * 20, b"v": b"1"},                         # not even ASCII
    {"id": OTHER.hex(), "v": "1"},                                  # not what a TXT record decodes to
], ids=["empty", "no-version", "version-2", "version-none", "id-none", "id-short", "id-long", "id-not-hex",
        "id-not-ascii", "str-keys"])
def test_malformed_txt_is_ignored(properties: dict) -> None:
    assert parse_peer(properties, ["192.0.2.7"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


@pytest.mark.parametrize("port", [None, 0, -1, 65536, True, "7411", 7411.0])
def test_bad_port_is_ignored(port: object) -> None:
    assert parse_peer(txt(), ["192.0.2.7"], port, own_id=OWN, listen_host="0.0.0.0") is None


def test_only_addresses_this_node_can_reach_are_kept() -> None:
    hostile = ["not-an-ip", "", None, b"192.0.2.1", "224.0.0.251", "0.0.0.0", "255.255.255.255", "240.0.0.1",
               "2001:db8::1", "192.0.2.9", "192.0.2.9", "127.0.0.1"]
    peer = parse_peer(txt(), hostile, 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer is not None and peer.addresses == (("192.0.2.9", 7411), ("127.0.0.1", 7411))
    # Bound to loopback, a node can reach only loopback peers.
    peer = parse_peer(txt(), hostile, 7411, own_id=OWN, listen_host="127.0.0.1")
    assert peer is not None and peer.addresses == (("127.0.0.1", 7411),)
    # IPv6: no IPv4 peer, and no link-local address (its scope is not in the record).
    peer = parse_peer(txt(), ["fe80::1", "192.0.2.9", "2001:db8::1", "ff02::fb"], 7411, own_id=OWN, listen_host="::")
    assert peer is not None and peer.addresses == (("2001:db8::1", 7411),)
    # Nothing usable, no peer.
    assert parse_peer(txt(), ["224.0.0.251", "junk"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


def test_addresses_per_announcement_are_bounded() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 200)]
    peer = parse_peer(txt(), many, 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer is not None and len(peer.addresses) == MAX_ADDRESSES


_value = st.one_of(st.none(), st.binary(max_size=60), st.text(max_size=60), st.integers())


@given(
    properties=st.one_of(
        st.dictionaries(st.one_of(st.binary(max_size=8), st.sampled_from([b"id", b"v"])), _value, max_size=6),
        st.fixed_dictionaries({b"id": _value, b"v": _value}),
        _value,
    ),
    addresses=st.lists(st.one_of(st.text(max_size=45), st.ip_addresses().map(str), _value), max_size=12),
    port=st.one_of(_value, st.integers(-(2 ** 70), 2 ** 70)),
    listen=st.sampled_from(["0.0.0.0", "127.0.0.1", "192.0.2.2", "::", "::1"]),
)
def test_hostile_announcements_never_raise(properties: object, addresses: list, port: object, listen: str) -> None:
    peer = parse_peer(properties, addresses, port, own_id=OWN, listen_host=listen)  # type: ignore[arg-type]
    if peer is not None:
        assert len(peer.node_id) == 20 and peer.node_id != OWN
        assert 0 < len(peer.addresses) <= MAX_ADDRESSES
        assert all(isinstance(h, str) and 0 < p < 65536 for h, p in peer.addresses)


# ---------------------------------------------------------------- what is remembered
def test_tracker_reports_news_only_and_stays_bounded() -> None:
    tracker = PeerTracker(OWN, "0.0.0.0", limit=3)
    first = tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7411)
    assert first == Peer(OTHER, (("192.0.2.1", 7411),))
    assert tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7411) is None          # heard again: no news
    assert tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7412) is not None      # restarted on a new port
    assert tracker.heard("self", txt(OWN), ["192.0.2.2"], 7411) is None
    assert tracker.heard("junk", {b"id": b"?"}, ["192.0.2.2"], 7411) is None
    for i in range(10):
        tracker.heard(f"n{i}", txt(bytes([i]) * 20), [f"192.0.2.{10 + i}"], 7411)
    assert len(tracker) == 3
    assert tracker.addresses() == [("192.0.2.19", 7411), ("192.0.2.18", 7411), ("192.0.2.17", 7411)]
    assert tracker.gone("n9") is not None and tracker.gone("n9") is None
    assert ("192.0.2.19", 7411) not in tracker.addresses()
    # A forgotten peer heard again is news again.
    assert tracker.heard("n9", txt(bytes([9]) * 20), ["192.0.2.19"], 7411) is not None


async def test_browser_events_ignore_self_and_bound_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    found: list[Peer] = []
    discovery = Discovery(OWN, ("127.0.0.1", 7411), found.append)
    release = asyncio.Event()
    started: list[str] = []

    async def resolve(name: str) -> None:
        started.append(name)
        await release.wait()

    monkeypatch.setattr(discovery, "_resolve", resolve)
    added = discovery._on_change
    added(None, SERVICE_TYPE, discovery.name, ServiceStateChange.Added)
    for i in range(3 * MAX_RESOLVING):
        added(None, SERVICE_TYPE, f"flood-{i}.{SERVICE_TYPE}", ServiceStateChange.Added)
    await asyncio.sleep(0)
    assert discovery.name not in started
    assert len(started) == MAX_RESOLVING
    release.set()
    await discovery.close()


# ---------------------------------------------------------------- what is advertised
def _adapter(name: str, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
    return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24, name) for ip in ips], index=1)


def test_advertised_addresses_are_where_the_node_listens() -> None:
    adapters = [
        _adapter("lo", "127.0.0.1", ("::1", 0, 0)),
        _adapter("eth0", "192.0.2.2", ("2001:db8::2", 0, 0), ("fe80::2", 0, 2)),
        _adapter("wlan0", "198.51.100.4"),
    ]
    assert advertised_addresses("127.0.0.1", adapters) == ["127.0.0.1"]
    assert advertised_addresses("192.0.2.2", adapters) == ["192.0.2.2"]
    assert advertised_addresses("0.0.0.0", adapters) == ["192.0.2.2", "198.51.100.4"]
    assert advertised_addresses("::", adapters) == ["2001:db8::2"]
    # A host with nothing but loopback still advertises loopback (other nodes on it can use it).
    assert advertised_addresses("0.0.0.0", adapters[:1]) == ["127.0.0.1"]

"""Per-source rate limits: the token buckets, the keys sources are counted by, and real nodes applying them."""

from __future__ import annotations

import asyncio
import os

import pytest
from kademlia.node import Node

from aether.node.addresses import source_of, subnet_of
from aether.node.config import ConfigError, NodeConfig
from aether.node.ratelimit import BUSY, SourceLimiter
from aether.node.values import block_key
from aether.simulations.network import start_node

from .conftest import QUIET


class Clock:
    """A clock the test moves by hand: the buckets' arithmetic, not the machine's speed, is under test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    limiter = SourceLimiter(rate=10, burst=5, max_sources=8, clock=clock)
    assert [limiter.take("a") for _ in range(6)] == [True] * 5 + [False]
    assert limiter.take("b"), "each source has a bucket of its own"
    clock.now = 0.3  # three tokens back
    assert [limiter.take("a") for _ in range(4)] == [True] * 3 + [False]
    clock.now = 100.0
    assert sum(limiter.take("a") for _ in range(50)) == 5, "refilling stops at the burst"


def test_a_refused_amount_spends_nothing():
    limiter = SourceLimiter(rate=1, burst=100, max_sources=8, clock=Clock())
    assert not limiter.take("a", 101)
    assert limiter.take("a", 100)


def test_memory_is_bounded_by_the_number_of_sources_kept():
    limiter = SourceLimiter(rate=1, burst=1, max_sources=100, clock=Clock())
    for i in range(10_000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_sources_are_counted_by_address_and_loopback_by_port_too():
    assert source_of(("203.0.113.7", 1)) == source_of(("203.0.113.7", 2)) == "203.0.113.7"
    assert source_of(("::ffff:203.0.113.7", 3)) == "203.0.113.7"
    assert source_of(("2001:db8:1:2::1", 1)) == source_of(("2001:db8:1:2:ffff::9", 2)) == "2001:db8:1:2::/64"
    assert source_of(("127.0.0.1", 1)) != source_of(("127.0.0.1", 2))
    assert source_of(("127.0.0.1", 1), restrict_loopback=True) == source_of(("127.0.0.1", 2), restrict_loopback=True)


def test_subnets_are_slash_24_and_slash_48_and_loopback_is_exempt_unless_restricted():
    assert subnet_of("198.51.100.9") == subnet_of("198.51.100.200") == "198.51.100.0/24"
    assert subnet_of("198.51.101.9") != subnet_of("198.51.100.9")
    assert subnet_of("2001:db8:1:ff::1") == "2001:db8:1::/48"
    assert subnet_of("127.0.0.5") is None and subnet_of("::1") is None
    assert subnet_of("127.0.1.5", restrict_loopback=True) == "127.0.1.0/24"


def test_settings_are_checked():
    assert NodeConfig.from_mapping({"restrict_loopback": True, "requests_burst": 10}).restrict_loopback
    with pytest.raises(ConfigError):
        NodeConfig(restrict_loopback=1)
    with pytest.raises(ConfigError):
        NodeConfig(store_burst_bytes=0)
    with pytest.raises(ConfigError):
        NodeConfig(requests_burst=2.5)


async def ping_many(node, address: tuple[str, int], count: int) -> int:
    replies = await asyncio.gather(*(node.protocol.ping(address, node.node.id) for _ in range(count)))
    return sum(ok for ok, _ in replies)


@pytest.mark.parametrize("restrict", [False, True])
async def test_a_host_shares_one_allowance_when_loopback_is_restricted(tmp_path, restrict):
    config = QUIET.replace(requests_burst=10, requests_per_second=0.001, restrict_loopback=restrict,
                           rpc_timeout_initial=0.5, rpc_timeout_max=0.5)
    victim = await start_node(tmp_path / "victim", config)
    peers = []
    try:
        for i in range(2):
            peer = await start_node(tmp_path / f"peer{i}", config)
            peer.stop()  # rebind on another loopback address: one host, two ports
            await peer.listen(0, "127.0.0.3")
            peers.append(peer)
        answered = [await ping_many(peer, victim.address, 8) for peer in peers]
        assert answered == ([8, 2] if restrict else [8, 8])
        assert victim.protocol.stats["rate_dropped"] == (6 if restrict else 0)
    finally:
        for node in [victim, *peers]:
            node.stop()
            node.store.close()


async def test_a_store_past_the_allowance_is_refused_busy_and_the_default_takes_a_hand_off(tmp_path):
    small = QUIET.replace(store_burst_bytes=64 * 1024, store_bytes_per_second=1)
    victim = await start_node(tmp_path / "victim", small)
    generous = await start_node(tmp_path / "generous", QUIET)  # the default allowance
    storer = await start_node(tmp_path / "storer", QUIET)
    try:
        blocks = [os.urandom(6000) for _ in range(300)]  # 1.8 MB in one pass, as a hand-off to a new neighbour
        sends = asyncio.Semaphore(16)

        async def store(contact: Node, data: bytes) -> tuple[bool, object]:
            async with sends:
                return await storer.protocol.call_store(contact, block_key(data), data)

        replies = []
        for node in (victim, generous):
            contact = Node(node.node.id, *node.address)
            replies.append(await asyncio.gather(*(store(contact, b) for b in blocks)))
        small_replies, default_replies = replies
        # The kernel may drop a datagram when the socket buffer is full; every STORE that arrived is answered.
        assert sum(ok for ok, _ in small_replies) == victim.protocol.stats["rpc_store"] > 250
        busy = [body for ok, body in small_replies if ok and body.get("error") == BUSY]
        assert len(busy) == victim.protocol.stats["store_refused_busy"] > 200
        stored = [body for ok, body in default_replies if ok and body.get("stored")]
        assert len(stored) == generous.protocol.stats["rpc_store"] > 250
        assert generous.protocol.stats["store_refused_busy"] == 0
    finally:
        for node in (victim, generous, storer):
            node.stop()
            node.store.close()


def test_the_config_template_lists_the_limits_at_their_defaults(tmp_path):
    import re

    from aether.node.home import CONFIG_TEMPLATE, Home

    names = ["requests_per_second", "requests_burst", "store_bytes_per_second", "store_burst_bytes",
             "rate_limited_sources", "contacts_per_subnet_bucket", "contacts_per_subnet", "restrict_loopback"]
    text = CONFIG_TEMPLATE
    for name in names:
        text, n = re.subn(rf"(?m)^# ({name} = \S+)", r"\1", text)
        assert n == 1, name
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    assert Home(tmp_path).settings().node == NodeConfig()

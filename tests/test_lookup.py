"""Lookups go past contacts that churn took, without waiting out their timeouts; timeouts back off once per silence."""

from __future__ import annotations

import pytest
from kademlia.node import Node

from aether.node.rtt import PROMPT_FACTOR, PROMPT_MIN, RECENT_SAMPLES, RttEstimator
from aether.node.server import AetherNode
from aether.node.values import Block, block_key
from aether.simulations.faults import Faults, inject
from aether.simulations.network import local_network
from aether.storage.store import BLOCK

from .conftest import QUIET

PEER = ("127.0.0.1", 4000)
OTHER = ("127.0.0.1", 4001)
NEW = ("127.0.0.1", 4002)
LONG_TIMEOUTS = QUIET.replace(ksize=4, rpc_timeout_initial=5.0, rpc_timeout_min=5.0, rpc_timeout_max=5.0)
"""Timeouts far longer than any lookup here: a lookup that waits for one shows it."""


def test_timeouts_that_come_together_back_off_once():
    rtt = RttEstimator(initial=1.0, minimum=0.2, maximum=5.0)
    rtt.observe(PEER, 0.001)
    first = rtt.timeout_for(PEER)
    for _ in range(5):  # five requests out at once, all unanswered
        rtt.backoff(PEER, now=100.0)
    assert rtt.timeout_for(PEER) == 2 * first
    rtt.backoff(PEER, now=100.0 + 2 * first)  # a later silence doubles again
    assert rtt.timeout_for(PEER) == 4 * first


def test_the_prompt_follows_the_fastest_recent_round_trip_not_estimates_learned_while_busy():
    rtt = RttEstimator(initial=1.0, minimum=0.2, maximum=5.0)
    assert rtt.prompt_for(PEER) == 1.0  # nothing measured yet: no shorter than the timeout itself
    for _ in range(40):
        rtt.observe(PEER, 2.0)  # learned while this machine was busy
    rtt.observe(OTHER, 0.001)  # one quick round trip shows what the path can do
    assert rtt.timeout_for(PEER) > 1.0 and rtt.timeout_for(NEW) > 1.0  # the smoothed estimates still remember
    assert rtt.prompt_for(PEER) == PROMPT_MIN
    for _ in range(RECENT_SAMPLES):
        rtt.observe(OTHER, 0.01)  # the quick sample has aged out of the window
    assert rtt.prompt_for(PEER) == pytest.approx(PROMPT_FACTOR * 0.01)
    slow = RttEstimator(initial=1.0, minimum=0.2, maximum=5.0)
    for _ in range(50):
        slow.observe(OTHER, 0.3)
    assert slow.prompt_for(PEER) == slow.timeout_for(PEER) < PROMPT_FACTOR * 0.3  # never past the peer's timeout


def silence_nearest(nodes: list[AetherNode], reader: AetherNode, key: bytes, k: int, *, abruptly: bool) -> list[AetherNode]:
    """Take away the k contacts a lookup of ``key`` from ``reader`` starts from; the nodes left."""
    seeds = {s.id for s in reader.protocol.router.find_neighbors(Node(key), k=k)}
    gone = [n for n in nodes if n.node.id in seeds]
    assert len(gone) == k
    for node in gone:
        node.halt() if abruptly else node.stop()
    return [n for n in nodes if n is not reader and n not in gone]


@pytest.mark.asyncio
async def test_a_lookup_whose_nearest_contacts_are_all_gone_asks_the_next_ones(tmp_path):
    """Churn can take every contact a lookup starts from; the contacts behind them still know the way."""
    config = QUIET.replace(ksize=3, rpc_timeout_initial=1.0, rpc_timeout_max=1.0, stale_after_failures=1, lookup_paths=1)
    async with local_network(tmp_path / "net", 12, config, seed=4) as nodes:
        reader = nodes[0]
        data = b"found past the gone"
        key = block_key(data)
        # One path (no disjoint-path retry to fall back on). Every node left holds the value,
        # so the test hangs on one thing only: that the lookup
        # goes past its gone seeds to other contacts. (With one holder just past the gone ones,
        # whether any node still names it depends on the random IDs: each names its k = 3
        # closest, which may be exactly the gone ones, and then nobody could find it.)
        for node in silence_nearest(nodes, reader, key, config.ksize, abruptly=False):
            node.store.put(key, data, kind=BLOCK, role="replica")
        assert await reader.get_block(key) == data


@pytest.mark.asyncio
async def test_a_lookup_finds_a_value_past_silent_peers_before_any_of_their_timeouts(tmp_path):
    """The nearest contacts are gone and each would take 5 s to time out; the value is found before any does."""
    async with local_network(tmp_path / "net", 14, LONG_TIMEOUTS, seed=3) as nodes:
        reader = nodes[0]
        await reader.lookup(bytes(20))  # the reader's own round trips: the first node joined no one
        data = b"behind the silent ones"
        key = block_key(data)
        for node in silence_nearest(nodes, reader, key, LONG_TIMEOUTS.ksize, abruptly=True):
            node.store.put(key, data, kind=BLOCK, role="replica")
        timeouts_before = reader.protocol.stats["timeouts"]
        result = await reader.lookup(key, want_value=True)
        assert isinstance(result.value, Block) and result.value.data == data
        assert result.stalls >= 1
        assert reader.protocol.stats["timeouts"] == timeouts_before  # no 5 s timeout had fired yet


def slow_down_nearest(nodes: list[AetherNode], key: bytes) -> AetherNode:
    """The node nearest ``key`` (the first node, the reader, aside), its replies now 300 ms late: past the prompt."""
    nearest = min(nodes[1:], key=lambda n: n.node.long_id ^ int.from_bytes(key, "big"))
    inject(nearest, Faults(latency_ms=300))
    return nearest


@pytest.mark.asyncio
async def test_a_lookup_for_a_value_waits_for_a_slow_holder_rather_than_end_without_it(tmp_path):
    """The only holder answers after the prompt time: the others answering first must not end the lookup empty."""
    async with local_network(tmp_path / "net", 12, LONG_TIMEOUTS, seed=5) as nodes:
        await nodes[0].lookup(bytes(20))
        data = b"held by a slow node only"
        key = block_key(data)
        slow_down_nearest(nodes, key).store.put(key, data, kind=BLOCK, role="replica")
        result = await nodes[0].lookup(key, want_value=True)
        assert result.stalls >= 1
        assert isinstance(result.value, Block) and result.value.data == data


@pytest.mark.asyncio
async def test_a_lookup_for_nodes_still_finds_a_slow_node_among_the_closest(tmp_path):
    """Where to store must be the k closest nodes, a slow one included; only stalls that cannot change that are left."""
    async with local_network(tmp_path / "net", 12, LONG_TIMEOUTS, seed=6) as nodes:
        await nodes[0].lookup(bytes(20))
        key = block_key(b"a place in the key space")
        nearest = slow_down_nearest(nodes, key)
        result = await nodes[0].lookup(key)
        assert result.stalls >= 1
        assert result.closest[0].id == nearest.node.id

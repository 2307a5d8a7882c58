"""Where replicas go: the k closest, light peers left out, and among equally close peers
the ones that offer more spare quota and longer uptime."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from kademlia.node import Node

from aether.node import entries as E
from aether.node.patterns import PatternLibrary
from aether.node.server import FULL, LIGHT, AetherNode
from aether.node.values import block_key
from aether.simulations.network import address_of, local_network, start_node, stop_all

from .conftest import QUIET
from .corpus import corpus

KEY = bytes(20)  # distances to the key are the node IDs themselves
DAY = 24 * 3600


def peer(distance: int) -> Node:
    return Node(distance.to_bytes(20, "big"), "127.0.0.1", 9)


@pytest.fixture
async def chooser(tmp_path: Path):
    node = await start_node(tmp_path / "n", QUIET)
    yield node
    stop_all([node])


def receipt(spare: int, uptime: int) -> dict:
    return {"stored": True, "spare": spare, "uptime": uptime}


def ids(nodes) -> list[int]:
    return [int.from_bytes(n.id, "big") for n in nodes]


async def test_without_offers_the_closest_are_chosen_in_order(chooser: AetherNode) -> None:
    # Bands (highest distance bit): 1 | 2 3 | 4..7 | 8..15
    closest = [peer(d) for d in (1, 2, 3, 4)]
    spares = [peer(d) for d in (5, 6, 9)]
    chosen, rest = chooser.replica_targets(KEY, closest, spares)
    assert ids(chosen) == [1, 2, 3, 4] and ids(rest) == [5, 6, 9]


async def test_a_better_offer_wins_among_equally_close_peers_only(chooser: AetherNode) -> None:
    closest = [peer(d) for d in (1, 2, 3, 4)]
    spares = [peer(d) for d in (5, 6, 9)]
    for d, offer in ((4, receipt(10 * 10**6, 60)), (5, receipt(10 * 10**6, 60)), (6, receipt(50 * 10**9, 3 * DAY)),
                     (2, receipt(0, 0)), (3, receipt(0, 0)), (9, receipt(50 * 10**9, 3 * DAY))):
        assert chooser.refusal(peer(d), offer) is None
    chosen, rest = chooser.replica_targets(KEY, closest, spares)
    # 4 was in the last place's band (4..7): 6, a desktop up for days, takes it. 2 and 3 are
    # closer than that band and stay despite offering nothing; 9 is farther and stays out.
    assert ids(chosen) == [1, 2, 3, 6]
    assert ids(rest) == [4, 5, 9]


async def test_peers_not_heard_from_count_as_the_typical_peer(chooser: AetherNode) -> None:
    closest = [peer(d) for d in (4, 5)]
    spares = [peer(d) for d in (6, 7)]
    chooser.refusal(peer(5), receipt(10**9, DAY))  # strong
    chooser.refusal(peer(6), receipt(0, 0))  # weak
    chooser.refusal(peer(7), receipt(10**9, DAY))  # strong
    # Known scores 0, 20, 20: the typical one is 20, so the unknown 4 ranks with 5 and 7.
    chosen, _ = chooser.replica_targets(KEY, closest, spares)
    assert ids(chosen) == [4, 5]


async def test_full_and_light_replies_demote_a_peer(chooser: AetherNode) -> None:
    closest = [peer(d) for d in (4, 5)]
    spares = [peer(d) for d in (6, 7)]
    for d in (4, 5, 6, 7):
        chooser.refusal(peer(d), receipt(10**9, DAY))
    assert chooser.refusal(peer(4), {"error": FULL, "message": "no room"}) == FULL
    assert chooser.refusal(peer(5), {"error": LIGHT, "message": "on battery"}) == LIGHT
    chosen, rest = chooser.replica_targets(KEY, closest, spares)
    # 5 is light: not offered replicas; 4 said it is full: it ranks last in its band.
    assert ids(chosen) == [6, 7] and ids(rest) == [4]


@pytest.mark.parametrize("body", [
    {"stored": True}, {"stored": True, "spare": -1, "uptime": 5}, {"stored": True, "spare": "lots", "uptime": 5},
    {"stored": True, "spare": True, "uptime": 5}, {"stored": True, "spare": 5, "uptime": 2.5}, True, None,
])
async def test_odd_receipts_are_successes_that_teach_nothing(chooser: AetherNode, body) -> None:
    assert chooser.refusal(peer(4), body) is None
    assert chooser._offers == {}


async def test_a_store_receipt_offers_the_room_left_and_the_uptime(tmp_path: Path) -> None:
    async with local_network(tmp_path / "net", 2, QUIET.replace(quota_bytes=50 * 10**6)) as (a, b):
        b._started = time.monotonic() - 2 * DAY  # as if up for two days
        data = b"a block of bytes"
        to_b = Node(b.node.id, *address_of(b))
        ok, body = await a.protocol.call_store(to_b, block_key(data), data)
        assert ok and body["stored"] is True
        assert body["spare"] == b.budget - b.store.used_bytes()
        assert 2 * DAY <= body["uptime"] < 2 * DAY + 60


async def test_always_on_desktops_carry_most_replicas(tmp_path: Path) -> None:
    """30 nodes, a third of them desktops up for days with room to spare, the rest new and nearly full.

    A publisher that has stored on every node (so has every node's receipt) places
    more replicas on desktops than the plain k closest would hold.
    """
    rng = random.Random(3)
    k = 6
    async with local_network(tmp_path / "net", 30, QUIET.replace(ksize=k), seed=3) as nodes:
        publisher, others = nodes[0], nodes[1:]
        desktops = {n.node.id for n in rng.sample(others, 10)}
        for node in others:
            if node.node.id in desktops:
                node._started = time.monotonic() - 3 * DAY
            else:  # a small quota nearly used up: a phone plugged in, say
                node.config = node.config.replace(quota_bytes=node.store.used_bytes() + 3 * 1024 * 1024)
        for node in others:  # earlier traffic: one STORE to each, whose receipt the publisher keeps
            data = rng.randbytes(100)
            ok, body = await publisher.protocol.call_store(Node(node.node.id, *address_of(node)), block_key(data), data)
            assert publisher.refusal(node.node, body) is None
        documents = [data for data in corpus().values() if len(data) < 64 * 1024]
        by_distance = Counter()
        placed = Counter()
        for data in documents:
            published = await PatternLibrary(publisher).publish(data)
            key = E.pattern_key(published.pattern.hash)
            target = int.from_bytes(key, "big")
            nearest = sorted(others, key=lambda n: n.node.long_id ^ target)[:k]
            by_distance.update("desktop" if n.node.id in desktops else "other" for n in nearest)
            for node in others:
                if node.store.entries(key):
                    placed["desktop" if node.node.id in desktops else "other"] += 1
        assert sum(placed.values()) >= k * len(documents) - 2  # a STORE may go unanswered on a loaded machine
        assert placed["desktop"] > by_distance["desktop"], (placed, by_distance)


async def test_a_light_node_refreshes_only_its_own_neighbourhood(tmp_path: Path, monkeypatch) -> None:
    from .test_patterns import count_calls

    async with local_network(tmp_path / "net", 12, QUIET, seed=4) as nodes:
        node = nodes[0]
        buckets = node.protocol.router.buckets

        def all_quiet() -> None:  # as if no lookup had touched any bucket for hours
            for bucket in buckets:
                bucket.last_updated = time.monotonic() - 2 * QUIET.refresh_interval

        lookups = count_calls(monkeypatch, node, "lookup")
        all_quiet()
        await node.refresh_buckets()
        assert len(lookups) == 1 + len(buckets)  # its own ID, and one per quiet bucket
        lookups.clear()
        node.light = True
        all_quiet()
        await node.refresh_buckets()
        assert [args[0] for args in lookups] == [node.node.id]
        # A light node queues no hand-off for a new contact and re-replicates nothing.
        node.on_new_contact(nodes[1].protocol.source_node)
        assert not node.busy

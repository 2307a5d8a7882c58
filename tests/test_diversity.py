"""Routing-table diversity: one /24 (or /48) holds a bounded share of a bucket and of the table."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest
from kademlia.node import Node

from aether.node.addresses import subnet_of
from aether.node.routing import AetherRoutingTable
from aether.simulations.network import start_node

from .conftest import QUIET
from .test_routing import _NoPings


def members(table: AetherRoutingTable) -> list[list[Node]]:
    """Each bucket's contacts and replacements."""
    return [[*b.nodes.values(), *b.replacement_nodes.values()] for b in table.buckets]


def fill(own: Node, nodes: list[Node], **limits) -> AetherRoutingTable:
    async def run() -> AetherRoutingTable:  # a full bucket pings its head: needs a loop
        table = AetherRoutingTable(_NoPings(), 4, own, **limits)
        for node in nodes:
            table.add_contact(node)
        return table

    return asyncio.run(run())


def test_one_subnet_gets_a_bounded_share_of_each_bucket_and_of_the_table():
    rng = random.Random(5)
    own = Node(rng.randbytes(20))
    crowd = [Node(rng.randbytes(20), f"198.51.100.{i % 250 + 1}", 4000 + i) for i in range(400)]
    others = [Node(rng.randbytes(20), f"10.{i // 200}.{i % 200}.1", 4000) for i in range(400)]
    mixed = [n for pair in zip(crowd, others) for n in pair]
    table = fill(own, mixed, per_bucket=2, per_table=8)
    for bucket in members(table):
        assert sum(subnet_of(n.ip) == "198.51.100.0/24" for n in bucket) <= 2
    held = [n for bucket in members(table) for n in bucket]
    per_subnet = Counter(subnet_of(n.ip) for n in held)
    assert per_subnet["198.51.100.0/24"] == 8
    assert len(held) - 8 > 50, "contacts from other subnets fill the table as before"
    assert table.subnet_refusals >= 400 - 8


def test_a_contact_already_held_is_refreshed_not_refused():
    own = Node(bytes(20))
    first = Node(b"\x80" + bytes(19), "198.51.100.1", 1)
    second = Node(b"\x81" + bytes(19), "198.51.100.2", 1)
    table = fill(own, [first, second, Node(b"\x82" + bytes(19), "198.51.100.3", 1), first], per_bucket=2)
    held = [n.id for bucket in members(table) for n in bucket]
    assert sorted(held) == sorted([first.id, second.id]) and table.subnet_refusals == 1


def test_loopback_is_exempt_unless_restricted():
    rng = random.Random(6)
    own = Node(rng.randbytes(20))
    local = [Node(rng.randbytes(20), "127.0.0.1", 5000 + i) for i in range(30)]
    assert sum(map(len, members(fill(own, local)))) == 30
    assert sum(map(len, members(fill(own, local, restrict_loopback=True)))) == 2


@pytest.mark.parametrize("restrict", [True, False])
async def test_nodes_on_one_loopback_slash_24_cannot_fill_a_real_nodes_table(tmp_path, restrict):
    """Twelve nodes on 127.0.1.x and six on six other /24s of 127.0.0.0/8 all ping one node."""
    victim = await start_node(tmp_path / "victim", QUIET.replace(restrict_loopback=restrict))
    peers = []
    try:
        hosts = [f"127.0.1.{i}" for i in range(1, 13)] + [f"127.0.{i}.1" for i in range(2, 8)]
        for i, host in enumerate(hosts):
            peer = await start_node(tmp_path / f"peer{i}", QUIET)
            peer.stop()
            await peer.listen(0, host)
            peers.append(peer)
        for peer in peers:
            assert (await peer.protocol.ping(victim.address, peer.node.id))[0]
        table = victim.protocol.router
        held = {n.ip for bucket in members(table) for n in bucket}
        same_slash_24 = [h for h in held if h.startswith("127.0.1.")]
        assert {f"127.0.{i}.1" for i in range(2, 8)} <= held
        if restrict:
            assert len(same_slash_24) == 2  # k = 20: every contact is in one bucket so far
            for bucket in members(table):
                assert sum(n.ip.startswith("127.0.1.") for n in bucket) <= 2
        else:
            assert len(same_slash_24) == 12
    finally:
        for node in [victim, *peers]:
            node.stop()
            node.store.close()

"""The routing table answers neighbour queries exactly."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node
from kademlia.routing import RoutingTable

from aether.node.routing import AetherRoutingTable, bucket_depth


class _NoPings:
    """The table pings a full bucket's head; these tests only read the table."""

    async def call_ping(self, node):
        return (True, node.id)

    def last_named(self, node_id):
        return None


def filled_table(own: Node, ksize: int, nodes: list[Node]) -> AetherRoutingTable:
    """A table holding what it accepts of ``nodes``, built inside an event loop of its own.

    A full bucket schedules a ping of its head with ``asyncio.ensure_future``,
    which needs a loop; relying on whatever loop an earlier test left behind
    would make these tests depend on the order they run in.
    """

    async def fill() -> AetherRoutingTable:
        table = AetherRoutingTable(_NoPings(), ksize, own)
        for node in nodes:
            table.add_contact(node)
        return table

    return asyncio.run(fill())


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(1, 30), st.floats(0, 0.95))
def test_find_neighbors_returns_the_k_closest_contacts(seed, contacts, k, dropped):
    """Exact against brute force, also after contacts were dropped and buckets left empty."""
    rng = random.Random(seed)
    own = Node(rng.randbytes(20))
    table = filled_table(own, 20, [Node(rng.randbytes(20), "127.0.0.1", 1000 + i) for i in range(contacts)])
    added = [n for bucket in table.buckets for n in bucket.nodes.values()]
    for node in rng.sample(added, int(len(added) * dropped)):
        bucket = table.buckets[table.get_bucket_for(node)]
        bucket.replacement_nodes.clear()  # no replacement: the bucket may end up empty
        table.remove_contact(node)
    remaining = [n for bucket in table.buckets for n in bucket.nodes.values()]
    target = Node(rng.randbytes(20))
    expected = sorted(remaining, key=lambda n: n.long_id ^ target.long_id)[:k]
    assert [n.id for n in table.find_neighbors(target, k=k)] == [n.id for n in expected]


def test_stock_neighbour_query_can_miss_every_contact_and_ours_does_not():
    """The stock walk stops at empty buckets; a table with contacts must still answer."""
    own = Node((2**160 - 1).to_bytes(20, "big"))
    ids = [0, 1, 2**158, 2**158 + 1, 2**159 + 2**157, 2**159 + 2**157 + 1]
    nodes = [Node(i.to_bytes(20, "big"), "127.0.0.1", 3000 + n) for n, i in enumerate(ids)]
    table = filled_table(own, 2, nodes)
    for node in nodes[2:]:
        table.buckets[table.get_bucket_for(node)].replacement_nodes.clear()
        table.remove_contact(node)
    target = Node((2**160 - 2).to_bytes(20, "big"))
    assert RoutingTable.find_neighbors(table, target) == []  # the stock bug
    assert [n.id for n in table.find_neighbors(target)] == [nodes[0].id, nodes[1].id]


def test_find_neighbors_leaves_out_the_target_and_the_excluded_address():
    own = Node(b"\x00" * 20)
    nodes = [Node(bytes([i]) * 20, "127.0.0.1", 2000 + i) for i in range(1, 6)]
    table = filled_table(own, 20, nodes)
    found = table.find_neighbors(nodes[0], exclude=nodes[1])
    assert nodes[0] not in found and nodes[1] not in found
    assert len(found) == 3


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 400), st.integers(2, 20))
def test_the_table_splits_and_places_contacts_exactly_as_stock_does(seed, contacts, k):
    """Bisection and the XOR depth give the stock table's buckets, contact for contact."""
    rng = random.Random(seed)
    own = Node(rng.getrandbits(160).to_bytes(20, "big"))
    # Close IDs too, so that deep buckets (depth divisible by 5 or not) get full.
    nodes = [Node((own.long_id ^ rng.getrandbits(rng.choice([8, 40, 160]))).to_bytes(20, "big")) for _ in range(contacts)]
    nodes = [n for n in nodes if n.id != own.id]

    async def both() -> tuple[RoutingTable, AetherRoutingTable]:
        stock, ours = RoutingTable(_NoPings(), k, own), AetherRoutingTable(_NoPings(), k, own)
        for node in nodes:
            stock.add_contact(node)
            ours.add_contact(node)
            probe = Node(rng.getrandbits(160).to_bytes(20, "big"))
            assert ours.get_bucket_for(probe) == stock.get_bucket_for(probe)
        return stock, ours

    stock, ours = asyncio.run(both())
    assert [b.range for b in ours.buckets] == [b.range for b in stock.buckets]
    assert [sorted(b.nodes) for b in ours.buckets] == [sorted(b.nodes) for b in stock.buckets]
    for node in nodes:
        assert ours.get_bucket_for(node) == stock.get_bucket_for(node)
    for bucket in ours.buckets:
        if bucket.nodes:
            assert bucket_depth(bucket) == bucket.depth()


def test_a_full_bucket_pings_its_head_only_when_the_head_has_not_spoken_lately():
    """A head heard from within GOOD_FOR is alive: the newcomer waits in the replacement cache, unpinged."""
    import time as _time

    from aether.node.routing import GOOD_FOR

    class Recorder:
        def __init__(self, seen):
            self.seen, self.pinged = seen, []

        async def call_ping(self, node):
            self.pinged.append(node.id)
            return (True, node.id)

        def last_named(self, node_id):
            return self.seen

    own = Node((2**160 - 1).to_bytes(20, "big"))
    head, second, newcomer = (Node(i.to_bytes(20, "big"), "127.0.0.1", 4000 + n)
                              for n, i in enumerate([1, 2**154, 2**153]))  # one bucket, 5 shared bits: no split

    async def offer(seen):
        recorder = Recorder(seen)
        table = AetherRoutingTable(recorder, 2, own)
        for node in (head, second, newcomer):
            table.add_contact(node)
        await asyncio.sleep(0)  # the ping, if any, runs
        bucket = table.buckets[table.get_bucket_for(newcomer)]
        assert bucket.head().id == head.id and newcomer.id in bucket.replacement_nodes
        return recorder.pinged

    now = _time.time()
    assert asyncio.run(offer(now - 10)) == []
    assert asyncio.run(offer(now - GOOD_FOR - 1)) == [head.id]
    assert asyncio.run(offer(None)) == [head.id]  # never heard from
    assert asyncio.run(offer(now + 3600)) == [head.id]  # the clock was set back: not taken as fresh

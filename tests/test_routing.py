"""The routing table answers neighbour queries exactly."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.node import Node

from aether.node.routing import AetherRoutingTable


class _NoPings:
    """The table pings a full bucket's head; these tests only read the table."""

    async def call_ping(self, node):
        return (True, node.id)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 300), st.integers(1, 30))
def test_find_neighbors_returns_the_k_closest_contacts(seed, contacts, k):
    rng = random.Random(seed)
    own = Node(rng.randbytes(20))
    table = AetherRoutingTable(_NoPings(), 20, own)
    added = []
    for i in range(contacts):
        node = Node(rng.randbytes(20), "127.0.0.1", 1000 + i)
        table.add_contact(node)
        if not table.is_new_node(node):
            added.append(node)
    target = Node(os.urandom(20))
    expected = sorted(added, key=lambda n: n.long_id ^ target.long_id)[:k]
    assert [n.id for n in table.find_neighbors(target, k=k)] == [n.id for n in expected]


def test_find_neighbors_leaves_out_the_target_and_the_excluded_address():
    own = Node(b"\x00" * 20)
    table = AetherRoutingTable(_NoPings(), 20, own)
    nodes = [Node(bytes([i]) * 20, "127.0.0.1", 2000 + i) for i in range(1, 6)]
    for node in nodes:
        table.add_contact(node)
    found = table.find_neighbors(nodes[0], exclude=nodes[1])
    assert nodes[0] not in found and nodes[1] not in found
    assert len(found) == 3

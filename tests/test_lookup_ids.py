"""In a lookup one endpoint stands for one node ID, one subnet for a bounded share of the closest, and a PING
reply must name the ID asked: invented IDs cannot fill a lookup, hide a value or take the places of a STORE."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from kademlia.node import Node

from aether.node.addresses import endpoint_of
from aether.node.proofs import ProvingProtocol
from aether.node.protocol import error_reply, is_node_id
from aether.node.server import AetherNode
from aether.node.values import Block, block_key
from aether.simulations.network import address_of, join_all, local_network, start_node, stop_all
from aether.storage.store import BLOCK

from .conftest import QUIET

CONFIG = QUIET.replace(ksize=4, alpha=1)
"""One request at a time: the reader asks its nearest contact, the liar, before anyone else, in every run."""
POOL = 4
"""The liar invents POOL·k IDs per key: enough for a lookup's k closest and the spares past them, twice."""


class Liar(ProvingProtocol):
    """A real node's protocol that answers every find with IDs it invented nearer the key than any node's.

    The IDs sit at ``endpoints`` (by default its own address), denied any value;
    PING, IDENTIFY and STORE stay honest, so it keeps its place in tables and
    proves its own ID.
    """

    endpoints: list[tuple[str, int]] = []

    def rpc_find_node(self, sender: tuple, nodeid: Any, key: Any) -> Any:
        return self._invent(key)

    def rpc_find_value(self, sender: tuple, nodeid: Any, key: Any, offset: Any = 0) -> Any:
        return self._invent(key)

    def _invent(self, key: Any) -> Any:
        if not is_node_id(key):
            return error_reply("malformed", "key must be 20 bytes")
        k = self.router.ksize
        target = int.from_bytes(key, "big")
        endpoints = self.endpoints or [self.owner.address]
        chosen = random.Random(key)  # the same pool each time the key is asked about
        near = [chosen.getrandbits(100) | 1 for _ in range(POOL * k)]  # 60 bits nearer the key than any real ID
        pool = [[(target ^ r).to_bytes(20, "big"), *endpoints[j % len(endpoints)]] for j, r in enumerate(near)]
        return random.sample(pool, k)


def lie(node: AetherNode, endpoints: list[tuple[str, int]] | None = None) -> None:
    node.protocol.__class__ = Liar
    node.protocol.endpoints = endpoints or []


def block_nearest_to(reader: AetherNode, liar: AetherNode) -> tuple[bytes, bytes]:
    """A block, and its key, for which the reader's nearest contact is the liar: the one it asks first."""
    while True:
        data = os.urandom(64)
        key = block_key(data)
        nearest = reader.protocol.router.find_neighbors(Node(key), k=1)
        if nearest and nearest[0].id == liar.node.id:
            return data, key


def finds_served(node: AetherNode) -> int:
    return node.protocol.stats["rpc_find_node"] + node.protocol.stats["rpc_find_value"]


def hold(nodes: list[AetherNode], key: bytes, data: bytes, k: int) -> None:
    """The block on the k given nodes nearest its key, as a publish would have left it."""
    target = int.from_bytes(key, "big")
    for node in sorted(nodes, key=lambda n: n.node.long_id ^ target)[:k]:
        node.store.put(key, data, kind=BLOCK, role="replica")


@pytest.mark.parametrize("at", ["its own address", "the asker's address"])
async def test_one_address_under_invented_ids_neither_hides_a_value_nor_takes_the_store_targets(tmp_path, at):
    """The liar answers every find with k of its 4k invented IDs next to the key, all at one address.

    Each of them would answer (the liar, or the reader itself, is there), so
    without the one-ID-per-endpoint rule they become the k closest that
    answered: the lookup ends without the value, and a publish finds only
    invented IDs to store on, which cannot prove themselves.
    """
    async with local_network(tmp_path, 10, CONFIG, seed=2) as nodes:
        reader, liar = nodes[0], nodes[1]
        lie(liar, [reader.address] if at == "the asker's address" else None)
        real = {n.node.id for n in nodes}
        data, key = block_nearest_to(reader, liar)
        hold(nodes[2:], key, data, CONFIG.ksize)
        served = finds_served(reader)

        found = await reader.lookup(key, want_value=True)
        assert isinstance(found.value, Block) and found.value.data == data
        assert found.same_address >= 1
        assert finds_served(reader) == served, "the reader never asked itself"
        published, place = block_nearest_to(reader, liar)
        placement = await reader.lookup(place)
        assert len(placement.closest) == CONFIG.ksize and {n.id for n in placement.closest} <= real
        report = await reader.put_block(published)
        assert report.stored == CONFIG.ksize and {n.id for n in report.accepted} <= real


async def test_many_ports_of_one_host_hold_at_most_their_subnets_share_of_a_lookup(tmp_path):
    """Six liar sockets on 127.0.1.1 name one invented ID at each port; honest nodes are each on a /24 of their own.

    One ID per endpoint still leaves six nearer than every honest node: the
    subnet cap (``contacts_per_subnet_bucket``, 2, with ``restrict_loopback``)
    keeps four of them out of the k closest, and the honest holders are asked.
    """
    config = CONFIG.replace(restrict_loopback=True)
    nodes: list[AetherNode] = []
    try:
        for i in range(8):
            nodes.append(await start_node(tmp_path / f"honest{i}", config, host=f"127.0.{i + 2}.1"))
        for i in range(6):
            nodes.append(await start_node(tmp_path / f"liar{i}", config, host="127.0.1.1"))
        honest, liars = nodes[:8], nodes[8:]
        reader = honest[0]
        await join_all([reader, liars[0], *honest[1:]], seed=3)  # the liar joins through the reader: its contact
        ports = [address_of(node) for node in liars]
        for node in liars:
            lie(node, ports)
        data, key = block_nearest_to(reader, liars[0])
        hold(honest[1:], key, data, config.ksize)

        found = await reader.lookup(key, want_value=True)
        assert isinstance(found.value, Block) and found.value.data == data
        placement = await reader.lookup(key)
        on_liar_host = [n for n in placement.closest if n.ip == "127.0.1.1"]
        assert len(placement.closest) == config.ksize
        assert 1 <= len(on_liar_host) <= config.contacts_per_subnet_bucket
    finally:
        stop_all(nodes)


async def test_a_ping_answered_under_another_id_fails_the_contact(tmp_path):
    """A contact held as (X, address of B) is pinged; B answers with its own ID, not X: no reply from X.

    FIND_NODE, FIND_VALUE and STORE replies carry no sender ID in kademlia's
    framing, only the address they come from; PING's reply is the one that names it.
    """
    async with local_network(tmp_path, 2, QUIET) as (asker, other):
        claimed = Node(os.urandom(20), *address_of(other))
        asker.protocol.router.add_contact(claimed)
        ok, _ = await asker.protocol.call_ping(claimed)
        assert not ok
        assert asker.protocol.failures(claimed.id) == 1
        assert asker.protocol.stats["ping_from_other_id"] == 1
        ok, reply = await asker.protocol.call_ping(Node(other.node.id, *address_of(other)))
        assert ok and reply == other.node.id


def test_an_endpoint_has_one_spelling():
    assert endpoint_of("::ffff:127.0.0.1", 4000) == endpoint_of("127.0.0.1", 4000) == ("127.0.0.1", 4000)
    assert endpoint_of("0:0::1", 4000) == endpoint_of("::1", 4000)
    assert endpoint_of("127.0.0.1", 4000) != endpoint_of("127.0.0.1", 4001)


async def test_a_network_all_in_one_subnet_still_finds_more_than_its_share(tmp_path):
    """Six nodes on one /24 with ``restrict_loopback``, as on an office LAN: the cap ranks a subnet's further
    peers behind others, and with no others they still count among the k closest."""
    config = CONFIG.replace(restrict_loopback=True)
    nodes: list[AetherNode] = []
    try:
        for i in range(6):
            nodes.append(await start_node(tmp_path / f"lan{i}", config, host=f"127.0.5.{i + 1}"))
        await join_all(nodes, seed=4)
        result = await nodes[-1].lookup(block_key(b"a key on the LAN"))
        assert len(result.closest) > config.contacts_per_subnet_bucket
    finally:
        stop_all(nodes)


async def test_only_traffic_naming_the_id_spares_a_full_buckets_head_its_ping(tmp_path):
    """A FIND reply from an endpoint does not vouch for the ID we hold for it; a request or a PING reply does."""
    a = await start_node(tmp_path / "a", QUIET)
    b = await start_node(tmp_path / "b", QUIET)
    try:
        claimed = Node(os.urandom(20), *address_of(b))  # b's endpoint under an ID that is not b's
        ok, _ = await a.protocol.call_find_node(claimed, Node(os.urandom(20)))
        assert ok  # b answered: the reply names nobody
        assert not a.protocol.router._heard_lately(claimed)  # so the head would still be pinged
        real = Node(b.node.id, *address_of(b))
        ok, _ = await a.protocol.call_ping(real)
        assert ok and a.protocol.router._heard_lately(real)
        ok, _ = await b.protocol.call_ping(Node(a.node.id, *address_of(a)))  # a request naming b, received by a
        assert ok and a.protocol.last_named(b.node.id) is not None
        assert a.protocol.last_named(claimed.id) is None
    finally:
        stop_all([a, b])


async def test_a_far_id_claimed_at_an_honest_endpoint_does_not_push_out_its_real_id(tmp_path):
    """Of two IDs named for one endpoint, the closer to the key stands while the endpoint is unasked; one endpoint, one ID."""
    from aether.node.lookup import Lookup

    asker = await start_node(tmp_path / "asker", CONFIG)
    try:
        key = bytes(20)
        liar = Node(b"\x00" * 19 + b"\x10", "127.0.0.9", 4000)
        lookup = Lookup(asker.protocol, key, [liar], k=4, alpha=1, want_value=True)
        path = lookup.paths[0]
        endpoint = ("127.0.0.7", 4000)
        far = Node(b"\xfe" + b"\x00" * 19, *endpoint)  # a liar's reply names the holder's endpoint, far from the key
        lookup._add(far, 2, path)
        holder = Node(b"\x00" * 19 + b"\x01", *endpoint)  # an honest reply names its real ID, next to the key
        lookup._add(holder, 3, path)
        assert holder.id in lookup.entries and far.id not in lookup.entries
        assert far.id not in path.known and lookup.result.same_address == 1
        lookup._add(far, 2, path)  # claimed again: the closer ID keeps the endpoint
        assert far.id not in lookup.entries and lookup.result.same_address == 2
        assert [e.node.id for e in lookup._live(path)] == [holder.id, liar.id]
    finally:
        stop_all([asker])

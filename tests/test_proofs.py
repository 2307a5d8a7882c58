"""Node-ID proofs: values go only to, and are only taken from, contacts whose ID derives from their key."""

from __future__ import annotations

import asyncio
import os

import asyncio_dgram
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.node import wire
from aether.node.proofs import UNPROVEN
from aether.node.server import AetherNode
from aether.node.values import block_key
from aether.simulations.network import address_of, local_network, start_node
from aether.storage.store import Store

from .conftest import QUIET


async def start_impostor(home, node_id: bytes) -> AetherNode:
    """A node with a real key that claims ``node_id``, which its key does not derive from."""
    home.mkdir(parents=True)
    node = AetherNode(Identity.generate(), Store(home / "node.db"), QUIET)
    node.node = Node(node_id)
    await node.listen(0, "127.0.0.1")
    node.protocol.proofs.sender_proven = lambda *args: True  # it takes whatever it is sent
    return node


def contact(node: AetherNode) -> Node:
    return Node(node.node.id, *address_of(node))


async def test_a_publish_skips_a_contact_whose_id_is_not_its_keys(tmp_path):
    data = os.urandom(3000)
    key = block_key(data)
    async with local_network(tmp_path / "net", 8, QUIET, seed=4) as nodes:
        beside = key[:-1] + bytes([key[-1] ^ 1])  # as close to the key as an ID can be
        impostor = await start_impostor(tmp_path / "impostor", beside)
        try:
            await impostor.bootstrap([address_of(nodes[0])])
            assert any(n.id == beside for n in nodes[1].protocol.contacts()), "it is a contact, and may route"
            report = await nodes[1].put_block(data)
            assert report.refused[UNPROVEN] == 1
            assert report.stored == len(nodes) - 1
            assert not impostor.store.contains(key)
            assert nodes[1].protocol.stats["proofs_failed"] == 1
        finally:
            impostor.stop()
            impostor.store.close()


async def test_a_store_from_a_contact_whose_id_is_not_its_keys_is_refused(tmp_path):
    honest = await start_node(tmp_path / "honest", QUIET)
    impostor = await start_impostor(tmp_path / "impostor", os.urandom(20))
    peer = await start_node(tmp_path / "peer", QUIET)
    try:
        data = os.urandom(1000)
        # The impostor proves the honest node and signs its challenge with its own key,
        # which does not derive the ID it claims.
        ok, reply = await impostor.protocol.call_store(contact(honest), block_key(data), data)
        assert ok and reply["error"] == UNPROVEN
        assert not honest.store.contains(block_key(data))
        assert honest.protocol.stats["store_refused_unproven"] == 1
        # A node with a sound ID is believed.
        ok, reply = await peer.protocol.call_store(contact(honest), block_key(data), data)
        assert ok and reply.get("stored") and honest.store.contains(block_key(data))
    finally:
        for node in (honest, impostor, peer):
            node.stop()
            node.store.close()


async def test_a_store_without_a_proof_is_refused(tmp_path):
    """As a stock node sends it: three arguments, no proof."""
    honest = await start_node(tmp_path / "honest", QUIET)
    client = await asyncio_dgram.connect(address_of(honest))
    try:
        data = os.urandom(1000)
        msg_id = os.urandom(wire.MSG_ID_BYTES)
        await client.send(wire.encode_request(msg_id, "store", [os.urandom(20), block_key(data), data]))
        reply, _ = await asyncio.wait_for(client.recv(), 10)
        assert wire.decode(reply).body["error"] == UNPROVEN
        assert not honest.store.contains(block_key(data))
    finally:
        client.close()
        honest.stop()
        honest.store.close()


async def test_proofs_are_exchanged_once_per_contact_and_concurrently(tmp_path):
    async with local_network(tmp_path / "net", 6, QUIET, seed=9) as nodes:
        storer, others = nodes[0], nodes[1:]
        before = storer.protocol.stats["proofs_ok"]
        blocks = [os.urandom(500) for _ in range(5)]
        await asyncio.gather(*(storer.protocol.call_store(contact(n), block_key(b), b) for n in others for b in blocks))
        assert storer.protocol.stats["proofs_ok"] - before <= len(others)
        assert all(n.store.contains(block_key(b)) for n in others for b in blocks)
        assert sum(n.protocol.stats["rpc_identify"] for n in others) <= len(others) + before


async def test_a_restarted_node_still_accepts_the_proof_its_peers_hold(tmp_path):
    storer = await start_node(tmp_path / "storer", QUIET)
    holder = await start_node(tmp_path / "holder", QUIET)
    try:
        first, second = os.urandom(500), os.urandom(500)
        ok, reply = await storer.protocol.call_store(contact(holder), block_key(first), first)
        assert ok and reply.get("stored")
        port = holder.address[1]
        holder.stop()
        holder.store.close()
        await asyncio.sleep(0)  # the socket closes on the loop's next turn
        holder = await start_node(tmp_path / "holder", QUIET, port=port)
        ok, reply = await storer.protocol.call_store(contact(holder), block_key(second), second)
        assert ok and reply.get("stored"), reply
        assert storer.protocol.stats["proofs_ok"] == 1, "the proof held from before the restart was used"
    finally:
        for node in (storer, holder):
            node.stop()
            node.store.close()

"""A stock ``kademlia.network.Server`` in an aether network: it routes for us and we for it."""

from __future__ import annotations

import pytest
from kademlia.network import Server

from aether.crypto.records import create_record
from aether.node.values import block_key
from aether.simulations.network import address_of, join_all, start_node, stop_all

from .conftest import QUIET


async def start_stock() -> Server:
    server = Server(ksize=20, alpha=3)
    await server.listen(0, "127.0.0.1")
    return server


@pytest.fixture
async def mixed(tmp_path):
    """A stock node S, ten of ours that joined only through S, and a second stock node."""
    stock = await start_stock()
    ours = [await start_node(tmp_path / f"n{i}", QUIET) for i in range(10)]
    stock2 = await start_stock()
    try:
        yield stock, ours, stock2
    finally:
        stop_all(ours)
        stock.stop()
        stock2.stop()


async def test_our_nodes_bootstrap_through_a_stock_node(mixed):
    stock, ours, _ = mixed
    for node in ours:
        await node.bootstrap([address_of(stock)])
    # Each learned about other aether nodes from the stock node's FIND_NODE replies.
    for node in ours:
        ids = {c.id for c in node.protocol.contacts()}
        assert stock.node.id in ids
        assert len(ids) >= 3
    assert len(stock.protocol.router.find_neighbors(stock.node, k=50)) == len(ours)


async def test_a_stock_node_bootstraps_through_ours(mixed):
    _, ours, stock2 = mixed
    await join_all(ours)
    found = await stock2.bootstrap([address_of(ours[0])])
    ours_ids = {n.node.id for n in ours}
    assert {n.id for n in found} <= ours_ids
    assert len(found) == len(ours)
    # and our nodes now route to it
    assert any(stock2.node.id in {c.id for c in n.protocol.contacts()} for n in ours)


async def test_lookups_succeed_across_stock_nodes(mixed):
    stock, ours, stock2 = mixed
    for node in ours:
        await node.bootstrap([address_of(stock)])
    await stock2.bootstrap([address_of(ours[0])])

    data = b"held only by a stock node"
    key = block_key(data)
    stock.storage[key] = data  # the stock node is the only holder
    assert not any(n.store.contains(key) for n in ours)
    assert await ours[4].get_block(key) == data

    # Our publish routes through the stock nodes but stores only on nodes that prove
    # their ID (node/proofs.py), which a stock node cannot; fetching still works.
    report = await ours[1].put_block(b"published by aether")
    assert report.stored == len(ours) - 1 and report.refused["unproven"] == 2
    assert stock.storage.get(report.key) is None
    assert await ours[7].get_block(report.key) == b"published by aether"

    record = create_record(ours[2].identity, "note", b"through stock", 1, b"hello", 600)
    await ours[2].put_record(record)
    assert stock2.storage.get(record.key) is None
    assert await ours[8].get_record(record.key) == record

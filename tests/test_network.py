"""A 50-node network on 127.0.0.1: any node stores, any other fetches."""

from __future__ import annotations

import asyncio
import random

import pytest
import pytest_asyncio

from aether.crypto.records import create_record
from aether.node.values import block_key
from aether.simulations.network import address_of, local_network

from .conftest import QUIET

SIZE = 50
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("net"), SIZE, QUIET, seed=7) as nodes:
        yield nodes


def holders(network, key):
    return [n for n in network if n.store.contains(key)]


async def test_every_node_joined_with_a_useful_routing_table(network):
    sizes = [len(n.protocol.contacts()) for n in network]
    assert min(sizes) >= QUIET.ksize, sizes


async def test_any_node_stores_a_block_and_any_other_fetches_it(network):
    rng = random.Random(1)
    for i in range(15):
        publisher = rng.choice(network)
        data = f"block {i} ".encode() * rng.randint(1, 200)
        report = await publisher.put_block(data)
        assert report.key == block_key(data)
        assert report.stored == QUIET.ksize, report
        assert len(holders(network, report.key)) >= QUIET.ksize
        for fetcher in rng.sample([n for n in network if n is not publisher], 3):
            assert await fetcher.get_block(report.key) == data


async def test_a_missing_block_is_not_found(network):
    assert await network[3].get_block(block_key(b"never stored")) is None


async def test_any_node_stores_a_record_and_any_other_fetches_it(network):
    rng = random.Random(2)
    for i in range(5):
        author = rng.choice(network)
        record = await author.publish_record("note", f"r{i}".encode(), f"payload {i}".encode())
        assert record.seq == 1
        for fetcher in rng.sample([n for n in network if n is not author], 3):
            got = await fetcher.get_record(record.key)
            assert got == record


async def test_a_newer_sequence_number_wins_everywhere(network):
    author, *others = network
    first = await author.publish_record("note", b"evolving", b"version 1")
    # Every other node fetches (and caches) version 1 first.
    for node in others[:10]:
        assert (await node.get_record(first.key)).payload == b"version 1"
    second = await author.publish_record("note", b"evolving", b"version 2")
    assert second.seq == first.seq + 1
    for node in others:
        got = await node.get_record(first.key)
        assert (got.seq, got.payload) == (second.seq, b"version 2")


async def test_a_record_put_by_another_node_is_stored_as_a_replica(network):
    author, carrier = network[5], network[6]
    record = create_record(author.identity, "note", b"carried", 1, b"x", 3600)
    report = await carrier.put_record(record)
    assert report.stored == QUIET.ksize
    assert carrier.store.get(record.key).role == "replica"
    assert (await network[7].get_record(record.key)) == record


async def test_lookups_take_few_hops(network):
    result = await network[0].lookup(block_key(b"anything"))
    assert len(result.closest) == QUIET.ksize
    assert 1 <= result.hops <= 4


async def test_a_fetching_node_keeps_and_serves_a_cached_copy(network):
    publisher, fetcher, third = network[10], network[11], network[12]
    report = await publisher.put_block(b"worth caching")
    if fetcher.store.contains(report.key):
        fetcher.store.delete(report.key)  # make it a plain reader, not a replica holder
    assert await fetcher.get_block(report.key) == b"worth caching"
    await asyncio.sleep(0)  # the cached copy is written just after the fetch returns
    held = fetcher.store.get(report.key, touch=False)
    assert held.role == "cache" and held.expires is not None
    ok, body = await third.protocol.find_value(address_of(fetcher), third.node.id, report.key)
    assert ok and body == {"value": b"worth caching"}

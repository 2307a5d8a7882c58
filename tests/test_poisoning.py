"""Only verifiable values are stored or returned: wrong keys, forgeries and replays are refused."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import asyncio_dgram
import msgpack
import pytest
from kademlia.network import Server
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import create_record
from aether.node.values import block_key
from aether.simulations.network import address_of, start_node, stop_all

from .conftest import QUIET, wait_for


@pytest.fixture
async def pair(tmp_path):
    """A victim node and an attacker node that speaks to it directly."""
    victim = await start_node(tmp_path / "victim", QUIET)
    attacker = await start_node(tmp_path / "attacker", QUIET)
    await attacker.bootstrap([address_of(victim)])
    try:
        yield victim, attacker, Node(victim.node.id, *address_of(victim))
    finally:
        stop_all([victim, attacker])


async def store(attacker, target, key, value):
    ok, reply = await attacker.protocol.call_store(target, key, value)
    assert ok, "the victim did not answer"
    return reply


async def test_a_block_under_the_wrong_key_is_refused(pair):
    victim, attacker, target = pair
    key = block_key(b"the real content")
    reply = await store(attacker, target, key, b"something else")
    assert reply["error"] == "wrong-key"
    assert not victim.store.contains(key)
    assert victim.local_value(key) is None


async def test_a_forged_record_is_refused(pair):
    victim, attacker, target = pair
    author = Identity.generate()
    genuine = create_record(author, "note", b"n", 1, b"genuine", 600)
    forged = dataclasses.replace(genuine, payload=b"forged!")
    reply = await store(attacker, target, genuine.key, forged.encode())
    assert reply["error"] == "bad-signature"
    # A record signed by the attacker cannot be placed under the author's key either.
    impostor = create_record(attacker.identity, "note", b"n", 5, b"mine", 600)
    reply = await store(attacker, target, genuine.key, impostor.encode())
    assert reply["error"] == "wrong-key"
    assert not victim.store.contains(genuine.key)


async def test_a_replayed_older_record_is_refused(pair):
    victim, attacker, target = pair
    author = Identity.generate()
    old = create_record(author, "note", b"n", 1, b"old", 600)
    new = create_record(author, "note", b"n", 2, b"new", 600)
    assert (await store(attacker, target, new.key, new.encode()))["stored"] is True
    reply = await store(attacker, target, old.key, old.encode())
    assert reply["error"] == "older"
    assert victim.local_value(new.key) == new.encode()


async def test_expired_and_far_future_records_are_refused(pair):
    victim, attacker, target = pair
    author = Identity.generate()
    expired = create_record(author, "note", b"e", 1, b"x", 60, now=time.time() - 3600)
    reply = await store(attacker, target, expired.key, expired.encode())
    assert reply["error"] == "expired"
    future = create_record(author, "note", b"f", 1, b"x", 60, now=time.time() + 90 * 86400)
    reply = await store(attacker, target, future.key, future.encode())
    assert reply["error"] == "future"
    assert not victim.store.contains(expired.key) and not victim.store.contains(future.key)


async def test_oversized_and_mistyped_values_are_refused(pair):
    victim, attacker, target = pair
    assert (await store(attacker, target, b"k" * 20, 12345))["error"] == "malformed"
    assert (await store(attacker, target, b"short", b"v"))["error"] == "malformed"
    assert (await store(attacker, target, b"k" * 20, b""))["error"] == "malformed"
    assert victim.store.count() == 0


async def test_a_fetch_never_returns_poisoned_data(tmp_path):
    """Liars (stock nodes, which store anything) hold bad values; fetches skip them."""
    liars = []
    for _ in range(3):
        liar = Server(ksize=20, alpha=3)
        await liar.listen(0, "127.0.0.1")
        liars.append(liar)
    honest = await start_node(tmp_path / "honest", QUIET)
    reader = await start_node(tmp_path / "reader", QUIET)
    try:
        for node in (honest, reader):
            await node.bootstrap([address_of(liar) for liar in liars])
        author = Identity.generate()
        data = b"the true block"
        key = block_key(data)
        old = create_record(author, "note", b"n", 1, b"old", 600)
        new = create_record(author, "note", b"n", 2, b"new", 600)
        forged = dataclasses.replace(new, seq=3, payload=b"forged")
        liars[0].storage[key] = b"poison"
        liars[1].storage[key] = b"more poison"
        liars[0].storage[new.key] = forged.encode()
        liars[1].storage[new.key] = old.encode()
        liars[2].storage[new.key] = b"garbage"

        assert await reader.get_block(key) is None  # only liars hold it: nothing, rather than poison
        assert await reader.get_record(new.key) == old  # the only valid version on the network

        await honest.put_block(data)
        await honest.put_record(new)
        assert await reader.get_block(key) == data
        got = await reader.get_record(new.key)
        assert (got.seq, got.payload) == (2, b"new")
        # The stale holder is a stock node: it cannot prove its node ID, so it is not
        # sent the newer record (node/proofs.py) and keeps its old one.
        assert await wait_for(lambda: reader.protocol.stats["store_not_sent_unproven"] > 0)
        assert liars[1].storage.get(new.key) == old.encode()
    finally:
        stop_all([honest, reader])
        for liar in liars:
            liar.stop()


async def test_another_host_cannot_take_over_a_known_contact(pair):
    victim, attacker, _ = pair
    real = address_of(attacker)
    impostor = await asyncio_dgram.bind(("127.0.0.2", 0))
    try:
        await impostor.send(b"\x00" + os.urandom(20) + msgpack.packb(["ping", [attacker.node.id]]), address_of(victim))
        await asyncio.wait_for(impostor.recv(), 2)  # the victim answered the ping
    finally:
        impostor.close()
    (contact,) = [c for c in victim.protocol.contacts() if c.id == attacker.node.id]
    assert (contact.ip, contact.port) == real


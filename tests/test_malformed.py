"""Hostile datagrams leave a node serving, with no exception escaping."""

from __future__ import annotations

import asyncio
import os
import random

import asyncio_dgram
import msgpack
import pytest
from kademlia.node import Node

from aether.node import protocol, server, wire
from aether.node.values import MAX_VALUE_BYTES, block_key
from aether.simulations.network import address_of, start_node, stop_all

from .conftest import QUIET
from .test_wire import nest

ID = b"\x11" * 20


def request(name, *args, msg_id=None):
    return b"\x00" + (msg_id or os.urandom(20)) + msgpack.packb([name, list(args)])


HOSTILE = {
    "empty": b"",
    "one byte": b"\x00",
    "header only": b"\x00" + b"\x00" * 20,
    "unknown type": b"\x07" + os.urandom(20) + msgpack.packb(["ping", [ID]]),
    "truncated msgpack": request("find_node", ID, ID)[:-7],
    "not a list": b"\x00" + os.urandom(20) + msgpack.packb({"ping": [ID]}),
    "wrong arity": request("store", ID),
    "too many args": request("ping", ID, ID, ID),
    "unknown rpc": request("shutdown", ID),
    "private method": request("_accept_request", ID),
    "args not a list": b"\x00" + os.urandom(20) + msgpack.packb(["ping", ID]),
    "id not bytes": request("ping", 12345),
    "short id": request("find_node", b"\x01", ID),
    "key an int": request("find_value", ID, 7),
    "store a dict": request("store", ID, ID, {"a": 1}),
    "nested bombs": b"\x00" + os.urandom(20) + b"\x92" + b"\x91" * 3000 + b"\xc0",
    "huge claimed length": b"\x00" + os.urandom(20) + b"\xdb\xff\xff\xff\xff",
    "oversized": request("store", ID, ID, b"x" * 9000),
    "share request junk": request("team_share", ID, os.urandom(200)),
    "share request a map": request("team_share", ID, {"team": ID}),
    "share request arity": request("team_share", ID),
    "reply nobody asked for": b"\x01" + os.urandom(20) + msgpack.packb(True),
    "random": bytes(random.Random(5).randbytes(300)),
}


@pytest.fixture
async def target(tmp_path):
    errors = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    node = await start_node(tmp_path / "target", QUIET)
    honest = await start_node(tmp_path / "honest", QUIET)
    try:
        yield node, honest, errors
    finally:
        stop_all([node, honest])


async def assert_serving(node, honest):
    ok, reply = await honest.protocol.ping(address_of(node), honest.node.id)
    assert ok and reply == node.node.id


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_datagram_is_dropped_and_the_node_keeps_serving(target, name):
    node, honest, errors = target
    client = await asyncio_dgram.connect(address_of(node))
    try:
        await client.send(HOSTILE[name])
        await asyncio.sleep(0.05)
        await assert_serving(node, honest)
    finally:
        client.close()
    assert errors == []
    assert node.store.count() == 0


async def test_a_flood_of_random_datagrams_changes_nothing(target):
    node, honest, errors = target
    rng = random.Random(11)
    client = await asyncio_dgram.connect(address_of(node))
    try:
        for _ in range(2000):
            blob = rng.randbytes(rng.randrange(0, 1500))
            if rng.random() < 0.5:  # a plausible header makes the body reach the decoder
                blob = bytes([rng.randrange(2)]) + rng.randbytes(20) + blob
            await client.send(blob)
        await asyncio.sleep(0.2)
        await assert_serving(node, honest)
    finally:
        client.close()
    assert errors == []
    assert node.protocol.stats["malformed"] > 0


async def test_replies_to_hostile_but_well_formed_requests_are_error_replies(target):
    node, _, errors = target
    client = await asyncio_dgram.connect(address_of(node))
    try:
        msg_id = os.urandom(20)
        await client.send(request("store", ID, b"bad key", b"value", msg_id=msg_id))
        data, _ = await asyncio.wait_for(client.recv(), 2)
        reply = wire.decode(data)
        assert reply.msg_id == msg_id
        # A raw client has not proven a node ID, the first thing a STORE is checked for
        # (node/proofs.py); malformed values from proven peers: tests/test_poisoning.py.
        assert reply.body["error"] == "unproven"
    finally:
        client.close()
    assert errors == []


async def test_a_reply_from_the_wrong_address_is_ignored(target):
    node, honest, _ = target
    # honest pings a silent address; a third party answers with the right message id.
    silent = await asyncio_dgram.bind(("127.0.0.1", 0))
    spoofer = await asyncio_dgram.bind(("127.0.0.1", 0))
    try:
        pending = honest.protocol.ping(silent.sockname, honest.node.id)
        data, _ = await asyncio.wait_for(silent.recv(), 2)
        msg_id = data[1:21]
        await spoofer.send(b"\x01" + msg_id + msgpack.packb(b"\x22" * 20), address_of(honest))
        ok, _ = await pending
        assert not ok
        assert honest.protocol.stats["reply_from_wrong_address"] == 1
    finally:
        silent.close()
        spoofer.close()


async def test_lookups_ignore_malformed_contacts(target, tmp_path):
    node, honest, errors = target
    # A fake peer answering FIND_NODE with junk contacts.
    fake = await asyncio_dgram.bind(("127.0.0.1", 0))

    async def answer():
        data, addr = await fake.recv()
        junk = [[b"\x01" * 20, "not an ip", 1], [b"\x02" * 5, "127.0.0.1", 9], "x", [b"\x03" * 20, "127.0.0.1", 0],
                [b"\x04" * 20, "127.0.0.1", 70000], [b"\x05" * 20, "127.0.0.1", True]]
        await fake.send(b"\x01" + data[1:21] + msgpack.packb(junk), addr)

    try:
        responder = asyncio.ensure_future(answer())
        reply = await honest.protocol.query(Node(b"\x09" * 20, *fake.sockname), b"\x00" * 20, False)
        await responder
        assert reply.ok and reply.contacts == []
    finally:
        fake.close()
    assert errors == []


async def answer_once(hostile, body: bytes) -> None:
    """Read one request on ``hostile`` and answer it with ``body`` as the response."""
    data, addr = await asyncio.wait_for(hostile.recv(), 5)
    await hostile.send(b"\x01" + data[1:21] + body, addr)


async def test_a_store_reply_nested_a_thousand_levels_deep_is_dropped_not_raised(target):
    # Found with the hostile-replies harness of simulations/fuzz.py: str() of the error of
    # a STORE reply {"error": [[[...]]]} 1000 levels deep raised RecursionError in the storer.
    node, _, errors = target
    hostile = await asyncio_dgram.bind(("127.0.0.1", 0))
    try:
        peer = Node(b"\x07" * 20, *hostile.sockname)
        block = b"a block of the storer's"
        answering = asyncio.ensure_future(answer_once(hostile, msgpack.packb({"error": nest(1000)})))
        report = await node.store_on([peer], block_key(block), block)
        await answering
        # The first request a new contact gets is IDENTIFY (node/proofs.py): its nested reply is
        # dropped as malformed, the contact stays unproven, and it is given nothing.
        assert report.stored == 0 and node.protocol.stats["malformed"] == 1
    finally:
        hostile.close()
    assert errors == []


async def test_a_find_node_reply_gives_at_most_k_contacts(target):
    node, _, errors = target
    hostile = await asyncio_dgram.bind(("127.0.0.1", 0))
    many = [[os.urandom(20), "127.0.0.1", 1000 + i] for i in range(200)]
    try:
        answering = asyncio.ensure_future(answer_once(hostile, msgpack.packb(many)))
        reply = await node.protocol.query(Node(b"\x08" * 20, *hostile.sockname), os.urandom(20), False)
        await answering
        assert reply.ok and len(reply.contacts) == node.protocol.router.ksize
    finally:
        hostile.close()
    assert errors == []


async def test_requests_awaiting_replies_are_capped_and_the_next_fails_at_once_unsent(target, monkeypatch):
    node, _, _ = target
    monkeypatch.setattr(protocol, "MAX_OUTSTANDING", 5)
    silent = await asyncio_dgram.bind(("127.0.0.1", 0))
    try:
        waiting = [node.protocol.ping(silent.sockname, node.node.id) for _ in range(5)]
        sent = node.protocol.stats["requests_sent"]
        over = node.protocol.ping(silent.sockname, node.node.id)
        assert over.done() and over.result() == (False, None)
        assert len(node.protocol._outstanding) == 5
        assert node.protocol.stats["requests_over_limit"] == 1
        assert node.protocol.stats["requests_sent"] == sent
        for _ in range(5):
            await asyncio.wait_for(silent.recv(), 5)  # the five went out; the sixth did not
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(silent.recv(), 0.2)
    finally:
        node.protocol.close()  # resolves the five still waiting
        silent.close()
    assert all(w.done() for w in waiting)


async def test_contacts_last_heard_from_are_remembered_up_to_the_limit(target, monkeypatch):
    node, _, _ = target
    monkeypatch.setattr(protocol, "MAX_REMEMBERED_SEEN", 3)
    client = await asyncio_dgram.bind(("127.0.0.1", 0))
    try:
        for i in range(1, 6):  # five peers, one address: each ping is a new contact
            await client.send(request("ping", bytes([i]) * 20), address_of(node))
            await asyncio.wait_for(client.recv(), 5)
    finally:
        client.close()
    assert list(node.protocol._last_seen) == [bytes([i]) * 20 for i in (3, 4, 5)]


async def test_timed_out_requests_are_remembered_up_to_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "MAX_REMEMBERED_TIMEOUTS", 2)
    node = await start_node(tmp_path / "asker", QUIET.replace(rpc_timeout_min=0.05, rpc_timeout_initial=0.05,
                                                              rpc_timeout_max=0.05))
    silent = await asyncio_dgram.bind(("127.0.0.1", 0))
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(node.protocol.ping(silent.sockname, node.node.id) for _ in range(3))), 10)
        assert results == [(False, None)] * 3
        assert len(node.protocol._timed_out) == 2 and node.protocol.stats["timeouts"] == 3
    finally:
        silent.close()
        stop_all([node])


async def test_store_receipts_are_remembered_for_at_most_max_offers_peers(target, monkeypatch):
    node, _, _ = target
    monkeypatch.setattr(server, "MAX_OFFERS", 3)
    peers = [Node(bytes([i]) * 20, "127.0.0.1", 1000 + i) for i in range(1, 6)]
    for peer in peers:
        assert node.refusal(peer, {"stored": True, "spare": 10, "uptime": 10}) is None
    assert list(node._offers) == [p.id for p in peers[-3:]]


async def test_a_store_of_a_value_over_max_value_bytes_is_refused_though_it_fits_a_datagram(target):
    node, honest, errors = target
    receiver = Node(node.node.id, *address_of(node))
    for size, reply in ((MAX_VALUE_BYTES, {"stored": True}), (MAX_VALUE_BYTES + 1, {"error": "too-large"})):
        value = os.urandom(size)
        ok, body = await honest.protocol.call_store(receiver, block_key(value), value)  # with its proof of ID
        assert ok and {k: body.get(k) for k in reply} == reply
    assert node.store.count() == 1 and errors == []

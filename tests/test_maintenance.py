"""Churn tolerance and the periodic work that keeps values where they belong."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time

import pytest
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import create_record
from aether.node.server import AetherNode, _Closer, _hand_off_ranges, _may_take_over
from aether.node.values import block_key
from aether.storage.store import BLOCK
from aether.simulations.network import address_of, join_all, local_network, start_node, stop_all

from .conftest import QUIET, wait_for


async def pair(tmp_path) -> tuple[AetherNode, AetherNode, Node]:
    """A and B, A knowing B; short timeouts, and a contact dropped after three failures in a row."""
    config = QUIET.replace(stale_after_failures=3, rpc_timeout_initial=0.2, rpc_timeout_max=0.4)
    a = await start_node(tmp_path / "a", config)
    b = await start_node(tmp_path / "b", config)
    await a.bootstrap([address_of(b)])
    return a, b, Node(b.node.id, *address_of(b))


async def test_a_contact_survives_a_lost_reply_and_is_dropped_after_repeated_failures(tmp_path):
    a, b, contact = await pair(tmp_path)
    try:
        b.transport.pause_reading()  # b goes silent (its socket stays bound)
        for attempt in range(1, 3):
            ok, _ = await a.protocol.call_ping(contact)
            assert not ok
            assert b.node.id in {c.id for c in a.protocol.contacts()}, f"dropped after {attempt} failure(s)"
        b.transport.resume_reading()
        ok, _ = await a.protocol.call_ping(contact)
        assert ok  # back, and the failure count starts again
        b.transport.pause_reading()
        for _ in range(3):
            await a.protocol.call_ping(contact)
        assert b.node.id not in {c.id for c in a.protocol.contacts()}
    finally:
        stop_all([a, b])


async def test_a_stall_of_this_process_does_not_time_out_the_requests_in_flight(tmp_path):
    """Timers that fire long after they were due get the peer's time once more: the replies are there."""
    a, b, contact = await pair(tmp_path)
    try:
        pings = [asyncio.ensure_future(a.protocol.call_ping(contact)) for _ in range(6)]
        await asyncio.sleep(0)  # all six are on the wire
        time.sleep(1.0)  # this process stalls (a long disk write, a busy CPU) past every timeout
        results = await asyncio.gather(*pings)
        assert all(ok for ok, _ in results)
        assert a.protocol.stats["timeouts_graced"] == 6 and a.protocol.failures(b.node.id) == 0
    finally:
        stop_all([a, b])


async def test_requests_that_time_out_together_count_as_one_failure(tmp_path):
    """Six requests out at once to a silent peer are one silence, not three strikes and out."""
    a, b, contact = await pair(tmp_path)
    try:
        b.transport.pause_reading()
        results = await asyncio.gather(*(a.protocol.call_ping(contact) for _ in range(6)))
        assert not any(ok for ok, _ in results)
        assert b.node.id in {c.id for c in a.protocol.contacts()}
        assert a.protocol.failures(b.node.id) == 1
        b.transport.resume_reading()
        ok, _ = await a.protocol.call_ping(contact)
        assert ok and a.protocol.failures(b.node.id) == 0
    finally:
        stop_all([a, b])


async def test_rpc_timeouts_follow_measured_round_trips(tmp_path):
    a = await start_node(tmp_path / "a", QUIET)
    b = await start_node(tmp_path / "b", QUIET)
    try:
        peer = address_of(b)
        assert a.protocol.rtt.timeout_for(peer) == QUIET.rpc_timeout_initial
        for _ in range(20):
            ok, _ = await a.protocol.ping(peer, a.node.id)
            assert ok
        # Loopback round trips are short: the timeout has come down from the initial
        # 1 s towards the floor, far from the stock 5 s.
        learned = a.protocol.rtt.timeout_for(peer)
        assert QUIET.rpc_timeout_min <= learned < QUIET.rpc_timeout_initial
        b.transport.pause_reading()
        ok, _ = await a.protocol.ping(peer, a.node.id)
        assert not ok
        assert a.protocol.rtt.timeout_for(peer) == min(2 * learned, QUIET.rpc_timeout_max)  # backed off
    finally:
        stop_all([a, b])


async def test_a_new_node_closest_to_a_key_is_handed_the_value(tmp_path):
    config = QUIET.replace(ksize=3)
    async with local_network(tmp_path / "net", 12, config, seed=3) as network:
        newcomer_identity = Identity.generate()
        newcomer_long = int.from_bytes(newcomer_identity.node_id, "big")
        others = [n.node.long_id for n in network]
        # A block whose key is closer to the newcomer than to any node already in the network.
        while True:
            data = os.urandom(32)
            distance = int.from_bytes(block_key(data), "big") ^ newcomer_long
            if all(distance < (int.from_bytes(block_key(data), "big") ^ o) for o in others):
                break
        report = await network[0].put_block(data)
        assert report.stored == 3
        (tmp_path / "newcomer").mkdir()
        newcomer_identity.save(tmp_path / "newcomer")
        newcomer = await start_node(tmp_path / "newcomer", config)
        try:
            await newcomer.bootstrap([address_of(network[5])])
            assert await wait_for(lambda: newcomer.store.contains(report.key))
            assert newcomer.store.get(report.key).value == data
        finally:
            stop_all([newcomer])


async def test_holders_restore_replicas_after_holders_leave(tmp_path):
    config = QUIET.replace(ksize=4, replicate_interval=1.0, rpc_timeout_initial=0.5, rpc_timeout_max=0.5, stale_after_failures=1)
    nodes = [await start_node(tmp_path / f"n{i}", config) for i in range(14)]
    try:
        await join_all(nodes)
        publisher = nodes[0]
        report = await publisher.put_block(b"keep me available")
        key = report.key
        replica_holders = [n for n in nodes[1:] if n.store.contains(key)]
        assert len(replica_holders) == 4
        # Three of the four replica holders vanish abruptly.
        for gone in replica_holders[:3]:
            gone.stop()
        alive = [n for n in nodes if n not in replica_holders[:3]]
        # The publisher is stopped too: only the remaining replica holder can restore the count.
        publisher.stop()
        alive.remove(publisher)

        def replicas():
            return sum(n.store.contains(key) for n in alive)

        assert await wait_for(lambda: replicas() >= 4, timeout=20)
        assert all(n.store.meta_get("last_replicate") is not None for n in alive), "status reads when this ran"
        reader = [n for n in alive if not n.store.contains(key)][0]
        assert await reader.get_block(key) == b"keep me available"
    finally:
        stop_all(nodes)


async def test_expired_records_are_dropped_and_never_served(tmp_path):
    """Others' records: a node's own ones are re-signed instead (tests/test_faults.py)."""
    config = QUIET.replace(expire_interval=0.5)
    async with local_network(tmp_path / "net", 6, config) as network:
        record = create_record(Identity.generate(), "note", b"short-lived", 1, b"x", 2)
        report = await network[0].put_record(record)
        assert report.stored == 5
        assert await network[3].get_record(record.key) == record
        await asyncio.sleep(2.2)
        # Expired: no node serves it any more, even before the clean-up job runs.
        assert await network[4].get_record(record.key) is None
        assert await wait_for(lambda: not any(n.store.contains(record.key) for n in network), timeout=5)


async def test_publishers_republish_their_own_values(tmp_path):
    config = QUIET.replace(ksize=3, republish_interval=1.0)
    async with local_network(tmp_path / "net", 8, config) as network:
        publisher = network[0]
        report = await publisher.put_block(b"republished")
        # Hand-offs to contacts met while joining must not be what restores the replicas.
        assert await wait_for(lambda: not any(n.busy for n in network), timeout=10)
        holders = [n for n in network[1:] if n.store.contains(report.key)]
        for holder in holders:
            holder.store.delete(report.key)  # as if the replicas were evicted
        assert await wait_for(lambda: sum(n.store.contains(report.key) for n in network[1:]) >= 3, timeout=10)
        assert await wait_for(lambda: publisher.store.meta_get("last_republish") is not None, timeout=10)


async def test_a_late_reply_teaches_the_timeout(tmp_path):
    config = QUIET.replace(rpc_timeout_initial=0.2, rpc_timeout_min=0.2, rpc_timeout_max=5.0)
    a = await start_node(tmp_path / "a", config)
    b = await start_node(tmp_path / "b", config)
    try:
        peer = address_of(b)
        b.transport.pause_reading()  # requests wait in b's socket buffer
        pending = a.protocol.ping(peer, a.node.id)
        ok, _ = await pending
        assert not ok
        await asyncio.sleep(0.6)
        b.transport.resume_reading()  # b answers, 0.6 s late
        assert await wait_for(lambda: a.protocol.stats["late_reply"] == 1, timeout=5)
        # The estimator learned a round trip of about 0.8 s, well above its old floor.
        assert a.protocol.rtt.timeout_for(peer) > 0.8
    finally:
        stop_all([a, b])


async def test_each_periodic_job_runs_on_the_schedule_its_setting_gives(tmp_path, monkeypatch):
    jobs = {"refresh_buckets": "refresh_interval", "republish_own": "republish_interval",
            "replicate_held": "replicate_interval", "drop_expired": "expire_interval"}
    runs: dict[tuple[int, str], int] = {}

    def counted(name: str):
        original = getattr(AetherNode, name)

        async def job(self: AetherNode) -> None:
            runs[id(self), name] = runs.get((id(self), name), 0) + 1
            await original(self)

        job.__name__ = name
        return job

    for name in jobs:
        monkeypatch.setattr(AetherNode, name, counted(name))
    busy = await start_node(tmp_path / "busy", QUIET.replace(**{setting: 0.1 for setting in jobs.values()}))
    quiet = await start_node(tmp_path / "quiet", QUIET)
    try:
        assert await wait_for(lambda: all(runs.get((id(busy), name), 0) >= 2 for name in jobs), timeout=10), runs
        assert not any(node == id(quiet) for node, _ in runs), "hour-long intervals ran within seconds"
    finally:
        stop_all([busy, quiet])


async def test_a_hand_off_does_not_overrun_a_newcomers_receive_buffer(tmp_path):
    """A holder hands a newcomer many large values: none is lost to a full socket buffer.

    The newcomer's receive buffer is made small (a phone's, or a busy loop's); a
    holder that fired all its STOREs to one peer at once would have the kernel
    drop most of them, and a dropped hand-off is not sent again.
    """
    config = QUIET.replace(ksize=4)
    holder = await start_node(tmp_path / "holder", config)
    newcomer = await start_node(tmp_path / "newcomer", config)
    try:
        values = [os.urandom(6000) for _ in range(80)]
        for data in values:
            holder.store.put(block_key(data), data, kind=BLOCK, role="replica")
        sock = newcomer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        await newcomer.bootstrap([address_of(holder)])  # the holder meets it: the only other node, so it is among the k
        held = lambda: sum(newcomer.store.contains(block_key(d)) for d in values)  # noqa: E731
        await wait_for(lambda: held() == len(values), timeout=30)
        assert held() == len(values), (held(), holder.protocol.stats)
    finally:
        stop_all([holder, newcomer])


def test_the_open_key_ranges_are_exactly_the_keys_no_contact_shares_a_longer_prefix_with():
    """The hand-off reads only these ranges: a key left out would never be handed over by this node."""
    rng = random.Random(11)
    inside_count = 0
    for _ in range(1500):
        own = rng.getrandbits(160)
        contacts = [own ^ rng.getrandbits(rng.randint(1, 160)) for _ in range(rng.randint(0, 40))]
        ranges = [(int.from_bytes(lo, "big"), int.from_bytes(hi, "big")) for lo, hi in _Closer(contacts, own).open_ranges()]
        assert len(ranges) <= 160
        for _ in range(10):
            key = own ^ rng.getrandbits(rng.randint(0, 160))
            distance = own ^ key
            # A contact agreeing with the key on every bit from the first where we differ is closer than us.
            closer = distance > 0 and any(c ^ key < 1 << (distance.bit_length() - 1) for c in contacts)
            inside = any(lo <= key <= hi for lo, hi in ranges)
            assert inside == (not closer)
            inside_count += inside
    assert 0 < inside_count < 15000


def test_contacts_surely_closer_than_a_newcomer_are_never_overcounted():
    """A newcomer is left out of a place's hand-off when k contacts are surely closer: the count must not exceed the truth."""
    rng = random.Random(12)
    for _ in range(3000):
        own = rng.getrandbits(160)
        contacts = [own ^ rng.getrandbits(rng.randint(1, 160)) for _ in range(rng.randint(0, 60))]
        place = own ^ rng.getrandbits(rng.randint(0, 160))
        newcomer = place ^ rng.getrandbits(rng.randint(0, 160))
        counted = _Closer(contacts, own).surely_closer(place, newcomer)
        distance = place ^ newcomer
        assert counted <= sum(c ^ place < distance for c in contacts)
        assert counted == (sum(c ^ place < 1 << (distance.bit_length() - 1) for c in contacts) if distance else 0)


def test_a_hand_off_reads_every_range_where_a_newcomer_can_be_among_the_k_closest():
    """The ranges left unread must hold no key that the exact test would hand to a newcomer."""
    rng = random.Random(13)
    ksize, skipped, handed = 4, 0, 0
    for case in range(1500):
        own = rng.getrandbits(160)
        contacts = _table_like(rng, own) if case % 2 else [own ^ rng.getrandbits(rng.randint(1, 160)) for _ in range(rng.randint(0, 50))]
        # Newcomers at random in the ID space (most are far from us), or anywhere near us.
        newcomers = [rng.getrandbits(160) if case % 2 else own ^ rng.getrandbits(rng.randint(1, 160))
                     for _ in range(rng.randint(1, 4))]
        _, reached = _hand_off_ranges(own, contacts, newcomers, ksize)
        fresh = _Closer(contacts, own).open_ranges()
        assert set(reached) <= set(fresh)
        skipped += not reached
        reached_ints = [(int.from_bytes(lo, "big"), int.from_bytes(hi, "big")) for lo, hi in reached]
        for _ in range(20):
            near = rng.choice(newcomers + [own])
            key = near ^ rng.getrandbits(rng.randint(0, 160))
            if not any(int.from_bytes(lo, "big") <= key <= int.from_bytes(hi, "big") for lo, hi in fresh):
                continue  # a closer contact hands this key over, not us
            kth = sorted(c ^ key for c in contacts)[ksize - 1] if len(contacts) >= ksize else None
            if any(kth is None or n ^ key < kth for n in newcomers):
                handed += 1
                assert any(lo <= key <= hi for lo, hi in reached_ints), (own, contacts, newcomers, key)
    assert skipped > 300 and handed > 300, (skipped, handed)


def _table_like(rng: random.Random, own: int) -> list[int]:
    """Contacts as a routing table in a network holds them: a few for each of the highest bits where IDs first differ from ours."""
    return [own ^ (1 << bit) ^ rng.getrandbits(bit) for bit in range(159, 159 - rng.randint(1, 14), -1)
            for _ in range(rng.randint(1, 6))]


def test_the_quick_test_before_a_hand_off_agrees_with_the_exact_ranges():
    """It may only skip a pass that would read nothing: then it answers as the range tests do."""
    rng = random.Random(14)
    outcomes = set()
    for case in range(3000):
        own = rng.getrandbits(160)
        contacts = _table_like(rng, own) if case % 2 else [own ^ rng.getrandbits(rng.randint(1, 160)) for _ in range(rng.randint(0, 60))]
        newcomers = [rng.getrandbits(160) if case % 2 else own ^ rng.getrandbits(rng.randint(1, 160))
                     for _ in range(rng.randint(1, 3))]
        ksize = rng.randint(1, 8)
        closer = _Closer(contacts, own)
        exact = any(closer.reaches(int.from_bytes(lo, "big"), n, ksize) for lo, _ in closer.open_ranges() for n in newcomers)
        assert _may_take_over(own, contacts, newcomers, ksize) == exact, (own, contacts, newcomers, ksize)
        outcomes.add(exact)
    assert outcomes == {True, False}


async def test_contacts_are_rewritten_only_when_the_table_holds_other_contacts(tmp_path):
    """Contacts moving within their buckets (each one heard from does) change nothing on disk; a new one does."""
    async with local_network(tmp_path / "net", 5, QUIET, seed=4) as nodes:
        node = nodes[0]
        node.save_contacts()
        written = {row[0]: row[3] for row in node.store._db().execute("SELECT node_id, host, port, last_seen FROM contacts")}
        assert len(written) == len(node.protocol.contacts()) >= 2
        first = node.protocol.contacts()[0]
        ok, _ = await node.protocol.call_ping(first)  # heard from: moves to its bucket's tail
        assert ok
        time.sleep(0.01)
        node.save_contacts()
        again = {row[0]: row[3] for row in node.store._db().execute("SELECT node_id, host, port, last_seen FROM contacts")}
        assert again == written  # not rewritten: same last_seen on every row
        newcomer = await start_node(tmp_path / "newcomer", QUIET)
        try:
            await newcomer.bootstrap([address_of(node)])
            assert newcomer.node.id in {c.id for c in node.protocol.contacts()}
            node.save_contacts()
            assert newcomer.node.id in {bytes(r[0]) for r in node.store._db().execute("SELECT node_id FROM contacts")}
        finally:
            stop_all([newcomer])

"""Shared keys: topic records, entry bundles, the entries table, entry payloads, and paged FIND_VALUE.

Real keys and signatures, real SQLite files in tmp_path, real UDP nodes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import asyncio_dgram
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from kademlia.network import Server
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import (
    RecordError,
    create_record,
    parse_and_verify,
    record_key,
    topic_key,
    topic_of,
    verify_record,
)
from aether.node import wire
from aether.node.chunks import split
from aether.node.entries import (
    HEAD_KIND,
    INDEX_KIND,
    MANIFEST_KIND,
    MAX_HISTORY,
    MAX_TERMS,
    STOPWORDS,
    WORD,
    EntryError,
    ManifestEntry,
    Summary,
    decode_summary,
    encode_summary,
    head_name,
    index_terms,
    manifest_name,
    manifest_of,
    pattern_key,
    summary_of,
    words,
)
from aether.node.pattern import PATTERN_ID, parse_pattern
from aether.node.protocol import RPC_ARITY
from aether.node.values import (
    BUNDLE_MAGIC,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_ENTRIES,
    Block,
    Entries,
    Entry,
    Record,
    ValueRejected,
    block_key,
    bundle_fit,
    check_found,
    check_value,
    encode_bundle,
)
from aether.simulations.network import address_of, join_all, start_node, stop_all
from aether.storage.store import (
    BLOCK,
    MIGRATIONS,
    RECORD,
    SCHEMA_V1,
    SCHEMA_VERSION,
    PutResult,
    Store,
    entry_charge,
    value_charge,
)

from .conftest import QUIET
from .test_store import assert_accounting as assert_totals

ALICE = Identity.generate()
BOB = Identity.generate()
CAROL = Identity.generate()
TOPIC = b"term:kademlia"
TOPIC_KEY = topic_key(TOPIC)


def entry(identity: Identity = ALICE, item: bytes = b"Pattern-DHT-001", *, topic: bytes = TOPIC, seq: int = 1,
          payload: bytes = b"summary", ttl: int = 3600, kind: str = INDEX_KIND, now: float | None = None):
    """A signed record named ``topic#item``."""
    return create_record(identity, kind, topic + b"#" + item, seq, payload, ttl, now=now)


def rejected(key: bytes, value: object) -> ValueRejected:
    with pytest.raises(ValueRejected) as info:
        check_found(key, value)
    return info.value


# ================================================================== records under topic keys


def test_a_topic_record_verifies_under_its_topic_key_and_its_own_key_only():
    record = entry()
    assert topic_of(record.name) == TOPIC
    assert record.topic_key == TOPIC_KEY
    assert len(TOPIC_KEY) == 20 and TOPIC_KEY != record.key
    verify_record(record, key=TOPIC_KEY)
    verify_record(record, key=record.key)
    assert parse_and_verify(record.encode(), key=TOPIC_KEY) == record
    for other in (topic_key(b"term:mesh"), topic_key(b"term:kademlia#"), topic_key(b""), BOB.node_id):
        with pytest.raises(RecordError) as info:
            verify_record(record, key=other)
        assert info.value.reason == "wrong-key"
    # Another author shares the topic key but not Alice's own key.
    bobs = entry(BOB)
    verify_record(bobs, key=TOPIC_KEY)
    with pytest.raises(RecordError) as info:
        verify_record(bobs, key=record.key)
    assert info.value.reason == "wrong-key"


def test_a_record_without_a_separator_has_no_topic_key():
    record = create_record(ALICE, "note", b"term:kademlia", 1, b"x", 600)
    assert topic_of(record.name) is None
    assert record.topic_key is None
    verify_record(record, key=record.key)
    for key in (topic_key(b"term:kademlia"), topic_key(b""), topic_key(record.name)):
        with pytest.raises(RecordError) as info:
            verify_record(record, key=key)
        assert info.value.reason == "wrong-key"


@pytest.mark.parametrize(
    "name, topic",
    [
        (b"#", b""),
        (b"a#b#c", b"a"),
        (b"a#", b"a"),
        (b"#item", b""),
        (b"term:x#Pattern-X-001", b"term:x"),
        (b"##", b""),
        (b"abc", None),
        (b"", None),
        (b"\x00\xff#\x00", b"\x00\xff"),
    ],
)
def test_topic_of_edge_cases(name, topic):
    assert topic_of(name) == topic


def test_a_record_named_only_a_separator_lives_under_the_empty_topic():
    record = create_record(ALICE, "note", b"#", 1, b"x", 600)
    assert record.topic_key == topic_key(b"")
    verify_record(record, key=topic_key(b""))
    nested = create_record(ALICE, "note", b"a#b#c", 1, b"x", 600)
    assert nested.topic_key == topic_key(b"a") != topic_key(b"a#b")
    with pytest.raises(RecordError):
        verify_record(nested, key=topic_key(b"a#b"))


def test_topic_keys_are_distinct_from_record_keys_of_the_same_bytes():
    assert topic_key(b"x") != topic_key(b"y")
    assert topic_key(b"x") == topic_key(b"x")
    assert topic_key(b"x") != record_key(ALICE.public.signing_public, b"x")


# ================================================================== check_value / check_found


def test_check_value_returns_an_entry_under_the_topic_key_and_a_record_under_its_own():
    record = entry()
    data = record.encode()
    checked = check_value(TOPIC_KEY, data)
    assert type(checked) is Entry and checked.key == TOPIC_KEY and checked.record == record and checked.data == data
    own = check_value(record.key, data)
    assert type(own) is Record and own.key == record.key and own.record == record
    with pytest.raises(ValueRejected) as info:
        check_value(topic_key(b"term:other"), data)
    assert info.value.reason == "wrong-key"


def test_a_bundle_of_valid_entries_is_a_page_of_entries():
    records = [entry(ALICE), entry(BOB), entry(CAROL, b"Pattern-DHT-002")]
    bundle = encode_bundle([r.encode() for r in records], 7)
    page = check_found(TOPIC_KEY, bundle)
    assert isinstance(page, Entries)
    assert page.key == TOPIC_KEY and page.next_offset == 7
    assert [e.record for e in page.entries] == records
    assert all(type(e) is Entry and e.key == TOPIC_KEY for e in page.entries)
    last = check_found(TOPIC_KEY, encode_bundle([records[0].encode()], None))
    assert isinstance(last, Entries) and last.next_offset is None and len(last.entries) == 1


def test_one_forged_entry_condemns_the_whole_bundle():
    good = entry(ALICE)
    forged = dataclasses.replace(entry(BOB), payload=b"altered summary")
    assert rejected(TOPIC_KEY, encode_bundle([good.encode(), forged.encode()], None)).reason == "bad-signature"
    # A flipped byte in the signature.
    raw = bytearray(entry(CAROL).encode())
    raw[-1] ^= 0x01
    assert rejected(TOPIC_KEY, encode_bundle([good.encode(), bytes(raw)], None)).reason == "bad-signature"


def test_an_entry_of_another_topic_condemns_the_bundle():
    good = entry(ALICE)
    stray = entry(BOB, topic=b"term:mesh")
    assert rejected(TOPIC_KEY, encode_bundle([good.encode(), stray.encode()], None)).reason == "wrong-key"


def test_a_bundle_may_not_carry_blocks_or_plain_records():
    block = b"a block that hashes to the key"
    key = block_key(block)
    assert rejected(key, encode_bundle([block], None)).reason == "wrong-key"
    # Some other block under a topic key.
    assert rejected(TOPIC_KEY, encode_bundle([entry().encode(), b"just bytes"], None)).reason == "wrong-key"
    # A record under its own key is a record, not an entry: not in a bundle.
    record = entry()
    assert rejected(record.key, encode_bundle([record.encode()], None)).reason == "wrong-key"


def test_expired_entries_inside_a_bundle_are_skipped_not_fatal():
    fresh = entry(ALICE)
    stale = entry(BOB, ttl=60, now=time.time() - 3600)
    page = check_found(TOPIC_KEY, encode_bundle([stale.encode(), fresh.encode(), stale.encode()], 3))
    assert isinstance(page, Entries)
    assert [e.record for e in page.entries] == [fresh]
    assert page.next_offset == 3
    only_stale = check_found(TOPIC_KEY, encode_bundle([stale.encode()], None))
    assert isinstance(only_stale, Entries) and only_stale.entries == ()


GOOD = entry(ALICE, b"fixture").encode()


@pytest.mark.parametrize(
    "bundle",
    [
        msgpack.packb(["aether-entries/2", [GOOD], None], use_bin_type=True),
        msgpack.packb(["aether-entries/1x", [GOOD], None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD]], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], None, None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, GOOD, None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, None, None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD, 5], None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD, "text"], None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD, [GOOD]], None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD, b""], None], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], 0], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], -1], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], -(2**63)], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], "1"], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], 1.0], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], True], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], b"\x01"], use_bin_type=True),
        msgpack.packb([BUNDLE_MAGIC, [GOOD], [1]], use_bin_type=True),
        encode_bundle([GOOD], None)[:-5],
        encode_bundle([GOOD], None) + b"\xc0",
        b"\x93\xb0aether-entries/1",
    ],
)
def test_malformed_bundles_are_rejected(bundle):
    assert check_found(TOPIC_KEY, encode_bundle([GOOD], None)).entries  # the control passes
    rejected(TOPIC_KEY, bundle)


def test_a_bundle_over_the_size_limit_is_rejected():
    big = [entry(who, payload=os.urandom(4000)).encode() for who in (ALICE, BOB)]
    bundle = encode_bundle(big, None)
    assert len(bundle) > MAX_BUNDLE_BYTES
    assert rejected(TOPIC_KEY, bundle).reason == "too-large"
    assert isinstance(check_found(TOPIC_KEY, encode_bundle(big[:1], None)), Entries)


def test_a_bundle_listing_more_than_max_bundle_entries_items_is_rejected_unread():
    # 257 one-byte items fit the size limit; the item count alone refuses them, before any is checked.
    bundle = encode_bundle([b"x"] * (MAX_BUNDLE_ENTRIES + 1), None)
    assert len(bundle) <= MAX_BUNDLE_BYTES
    refused = rejected(TOPIC_KEY, bundle)
    assert (refused.reason, str(refused)) == ("malformed", "bundle is not valid msgpack")


def test_a_single_entry_returned_as_a_plain_value_is_a_page_of_one():
    record = entry()
    page = check_found(TOPIC_KEY, record.encode())
    assert isinstance(page, Entries)
    assert page.next_offset is None and [e.record for e in page.entries] == [record]
    # Under its own key the same bytes are a record; a block is a block.
    assert isinstance(check_found(record.key, record.encode()), Record)
    assert isinstance(check_found(block_key(b"blob"), b"blob"), Block)


VALID = entry(ALICE, b"fuzz").encode()
EXPIRED = entry(BOB, b"fuzz", ttl=60, now=time.time() - 3600).encode()
FORGED = dataclasses.replace(entry(CAROL, b"fuzz"), payload=b"forged").encode()
ITEMS = st.one_of(
    st.binary(max_size=200), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.text(max_size=8), st.none(),
    st.booleans(), st.sampled_from([VALID, EXPIRED, FORGED]),
)
OFFSETS = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.booleans(), st.floats(),
                    st.binary(max_size=4), st.text(max_size=3))
BUNDLE_LIKE = st.one_of(
    st.binary(max_size=9000),
    st.binary(max_size=600).map(lambda b: b"\x93\xb0" + BUNDLE_MAGIC.encode() + b),
    st.builds(lambda items, offset: msgpack.packb([BUNDLE_MAGIC, items, offset], use_bin_type=True),
              st.lists(ITEMS, max_size=6), OFFSETS),
    st.sampled_from([VALID, EXPIRED, FORGED]),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.one_of(st.binary(min_size=20, max_size=20), st.just(TOPIC_KEY)), value=BUNDLE_LIKE)
def test_check_found_raises_nothing_but_value_rejected(key, value):
    try:
        found = check_found(key, value)
    except ValueRejected as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert isinstance(found, (Block, Record, Entries))
    if isinstance(found, Entries):
        assert found.next_offset is None or (type(found.next_offset) is int and found.next_offset > 0)
        for item in found.entries:
            assert type(item) is Entry and item.key == key
            verify_record(item.record, key=key)


# ================================================================== bundle_fit


@settings(max_examples=200, deadline=None)
@given(sizes=st.one_of(st.lists(st.integers(min_value=120, max_value=7168), min_size=1, max_size=80),
                      st.lists(st.integers(min_value=120, max_value=400), min_size=1, max_size=80)),
       offset=st.integers(min_value=0, max_value=(1 << 20) - 1))
def test_bundle_fit_never_exceeds_the_bundle_limit_and_takes_at_least_one(sizes, offset):
    entries = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    fit = bundle_fit(entries)
    assert 1 <= fit <= len(entries)
    more = fit < len(entries)
    bundle = encode_bundle(entries[:fit], offset + fit if more else None)
    assert len(bundle) <= MAX_BUNDLE_BYTES
    # ... and the FIND_VALUE reply that carries it fits one datagram.
    assert len(wire.encode_response(os.urandom(20), {"value": bundle})) <= wire.MAX_DATAGRAM


def test_bundle_fit_stays_within_the_limit_for_every_uniform_entry_size():
    for size in range(120, 7169):
        entries = [b"e" * size] * 80
        fit = bundle_fit(entries)
        assert fit >= 1
        assert len(encode_bundle(entries[:fit], (1 << 20) - 1)) <= MAX_BUNDLE_BYTES, size


def test_bundle_fit_takes_everything_that_fits_and_one_when_nothing_does():
    assert bundle_fit([b"x" * 200] * 10) == 10
    assert bundle_fit([b"x" * 7168] * 3) == 1
    assert bundle_fit([b"x" * 3000, b"y" * 3000, b"z" * 3000]) == 2
    assert bundle_fit([]) == 0


# ================================================================== Store: the entries table

K1 = (1).to_bytes(20, "big")
K2 = (2).to_bytes(20, "big")
A1, A2, A3, A4 = (bytes([i]) * 32 for i in (0xA1, 0xA2, 0xA3, 0xA4))
T0 = 1000.0


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "node.db") as s:
        yield s


def put(s: Store, author: bytes = A1, name: bytes = b"t#1", value: bytes = b"v1", *, key: bytes = K1, seq: int = 1,
        expires: float = 5000.0, role: str = "replica", pinned: bool = False, limit: int = 64,
        now: float = T0) -> PutResult:
    return s.put_entry(key, author, name, value, seq=seq, expires=expires, role=role, pinned=pinned, limit=limit,
                       now=now)


def assert_accounting(s: Store) -> None:
    """The store's totals match its rows, and each entry is charged what the schema says."""
    assert_totals(s)
    bad = s._conn.execute(
        "SELECT length(key), length(author), length(name), length(value), size FROM entries"
    ).fetchall()
    assert [row for row in bad if entry_charge(*row[:4]) != row[4]] == []


def idents(rows) -> list[tuple[bytes, bytes]]:
    return [(r.author, r.name) for r in rows]


def test_put_entry_seq_rules(store: Store):
    assert put(store, value=b"v1", seq=1) is PutResult.STORED
    assert put(store, value=b"v1", seq=1) is PutResult.UNCHANGED
    assert put(store, value=b"v2-longer", seq=2, expires=6000.0) is PutResult.STORED
    held = store.entry(K1, A1, b"t#1")
    assert held is not None and (held.value, held.seq, held.expires) == (b"v2-longer", 2, 6000.0)
    assert held.size == entry_charge(20, 32, 3, 9)
    assert put(store, value=b"v1", seq=1) is PutResult.REFUSED_OLDER
    assert put(store, value=b"other", seq=2) is PutResult.REFUSED_CONFLICT
    held = store.entry(K1, A1, b"t#1")
    assert (held.value, held.seq) == (b"v2-longer", 2)
    assert len(store.entries(K1, now=T0)) == 1
    assert store.entry(K1, A2, b"t#1") is None
    assert_accounting(store)


def test_put_entry_merges_role_and_pin_upward_only(store: Store):
    assert put(store, role="cache") is PutResult.STORED
    size = store.entry(K1, A1, b"t#1").size
    assert store.used_bytes_by_role() == {"own": 0, "replica": 0, "cache": size}
    assert put(store, role="replica") is PutResult.UNCHANGED
    assert store.entry(K1, A1, b"t#1").role == "replica"
    assert store.used_bytes_by_role() == {"own": 0, "replica": size, "cache": 0}
    assert put(store, role="cache") is PutResult.UNCHANGED
    assert store.entry(K1, A1, b"t#1").role == "replica"
    assert put(store, role="own", pinned=True) is PutResult.UNCHANGED
    held = store.entry(K1, A1, b"t#1")
    assert (held.role, held.pinned) == ("own", True)
    assert put(store, role="cache", pinned=False) is PutResult.UNCHANGED
    held = store.entry(K1, A1, b"t#1")
    assert (held.role, held.pinned) == ("own", True)
    # A newer version keeps the holder's stronger role and pin.
    assert put(store, value=b"v2", seq=2, role="cache") is PutResult.STORED
    held = store.entry(K1, A1, b"t#1")
    assert (held.value, held.role, held.pinned) == (b"v2", "own", True)
    assert store.used_bytes_by_role()["own"] == held.size
    assert_accounting(store)


def test_several_authors_and_names_coexist_under_one_key(store: Store):
    assert put(store, A1, seq=9, value=b"alice") is PutResult.STORED
    assert put(store, A2, seq=1, value=b"bob") is PutResult.STORED  # its own seq, not Alice's
    assert put(store, A3, seq=1, value=b"carol") is PutResult.STORED
    assert put(store, A1, b"t#2", seq=1, value=b"alice-2") is PutResult.STORED
    assert put(store, A1, key=K2, seq=1, value=b"elsewhere") is PutResult.STORED
    assert sorted(idents(store.entries(K1, now=T0))) == [(A1, b"t#1"), (A1, b"t#2"), (A2, b"t#1"), (A3, b"t#1")]
    assert idents(store.entries(K2, now=T0)) == [(A1, b"t#1")]
    assert store.has_entries(K1) and not store.has_entries((3).to_bytes(20, "big"))
    assert_accounting(store)


def test_a_full_key_evicts_the_entry_expiring_first_for_a_later_one(store: Store):
    for author, expires in ((A1, 3000.0), (A2, 2000.0), (A3, 4000.0)):
        assert put(store, author, expires=expires, limit=3) is PutResult.STORED
    assert put(store, A4, expires=2500.0, limit=3) is PutResult.STORED  # evicts A2 (2000)
    assert store.entry(K1, A2, b"t#1") is None
    assert sorted(idents(store.entries(K1, now=T0))) == [(A1, b"t#1"), (A3, b"t#1"), (A4, b"t#1")]
    # A newcomer expiring before every held entry is refused, and changes nothing.
    assert put(store, A2, expires=2400.0, limit=3) is PutResult.REFUSED_FULL
    assert len(store.entries(K1, now=T0)) == 3 and store.entry(K1, A2, b"t#1") is None
    # Other keys are not affected by K1's limit.
    assert put(store, A2, key=K2, expires=1500.0, limit=3) is PutResult.STORED
    assert_accounting(store)


def test_pinned_entries_are_never_evicted(store: Store):
    assert put(store, A1, expires=1500.0, pinned=True, limit=3) is PutResult.STORED
    assert put(store, A2, expires=3000.0, limit=3) is PutResult.STORED
    assert put(store, A3, expires=4000.0, limit=3) is PutResult.STORED
    # Later than the pinned one, earlier than every evictable one: refused.
    assert put(store, A4, expires=2000.0, limit=3) is PutResult.REFUSED_FULL
    assert put(store, A4, expires=3500.0, limit=3) is PutResult.STORED  # evicts A2, not the pinned A1
    assert store.entry(K1, A1, b"t#1") is not None and store.entry(K1, A2, b"t#1") is None
    # Pinning after the fact protects too.
    assert store.set_entry_pinned(K1, A3, b"t#1", True)
    assert store.set_entry_pinned(K1, A4, b"t#1", True)
    assert put(store, A2, expires=9000.0, limit=3) is PutResult.REFUSED_FULL
    assert sorted(idents(store.entries(K1, now=T0))) == [(A1, b"t#1"), (A3, b"t#1"), (A4, b"t#1")]
    assert not store.set_entry_pinned(K1, A2, b"t#1", True)  # not held


def test_a_full_key_does_not_grow_past_its_limit_when_an_expired_entry_is_renewed(store: Store):
    """A key holds at most ``limit`` live entries, even when a held but expired one comes back with a new seq."""
    assert put(store, A1, expires=1500.0, limit=2) is PutResult.STORED
    assert put(store, A2, expires=1600.0, limit=2) is PutResult.STORED
    later = 1550.0  # A1 has expired, not yet dropped
    assert put(store, A3, expires=5000.0, limit=2, now=later) in (PutResult.STORED, PutResult.REFUSED_FULL)
    put(store, A1, seq=2, value=b"renewed", expires=6000.0, limit=2, now=later)
    assert len(store.entries(K1, now=later)) <= 2


def test_entries_come_newest_first_and_page_by_offset(store: Store):
    expiries = {A1: 3000.0, A2: 5000.0, A3: 4000.0, A4: 5000.0}
    for author, expires in expiries.items():
        put(store, author, expires=expires)
    put(store, A1, b"t#0", expires=3000.0)
    everything = store.entries(K1, now=T0)
    # Latest expiry first; ties by author, then name.
    assert idents(everything) == [(A2, b"t#1"), (A4, b"t#1"), (A3, b"t#1"), (A1, b"t#0"), (A1, b"t#1")]
    assert [e.expires for e in everything] == sorted((e.expires for e in everything), reverse=True)
    pages = [store.entries(K1, offset=o, limit=2, now=T0) for o in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert [e for p in pages for e in p] == everything
    assert store.entries(K1, offset=1, now=T0) == everything[1:]
    assert store.entries(K1, limit=0, now=T0) == []


def test_expired_entries_are_not_served_and_drop_expired_removes_them_and_orphan_links(store: Store):
    block_a, block_b, block_c = (bytes([i]) * 20 for i in (0xB1, 0xB2, 0xB3))
    put(store, A1, key=K1, expires=2000.0)
    put(store, A1, key=K2, expires=9000.0)
    store.link(K1, [block_a, block_b])
    store.link(K2, [block_c])
    store.put(block_a, b"block bytes", kind=BLOCK, role="replica", now=T0)
    assert store.group_of(block_a) == K1 and store.group_of(block_c) == K2
    assert idents(store.entries(K1, now=1999.0)) == [(A1, b"t#1")]
    assert store.entries(K1, now=2000.0) == []  # expiry is exclusive
    assert store.entry(K1, A1, b"t#1") is not None  # still held until dropped
    assert store.drop_expired(now=2500.0) == 1
    assert store.entry(K1, A1, b"t#1") is None and not store.has_entries(K1)
    assert store.group_of(block_a) is None and store.group_of(block_b) is None
    assert store.group_of(block_c) == K2  # its group still has an entry
    assert store.contains(block_a)  # the block itself is a value, not dropped with its link
    assert_accounting(store)


def test_iteration_schedule_and_delete_of_entries(store: Store):
    put(store, A1, b"term:a#1", role="own", pinned=True, now=T0)
    put(store, A2, b"pattern:ff#", role="replica", now=T0)
    put(store, A3, b"term:b#1", key=K2, role="replica", now=T0 + 100)
    assert idents(store.iter_entries()) == [(A1, b"term:a#1"), (A2, b"pattern:ff#"), (A3, b"term:b#1")]
    assert idents(store.iter_entries(role="replica")) == [(A2, b"pattern:ff#"), (A3, b"term:b#1")]
    assert idents(store.iter_entries(kind_prefix=b"term:")) == [(A1, b"term:a#1"), (A3, b"term:b#1")]
    due = store.entries_due(50.0, now=T0 + 60, role="replica")
    assert idents(due) == [(A2, b"pattern:ff#")]
    assert len(store.entries_due(0.0, now=T0 + 100)) == 3
    store.mark_entries_republished([due[0].ident], now=T0 + 60)
    assert store.entries_due(50.0, now=T0 + 60, role="replica") == []
    assert store.entry(K1, A2, b"pattern:ff#").republished_at == T0 + 60
    assert store.delete_entry(K1, A2, b"pattern:ff#")
    assert not store.delete_entry(K1, A2, b"pattern:ff#")
    assert_accounting(store)


def test_links_and_group_of(store: Store):
    b1, b2 = b"\x01" * 20, b"\x02" * 20
    assert store.group_of(b1) is None
    store.link(K1, [b1, b2])
    store.link(K1, [b1])  # idempotent
    assert store.group_of(b1) == K1 and store.group_of(b2) == K1
    assert store._conn.execute("SELECT COUNT(*) FROM links").fetchone()[0] == 2
    store.link(K1, [])
    with pytest.raises(ValueError):
        store.link(b"short", [b1])
    with pytest.raises(ValueError):
        store.link(K1, [b"short"])
    with pytest.raises(ValueError):
        store.group_of(b"short")


def test_set_pinned_changes_role_and_expiry(store: Store):
    key = (7).to_bytes(20, "big")
    store.put(key, b"value", kind=BLOCK, role="cache", expires=2000.0, now=T0)
    assert store.set_pinned(key, True, expires=None, role="own")
    held = store.get(key, touch=False)
    assert (held.pinned, held.expires, held.role) == (True, None, "own")
    assert store.used_bytes_by_role()["own"] == held.size
    assert store.drop_expired(now=10**9) == 0
    assert store.set_pinned(key, False, expires=3000.0, role="cache")  # may weaken, unlike put
    held = store.get(key, touch=False)
    assert (held.pinned, held.expires, held.role) == (False, 3000.0, "cache")
    assert store.set_pinned(key, True, expires=4000.0)  # role kept when not given
    assert store.get(key, touch=False).role == "cache"
    assert not store.set_pinned((8).to_bytes(20, "big"), True)
    assert_accounting(store)
    assert store.drop_expired(now=4000.0) == 1  # pins do not protect against expiry


def test_put_entry_input_validation(store: Store):
    for kwargs in (dict(seq=-1), dict(seq=True), dict(expires=float("nan")), dict(limit=0), dict(limit=True),
                   dict(role="owner"), dict(key=b"short"), dict(value="text")):
        with pytest.raises(ValueError):
            put(store, **kwargs)
    with pytest.raises(ValueError):
        store.put_entry(K1, A1, b"t#1", b"v", seq=1, expires=None, role="own")  # type: ignore[arg-type]
    assert store.iter_entries() == [] and store.used_bytes() == 0


def test_migration_from_v2_adds_entries_and_keeps_values(tmp_path: Path):
    p = tmp_path / "v2.db"
    c = sqlite3.connect(p, isolation_level=None)
    for stmt in SCHEMA_V1:
        c.execute(stmt)
    MIGRATIONS[0](c)
    c.execute("UPDATE meta SET value = '2' WHERE name = 'schema_version'")
    c.execute(
        "INSERT INTO values_ (key, kind, value, size, seq, expires, stored_at, republished_at, role, pinned, "
        "last_access) VALUES (?, 1, ?, ?, NULL, NULL, 100.0, 100.0, 'own', 1, 100.0)",
        (K1, b"block", 89),
    )
    c.execute(
        "INSERT INTO values_ (key, kind, value, size, seq, expires, stored_at, republished_at, role, pinned, "
        "last_access) VALUES (?, 2, ?, ?, 3, 9000.0, 100.0, 100.0, 'replica', 0, 100.0)",
        (K2, b"rec", 87),
    )
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "entries" not in tables and "links" not in tables
    c.close()

    with Store(p) as s:
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        tables = {r[0] for r in s._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"entries", "links"} <= tables
        a = s.get(K1, touch=False)
        assert a is not None and (a.value, a.role, a.pinned, a.kind) == (b"block", "own", True, BLOCK)
        b = s.get(K2, touch=False)
        assert b is not None and (b.value, b.seq, b.expires, b.kind) == (b"rec", 3, 9000.0, RECORD)
        assert s.used_bytes_by_role() == {"own": value_charge(20, 5), "replica": value_charge(20, 3), "cache": 0}
        assert put(s, key=(5).to_bytes(20, "big"), role="cache") is PutResult.STORED
        s.link((5).to_bytes(20, "big"), [K1])
        assert s.group_of(K1) == (5).to_bytes(20, "big")
        assert_accounting(s)
    with Store(p) as s:  # reopening runs no migration again
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        assert len(s.entries((5).to_bytes(20, "big"), now=T0)) == 1
        assert_accounting(s)


ENTRY_KEYS = [K1, K2]
AUTHORS = [A1, A2, A3]
NAMES = [b"t#1", b"t#2"]
ROLES = ["own", "replica", "cache"]


class EntryAccountingMachine(RuleBasedStateMachine):
    """Random entries and values, replacements, evictions, expiry, pins and reopens: totals == SUM(size)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aether-entries-")
        self.path = Path(self.dir) / "s.db"
        self.store = Store(self.path)
        self.now = 1000.0

    @rule(key=st.sampled_from(ENTRY_KEYS), author=st.sampled_from(AUTHORS), name=st.sampled_from(NAMES),
          value=st.sampled_from([b"", b"a", b"bb", b"x" * 50]), seq=st.integers(0, 3), ttl=st.floats(1, 100),
          role=st.sampled_from(ROLES), pinned=st.booleans(), limit=st.integers(1, 3))
    def put_entry(self, key, author, name, value, seq, ttl, role, pinned, limit) -> None:
        self.store.put_entry(key, author, name, value, seq=seq, expires=self.now + ttl, role=role, pinned=pinned,
                             limit=limit, now=self.now)

    @rule(key=st.sampled_from(ENTRY_KEYS), role=st.sampled_from(ROLES), pinned=st.booleans())
    def reput_held(self, key, role, pinned) -> None:
        for held in self.store.entries(key, now=self.now)[:1]:
            result = self.store.put_entry(key, held.author, held.name, held.value, seq=held.seq, expires=held.expires,
                                          role=role, pinned=pinned, now=self.now)
            assert result is PutResult.UNCHANGED

    @rule(key=st.sampled_from(ENTRY_KEYS), value=st.sampled_from([b"", b"block", b"y" * 30]),
          role=st.sampled_from(ROLES), ttl=st.one_of(st.none(), st.floats(1, 100)))
    def put_value(self, key, value, role, ttl) -> None:
        self.store.put(key, value, kind=BLOCK, role=role, expires=None if ttl is None else self.now + ttl,
                       now=self.now)

    @rule(key=st.sampled_from(ENTRY_KEYS), author=st.sampled_from(AUTHORS), name=st.sampled_from(NAMES))
    def delete_entry(self, key, author, name) -> None:
        self.store.delete_entry(key, author, name)

    @rule(key=st.sampled_from(ENTRY_KEYS), author=st.sampled_from(AUTHORS), name=st.sampled_from(NAMES),
          pinned=st.booleans())
    def pin_entry(self, key, author, name, pinned) -> None:
        self.store.set_entry_pinned(key, author, name, pinned)

    @rule(key=st.sampled_from(ENTRY_KEYS), role=st.sampled_from(ROLES), pinned=st.booleans())
    def set_pinned(self, key, role, pinned) -> None:
        self.store.set_pinned(key, pinned, expires=None if pinned else self.now + 50, role=role)

    @rule(key=st.sampled_from(ENTRY_KEYS))
    def delete_value(self, key) -> None:
        self.store.delete(key)

    @rule(dt=st.floats(0, 60))
    def expire(self, dt) -> None:
        self.now += dt
        self.store.drop_expired(now=self.now)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store(self.path)

    @invariant()
    def totals_match_rows(self) -> None:
        assert_accounting(self.store)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


EntryAccountingMachine.TestCase.settings = settings(
    max_examples=15, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_entry_accounting_invariant = EntryAccountingMachine.TestCase


# ================================================================== entry payloads

HASH_A = hashlib.sha256(b"pattern a").hexdigest()


def summary(**changes) -> Summary:
    base = Summary(id="Pattern-DHT-001", title="Pattern-DHT-001: Kademlia", hash=HASH_A, time=1_750_000_000,
                   size=9, category="Networking", status="Active", history=((hashlib.sha256(b"v0").hexdigest(), 1),))
    return dataclasses.replace(base, **changes)


def manifest_entry(data: bytes = b"pattern a", mirror: bool = False, **changes) -> ManifestEntry:
    manifest, _ = split(data)
    s = summary(hash=manifest.pattern_hash.hex(), size=manifest.size, **changes)
    return ManifestEntry(manifest, s, mirror)


def test_summary_round_trips_through_its_list_and_bytes():
    s = summary()
    assert Summary.from_list(s.as_list()) == s
    assert decode_summary(encode_summary(s)) == s
    assert s.type == "DHT"
    bare = summary(category="", status="", history=())
    assert decode_summary(encode_summary(bare)) == bare


SUMMARIES = st.builds(
    Summary,
    id=st.from_regex(PATTERN_ID, fullmatch=True),
    title=st.text(max_size=160),
    hash=st.binary(min_size=32, max_size=32).map(bytes.hex),
    time=st.integers(0, 2**63 - 1),
    size=st.integers(1, 2**63 - 1),
    category=st.text(max_size=80),
    status=st.text(max_size=80),
    history=st.lists(st.tuples(st.binary(min_size=32, max_size=32).map(bytes.hex), st.integers(0, 2**63 - 1)),
                     max_size=MAX_HISTORY).map(tuple),
)


@settings(max_examples=40, deadline=None)
@given(s=SUMMARIES)
def test_any_valid_summary_round_trips(s):
    assert Summary.from_list(s.as_list()) == s
    assert decode_summary(encode_summary(s)) == s


def test_manifest_entry_round_trips():
    for mirror in (False, True):
        me = manifest_entry(os.urandom(13000), mirror=mirror)
        assert len(me.manifest.blocks) == 3
        assert ManifestEntry.decode(me.encode()) == me


def test_non_canonical_payloads_are_refused():
    payload = manifest_entry().encode()
    assert payload[0] == 0x93  # fixarray of 3
    with pytest.raises(EntryError):
        ManifestEntry.decode(b"\xdc\x00\x03" + payload[1:])  # the same list as an array16
    with pytest.raises(EntryError):
        ManifestEntry.decode(payload + b"\xc0")
    encoded = encode_summary(summary())
    assert encoded[0] == 0x98
    with pytest.raises(EntryError):
        decode_summary(b"\xdc\x00\x08" + encoded[1:])
    # A small int written as a uint64 is the same number in other bytes.
    fields = summary().as_list()
    parts = [msgpack.packb(f, use_bin_type=True) for f in fields]
    assert b"\x98" + b"".join(parts) == encoded
    parts[3] = b"\xcf" + fields[3].to_bytes(8, "big")
    with pytest.raises(EntryError):
        decode_summary(b"\x98" + b"".join(parts))


def test_a_summary_that_does_not_describe_the_manifest_is_refused():
    me = manifest_entry()
    for wrong in (dataclasses.replace(me.summary, hash=hashlib.sha256(b"other").hexdigest()),
                  dataclasses.replace(me.summary, size=me.summary.size + 1)):
        payload = msgpack.packb([me.manifest.encode(), wrong.as_list(), False], use_bin_type=True)
        with pytest.raises(EntryError):
            ManifestEntry.decode(payload)


def _wrong_payloads() -> dict[str, bytes]:
    me = manifest_entry()
    m, s = me.manifest.encode(), me.summary.as_list()

    def with_summary(index, value):
        fields = list(s)
        fields[index] = value
        return [m, fields, False]

    cases = {
        "mirror an int": [m, s, 1],
        "mirror none": [m, s, None],
        "manifest as text": [m.decode("latin-1"), s, False],
        "manifest garbage": [b"junk", s, False],
        "two fields": [m, s],
        "four fields": [m, s, False, False],
        "not a list": m,
        "summary short": [m, s[:-1], False],
        "summary as bytes": [m, msgpack.packb(s, use_bin_type=True), False],
        "id not a pattern id": with_summary(0, "pattern-dht-1"),
        "id bytes": with_summary(0, b"Pattern-DHT-001"),
        "title too long": with_summary(1, "x" * 161),
        "title bytes": with_summary(1, b"title"),
        "hash 31 bytes": with_summary(2, bytes(31)),
        "hash hex text": with_summary(2, HASH_A),
        "time negative": with_summary(3, -1),
        "time text": with_summary(3, "1750000000"),
        "time bool": with_summary(3, True),
        "size zero": with_summary(4, 0),
        "size float": with_summary(4, 9.0),
        "category too long": with_summary(5, "c" * 81),
        "status int": with_summary(6, 1),
        "history not a list": with_summary(7, b""),
        "history item short": with_summary(7, [[bytes(32)]]),
        "history hash short": with_summary(7, [[bytes(31), 1]]),
        "history time text": with_summary(7, [[bytes(32), "1"]]),
        "history too long": with_summary(7, [[bytes(32), i] for i in range(MAX_HISTORY + 1)]),
    }
    return {name: msgpack.packb(value, use_bin_type=True) for name, value in cases.items()}


@pytest.mark.parametrize("name, payload", sorted(_wrong_payloads().items()))
def test_manifest_entry_payloads_of_the_wrong_shape_are_refused(name, payload):
    with pytest.raises(EntryError):
        ManifestEntry.decode(payload)


def test_history_up_to_the_limit_is_accepted():
    history = tuple((hashlib.sha256(bytes([i])).hexdigest(), i) for i in range(MAX_HISTORY))
    me = manifest_entry(history=history)
    assert ManifestEntry.decode(me.encode()).summary.history == history
    s = summary(history=history + (history[0],))
    with pytest.raises(EntryError):
        decode_summary(encode_summary(s))


def test_manifest_of_checks_the_name_and_kind():
    me = manifest_entry()
    good = create_record(ALICE, MANIFEST_KIND, manifest_name(me.summary.hash), 1, me.encode(), 600)
    assert manifest_of(good) == me
    assert good.topic_key == pattern_key(me.summary.hash)
    other = hashlib.sha256(b"another pattern").hexdigest()
    misnamed = create_record(ALICE, MANIFEST_KIND, manifest_name(other), 1, me.encode(), 600)
    with pytest.raises(EntryError):
        manifest_of(misnamed)
    unnamed = create_record(ALICE, MANIFEST_KIND, b"pattern:" + me.summary.hash.encode(), 1, me.encode(), 600)
    with pytest.raises(EntryError):
        manifest_of(unnamed)  # no topic at all
    wrong_kind = create_record(ALICE, INDEX_KIND, manifest_name(me.summary.hash), 1, me.encode(), 600)
    with pytest.raises(EntryError):
        manifest_of(wrong_kind)


def test_summary_of_checks_a_heads_name():
    s = summary()
    head = create_record(ALICE, HEAD_KIND, head_name("Pattern-DHT-001"), 1, encode_summary(s), 600)
    assert summary_of(head) == s
    misnamed = create_record(ALICE, HEAD_KIND, head_name("Pattern-DHT-002"), 1, encode_summary(s), 600)
    with pytest.raises(EntryError):
        summary_of(misnamed)
    index = create_record(ALICE, INDEX_KIND, b"term:kademlia#pattern-dht-001", 1, encode_summary(s), 600)
    assert summary_of(index) == s
    manifest = create_record(ALICE, MANIFEST_KIND, head_name("Pattern-DHT-001"), 1, encode_summary(s), 600)
    with pytest.raises(EntryError):
        summary_of(manifest)
    garbage = create_record(ALICE, HEAD_KIND, head_name("Pattern-DHT-001"), 1, b"\xc1", 600)
    with pytest.raises(EntryError):
        summary_of(garbage)


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=12) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=9),
    max_leaves=12,
)
VALID_MANIFEST = manifest_entry().manifest.encode()


@settings(max_examples=120, deadline=None)
@given(payload=st.one_of(
    st.binary(max_size=600),
    MSGPACK_VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.tuples(MSGPACK_VALUES, MSGPACK_VALUES).map(
        lambda t: msgpack.packb([VALID_MANIFEST, t[0], t[1]], use_bin_type=True)),
))
def test_any_payload_decodes_to_a_value_or_entry_error(payload):
    for decode in (ManifestEntry.decode, decode_summary):
        try:
            value = decode(payload)
        except EntryError:
            continue
        assert isinstance(value, (ManifestEntry, Summary))


def test_words_lowercase_drop_stopwords_and_single_letters_keep_order():
    assert words("The Quick brown FOX is a fox over X y") == ["quick", "brown", "fox"]
    assert words("peer-to-peer don't foo_bar 42 x-ray") == ["peer-to-peer", "don't", "foo", "bar", "42", "x-ray"]
    assert words("Ünïcødé naïve CAFÉ 東京 é") == ["ünïcødé", "naïve", "café", "東京"]
    assert words("") == [] and words("a an the of") == []
    assert words("Zeta alpha Zeta beta ALPHA") == ["zeta", "alpha", "beta"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_words_invariants(text):
    found = words(text)
    assert len(found) == len(set(found))
    for word in found:
        assert WORD.fullmatch(word)
        assert len(word) >= 2 and word not in STOPWORDS
        assert word in text.lower()


def test_index_terms_type_status_category_then_name_at_most_max_terms():
    pattern = parse_pattern(
        b"# Pattern-HYBRID-SEARCH-007: The Kademlia DHT for pattern discovery\n\n"
        b"**STATUS:** Active\n**CATEGORY:** Networking and Search\n"
    )
    assert index_terms(pattern) == [
        "hybrid-search", "active", "networking", "search", "kademlia", "dht", "pattern", "discovery",
    ]
    name = " ".join(f"word{i}" for i in range(30))
    long = parse_pattern(f"# Pattern-DHT-001: {name}\n".encode())
    terms = index_terms(long)
    assert len(terms) == MAX_TERMS
    assert terms == ["dht"] + [f"word{i}" for i in range(MAX_TERMS - 1)]
    unicode = parse_pattern("# Pattern-MESH-002: Réseau maillé à Zürich\n".encode())
    assert index_terms(unicode) == ["mesh", "réseau", "maillé", "zürich"]


# ================================================================== the network

PAGED = QUIET.replace(max_entries_per_key=64)


def many_entries(count: int, *, payload_bytes: int = 300, topic: bytes = TOPIC) -> list:
    authors = [Identity.generate() for _ in range(4)]
    return [
        create_record(authors[i % 4], INDEX_KIND, topic + b"#item-%03d" % i, 1, bytes([i]) * payload_bytes, 3600)
        for i in range(count)
    ]


def hold(node, records, key=TOPIC_KEY) -> None:
    for record in records:
        checked = check_value(key, record.encode())
        assert isinstance(checked, Entry)
        assert node.keep_entry(checked, role="replica") is PutResult.STORED


@pytest.fixture
async def trio(tmp_path):
    nodes = [await start_node(tmp_path / f"n{i}", PAGED) for i in range(3)]
    try:
        await join_all(nodes)
        yield nodes
    finally:
        stop_all(nodes)


async def test_a_holder_pages_its_entries_with_next_offset(trio):
    holder, asker, _ = trio
    records = many_entries(40)
    assert all(380 <= len(r.encode()) <= 480 for r in records)
    hold(holder, records)
    expected = [e.value for e in holder.store.entries(TOPIC_KEY)]
    got: list[bytes] = []
    offset = None
    pages = 0
    while True:
        ok, reply = await asker.protocol.find_value(address_of(holder), asker.node.id, TOPIC_KEY, offset)
        assert ok and isinstance(reply, dict), reply
        page = check_found(TOPIC_KEY, reply["value"])
        assert isinstance(page, Entries) and page.entries
        assert len(reply["value"]) <= MAX_BUNDLE_BYTES
        got += [e.data for e in page.entries]
        pages += 1
        if page.next_offset is None:
            break
        assert page.next_offset == len(got)
        offset = page.next_offset
        assert pages < 10
    assert pages >= 2
    assert got == expected and len(got) == 40
    # Past the end there is nothing: the holder answers with contacts.
    ok, reply = await asker.protocol.find_value(address_of(holder), asker.node.id, TOPIC_KEY, 40)
    assert ok and isinstance(reply, list)


async def test_get_entries_merges_every_page_from_another_node(trio):
    holder, asker, _ = trio
    records = many_entries(40)
    hold(holder, records)
    result = await asker.get_entries(TOPIC_KEY)
    assert len(result.entries) == 40
    assert {e.record for e in result.entries} == set(records)
    assert holder.node.id in {n.id for n, _ in result.more}
    assert asker.store.entries(TOPIC_KEY) == []  # the asker fetched, it did not store


async def test_a_stock_two_argument_find_value_still_gets_a_page(trio):
    holder, _, _ = trio
    records = many_entries(40)
    hold(holder, records)
    client = await asyncio_dgram.connect(address_of(holder))
    try:
        msg_id = os.urandom(20)
        await client.send(wire.encode_request(msg_id, "find_value", [b"\x42" * 20, TOPIC_KEY]))
        data, _ = await asyncio.wait_for(client.recv(), 2)
    finally:
        client.close()
    reply = wire.decode(data)
    assert reply.msg_id == msg_id
    page = check_found(TOPIC_KEY, reply.body["value"])
    assert isinstance(page, Entries) and page.next_offset == len(page.entries) > 0
    # A stock kademlia server calling FIND_VALUE gets the same first page.
    stock = Server(ksize=20, alpha=3)
    await stock.listen(0, "127.0.0.1")
    try:
        ok, body = await stock.protocol.call_find_value(Node(holder.node.id, *address_of(holder)), Node(TOPIC_KEY))
    finally:
        stock.stop()
    assert ok and body["value"] == reply.body["value"]
    assert 3 in RPC_ARITY["find_value"] and 2 in RPC_ARITY["find_value"]


MALFORMED_OFFSETS = [-1, 1 << 20, 2**63, 2**64 - 1, True, False, b"\x01", 1.0, None, "1", [1]]


async def test_a_malformed_offset_gets_an_error_reply_and_the_node_keeps_serving(trio):
    holder, asker, _ = trio
    hold(holder, many_entries(20))
    client = await asyncio_dgram.connect(address_of(holder))
    try:
        for offset in MALFORMED_OFFSETS:
            msg_id = os.urandom(20)
            await client.send(wire.encode_request(msg_id, "find_value", [b"\x42" * 20, TOPIC_KEY, offset]))
            data, _ = await asyncio.wait_for(client.recv(), 2)
            reply = wire.decode(data)
            assert reply.msg_id == msg_id
            assert isinstance(reply.body, dict) and reply.body.get("error") == "malformed", (offset, reply.body)
            # Through the protocol too, and the node still answers good requests.
            ok, body = await asker.protocol._call(address_of(holder), "find_value", asker.node.id, TOPIC_KEY, offset)
            assert ok and body.get("error") == "malformed", (offset, body)
            ok, body = await asker.protocol.find_value(address_of(holder), asker.node.id, TOPIC_KEY, 1)
            assert ok and isinstance(check_found(TOPIC_KEY, body["value"]), Entries), offset
    finally:
        client.close()
    ok, pong = await asker.protocol.ping(address_of(holder), asker.node.id)
    assert ok and pong == holder.node.id
    assert holder.protocol.stats["handler_error"] == 0
    assert holder.protocol.stats["rpc_find_value"] >= 3 * len(MALFORMED_OFFSETS)


@pytest.fixture
async def pair(tmp_path):
    victim = await start_node(tmp_path / "victim", QUIET.replace(max_entries_per_key=3))
    sender = await start_node(tmp_path / "sender", QUIET)
    await sender.bootstrap([address_of(victim)])
    try:
        yield victim, sender, Node(victim.node.id, *address_of(victim))
    finally:
        stop_all([victim, sender])


async def send_store(sender, target, key, value):
    ok, reply = await sender.protocol.call_store(target, key, value)
    assert ok, "no answer"
    return reply


async def test_store_of_an_entry_under_another_topic_key_is_refused(pair):
    victim, sender, target = pair
    record = entry(ALICE, topic=b"term:mesh")
    reply = await send_store(sender, target, TOPIC_KEY, record.encode())
    assert reply["error"] == "wrong-key"
    assert victim.store.entries(TOPIC_KEY) == [] and victim.store.iter_entries() == []
    assert (await send_store(sender, target, topic_key(b"term:mesh"), record.encode()))["stored"] is True
    assert [e.value for e in victim.store.entries(topic_key(b"term:mesh"))] == [record.encode()]


async def test_store_of_a_forged_entry_is_refused(pair):
    victim, sender, target = pair
    forged = dataclasses.replace(entry(ALICE), payload=b"forged")
    reply = await send_store(sender, target, TOPIC_KEY, forged.encode())
    assert reply["error"] == "bad-signature"
    assert victim.store.iter_entries() == []


async def test_store_beyond_the_limit_with_an_older_entry_is_full(pair):
    victim, sender, target = pair
    held = [entry(who, ttl=3600) for who in (ALICE, BOB, CAROL)]
    for record in held:
        assert (await send_store(sender, target, TOPIC_KEY, record.encode()))["stored"] is True
    older = entry(Identity.generate(), ttl=600)
    reply = await send_store(sender, target, TOPIC_KEY, older.encode())
    assert reply["error"] == "key-full"
    assert len(victim.store.entries(TOPIC_KEY)) == 3
    newer = entry(Identity.generate(), ttl=7200)
    assert (await send_store(sender, target, TOPIC_KEY, newer.encode()))["stored"] is True
    kept = {e.value for e in victim.store.entries(TOPIC_KEY)}
    assert len(kept) == 3 and newer.encode() in kept
    # Re-storing a held entry is not a new one: no "full".
    assert (await send_store(sender, target, TOPIC_KEY, newer.encode()))["stored"] is True


async def test_a_stored_manifest_entry_links_its_blocks_to_the_pattern_key(pair):
    victim, sender, target = pair
    me = manifest_entry(os.urandom(7000))
    record = create_record(ALICE, MANIFEST_KIND, manifest_name(me.summary.hash), 1, me.encode(), 3600)
    key = pattern_key(me.summary.hash)
    assert record.topic_key == key
    assert (await send_store(sender, target, key, record.encode()))["stored"] is True
    assert len(me.manifest.blocks) == 2
    for block in me.manifest.blocks:
        assert victim.store.group_of(block) == key
    # The same record under its author's own key is a record: it links nothing new.
    other = manifest_entry(os.urandom(7000))
    own = create_record(BOB, MANIFEST_KIND, manifest_name(other.summary.hash), 1, other.encode(), 3600)
    assert (await send_store(sender, target, own.key, own.encode()))["stored"] is True
    assert all(victim.store.group_of(b) is None for b in other.manifest.blocks)

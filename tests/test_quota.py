"""The quota's ground truth: charges that match the disk, and eviction in the promised order."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from pathlib import Path

import pytest

from aether.storage.store import (
    BLOCK,
    MIGRATIONS,
    RECORD,
    RESERVED_BYTES,
    SCHEMA_V1,
    SCHEMA_VERSION,
    Store,
    entry_charge,
    value_charge,
)

from .test_store import assert_accounting

NEAR = bytes(20)  # the node's ID in these tests: distance to a key is the key itself
T0 = 1_000_000.0


def key_at(distance: int) -> bytes:
    return distance.to_bytes(20, "big")


def pages_in_use(path: Path) -> int:
    """Bytes of the database's pages that hold data, read by an independent connection."""
    c = sqlite3.connect(path)
    try:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        count = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * c.execute("PRAGMA page_size").fetchone()[0]
    finally:
        c.close()


def test_charges_match_the_pages_sqlite_fills(tmp_path: Path) -> None:
    """Mixed blocks, records and entries, with deletes and evictions: charged = disk use within 5 %."""
    rng = random.Random(7)
    path = tmp_path / "n.db"
    with Store(path) as s:
        base = pages_in_use(path)
        keys = []
        for i in range(1500):
            size = rng.choice([6144, 6144, 3000, 900, 300, 40])
            value = rng.randbytes(size)
            key = hashlib.sha256(value).digest()[:20]
            if i % 3 == 2:
                s.put_entry(key, rng.randbytes(32), b"term:w#" + rng.randbytes(20).hex().encode(), value,
                            seq=1, expires=T0 + 3600, role="replica", now=T0)
            else:
                s.put(key, value, kind=RECORD if i % 3 else BLOCK, role="replica",
                      seq=1 if i % 3 else None, expires=T0 + 3600, now=T0)
                keys.append(key)
        for key in keys[::4]:
            s.delete(key)
        s.make_room(0, s.used_bytes() * 2 // 3, near=NEAR, now=T0)
        assert_accounting(s)
        used = s.used_bytes()
        on_disk = pages_in_use(path) - base
        assert abs(on_disk - used) <= 0.05 * used, (on_disk, used)
        # The file itself: the rows, the fixed pages and the log fit in used + the reserve.
        assert s.file_bytes() <= used + RESERVED_BYTES


def test_charge_of_a_block_counts_its_overflow_page() -> None:
    # A 6 KiB block is a 2 KiB leaf cell that fills a 4 KiB leaf page alone, plus one overflow page.
    assert 8192 <= value_charge(20, 6144) < 8192 + 200
    assert value_charge(20, 10) < 300
    assert entry_charge(20, 32, 40, 300) > value_charge(20, 300)  # its ident is indexed too


def fill(s: Store) -> None:
    """Expired, cached (two access times), replicas at three distances, own, pinned replica."""
    s.put(key_at(1), b"e" * 900, kind=BLOCK, role="replica", expires=T0 - 1, now=T0 - 100)
    s.put(key_at(2), b"c" * 900, kind=BLOCK, role="cache", expires=T0 + 999, now=T0 - 50)  # older access
    s.put(key_at(3), b"c" * 901, kind=BLOCK, role="cache", expires=T0 + 999, now=T0 - 10)
    s.put(key_at(1 << 150), b"r" * 900, kind=BLOCK, role="replica", expires=T0 + 999, now=T0)
    s.put(key_at(1 << 100), b"r" * 901, kind=BLOCK, role="replica", expires=T0 + 999, now=T0)
    s.put(key_at(1 << 159), b"r" * 902, kind=BLOCK, role="replica", expires=T0 + 999, now=T0)
    s.put(key_at(1 << 158), b"o" * 900, kind=BLOCK, role="own", now=T0)
    s.put(key_at((1 << 159) + 1), b"p" * 900, kind=BLOCK, role="replica", pinned=True, now=T0)


def test_eviction_order_expired_then_lru_cache_then_farthest_replicas(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as s:
        fill(s)
        used = s.used_bytes()
        one = value_charge(20, 900)
        # Room for one more row: the expired one goes and nothing else.
        got = s.make_room(one, used, near=NEAR, now=T0)
        assert got.fits and (got.expired, got.cached, got.replicas) == (1, 0, 0)
        assert not s.contains(key_at(1))
        # Then the least recently used cached copy, then the other.
        got = s.make_room(one, s.used_bytes(), near=NEAR, now=T0)
        assert got.fits and (got.cached, got.replicas) == (1, 0)
        assert not s.contains(key_at(2)) and s.contains(key_at(3))
        got = s.make_room(2 * one, s.used_bytes(), near=NEAR, now=T0)
        assert (got.cached, got.replicas) == (1, 1)
        # The farthest replica went first (2^159), the nearer ones stay.
        assert not s.contains(key_at(1 << 159))
        assert s.contains(key_at(1 << 150)) and s.contains(key_at(1 << 100))
        # Own and pinned data stay under any pressure; a request that cannot be met evicts nothing.
        before = set(s.keys())
        got = s.make_room(10**9, s.used_bytes(), near=NEAR, now=T0)
        assert not got.fits and got.freed == 0
        assert set(s.keys()) == before
        got = s.make_room(0, 0, near=NEAR, now=T0)
        assert not got.fits
        got = s.make_room(0, s.usage().pinned, near=NEAR, now=T0)
        assert got.fits and set(s.keys()) == {key_at(1 << 158), key_at((1 << 159) + 1)}
        assert_accounting(s)


def test_replicas_closer_than_the_newcomer_are_kept(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as s:
        fill(s)
        s.make_room(0, s.used_bytes(), near=NEAR, now=T0)  # expired gone
        budget = s.used_bytes()
        got = s.make_room(value_charge(20, 900) * 5, budget, near=NEAR, keep_closer_than=1 << 155, now=T0)
        assert not got.fits  # only the 2^159 replica and the cache are farther than the newcomer
        assert s.contains(key_at(1 << 159))
        got = s.make_room(value_charge(20, 900), budget, near=NEAR, keep_closer_than=1 << 155, replicas=False, now=T0)
        assert got.fits and got.replicas == 0


def test_a_block_is_as_far_as_its_pattern(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as s:
        block = b"b" * 900
        s.put(key_at(5), block, kind=BLOCK, role="replica", expires=T0 + 99, now=T0)  # near by its own key
        s.link(key_at(1 << 159), [key_at(5)])  # but it belongs to a far pattern
        s.put_entry(key_at(1 << 159), b"a" * 32, b"pattern:x#manifest", b"m" * 100, seq=1,
                    expires=T0 + 99, role="replica", now=T0)
        s.put(key_at(1 << 120), block, kind=BLOCK, role="replica", expires=T0 + 99, now=T0)
        got = s.make_room(value_charge(20, 900), s.used_bytes(), near=NEAR, now=T0)
        assert got.fits and not s.contains(key_at(5)) and s.contains(key_at(1 << 120))


def test_evicting_gives_pages_back_to_the_file_system(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    with Store(path) as s:
        for i in range(400):
            s.put(key_at(i + 1), os.urandom(6144), kind=BLOCK, role="replica", expires=T0 + 99, now=T0)
        pages_in_use(path)
        big = s.file_bytes()
        s.make_room(0, s.used_bytes() // 4, near=NEAR, now=T0)
        pages_in_use(path)  # checkpoint: the WAL's truncation reaches the file
        assert s.file_bytes() < big * 0.4
        assert_accounting(s)


def test_usage_splits_pinned_and_evictable(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as s:
        fill(s)
        u = s.usage()
        assert u.used == s.used_bytes() == u.pinned + u.evictable
        assert u.pinned == value_charge(20, 900) * 2
        assert u.by_role["cache"] == value_charge(20, 900) + value_charge(20, 901)


def test_migration_to_v4_recharges_rows_and_turns_on_incremental_vacuum(tmp_path: Path) -> None:
    p = tmp_path / "v3.db"
    c = sqlite3.connect(p, isolation_level=None)
    for stmt in SCHEMA_V1:
        c.execute(stmt)
    MIGRATIONS[0](c)
    MIGRATIONS[1](c)
    c.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
    c.execute(
        "INSERT INTO values_ (key, kind, value, size, seq, expires, stored_at, republished_at, role, pinned, "
        "last_access) VALUES (?, 1, ?, 6228, NULL, NULL, 1.0, 1.0, 'own', 1, 1.0)",
        (key_at(1), b"x" * 6144),
    )
    c.execute(
        "INSERT INTO entries (key, author, name, value, size, seq, expires, stored_at, republished_at, role, "
        "pinned, last_access) VALUES (?, ?, ?, ?, 1, 1, 9e9, 1.0, 1.0, 'replica', 0, 1.0)",
        (key_at(2), b"a" * 32, b"t#1", b"v" * 50),
    )
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    c.close()
    with Store(p) as s:
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        assert s.used_bytes_by_role() == {"own": value_charge(20, 6144), "replica": entry_charge(20, 32, 3, 50),
                                          "cache": 0}
        assert s._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert_accounting(s)


@pytest.mark.parametrize("needed, budget", [(-1, 10), (10, -1)])
def test_make_room_refuses_negative_sizes(tmp_path: Path, needed: int, budget: int) -> None:
    with Store(tmp_path / "n.db") as s, pytest.raises(ValueError):
        s.make_room(needed, budget, near=NEAR)


def test_held_size_is_the_rows_charge(tmp_path: Path) -> None:
    with Store(tmp_path / "n.db") as s:
        s.put(key_at(7), b"v" * 300, kind=BLOCK, role="replica", now=T0)
        s.put_entry(key_at(8), b"a" * 32, b"t#1", b"e" * 50, seq=1, expires=T0 + 9, role="replica", now=T0)
        assert s.held_size(key_at(7)) == value_charge(20, 300)
        assert s.held_size(key_at(8), b"a" * 32, b"t#1") == entry_charge(20, 32, 3, 50)
        assert s.held_size(key_at(9)) == 0 and s.held_size(key_at(8), b"b" * 32, b"t#1") == 0

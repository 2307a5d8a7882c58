"""Tests for aether.storage.store on real SQLite files (no mocks)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aether.storage.store import (
    BLOCK,
    RECORD,
    SCHEMA_V1,
    SCHEMA_VERSION,
    PutResult,
    Store,
    StoreError,
    value_charge,
)


def k(i: int) -> bytes:
    return i.to_bytes(20, "big")


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "node.db") as s:
        yield s


def sql_sums(path: Path) -> tuple[int, dict[str, int]]:
    """SUM(size) over values_ and entries, computed from the rows by an independent connection."""
    c = sqlite3.connect(path)
    try:
        by_role: dict[str, int] = {}
        for table in ("values_", "entries"):
            for role, size in c.execute(f"SELECT role, SUM(size) FROM {table} GROUP BY role"):
                by_role[role] = by_role.get(role, 0) + size
    finally:
        c.close()
    return sum(by_role.values()), by_role


def assert_accounting(s: Store) -> None:
    total, by_role = sql_sums(s.path)
    assert s.used_bytes() == total
    assert s.used_bytes_by_role() == {r: by_role.get(r, 0) for r in ("own", "replica", "cache")}


# -- open / pragmas / errors --------------------------------------------------------------


def test_pragmas_and_fresh_schema(tmp_path: Path) -> None:
    with Store(tmp_path / "a.db", synchronous="FULL", cache_kib=256) as s:
        c = s._conn
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert c.execute("PRAGMA cache_size").fetchone()[0] == -256
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        assert s.used_bytes() == 0 and s.count() == 0
        assert s.file_bytes() > 0
    with Store(tmp_path / "a.db") as s:
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    with pytest.raises(ValueError):
        Store(tmp_path / "b.db", synchronous="OFF")


def test_garbage_file_is_store_error(tmp_path: Path) -> None:
    p = tmp_path / "garbage.db"
    junk = os.urandom(8192)
    p.write_bytes(junk)
    with pytest.raises(StoreError) as ei:
        Store(p)
    assert str(p) in str(ei.value)
    assert "not an aether database or corrupt" in str(ei.value)
    assert isinstance(ei.value.__cause__, sqlite3.DatabaseError)
    assert p.read_bytes() == junk  # untouched


def test_foreign_sqlite_db_and_unopenable_path(tmp_path: Path) -> None:
    p = tmp_path / "other.db"
    with sqlite3.connect(p) as c:
        c.execute("CREATE TABLE t (x)")
    c.close()
    with pytest.raises(StoreError, match="not an aether database"):
        Store(p)
    with pytest.raises(StoreError, match="cannot open"):
        Store(tmp_path / "no" / "such" / "dir" / "x.db")


def test_newer_schema_refused(tmp_path: Path) -> None:
    p = tmp_path / "n.db"
    Store(p).close()
    with sqlite3.connect(p) as c:
        c.execute("UPDATE meta SET value = '7' WHERE name = 'schema_version'")
    c.close()
    with pytest.raises(StoreError) as ei:
        Store(p)
    msg = str(ei.value)
    assert "7" in msg and str(SCHEMA_VERSION) in msg and str(p) in msg


def test_migration_from_v1(tmp_path: Path) -> None:
    p = tmp_path / "v1.db"
    c = sqlite3.connect(p, isolation_level=None)
    for stmt in SCHEMA_V1:
        c.execute(stmt)
    c.execute(
        "INSERT INTO values_ (key, kind, value, size, seq, expires, stored_at, republished_at, role, pinned) "
        "VALUES (?, 1, ?, ?, NULL, NULL, 100.0, 100.0, 'own', 1)",
        (k(1), b"block-one", 93),
    )
    c.execute(
        "INSERT INTO values_ (key, kind, value, size, seq, expires, stored_at, republished_at, role, pinned) "
        "VALUES (?, 2, ?, ?, 4, 500.0, 200.0, 200.0, 'replica', 0)",
        (k(2), b"rec", 87),
    )
    c.execute("INSERT INTO contacts VALUES (?, '10.0.0.1', 4000, 50.0)", (k(9),))
    c.close()

    with Store(p) as s:
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        a = s.get(k(1), touch=False)
        assert a is not None and a.value == b"block-one" and a.pinned and a.role == "own"
        assert a.last_access == 100.0  # migrated from stored_at
        b = s.get(k(2), touch=False)
        assert b is not None and b.seq == 4 and b.expires == 500.0 and b.kind == RECORD
        cols = {r[1] for r in s._conn.execute("PRAGMA table_info(contacts)")}
        assert "failures" in cols
        assert s._conn.execute("SELECT failures FROM contacts").fetchone()[0] == 0
        assert s.load_contacts() == [(k(9), "10.0.0.1", 4000)]
        # Byte totals start from the v1 rows, are recharged at their disk cost by v4, and keep tracking.
        assert s.used_bytes_by_role() == {"own": value_charge(20, 9), "replica": value_charge(20, 3), "cache": 0}
        s.put(k(3), b"x", kind=BLOCK, role="cache")
        assert_accounting(s)
        assert s.put(k(2), b"rec5", kind=RECORD, role="replica", seq=5) is PutResult.STORED
        assert_accounting(s)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    p = tmp_path / "r.db"
    with Store(p) as s:
        s.put(k(1), b"one", kind=BLOCK, role="own", pinned=True, now=10.0)
        s.put(k(2), b"two", kind=RECORD, role="replica", seq=3, expires=99.0, now=11.0)
        s.save_contacts([(k(7), "h", 1)], now=5.0)
        s.meta_set("last_republish", "123.5")
        used = s.used_bytes()
    with Store(p) as s:
        assert s.keys() == [k(1), k(2)]
        v = s.get(k(2), touch=False)
        assert (v.value, v.seq, v.expires, v.stored_at, v.role) == (b"two", 3, 99.0, 11.0, "replica")
        assert s.get(k(1), touch=False).pinned
        assert s.load_contacts() == [(k(7), "h", 1)]
        assert s.meta_get("last_republish") == "123.5"
        assert s.used_bytes() == used
        assert_accounting(s)


# -- put semantics ------------------------------------------------------------------------


def test_record_seq_semantics(store: Store) -> None:
    key = k(1)
    assert store.put(key, b"v5", kind=RECORD, role="replica", seq=5) is PutResult.STORED
    assert store.put(key, b"v4", kind=RECORD, role="replica", seq=4) is PutResult.REFUSED_OLDER
    assert store.put(key, b"v5", kind=RECORD, role="replica", seq=5) is PutResult.UNCHANGED
    assert store.put(key, b"v5-other", kind=RECORD, role="own", seq=5) is PutResult.REFUSED_CONFLICT
    v = store.get(key)
    assert (v.value, v.seq, v.role) == (b"v5", 5, "replica")  # refusals change nothing
    assert store.put(key, b"v6 longer", kind=RECORD, role="replica", seq=6, expires=50.0) is PutResult.STORED
    v = store.get(key)
    assert (v.value, v.seq, v.expires) == (b"v6 longer", 6, 50.0)
    assert store.used_bytes() == value_charge(20, len(b"v6 longer"))
    assert_accounting(store)


def test_block_semantics_and_kind_conflict(store: Store) -> None:
    assert store.put(k(1), b"data", kind=BLOCK, role="cache") is PutResult.STORED
    assert store.put(k(1), b"data", kind=BLOCK, role="cache") is PutResult.UNCHANGED
    assert store.put(k(1), b"other", kind=BLOCK, role="own") is PutResult.REFUSED_CONFLICT
    assert store.put(k(1), b"data", kind=RECORD, role="own", seq=1) is PutResult.REFUSED_CONFLICT
    assert store.get(k(1)).value == b"data"


def test_role_and_pin_precedence(store: Store) -> None:
    # own is kept when a replica of the same value arrives
    store.put(k(1), b"a", kind=BLOCK, role="own")
    assert store.put(k(1), b"a", kind=BLOCK, role="replica") is PutResult.UNCHANGED
    assert store.get(k(1)).role == "own"
    # a weaker role is upgraded, and the bytes move between role totals
    store.put(k(2), b"bb", kind=BLOCK, role="cache")
    assert store.put(k(2), b"bb", kind=BLOCK, role="replica", pinned=True) is PutResult.UNCHANGED
    v = store.get(k(2))
    assert v.role == "replica" and v.pinned
    assert store.put(k(2), b"bb", kind=BLOCK, role="cache") is PutResult.UNCHANGED
    v = store.get(k(2))
    assert v.role == "replica" and v.pinned  # pin sticks
    assert store.used_bytes_by_role() == {"own": value_charge(20, 1), "replica": value_charge(20, 2), "cache": 0}
    # a newer record replaces the bytes but keeps the stronger role and the pin
    store.put(k(3), b"r1", kind=RECORD, role="own", seq=1, pinned=True)
    assert store.put(k(3), b"r2", kind=RECORD, role="replica", seq=2) is PutResult.STORED
    v = store.get(k(3))
    assert (v.value, v.seq, v.role, v.pinned) == (b"r2", 2, "own", True)
    assert_accounting(store)


def test_expiry_merge_and_drop(store: Store) -> None:
    store.put(k(1), b"a", kind=BLOCK, role="cache", expires=100.0)
    store.put(k(1), b"a", kind=BLOCK, role="cache", expires=50.0)  # never shortened
    assert store.get(k(1)).expires == 100.0
    store.put(k(1), b"a", kind=BLOCK, role="replica", expires=200.0)
    assert store.get(k(1)).expires == 200.0
    store.put(k(2), b"b", kind=BLOCK, role="cache", expires=100.0)
    store.put(k(2), b"b", kind=BLOCK, role="own", expires=None)  # None = never
    assert store.get(k(2)).expires is None
    store.put(k(3), b"c", kind=RECORD, role="replica", seq=1, expires=150.0)
    store.put(k(4), b"d", kind=RECORD, role="replica", seq=1, expires=99.0)

    assert store.drop_expired(now=99.0) == 1  # expires <= now
    assert not store.contains(k(4))
    assert store.drop_expired(now=149.0) == 0
    assert store.drop_expired(now=1000.0) == 2
    assert store.keys() == [k(2)]
    assert_accounting(store)
    assert store.used_bytes() == value_charge(20, 1)


def test_get_touch_contains_delete(store: Store) -> None:
    assert not store.has_values()
    store.put(k(1), b"a", kind=BLOCK, role="own", now=10.0)
    assert store.has_values()
    assert store.get(k(1), touch=False).last_access == 10.0
    assert store.get(k(1), now=20.0).last_access == 10.0  # within ACCESS_GRANULARITY: no write
    assert store.get(k(1), now=100.0).last_access == 100.0
    assert store.get(k(1), touch=False).last_access == 100.0
    assert store.get(k(2)) is None
    assert store.contains(k(1)) and not store.contains(k(2))
    assert store.delete(k(1)) is True and store.delete(k(1)) is False
    assert store.count() == 0 and store.used_bytes() == 0 and not store.has_values()


def test_input_validation(store: Store) -> None:
    for bad in (b"short", b"x" * 21, "a" * 20, bytearray(20), None):
        with pytest.raises(ValueError):
            store.put(bad, b"v", kind=BLOCK, role="own")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.get(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.put(k(1), b"v", kind=3, role="own")
    with pytest.raises(ValueError):
        store.put(k(1), b"v", kind=BLOCK, role="friend")
    with pytest.raises(ValueError):
        store.put(k(1), b"v", kind=RECORD, role="own")  # record without seq
    with pytest.raises(ValueError):
        store.put(k(1), b"v", kind=BLOCK, role="own", seq=1)
    with pytest.raises(ValueError):
        store.put(k(1), b"v", kind=BLOCK, role="own", expires=float("nan"))
    with pytest.raises(ValueError):
        store.iter_values(role="nope")  # checked eagerly, not at the first next()
    with pytest.raises(ValueError):
        store.meta_set("schema_version", "9")
    assert store.count() == 0


# -- iteration, republish, contacts, meta -------------------------------------------------


def test_iteration_pages_with_concurrent_writes(tmp_path: Path) -> None:
    p = tmp_path / "it.db"
    with Store(p) as s, Store(p) as other:
        for i in range(0, 200, 2):  # even keys 0..198
            s.put(k(i), b"v%d" % i, kind=BLOCK, role="replica" if i % 4 else "cache")
        seen: list[bytes] = []
        deleted_ahead: set[bytes] = set()
        added_ahead: set[bytes] = set()
        for n, v in enumerate(s.iter_values(batch=7)):
            seen.append(v.key)
            cur = int.from_bytes(v.key, "big")
            if n % 5 == 0 and cur % 2 == 0:
                # Writes from another connection between (and within) batches.
                # Beyond the batch already fetched (7 rows span at most 12 key steps).
                ahead = k(cur + 20)
                if other.delete(ahead):
                    deleted_ahead.add(ahead)
                new = k(cur + 21)  # odd: a new key ahead of the fetched batch
                other.put(new, b"new", kind=BLOCK, role="cache")
                added_ahead.add(new)
                other.put(k(cur - 1 if cur else 1001), b"behind", kind=BLOCK, role="cache")
                other.put(v.key, b"v%d" % cur, kind=BLOCK, role="own")  # role change on a seen row
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        assert not deleted_ahead & set(seen)
        assert added_ahead - set(seen) == set()  # new keys ahead are seen...
        survivors = {k(i) for i in range(0, 200, 2)} - deleted_ahead
        assert survivors <= set(seen)  # ...and every untouched original is seen once
        assert deleted_ahead  # the test did exercise deletes
        # role filter and plain paging agree with SQL
        cache = [v.key for v in s.iter_values(role="cache", batch=3)]
        assert cache == sorted(
            bytes(r[0]) for r in s._conn.execute("SELECT key FROM values_ WHERE role = 'cache'")
        )
        assert [v.key for v in s.iter_values(batch=1000)] == s.keys()
        assert_accounting(s)


def test_iteration_exact_batch_boundary(store: Store) -> None:
    for i in range(6):
        store.put(k(i), b"x", kind=BLOCK, role="own")
    assert [v.key for v in store.iter_values(batch=3)] == [k(i) for i in range(6)]
    assert list(store.iter_values(role="replica")) == []


def test_republish_schedule(store: Store) -> None:
    store.put(k(1), b"a", kind=BLOCK, role="own", now=0.0)
    store.put(k(2), b"b", kind=BLOCK, role="replica", now=50.0)
    store.put(k(3), b"c", kind=BLOCK, role="replica", now=0.0, expires=80.0)
    due = store.due_for_republish(60.0, now=100.0)
    assert [v.key for v in due] == [k(1)]  # k(3) has expired, k(2) is recent
    assert [v.key for v in store.due_for_republish(60.0, now=70.0, role="replica")] == [k(3)]
    assert store.due_for_republish(60.0, now=100.0, role="replica") == []
    assert [v.key for v in store.due_for_republish(10.0, now=70.0)] == [k(1), k(3), k(2)]
    assert [v.key for v in store.due_for_republish(10.0, now=70.0, limit=1)] == [k(1)]
    assert store.mark_republished([k(1), k(3)], now=100.0) == 2
    assert store.get(k(1), touch=False).republished_at == 100.0
    assert [v.key for v in store.due_for_republish(40.0, now=100.0)] == [k(2)]


def test_contacts_replace_and_order(store: Store) -> None:
    store.save_contacts([(k(1), "10.0.0.1", 1), (k(2), "10.0.0.2", 2)], now=100.0)
    store.save_contacts(
        [(k(3), "h3", 3), (k(2), "h2", 22), (k(4), "h4", 4), (k(3), "dup", 9)], now=200.0
    )
    assert store.load_contacts() == [(k(3), "h3", 3), (k(2), "h2", 22), (k(4), "h4", 4)]
    assert store.load_contacts(limit=2) == [(k(3), "h3", 3), (k(2), "h2", 22)]
    with pytest.raises(ValueError):
        store.save_contacts([(k(5), "h", 70000)])
    assert len(store.load_contacts()) == 3  # failed save changed nothing
    store.save_contacts([])
    assert store.load_contacts() == []


def test_meta(store: Store) -> None:
    assert store.meta_get("last_republish") is None
    store.meta_set("last_republish", "1.5")
    store.meta_set("last_republish", "2.5")
    assert store.meta_get("last_republish") == "2.5"


# -- concurrency and durability -----------------------------------------------------------


def test_two_writers_contend_without_corruption(tmp_path: Path) -> None:
    p = tmp_path / "c.db"
    Store(p).close()
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            with Store(p) as s:
                for i in range(150):
                    s.put(k(base + i), os.urandom(32), kind=BLOCK, role="replica")
                    if i % 10 == 0:
                        s.delete(k(base + i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 10_000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(p) as s:
        assert s.count() == 2 * 135
        assert_accounting(s)
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


CHILD = r"""
import sys
from aether.storage.store import Store, BLOCK
s = Store(sys.argv[1], synchronous=sys.argv[2])
for i in range(1_000_000):
    key = i.to_bytes(20, "big")
    s.put(key, b"payload-%d-" % i + b"x" * 200, kind=BLOCK, role="own")
    print("ACK", i, flush=True)
"""


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_acked_writes_survive_kill_9(tmp_path: Path, sync: str) -> None:
    p = tmp_path / "k.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(p), sync],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "child died"
            acked.append(int(line.split()[1]))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # ACKs already in the pipe were acknowledged too
        acked += [int(ln.split()[1]) for ln in rest.decode().splitlines() if ln.startswith("ACK")]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert acked == list(range(len(acked)))
    with Store(p) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for i in acked:
            v = s.get(k(i), touch=False)
            assert v is not None and v.value.startswith(b"payload-%d-" % i)
        assert s.count() >= len(acked)
        assert_accounting(s)


# -- accounting invariant (stateful) ------------------------------------------------------

KEYS = [k(i) for i in range(6)]


class AccountingMachine(RuleBasedStateMachine):
    """Random puts / replacements / deletes / expiry / reopens: totals == SUM(size)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="aether-store-")
        self.path = Path(self.dir) / "s.db"
        self.store = Store(self.path)
        self.now = 1000.0

    @rule(
        key=st.sampled_from(KEYS),
        value=st.sampled_from([b"", b"a", b"bb", b"x" * 40]),  # collisions are the point
        kind=st.sampled_from([BLOCK, RECORD]),
        role=st.sampled_from(["own", "replica", "cache"]),
        seq=st.integers(0, 4),
        ttl=st.one_of(st.none(), st.floats(0, 100)),
        pinned=st.booleans(),
    )
    def put(self, key, value, kind, role, seq, ttl, pinned) -> None:
        expires = None if ttl is None else self.now + ttl
        self.store.put(
            key, value, kind=kind, role=role, seq=seq if kind == RECORD else None,
            expires=expires, pinned=pinned, now=self.now,
        )

    @rule(
        key=st.sampled_from(KEYS),
        role=st.sampled_from(["own", "replica", "cache"]),
        pinned=st.booleans(),
        newer=st.booleans(),
        value=st.sampled_from([b"", b"a", b"y" * 30]),
    )
    def reput_held(self, key, role, pinned, newer, value) -> None:
        """Re-store a held value (role/pin merge) or a newer version of a held record."""
        held = self.store.get(key, touch=False)
        if held is None:
            return
        if newer and held.kind == RECORD:
            r = self.store.put(key, value, kind=RECORD, role=role, seq=held.seq + 1, pinned=pinned)
            assert r is PutResult.STORED
        else:
            r = self.store.put(
                key, held.value, kind=held.kind, role=role, seq=held.seq, pinned=pinned,
                expires=held.expires,
            )
            assert r is PutResult.UNCHANGED

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key) -> None:
        self.store.delete(key)

    @rule(dt=st.floats(0, 60))
    def expire(self, dt) -> None:
        self.now += dt
        self.store.drop_expired(now=self.now)

    @rule(key=st.sampled_from(KEYS))
    def touch(self, key) -> None:
        self.store.get(key, now=self.now)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store(self.path)

    @invariant()
    def totals_match_rows(self) -> None:
        assert_accounting(self.store)
        rows = self.store._conn.execute("SELECT length(key), length(value), size FROM values_").fetchall()
        assert [r for r in rows if value_charge(r[0], r[1]) != r[2]] == []

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


AccountingMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_accounting_invariant = AccountingMachine.TestCase


def test_read_serves_only_unexpired_bytes_and_touches_sparingly(store: Store) -> None:
    store.put(k(1), b"alive", kind=BLOCK, role="replica", expires=1000.0, now=10.0)
    store.put(k(2), b"forever", kind=BLOCK, role="own", now=10.0)
    assert store.read(k(1), now=20.0) == b"alive"
    assert store.get(k(1), touch=False).last_access == 10.0  # within ACCESS_GRANULARITY
    assert store.read(k(1), now=500.0) == b"alive"
    assert store.get(k(1), touch=False).last_access == 500.0
    assert store.read(k(1), now=1000.0) is None  # expired: never served
    assert store.read(k(2), now=10**9) == b"forever"
    assert store.read(k(3)) is None
    with pytest.raises(ValueError):
        store.read(b"short")


def test_placements_name_where_each_held_item_lives_without_reading_it(store: Store) -> None:
    pattern = k(1000)
    for i in range(5):  # blocks 0..4; 0..2 listed by a held manifest of the pattern
        store.put(k(i), b"block %d" % i, kind=BLOCK, role="replica")
    store.put(k(9), b"a record", kind=RECORD, seq=1, role="replica")
    for author in (b"a" * 32, b"b" * 32):
        store.put_entry(pattern, author, b"manifest:x", b"entry", seq=1, expires=time.time() + 60, role="replica",
                        links=[k(0), k(1), k(2)])
    other = k(2000)
    store.put_entry(other, b"c" * 32, b"manifest:y", b"entry", seq=1, expires=time.time() + 60, role="replica",
                    links=[k(2)])  # block 2 belongs to two patterns: it lives near both
    everything = [(pattern, k(0)), (pattern, k(1)), (pattern, k(2)), (other, k(2)), (k(3), k(3)), (k(4), k(4)),
                  (k(9), k(9))]
    for batch in (1, 2, 1024):  # pages of every size, across the boundaries
        got = list(store.placements(batch=batch))
        assert sorted((p.place, p.key) for p in got if p.author is None) == sorted(everything)
        entries = [(p.place, p.key, p.author, p.name) for p in got if p.author is not None]
        assert entries == [(pattern, pattern, b"a" * 32, b"manifest:x"), (pattern, pattern, b"b" * 32, b"manifest:x"),
                           (other, other, b"c" * 32, b"manifest:y")]
        # Only what lives near a place in the ranges, whatever its own key.
        near = list(store.placements([(k(3), k(9)), (pattern, pattern)], batch=batch))
        assert sorted((p.place, p.key) for p in near) == sorted(
            [(k(3), k(3)), (k(4), k(4)), (k(9), k(9)), (pattern, k(0)), (pattern, k(1)), (pattern, k(2)),
             (pattern, pattern), (pattern, pattern)])
    assert list(store.placements([(k(5), k(8))])) == []
    with pytest.raises(ValueError):
        list(store.placements(batch=0))
    with pytest.raises(ValueError):
        list(store.placements([(b"short", k(1))]))

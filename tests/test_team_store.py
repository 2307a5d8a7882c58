"""What the store keeps for teams: descriptors by epoch, this node's sealed share, unlocked keys that expire."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aether.storage.store import MIGRATIONS, SCHEMA_V1, SCHEMA_VERSION, Store

T1, T2 = b"\x01" * 20, b"\x02" * 20


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "node.db") as s:
        yield s


def test_a_team_keeps_its_newest_epoch(store: Store) -> None:
    assert store.put_team(T1, "core", 0, b"d0")
    assert store.put_team(T1, "core", 2, b"d2", policy="approve")
    assert not store.put_team(T1, "core", 1, b"d1")  # older than held: refused
    row = store.team(T1)
    assert (row.name, row.epoch, row.descriptor, row.policy) == ("core", 2, b"d2", "approve")
    assert store.put_team(T1, "core", 2, b"d2 again")  # the same epoch may be refreshed
    assert store.team(T1).descriptor == b"d2 again"


def test_a_teams_policy_is_set_only_to_a_known_policy(store: Store) -> None:
    assert not store.set_team_policy(T1, "approve")  # no such team
    store.put_team(T1, "core", 0, b"d0")
    assert store.set_team_policy(T1, "approve") and store.team(T1).policy == "approve"
    with pytest.raises(ValueError, match="policy must be one of"):
        store.set_team_policy(T1, "never")
    assert store.team(T1).policy == "approve"
    assert store.set_team_policy(T1, "auto") and store.team(T1).policy == "auto"


def test_teams_by_name_may_be_several(store: Store) -> None:
    store.put_team(T2, "core", 0, b"b")
    store.put_team(T1, "core", 0, b"a")
    store.put_team(b"\x03" * 20, "ops", 0, b"c")
    assert [t.team_id for t in store.teams("core")] == [T1, T2]
    assert [t.name for t in store.teams()] == ["core", "core", "ops"]
    assert store.teams("nobody") == [] and store.team(b"\x09" * 20) is None


def test_shares_are_kept_per_epoch(store: Store) -> None:
    store.put_team_share(T1, 0, b"sealed-0")
    store.put_team_share(T1, 1, b"sealed-1")
    assert store.team_share(T1, 0) == b"sealed-0" and store.team_share(T1, 1) == b"sealed-1"
    assert store.team_share(T1, 2) is None


def test_unlocked_keys_expire_and_are_forgotten_on_lock(store: Store) -> None:
    store.put_team_key(T1, 0, b"k0", expires=100.0)
    store.put_team_key(T1, 1, b"k1", expires=300.0)
    store.put_team_key(T2, 0, b"x", expires=300.0)
    assert store.team_keys(T1, now=50.0) == {0: b"k0", 1: b"k1"}
    assert store.team_keys(T1, now=200.0) == {1: b"k1"}
    assert store.team_key_expiry(T1, 0, now=50.0) == 100.0 and store.team_key_expiry(T1, 0, now=200.0) is None
    assert store.team_key_expiry(T1, 1, now=200.0) == 300.0 and store.team_key_expiry(T1, 2, now=0.0) is None
    store.drop_expired(now=200.0)
    assert store._conn.execute("SELECT COUNT(*) FROM team_keys").fetchone()[0] == 2
    assert store.forget_team_keys(T1) == 1
    assert store.team_keys(T1, now=0.0) == {} and store.team_keys(T2, now=0.0) == {0: b"x"}
    assert store.forget_team_keys(now=400.0) == 1


@pytest.mark.parametrize("call", [
    lambda s: s.put_team(b"short", "n", 0, b""),
    lambda s: s.put_team(T1, "", 0, b""),
    lambda s: s.put_team(T1, "n", -1, b""),
    lambda s: s.put_team(T1, "n", True, b""),
    lambda s: s.put_team(T1, "n", 0, b"", policy="sometimes"),
    lambda s: s.put_team_share(T1, -2, b""),
    lambda s: s.put_team_key(T1, 0, b"", expires=None),
    lambda s: s.put_team_key(T1, 0, b"", expires=float("nan")),
])
def test_malformed_team_rows_are_refused(store: Store, call) -> None:
    with pytest.raises(ValueError):
        call(store)


def test_teams_survive_reopening_and_the_migration_adds_the_tables(tmp_path: Path) -> None:
    p = tmp_path / "v4.db"
    c = sqlite3.connect(p, isolation_level=None)
    for stmt in SCHEMA_V1:
        c.execute(stmt)
    for migrate in MIGRATIONS[:3]:
        migrate(c)
    c.execute("UPDATE meta SET value = '4' WHERE name = 'schema_version'")
    c.close()
    with Store(p) as s:
        assert s.meta_get("schema_version") == str(SCHEMA_VERSION)
        s.put_team(T1, "core", 3, b"d")
        s.put_team_share(T1, 3, b"share")
    with Store(p) as s:
        assert s.team(T1).epoch == 3 and s.team_share(T1, 3) == b"share"

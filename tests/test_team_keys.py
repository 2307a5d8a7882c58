"""Unlocked team keys (node/team_keys.py): sealed at rest, older epochs unchained, forgotten on time or on lock."""

from __future__ import annotations

import time

import pytest

from aether.crypto.records import create_record
from aether.crypto.teams import chain_previous, combine_shares, commitment, new_team_key, open_sealed
from aether.node.server import next_seq
from aether.node.team_ceremony import create_team, import_share
from aether.node.team_keys import held_chain, keep_unlocked, lock, unlocked_key, unlocked_keys
from aether.node.teams import DESCRIPTOR_KIND, Descriptor, descriptor_name, team_key
from aether.node.values import Entry
from aether.simulations.network import start_node, stop_all

from .conftest import QUIET
from .test_teams import approval


@pytest.fixture
async def team(tmp_path):
    """A 2-of-2 team made with no network, and its key combined from both members' shares."""
    nodes = [await start_node(tmp_path / name, QUIET) for name in ("alice", "bob")]
    alice, bob = nodes
    created = await create_team(alice, "keys", 2, [bob.identity.public], tmp_path / "out")
    d = created.descriptor
    import_share(bob, (tmp_path / "out" / f"{bob.node.id.hex()}.share").read_bytes())
    shares = [open_sealed(n.identity, n.store.team_share(d.team_id, 0), purpose="share", team_id=d.team_id, epoch=0)
              for n in nodes]
    try:
        yield alice, created, combine_shares(shares), bob
    finally:
        stop_all(nodes)


async def test_a_kept_key_is_sealed_at_rest_and_read_back(team, tmp_path) -> None:
    alice, created, key, _ = team
    team_id = created.descriptor.team_id
    assert unlocked_keys(alice, team_id) == {}
    assert keep_unlocked(alice, team_id, 0, key, ttl=60) == [0]
    assert unlocked_key(alice, team_id, 0) == key
    sealed = alice.store.team_keys(team_id)[0]
    assert key not in sealed
    alice.store.close()
    for path in (tmp_path / "alice").rglob("*"):
        if path.is_file():
            assert key not in path.read_bytes(), path  # neither the database nor its WAL holds it in clear


async def test_a_key_is_forgotten_when_its_time_is_up_and_on_lock(team) -> None:
    alice, created, key, _ = team
    team_id = created.descriptor.team_id
    keep_unlocked(alice, team_id, 0, key, ttl=30)
    assert alice.store.team_keys(team_id, now=time.time() + 29) != {}
    assert alice.store.team_keys(team_id, now=time.time() + 31) == {}
    assert lock(alice, team_id) == 1
    assert unlocked_keys(alice, team_id) == {} and lock(alice, team_id) == 0


async def test_a_key_another_node_sealed_does_not_open_here(team, tmp_path) -> None:
    alice, created, key, _ = team
    team_id = created.descriptor.team_id
    other = await start_node(tmp_path / "other", QUIET)
    try:
        keep_unlocked(other, team_id, 0, key, ttl=60)
        alice.store.put_team_key(team_id, 0, other.store.team_keys(team_id)[0], expires=time.time() + 60)
        assert unlocked_keys(alice, team_id) == {}  # a copied row opens only with the home's own key
    finally:
        stop_all([other])


async def test_unlocking_a_newer_epoch_keeps_every_older_key_it_chains_to(team) -> None:
    alice, created, key0, bob = team
    d0 = created.descriptor
    key1 = new_team_key()
    d1 = Descriptor(d0.team_id, d0.name, d0.salt, 1, d0.k, d0.members, commitment(key1, d0.team_id, 1),
                    d0.digest(), chain_previous(key1, d0.team_id, 0, key0))
    record = create_record(alice.identity, DESCRIPTOR_KIND, descriptor_name(d0.team_id, 1), next_seq(), d1.encode(), 3600)
    alice.keep_entry(Entry(team_key(d0.team_id), record.encode(), record), role="own", pinned=True)
    agreed = approval(bob.identity, record)  # K = 2 members of epoch 0 sign epoch 1
    alice.keep_entry(Entry(team_key(d0.team_id), agreed.encode(), agreed), role="replica", pinned=True)
    assert [link.descriptor.epoch for link in held_chain(alice, d0.team_id)] == [0, 1]
    assert keep_unlocked(alice, d0.team_id, 1, key1, ttl=60) == [1, 0]
    assert unlocked_keys(alice, d0.team_id) == {0: key0, 1: key1}


async def test_a_chain_that_does_not_open_keeps_only_the_key_given(team) -> None:
    alice, created, key0, _ = team
    d0 = created.descriptor
    key1, wrong = new_team_key(), new_team_key()
    d1 = Descriptor(d0.team_id, d0.name, d0.salt, 1, d0.k, d0.members, commitment(key1, d0.team_id, 1),
                    d0.digest(), chain_previous(wrong, d0.team_id, 0, key0))
    record = create_record(alice.identity, DESCRIPTOR_KIND, descriptor_name(d0.team_id, 1), next_seq(), d1.encode(), 3600)
    alice.keep_entry(Entry(team_key(d0.team_id), record.encode(), record), role="own", pinned=True)
    assert keep_unlocked(alice, d0.team_id, 1, key1, ttl=60) == [1]
    assert unlocked_keys(alice, d0.team_id) == {1: key1}

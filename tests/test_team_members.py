"""Membership over time: `team add-member` / `remove-member` start a new epoch (docs/teams.md "Membership changes").

Real nodes over UDP on 127.0.0.1, each with a real SQLite home, as in tests/test_teams.py.
Nobody holds a team key by default: where a test needs an epoch unlocked, it opens
the members' stored sealed shares itself, combines K of them, checks the commitment
and keeps the key with ``team_keys.keep_unlocked``, as `team unlock` will.
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_asyncio

from aether.crypto.identity import Identity, PublicIdentity
from aether.crypto.teams import (
    DecryptionError,
    chain_previous,
    check_commitment,
    combine_shares,
    commitment,
    decrypt_pattern,
    encrypt_pattern,
    new_team_key,
    unchain_previous,
)
from aether.node.api import handle
from aether.node.control import ControlError
from aether.node.patterns import PatternLibrary
from aether.node.server import AetherNode
from aether.node.team_api import held_descriptor
from aether.node.team_ceremony import (
    SHARE_SUFFIX,
    TeamLocked,
    _prepare,
    approve_change,
    change_members,
    create_team,
    import_share,
    plan_change,
)
from aether.node.team_inbox import Inbox
from aether.node.team_keys import held_chain, keep_unlocked, unlocked_key
from aether.node.teams import (
    MAX_TEAM_MEMBERS,
    Descriptor,
    TeamError,
    descriptor_name,
    follow_chain,
    inbox_key,
    inbox_name,
    team_key,
)
from aether.simulations.network import local_network, start_node, stop_all

from .conftest import QUIET
from .test_teams import approval, identities, open_share, signed, snapshot

CONFIG = QUIET.replace(ksize=8)
SIZE = 10
ON_NETWORK = pytest.mark.asyncio(loop_scope="module")
TTL = 3600.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("members"), SIZE, CONFIG, seed=7) as nodes:
        yield nodes


# ---------------------------------------------------------------------- helpers
def pub(node: AetherNode) -> PublicIdentity:
    return node.identity.public


def row_of(node: AetherNode, team_id: bytes):
    row = node.store.team(team_id)
    assert row is not None
    return row


def key_of(holders: list[AetherNode], d: Descriptor) -> bytes:
    """The epoch key rebuilt from the sealed shares these members' nodes hold, checked against the commitment."""
    shares = [open_share(n.identity, n.store.team_share(d.team_id, d.epoch), d.team_id, d.epoch) for n in holders]
    key = combine_shares(shares)
    assert check_commitment(key, d.team_id, d.epoch, d.commitment)
    return key


def unlock(node: AetherNode, holders: list[AetherNode], d: Descriptor) -> list[int]:
    return keep_unlocked(node, d.team_id, d.epoch, key_of(holders, d), TTL)


async def team_of(creator: AetherNode, members: list[AetherNode], k: int, name: str) -> Descriptor:
    """A team whose members have all taken in their share of epoch 0."""
    created = await create_team(creator, name, k, [pub(m) for m in members])
    for member in members:
        assert (await Inbox(member).poll()).imported == [(created.descriptor.team_id, 0)]
    return created.descriptor


async def approve(approvers: list[AetherNode], team_id: bytes) -> None:
    """Each of these members' nodes approves the one change of the team waiting for approval."""
    for node in approvers:
        await approve_change(node, row_of(node, team_id))


async def read_chain(reader: AetherNode, team_id: bytes) -> list[Descriptor]:
    found = await reader.get_entries(team_key(team_id))
    return [link.descriptor for link in follow_chain([e.record for e in found.entries], team_id)]


# ---------------------------------------------------------------------- adding
@ON_NETWORK
async def test_adding_a_member_starts_epoch_1_that_every_member_takes_in(network) -> None:
    alice, bob, carol, dave, outsider = network[0], network[1], network[2], network[3], network[9]
    d0 = await team_of(alice, [bob, carol], 2, "grow")
    team_id = d0.team_id
    unlock(alice, [alice, bob], d0)
    key0 = unlocked_key(alice, team_id, 0)

    changed = await change_members(alice, row_of(alice, team_id), add=[pub(dave)])
    d1 = changed.made.descriptor
    assert changed.pending and not changed.won and (changed.signers, changed.needed) == (1, 2)
    assert changed.previous == d0
    assert (d1.epoch, d1.k, d1.members) == (1, 2, (pub(alice), pub(bob), pub(carol), pub(dave)))
    assert d1.previous == d0.digest() and d1.commitment != d0.commitment
    d1.verify(pub(alice).signing_public, d0)
    assert changed.made.replicas > 0 and all(x.replicas > 0 for x in changed.made.deliveries if x.index != 1)
    # A proposal: K = 2 members of epoch 0 must sign it, so nobody follows it yet.
    assert await read_chain(outsider, team_id) == [d0]
    assert row_of(alice, team_id).epoch == 0
    for member in (bob, carol, dave):
        report = await Inbox(member).poll()
        assert report.imported == [] and report.waiting == 1  # its share waits for the approvals
        assert member.store.team_share(team_id, 1) is None
    await approve([bob], team_id)
    assert await read_chain(outsider, team_id) == [d0, d1]
    assert row_of(bob, team_id).epoch == 1  # the approval that completes it moves the approver's row
    await Inbox(alice).poll()  # the daemon's periodic read: the maker follows its approved change

    # The maker keeps its own share and not the new key (it unlocks epoch 1 like everyone).
    assert row_of(alice, team_id).epoch == 1 and held_descriptor(row_of(alice, team_id)) == d1
    assert alice.store.team_share(team_id, 1) is not None
    assert set(alice.store.team_keys(team_id)) == {0}

    for member in (bob, carol, dave):
        report = await Inbox(member).poll()
        assert report.imported == [(team_id, 1)] and report.refused == [] and report.waiting == 0
        assert row_of(member, team_id).epoch == 1
        assert [link.descriptor for link in held_chain(member, team_id)] == [d0, d1]
    assert dave.store.team_share(team_id, 0) is None  # no share of the epoch before it joined
    for pair in ([alice, dave], [bob, carol], [carol, dave]):
        assert key_of(pair, d1) != key0
    # The new member unlocks epoch 1 and reads epoch 0 through the chain.
    assert unlock(dave, [bob, dave], d1) == [1, 0]
    assert unlocked_key(dave, team_id, 0) == key0
    blob = encrypt_pattern(key0, team_id, 0, b"written before dave joined")
    before = hashlib.sha256(b"written before dave joined").digest()
    assert decrypt_pattern(unlocked_key(dave, team_id, 0), blob, before)[2] == b"written before dave joined"


# ---------------------------------------------------------------------- removing
@ON_NETWORK
async def test_a_removed_member_gets_nothing_of_the_new_epoch(network) -> None:
    alice, bob, carol, dave = network[4], network[5], network[6], network[7]
    d0 = await team_of(alice, [bob, carol, dave], 2, "shrink")
    team_id = d0.team_id
    unlock(bob, [bob, carol], d0)  # any member may change the team, not only its creator
    key0 = key_of([carol, dave], d0)

    changed = await change_members(bob, row_of(bob, team_id), remove=[pub(dave)])
    d1 = changed.made.descriptor
    assert changed.pending and d1.members == (pub(alice), pub(bob), pub(carol)) and d1.k == 2
    await approve([carol], team_id)
    assert d1.index_of(pub(dave).signing_public) is None
    assert [x.member for x in changed.made.deliveries] == [pub(alice), pub(bob), pub(carol)]

    # Nothing of epoch 1 reaches dave: no inbox entry, no share; its row learns it is out.
    in_box = await dave.get_entries(inbox_key(dave.node.id))
    assert inbox_name(dave.node.id, team_id, 1) not in {e.record.name for e in in_box.entries}
    report = await Inbox(dave).poll()
    assert report.imported == [] and report.moved == [(team_id, 1)]
    assert dave.store.team_share(team_id, 1) is None
    assert held_descriptor(row_of(dave, team_id)) == d1  # the newest epoch, in which dave is no member
    for member in (alice, carol):
        assert (await Inbox(member).poll()).imported == [(team_id, 1)]
        # What the answering side judges a request by: dave is no member of the epoch it holds.
        assert held_descriptor(row_of(member, team_id)).index_of(pub(dave).signing_public) is None

    # Everything dave holds (its epoch-0 share, the epoch-0 key) gives nothing of epoch 1.
    key1 = key_of([alice, carol], d1)
    assert key1 != key0 and not check_commitment(key0, team_id, 1, d1.commitment)
    with pytest.raises(DecryptionError):
        unchain_previous(key0, team_id, 0, d1.sealed_previous)  # the chain never runs forward
    dave_share = open_share(dave.identity, dave.store.team_share(team_id, 0), team_id, 0)
    carol_share = open_share(carol.identity, carol.store.team_share(team_id, 1), team_id, 1)
    assert not check_commitment(combine_shares([dave_share, carol_share]), team_id, 1, d1.commitment)
    blob = encrypt_pattern(key1, team_id, 1, b"after dave left")
    with pytest.raises(DecryptionError):
        decrypt_pattern(key0, blob, hashlib.sha256(b"after dave left").digest())

    # Whoever unlocks epoch 1 reads epoch 0 through the chain.
    assert unlock(carol, [alice, carol], d1) == [1, 0]
    assert unlocked_key(carol, team_id, 0) == key0

    # Dave, no longer a member, cannot make an epoch either.
    keep_unlocked(dave, team_id, 0, key0, TTL)
    with pytest.raises(TeamError, match="not a member of team shrink .* epoch 1"):
        await change_members(dave, row_of(dave, team_id), add=[Identity.generate().public])


# ---------------------------------------------------------------------- approvals
@ON_NETWORK
async def test_a_change_takes_effect_with_k_approvals_and_not_with_k_minus_one(network) -> None:
    alice, bob, carol, dave, erin = network[0], network[1], network[2], network[3], network[4]
    d0 = await team_of(alice, [bob, carol, dave], 3, "quorum")
    team_id = d0.team_id
    unlock(alice, [alice, bob, carol], d0)
    changed = await change_members(alice, row_of(alice, team_id), add=[pub(erin)])
    d1 = changed.made.descriptor
    assert changed.pending and (changed.signers, changed.needed) == (1, 3)

    await approve([bob], team_id)  # 2 of 3: still pending everywhere
    for node in (alice, bob, carol, dave, erin):
        await Inbox(node).poll()
    assert [row_of(n, team_id).epoch for n in (alice, bob, carol, dave)] == [0, 0, 0, 0]
    assert erin.store.team(team_id) is None
    with pytest.raises(TeamError, match="this node already approved that change of team quorum .* 1 more approval"):
        await approve([bob], team_id)
    with pytest.raises(TeamError, match="this node made that change"):
        await approve([alice], team_id)

    approved = await approve_change(carol, row_of(carol, team_id))  # the third signer completes it
    assert approved.proposal.complete and approved.followed == d1 and approved.replicas > 0
    for node in (alice, bob, dave, erin):  # each daemon's periodic read follows it, share and all
        await Inbox(node).poll()
    await Inbox(carol).poll()
    for node in (alice, bob, carol, dave, erin):
        assert held_descriptor(row_of(node, team_id)) == d1 and node.store.team_share(team_id, 1) is not None
        assert [link.descriptor for link in held_chain(node, team_id)] == [d0, d1]
    key_of([bob, carol, erin], d1)
    with pytest.raises(TeamError, match="no change of team quorum .* waits for approval: epoch 1 is the newest"):
        await approve([dave], team_id)


@ON_NETWORK
async def test_a_removed_member_cannot_replace_the_epoch_that_removed_it(network) -> None:
    """Rex, removed with K = 2, signs its own epoch 1 that keeps it in, with a key it knows and a smaller digest."""
    alice, bob, rex, outsider = network[5], network[6], network[7], network[8]
    d0 = await team_of(alice, [bob, rex], 2, "ousted")
    team_id = d0.team_id
    key0 = key_of([alice, bob], d0)
    keep_unlocked(alice, team_id, 0, key0, TTL)
    changed = await change_members(alice, row_of(alice, team_id), remove=[pub(rex)])
    await bob.put_entry(approval(bob.identity, changed.made.record))  # what `team approve-change` signs
    d1 = changed.made.descriptor
    for node in (alice, bob, rex):
        await Inbox(node).poll()
    assert [held_descriptor(row_of(n, team_id)) for n in (alice, bob, rex)] == [d1, d1, d1]

    # Rex's own epoch 1: itself back in, K = 1, a key it keeps; tried until its digest is the smaller.
    while True:
        rex_key = new_team_key()
        rival = Descriptor(team_id, d0.name, d0.salt, 1, 1, (pub(alice), pub(bob), pub(rex)),
                           commitment(rex_key, team_id, 1), d0.digest(), chain_previous(rex_key, team_id, 0, key0))
        if rival.digest() < d1.digest():
            break
    rival.verify(pub(rex).signing_public, d0)  # a member of epoch 0 may sign it: the old rule alone lets it in
    rival_record = signed(rex.identity, rival)
    await rex.put_entry(rival_record)
    await rex.put_entry(approval(rex.identity, rival_record))  # its own approval again: still one signer
    await outsider.put_entry(approval(outsider.identity, rival_record))  # a non-member's: nobody
    await rex.put_entry(approval(rex.identity, changed.made.record, maker=pub(rex).signing_public))

    for node in (alice, bob, rex):
        await Inbox(node).poll()
    for node in (alice, bob):
        assert held_descriptor(row_of(node, team_id)) == d1
        with pytest.raises(TeamError, match="no change of team ousted .* waits for approval"):
            await approve([node], team_id)  # the rival builds on epoch 0, not on the epoch held
    for reader in (outsider, rex):  # a reader from epoch 0, and rex's own node
        assert await read_chain(reader, team_id) == [d0, d1]
    assert held_descriptor(row_of(rex, team_id)) == d1
    with pytest.raises(TeamError, match="this node is not a member of team ousted .* epoch 1: only its members approve"):
        await approve([rex], team_id)


# ---------------------------------------------------------------------- refusing
@ON_NETWORK
async def test_invalid_changes_are_refused_and_write_nothing(network, tmp_path) -> None:
    alice, bob, carol = network[0], network[8], network[9]
    d0 = await team_of(alice, [bob, carol], 2, "strict")
    team_id = d0.team_id
    unlock(alice, [alice, carol], d0)
    row = row_of(alice, team_id)
    stranger = Identity.generate().public
    many = [i.public for i in identities(MAX_TEAM_MEMBERS - 2)]
    out = tmp_path / "shares"
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / f"{carol.node.id.hex()}{SHARE_SUFFIX}").write_bytes(b"from another ceremony")
    before = snapshot(network)
    cases = [
        ({"add": [pub(bob)]}, "already a member"),
        ({"add": [stranger, stranger]}, "listed twice"),
        ({"remove": [stranger]}, "is not a member of team strict"),
        ({"remove": [pub(bob), pub(carol)]}, "would have 1 member.*fewer than its threshold 2: lower it with --threshold"),
        ({"remove": [pub(alice)]}, "cannot remove itself"),
        ({}, "nothing to change"),
        ({"add": [stranger], "k": 0}, "at least 1"),
        ({"add": [stranger], "k": 5}, "threshold 5 is more than the 4 members"),
        ({"remove": [pub(carol)], "k": 3}, "threshold 3 is more than the 2 members"),
        ({"add": many}, f"does not fit one descriptor record: at most {MAX_TEAM_MEMBERS}"),
        ({"add": [stranger], "shares_out": taken}, "already exists"),
        ({"add": [PublicIdentity(stranger.signing_public, pub(bob).sealing_public)]}, "shares a sealing key"),
    ]
    for change, message in cases:
        with pytest.raises(TeamError, match=message):
            await change_members(alice, row, **{"shares_out": out, **change})
    library = PatternLibrary(alice)
    good = stranger.to_string()
    for op, args, message in [
        ("team-add-member", {"team": "strict", "members": [good[:-1] + ("q" if good[-1] != "q" else "p")]},
         "member 1 .*invalid identity"),
        ("team-add-member", {"team": "strict", "members": ["bob"]}, "member 1 .*invalid identity"),
        ("team-remove-member", {"team": "strict", "members": []}, "at least one member"),
        ("team-add-member", {"team": "nobody", "members": [good]}, "no team named 'nobody'"),
        ("team-remove-member", {"team": "strict", "members": [good], "threshold": 1}, "is not a member"),
        ("team-add-member", {"team": "strict", "members": [good], "shares_out": "relative"}, "absolute path"),
    ]:
        with pytest.raises(ControlError, match=message):
            await handle(library, op, args)
    assert snapshot(network) == before
    assert not out.exists()
    assert row_of(alice, team_id) == row


@ON_NETWORK
async def test_a_locked_team_cannot_be_changed(network) -> None:
    alice, bob, carol = network[1], network[2], network[3]
    d0 = await team_of(alice, [bob, carol], 2, "closed")
    before = snapshot(network)
    with pytest.raises(TeamLocked, match="^team locked: run aether-node team unlock closed$"):
        await change_members(alice, row_of(alice, d0.team_id), add=[Identity.generate().public])
    # A kept key that the commitment refuses unlocks nothing either.
    keep_unlocked(alice, d0.team_id, 0, bytes(32), TTL)
    before = snapshot(network)
    with pytest.raises(TeamLocked, match="team locked"):
        await change_members(alice, row_of(alice, d0.team_id), remove=[pub(carol)])
    assert snapshot(network) == before
    assert row_of(alice, d0.team_id).epoch == 0


# ---------------------------------------------------------------------- a fork
@ON_NETWORK
async def test_two_changes_at_once_every_reader_takes_the_smaller_digest(network) -> None:
    """Alice adds erin while bob, who has not heard of it, removes carol: two valid epochs 1."""
    alice, bob, carol, erin = network[4], network[5], network[6], network[7]
    d0 = await team_of(alice, [bob, carol], 2, "fork")
    team_id = d0.team_id
    unlock(alice, [alice, bob], d0)
    unlock(bob, [alice, bob], d0)

    by_alice = await change_members(alice, row_of(alice, team_id), add=[pub(erin)])
    assert by_alice.pending
    assert row_of(bob, team_id).epoch == 0  # bob has not polled: it builds on epoch 0 too
    by_bob = await change_members(bob, row_of(bob, team_id), remove=[pub(carol)])
    assert by_bob.pending
    # Carol approves both before her node reads either back: two valid epochs 1.
    for made in (by_alice.made, by_bob.made):
        await carol.put_entry(approval(carol.identity, made.record))
    ours = {alice.node.id: by_alice.made.descriptor, bob.node.id: by_bob.made.descriptor}
    winner = min(ours.values(), key=Descriptor.digest)
    loser_node, winner_node = (alice, bob) if winner == ours[bob.node.id] else (bob, alice)

    for node in (alice, bob, carol, erin):
        await Inbox(node).poll()
    for reader in network:
        assert await read_chain(reader, team_id) == [d0, winner]
    for node in (alice, bob, carol):
        assert held_descriptor(row_of(node, team_id)) == winner
    # The loser drops what it made: its descriptor, its inbox entries and its share of that epoch.
    me = loser_node.identity.public.signing_public
    assert loser_node.store.entry(team_key(team_id), me, descriptor_name(team_id, 1)) is None
    assert not [e for e in loser_node.store.iter_entries(role="own", kind_prefix=b"inbox:")
                if e.author == me and e.name.endswith(f"{team_id.hex()}/1".encode())]
    # Every member of the winning epoch holds its share of it: K of them give its key.
    holders = [n for n in (alice, bob, carol, erin) if winner.index_of(pub(n).signing_public) is not None]
    assert all(n.store.team_share(team_id, 1) is not None for n in holders)
    key_of(holders[:2], winner)
    for node in (alice, bob, carol, erin):
        if node not in holders:
            assert node.store.team_share(team_id, 1) is None
    assert winner_node.store.entry(team_key(team_id), pub(winner_node).signing_public,
                                   descriptor_name(team_id, 1)) is not None


@ON_NETWORK
async def test_a_share_refused_while_following_a_forks_loser_is_taken_once_the_winner_is_seen(network) -> None:
    """Carol sees the losing epoch 1 and the winner's share before the winner's descriptor."""
    alice, bob, carol = network[1], network[2], network[3]
    d0 = await team_of(alice, [bob, carol], 2, "late")
    key0 = key_of([alice, bob], d0)
    made = {}
    for maker in (alice, bob):
        plan = plan_change(pub(maker), d0, add=[Identity.generate().public])
        key = new_team_key()
        d1 = Descriptor(d0.team_id, d0.name, d0.salt, 1, plan.k, plan.members, commitment(key, d0.team_id, 1),
                        d0.digest(), chain_previous(key, d0.team_id, 0, key0))
        made[maker.node.id] = _prepare(maker, plan, d1, key)
    winner, loser = sorted(made.values(), key=lambda c: c.descriptor.digest())
    by_author = {pub(maker).signing_public: maker for maker in (alice, bob)}
    to_carol = winner.inbox[winner.descriptor.members.index(pub(carol))]
    approving = {alice.node.id: bob, bob.node.id: alice}  # each maker approves the other's change
    await by_author[loser.record.author].put_entry(loser.record)
    loser_maker = by_author[loser.record.author]
    await approving[loser_maker.node.id].put_entry(approval(approving[loser_maker.node.id].identity, loser.record))
    await by_author[winner.record.author].put_entry(to_carol)

    inbox = Inbox(carol)
    first = await inbox.poll()
    assert first.imported == [] and any("not signed by the member who made that epoch" in r for r in first.refused)
    assert held_descriptor(row_of(carol, d0.team_id)) == loser.descriptor
    await inbox.poll()
    winner_maker = by_author[winner.record.author]
    await winner_maker.put_entry(winner.record)
    await approving[winner_maker.node.id].put_entry(approval(approving[winner_maker.node.id].identity, winner.record))
    assert (await inbox.poll()).moved == [(d0.team_id, 1)]
    assert held_descriptor(row_of(carol, d0.team_id)) == winner.descriptor
    assert (await inbox.poll()).imported == [(d0.team_id, 1)]
    assert carol.store.team_share(d0.team_id, 1) == to_carol.payload


# ---------------------------------------------------------------------- by hand
@ON_NETWORK
async def test_an_offline_change_travels_by_share_files(tmp_path) -> None:
    names = ("alice", "bob", "carol", "dave")
    nodes = [await start_node(tmp_path / name, CONFIG) for name in names]  # never joined: no network at all
    try:
        alice, bob, carol, dave = nodes
        # K = 1 at epoch 0: one member's signature makes epoch 1, so no approval has to travel.
        created = await create_team(alice, "field", 1, [pub(bob), pub(carol)], tmp_path / "out0")
        d0 = created.descriptor
        by_member = {pub(node): node for node in nodes}
        for x in created.deliveries:
            if x.file:
                import_share(by_member[x.member], x.file.read_bytes())
        unlock(alice, [alice, bob], d0)

        changed = await change_members(alice, row_of(alice, d0.team_id), add=[pub(dave)], k=3,
                                       shares_out=tmp_path / "out1")
        d1 = changed.made.descriptor
        assert changed.won and changed.made.replicas == 0 and (d1.epoch, d1.k, d1.n) == (1, 3, 4)
        files = {x.member: x.file for x in changed.made.deliveries if x.file}
        assert set(files) == {pub(bob), pub(carol), pub(dave)}
        accepted = import_share(dave, files[pub(dave)].read_bytes())  # dave has never seen the team
        assert (accepted.descriptor, accepted.index, accepted.new) == (d1, 4, True)
        assert [link.descriptor for link in held_chain(dave, d0.team_id)] == [d0, d1]
        assert row_of(bob, d0.team_id).epoch == 0
        assert import_share(bob, files[pub(bob)].read_bytes()).newest == d1
        assert row_of(bob, d0.team_id).epoch == 1
        with pytest.raises(TeamError, match="this share is for node"):
            import_share(carol, files[pub(bob)].read_bytes())
        import_share(carol, files[pub(carol)].read_bytes())
        assert unlock(dave, [bob, carol, dave], d1) == [1, 0]
        assert unlocked_key(dave, d0.team_id, 0) == unlocked_key(alice, d0.team_id, 0)

        # From epoch 1 (K = 3), a change is a proposal: its share files are refused until it is approved.
        pending = await change_members(dave, row_of(dave, d0.team_id), remove=[pub(carol)],
                                       shares_out=tmp_path / "out2")
        assert pending.pending and (pending.signers, pending.needed) == (1, 3)
        bob_file = next(x.file for x in pending.made.deliveries if x.member == pub(bob))
        with pytest.raises(TeamError, match="epoch 2 was found: the change is proposed and waits for approvals"):
            import_share(bob, bob_file.read_bytes())
        assert row_of(bob, d0.team_id).epoch == 1 and row_of(dave, d0.team_id).epoch == 1
    finally:
        stop_all(nodes)

"""Teams in the DHT (node/teams.py, node/team_ceremony.py, node/team_inbox.py; docs/teams.md).

Descriptors and their forgeries with real keys; the key ceremony, inbox delivery and
share files on real nodes over UDP on 127.0.0.1, each with a real SQLite home.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import stat

import msgpack
import pytest
import pytest_asyncio

from aether.crypto.identity import Identity, PublicIdentity
from aether.crypto.records import create_record, decode_record
from aether.crypto.teams import (
    DecryptionError,
    chain_previous,
    check_commitment,
    combine_shares,
    commitment,
    new_team_id,
    open_sealed,
    seal,
    split_key,
)
from aether.node.server import AetherNode, next_seq
from aether.node.team_ceremony import (
    SHARE_SUFFIX,
    accept_share,
    create_team,
    import_share,
    parse_members,
    plan_team,
    share_file,
)
from aether.node import team_inbox
from aether.node.team_inbox import Inbox
from aether.node.teams import (
    APPROVAL_KIND,
    DESCRIPTOR_KIND,
    INBOX_KIND,
    MAX_TEAM_MEMBERS,
    Approval,
    Descriptor,
    Link,
    TeamError,
    descriptor_name,
    descriptor_of,
    follow_chain,
    inbox_name,
    parse_inbox_name,
    team_key,
)
from aether.simulations.network import address_of, local_network, start_node, stop_all

from .conftest import QUIET

CONFIG = QUIET.replace(ksize=8)
SIZE = 8
ON_NETWORK = pytest.mark.asyncio(loop_scope="module")
"""The network tests share one event loop, like the module's network."""


# ---------------------------------------------------------------------- helpers
def identities(n: int) -> list[Identity]:
    return [Identity.generate() for _ in range(n)]


def epoch0(creator: Identity, members: list[PublicIdentity], k: int = 2, name: str = "eng",
           key: bytes = bytes(32)) -> Descriptor:
    team_id, salt = new_team_id(creator.public.signing_public, name)
    return Descriptor(team_id, name, salt, 0, k, tuple(members), commitment(key, team_id, 0))


def epoch1(previous: Descriptor, members: list[PublicIdentity], key: bytes = bytes(range(32))) -> Descriptor:
    return Descriptor(previous.team_id, previous.name, previous.salt, 1, 1, tuple(members),
                      commitment(key, previous.team_id, 1), previous.digest(),
                      chain_previous(key, previous.team_id, 0, bytes(32)))


def signed(identity: Identity, descriptor: Descriptor):
    return create_record(identity, DESCRIPTOR_KIND, descriptor_name(descriptor.team_id, descriptor.epoch),
                         next_seq(), descriptor.encode(), 3600)


def approval(identity: Identity, proposed, maker: bytes | None = None):
    """``identity``'s signed approval of the descriptor record ``proposed`` (as made by ``maker``, its author by default)."""
    a = Approval.of(Link(descriptor_of(proposed), proposed))
    if maker is not None:
        a = dataclasses.replace(a, maker=maker)
    return create_record(identity, APPROVAL_KIND, a.name(), next_seq(), a.encode(), 3600)


def open_share(identity: Identity, sealed: bytes, team_id: bytes, epoch: int = 0) -> bytes:
    return open_sealed(identity, sealed, purpose="share", team_id=team_id, epoch=epoch)


def snapshot(nodes: list[AetherNode]) -> set:
    """Every entry, team, share and key any node holds: what a refused request must leave unchanged."""
    held = set()
    for node in nodes:
        store = node.store
        held |= {(node.node.id, e.key, e.author, e.name, e.seq) for e in store.iter_entries()}
        for row in store.teams():
            held.add((node.node.id, "team", row.team_id, row.epoch))
            held.add((node.node.id, "share", row.team_id, store.team_share(row.team_id, row.epoch)))
            held.add((node.node.id, "keys", row.team_id, tuple(store.team_keys(row.team_id))))
    return held


# ---------------------------------------------------------------------- descriptors
def test_a_descriptor_round_trips_through_its_canonical_encoding() -> None:
    alice, bob = identities(2)
    d = epoch0(alice, [alice.public, bob.public])
    assert Descriptor.decode(d.encode()) == d
    assert d.index_of(bob.public.signing_public) == 2 and d.index_of(bytes(32)) is None
    later = epoch1(d, [bob.public])
    assert Descriptor.decode(later.encode()) == later
    assert later.previous == hashlib.sha256(d.encode()).digest()


@pytest.mark.parametrize("change, message", [
    (lambda f: f[:8], "list of 9 fields"),
    (lambda f: [*f[:4], 0, *f[5:]], "at least 1"),
    (lambda f: [*f[:4], 3, *f[5:]], "more than the 2 members"),
    (lambda f: [*f[:4], True, *f[5:]], "whole number"),
    (lambda f: [*f[:3], -1, *f[4:]], "epoch"),
    (lambda f: [*f[:5], [f[5][0], f[5][0]], *f[6:]], "listed twice"),
    (lambda f: [*f[:5], [], *f[6:]], "1 to 255 members"),
    (lambda f: [*f[:5], [f[5][0][:63]], *f[6:]], "64 bytes"),
    (lambda f: [*f[:5], [bytes(64)], *f[6:]], "member 1"),
    (lambda f: [*f[:2], b"short", *f[3:]], "salt"),
    (lambda f: [f[0][:19], *f[1:]], "team ID"),
    (lambda f: [*f[:1], "", *f[2:]], "name"),
    (lambda f: [*f[:6], f[6][:31], *f[7:]], "commitment"),
    (lambda f: [*f[:7], bytes(32), f[8]], "epoch 0 has no previous"),
])
def test_malformed_descriptors_are_refused_with_the_reason(change, message: str) -> None:
    alice, bob = identities(2)
    fields = msgpack.unpackb(epoch0(alice, [alice.public, bob.public]).encode())
    with pytest.raises(TeamError, match=message):
        Descriptor.decode(msgpack.packb(change(fields), use_bin_type=True))


def test_a_descriptor_is_refused_unless_canonical_msgpack() -> None:
    alice = Identity.generate()
    fields = msgpack.unpackb(epoch0(alice, [alice.public], k=1).encode())
    parts = [msgpack.packb(f, use_bin_type=True) for f in fields]
    parts[3] = b"\xcf" + (0).to_bytes(8, "big")  # epoch 0 as a 64-bit integer: not the shortest form
    with pytest.raises(TeamError, match="canonical"):
        Descriptor.decode(b"\x99" + b"".join(parts))
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", "text"):
        with pytest.raises(TeamError):
            Descriptor.decode(junk)


def test_a_descriptor_lists_at_most_255_members() -> None:
    alice = Identity.generate()
    many = [i.public for i in identities(256)]
    with pytest.raises(TeamError, match="at most 255"):
        epoch0(alice, many, k=2)
    assert epoch0(alice, many[:255], k=255).n == 255


def test_a_descriptor_refuses_members_that_share_a_sealing_key() -> None:
    alice, bob = identities(2)
    twin = PublicIdentity(Identity.generate().public.signing_public, bob.public.sealing_public)
    with pytest.raises(TeamError, match="member 3 .* shares a sealing key with another: member 2"):
        epoch0(alice, [alice.public, bob.public, twin])


def test_the_creator_signs_epoch_0() -> None:
    alice, bob = identities(2)
    d = epoch0(alice, [alice.public, bob.public])
    d.verify(alice.public.signing_public)
    with pytest.raises(TeamError, match="must be signed by the team's creator"):
        d.verify(bob.public.signing_public)  # a member, but not the creator


@pytest.mark.parametrize("field, value", [("salt", bytes(16)), ("name", "other")])
def test_a_team_id_that_its_creator_name_and_salt_do_not_give_is_refused(field: str, value: object) -> None:
    alice, bob = identities(2)
    forged = dataclasses.replace(epoch0(alice, [alice.public, bob.public]), **{field: value})
    with pytest.raises(TeamError, match="is not the one its signer"):
        forged.verify(alice.public.signing_public)


def test_a_creator_outside_its_own_team_is_refused() -> None:
    alice, bob, carol = identities(3)
    with pytest.raises(TeamError, match="not among its members"):
        epoch0(alice, [bob.public, carol.public]).verify(alice.public.signing_public)


def test_epoch_1_is_signed_by_a_member_of_epoch_0_and_names_it() -> None:
    alice, bob, mallory = identities(3)
    first = epoch0(alice, [alice.public, bob.public])
    second = epoch1(first, [alice.public])
    second.verify(bob.public.signing_public, first)  # any member of epoch 0, even one it removes
    with pytest.raises(TeamError, match="not a member of epoch 0"):
        second.verify(mallory.public.signing_public, first)
    with pytest.raises(TeamError, match="another previous epoch"):
        dataclasses.replace(second, previous=bytes(32)).verify(alice.public.signing_public, first)
    with pytest.raises(TeamError, match="can only be checked against epoch 0"):
        second.verify(alice.public.signing_public)
    other = epoch0(alice, [alice.public], k=1, name="other")
    with pytest.raises(TeamError, match="does not follow"):
        second.verify(alice.public.signing_public, other)
    renamed = dataclasses.replace(second, name="renamed")
    with pytest.raises(TeamError, match="name or salt"):
        renamed.verify(alice.public.signing_public, first)


def test_the_chain_takes_the_newest_valid_epoch_and_leaves_forgeries_out() -> None:
    alice, bob, mallory = identities(3)
    first = epoch0(alice, [alice.public, bob.public])
    second = epoch1(first, [alice.public, bob.public])
    forged_first = epoch0(mallory, [mallory.public, bob.public])  # mallory's own team, not alice's
    records = [
        signed(mallory, dataclasses.replace(first, k=1)),  # epoch 0 by someone else than the creator
        signed(alice, first),
        signed(mallory, epoch1(first, [mallory.public])),  # epoch 1 by a non-member
        signed(bob, second),
        signed(mallory, forged_first),
    ]
    records.append(approval(alice, records[3]))  # K = 2 members of epoch 0 sign epoch 1: bob and alice
    chain = follow_chain(records, first.team_id)
    assert [link.descriptor for link in chain] == [first, second]
    assert chain[1].record.author == bob.public.signing_public and chain[1].approvals == (records[5],)
    assert follow_chain(records[:1], first.team_id) == []
    assert [c.descriptor for c in follow_chain(records[3:], first.team_id, start=records[1])] == [first, second]


def test_epoch_1_counts_only_with_k_distinct_members_of_epoch_0_approving_its_exact_payload() -> None:
    alice, bob, carol, removed, outsider = identities(5)
    first = epoch0(alice, [alice.public, bob.public, carol.public, removed.public], k=3)
    proposed = signed(alice, epoch1(first, [alice.public, bob.public, carol.public]))
    other = signed(alice, epoch1(first, [alice.public, bob.public, carol.public], key=bytes(32)))  # another key
    copied = signed(bob, descriptor_of(proposed))  # the same payload, re-signed by another maker
    start = signed(alice, first)

    def epochs(*records) -> list[int]:
        return [link.descriptor.epoch for link in follow_chain([start, *records], first.team_id)]

    assert epochs(proposed) == [0]  # the maker alone: 1 of 3
    assert epochs(proposed, approval(bob, proposed)) == [0]  # K - 1 = 2 of 3: still pending
    assert epochs(proposed, approval(bob, proposed), approval(carol, proposed)) == [0, 1]
    assert epochs(proposed, approval(bob, proposed), approval(removed, proposed)) == [0, 1]  # a member of epoch 0
    # Approvals that add nobody: a non-member's, another payload's, another maker's, the maker's own,
    # and one member's approval counted twice (two sequence numbers of one entry).
    assert epochs(proposed, approval(bob, proposed), approval(outsider, proposed)) == [0]
    assert epochs(proposed, approval(bob, proposed), approval(carol, other)) == [0]
    assert epochs(proposed, approval(bob, proposed), approval(carol, proposed, maker=bob.public.signing_public)) == [0]
    assert epochs(proposed, approval(bob, proposed), approval(alice, proposed)) == [0]
    assert epochs(proposed, approval(bob, proposed), approval(bob, proposed)) == [0]
    assert epochs(copied, approval(alice, proposed), approval(carol, proposed)) == [0]
    forged = approval(carol, proposed)
    renamed = dataclasses.replace(forged, name=approval(carol, other).name)
    assert epochs(proposed, approval(bob, proposed), renamed) == [0]  # named for another proposal
    # K = 1: any one member's signature is enough, as it already unlocks alone.
    solo = epoch0(alice, [alice.public, bob.public], k=1)
    assert [link.descriptor.epoch for link in follow_chain(
        [signed(alice, solo), signed(bob, epoch1(solo, [bob.public]))], solo.team_id)] == [0, 1]


def test_of_two_epochs_1_the_smaller_digest_wins_only_among_approved_ones() -> None:
    alice, bob, carol = identities(3)
    first = epoch0(alice, [alice.public, bob.public, carol.public])
    a, b = (signed(alice, epoch1(first, [alice.public, bob.public], key=bytes([i]) * 32)) for i in (1, 2))
    small, large = sorted([a, b], key=lambda r: descriptor_of(r).digest())
    base = [signed(alice, first), small, large, approval(carol, large)]
    assert follow_chain(base, first.team_id)[-1].record == large  # the smaller one lacks approvals
    assert follow_chain([*base, approval(bob, small)], first.team_id)[-1].record == small


def test_descriptor_records_must_be_named_for_their_team_and_epoch() -> None:
    alice = Identity.generate()
    d = epoch0(alice, [alice.public], k=1)
    record = create_record(alice, DESCRIPTOR_KIND, descriptor_name(d.team_id, 1), 1, d.encode(), 3600)
    with pytest.raises(TeamError, match="is named"):
        descriptor_of(record)
    with pytest.raises(TeamError, match="not a team descriptor"):
        descriptor_of(create_record(alice, "head", descriptor_name(d.team_id, 0), 1, d.encode(), 3600))


def test_inbox_names_round_trip_and_malformed_ones_are_refused() -> None:
    member, team = bytes(range(20)), bytes(range(1, 21))
    assert parse_inbox_name(inbox_name(member, team, 7)) == (member, team, 7)
    for bad in (b"inbox:" + member.hex().encode() + b"#share/" + team.hex().encode() + b"/07",
                b"inbox:" + member.hex().encode() + b"#share/" + team.hex().encode(),
                b"inbox:" + member.hex().encode() + b"#share/" + team.hex().encode() + b"/99999999999999999999",
                b"team:" + team.hex().encode() + b"#descriptor/0"):
        with pytest.raises(TeamError):
            parse_inbox_name(bad)


# ---------------------------------------------------------------------- checking a request
@pytest.mark.parametrize("k, message", [
    (0, "at least 1"), (-1, "at least 1"), (4, "more than the 3 members"), ("2", "whole number"),
])
def test_impossible_thresholds_are_refused(k: object, message: str) -> None:
    alice, bob, carol = identities(3)
    with pytest.raises(TeamError, match=message):
        plan_team(alice.public, "eng", k, [bob.public, carol.public])


def test_the_creator_is_a_member_first_unless_listed() -> None:
    alice, bob = identities(2)
    assert plan_team(alice.public, "eng", 1, [bob.public]).members == (alice.public, bob.public)
    assert plan_team(alice.public, "eng", 1, [bob.public, alice.public]).members == (bob.public, alice.public)


def test_a_member_listed_twice_is_refused() -> None:
    alice, bob = identities(2)
    with pytest.raises(TeamError, match="member 3 .* listed twice: member 2"):
        plan_team(alice.public, "eng", 2, [bob.public, bob.public])


def test_teams_beyond_255_and_beyond_one_record_are_refused() -> None:
    alice = Identity.generate()
    many = [i.public for i in identities(255)]
    with pytest.raises(TeamError, match="at most 255 members"):
        plan_team(alice.public, "eng", 2, many)
    with pytest.raises(TeamError, match=f"does not fit one descriptor record: at most {MAX_TEAM_MEMBERS}"):
        plan_team(alice.public, "eng", 2, many[:MAX_TEAM_MEMBERS])
    assert len(plan_team(alice.public, "eng", 2, many[: MAX_TEAM_MEMBERS - 1]).members) == MAX_TEAM_MEMBERS


@pytest.mark.parametrize("name, message", [
    ("", "non-empty"), (" eng", "white space"), ("e\nng", "control"), ("x" * 65, "more than 64"),
    ("a" * 40, "reads as a team ID"), ("0123456789ABCDEF0123456789abcdef01234567", "reads as a team ID"),
])
def test_unusable_team_names_are_refused(name: str, message: str) -> None:
    alice = Identity.generate()
    with pytest.raises(TeamError, match=message):
        plan_team(alice.public, name, 1, [])


def test_malformed_identity_strings_are_refused_naming_the_member() -> None:
    good = Identity.generate().public.to_string()
    with pytest.raises(TeamError, match="member 2 .*checksum"):
        parse_members([good, good[:-2] + ("a" if good[-2] != "a" else "b") + good[-1]])
    with pytest.raises(TeamError, match="member 1 .*must start with 'aether1'"):
        parse_members(["bob"])


# ---------------------------------------------------------------------- on a network
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("teams"), SIZE, CONFIG, seed=6) as nodes:
        yield nodes


@ON_NETWORK
async def test_a_ceremony_of_five_gives_each_member_its_own_sealed_share_and_any_three_the_key(network) -> None:
    creator, *members = network[:5]
    created = await create_team(creator, "core", 3, [m.identity.public for m in members])
    d = created.descriptor
    assert (d.k, d.n, d.epoch) == (3, 5, 0) and d.members[0] == creator.identity.public
    assert created.replicas > 0 and all(x.replicas > 0 for x in created.deliveries if x.index != 1)
    for member in members:
        report = await Inbox(member).poll()
        assert report.imported == [(d.team_id, 0)] and report.refused == []
    nodes = [creator, *members]
    sealed = {node.node.id: node.store.team_share(d.team_id, 0) for node in nodes}
    assert all(sealed.values()) and len(set(sealed.values())) == 5
    shares = {}
    for position, node in enumerate(nodes):
        shares[node.node.id] = open_share(node.identity, sealed[node.node.id], d.team_id)
        assert shares[node.node.id][0] == position + 1  # each holds exactly its own share
        other = nodes[(position + 1) % 5]
        with pytest.raises(DecryptionError):
            open_share(other.identity, sealed[node.node.id], d.team_id)
        row = node.store.team(d.team_id)
        assert row is not None and row.name == "core" and row.epoch == 0
        assert descriptor_of(decode_record(row.descriptor)) == d
        assert node.store.team_keys(d.team_id) == {}  # nobody holds the key, the creator neither
    for trio in itertools.combinations(shares.values(), 3):
        assert check_commitment(combine_shares(list(trio)), d.team_id, 0, d.commitment)
    for pair in itertools.combinations(shares.values(), 2):
        assert not check_commitment(combine_shares(list(pair)), d.team_id, 0, d.commitment)
    # A second poll finds nothing new; a non-member reads the descriptor from the DHT and checks it.
    assert (await Inbox(members[0]).poll()).imported == []
    outsider = network[-1]
    found = await outsider.get_entries(team_key(d.team_id))
    chain = follow_chain([e.record for e in found.entries], d.team_id)
    assert [link.descriptor for link in chain] == [d]


@ON_NETWORK
async def test_a_member_offline_at_creation_gets_its_share_when_it_comes_online(network, tmp_path) -> None:
    home = tmp_path / "late"
    home.mkdir()
    late = Identity.generate()
    late.save(home)
    creator = network[1]
    created = await create_team(creator, "late", 2, [network[2].identity.public, late.public])
    node = await start_node(home, CONFIG)
    try:
        assert node.store.teams() == []
        await node.bootstrap([address_of(network[0])])
        report = await Inbox(node).poll()
        assert report.imported == [(created.descriptor.team_id, 0)]
        sealed = node.store.team_share(created.descriptor.team_id, 0)
        assert open_share(late, sealed, created.descriptor.team_id)[0] == 3
    finally:
        stop_all([node])


@ON_NETWORK
async def test_invalid_requests_write_nothing_anywhere(network, tmp_path) -> None:
    creator, bob, carol = network[:3]
    b, c = bob.identity.public, carol.identity.public
    many = [i.public for i in identities(255)]
    before = snapshot(network)
    out = tmp_path / "shares"
    for k, members in [(0, [b, c]), (4, [b, c]), (2, many), (2, [b, b]), (2, [b, c, c])]:
        with pytest.raises(TeamError):
            await create_team(creator, "bad", k, members, out)
    existing = tmp_path / "full"
    existing.mkdir()
    (existing / f"{c.node_id.hex()}{SHARE_SUFFIX}").write_bytes(b"from another ceremony")
    with pytest.raises(TeamError, match="already exists"):
        await create_team(creator, "bad", 2, [b, c], existing)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(TeamError, match="is not a folder"):
        await create_team(creator, "bad", 2, [b, c], blocker / "shares")
    assert snapshot(network) == before
    assert not out.exists()
    assert sorted(p.name for p in existing.iterdir()) == [f"{c.node_id.hex()}{SHARE_SUFFIX}"]


@ON_NETWORK
async def test_hostile_inbox_entries_are_left_out_and_the_real_share_taken_in(network) -> None:
    creator, victim, mallory = network[3], network[4], network[5]
    me = victim.identity.public
    created = await create_team(creator, "target", 2, [network[6].identity.public, me])
    d = created.descriptor
    other = await create_team(network[6], "elsewhere", 1, [network[7].identity.public])

    def entry(author: AetherNode, name: bytes, payload: bytes, kind: str = INBOX_KIND):
        return create_record(author.identity, kind, name, next_seq(), payload, 3600)

    box = seal(me, bytes([3]) + bytes(32), purpose="share", team_id=d.team_id, epoch=0)
    hostile = [
        entry(mallory, inbox_name(me.node_id, d.team_id, 0), box),  # signed by a non-member
        entry(mallory, inbox_name(me.node_id, d.team_id, 0) + b"x", b"garbage"),  # malformed name
        entry(mallory, b"inbox:" + me.node_id.hex().encode() + b"#hello", b"\x00" * 10, kind="manifest"),
        # signed by the creator of a team this node is not in
        entry(network[6], inbox_name(me.node_id, other.descriptor.team_id, 0),
              seal(me, bytes([1]) + bytes(32), purpose="share", team_id=other.descriptor.team_id, epoch=0)),
        entry(mallory, inbox_name(me.node_id, bytes(20), 0), box),  # a team nobody made: waits
    ]
    for record in hostile:
        await mallory.put_entry(record)
    report = await Inbox(victim).poll()
    assert report.imported == [(d.team_id, 0)]
    assert len(report.refused) == 4 and report.waiting == 1
    assert any("not signed by the member who made that epoch" in r for r in report.refused)
    assert any("not a member" in r for r in report.refused)
    assert victim.store.team(other.descriptor.team_id) is None
    assert open_share(victim.identity, victim.store.team_share(d.team_id, 0), d.team_id)[0] == 3
    again = await Inbox(victim).poll()
    assert again.imported == [] and again.waiting == 1


@ON_NETWORK
async def test_a_share_sealed_to_the_member_under_another_index_is_refused(network) -> None:
    """Even the creator cannot hand a member someone else's share."""
    creator, member = network[0], network[7]
    created = await create_team(creator, "swap", 2, [member.identity.public, network[6].identity.public])
    d = created.descriptor
    shares = split_key(bytes(32), 2, 3)
    wrong = seal(member.identity.public, shares[2], purpose="share", team_id=d.team_id, epoch=0)
    forged = create_record(creator.identity, INBOX_KIND, inbox_name(member.node.id, d.team_id, 0),
                           next_seq(), wrong, 3600)
    with pytest.raises(TeamError, match="has index 3, not this node's 2"):
        accept_share(member, forged, [created.record])
    assert member.store.team(d.team_id) is None


# ---------------------------------------------------------------------- share files
@ON_NETWORK
async def test_share_files_carry_the_ceremony_to_nodes_with_no_network(tmp_path) -> None:
    homes = [tmp_path / name for name in ("alice", "bob", "carol")]
    nodes = [await start_node(home, CONFIG) for home in homes]  # never joined: no network at all
    try:
        alice, bob, carol = nodes
        out = tmp_path / "out"
        created = await create_team(alice, "offline", 2, [bob.identity.public, carol.identity.public], out)
        files = {x.member.node_id: x.file for x in created.deliveries if x.file}
        assert set(files) == {bob.node.id, carol.node.id}
        assert created.replicas == 0
        for path in files.values():
            assert path.parent == out.absolute() and path.name.endswith(SHARE_SUFFIX)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
        accepted = import_share(bob, files[bob.node.id].read_bytes())
        assert (accepted.index, accepted.new, accepted.descriptor) == (2, True, created.descriptor)
        assert import_share(bob, files[bob.node.id].read_bytes()).new is False
        with pytest.raises(TeamError, match=f"this share is for node {carol.node.id.hex()}"):
            import_share(bob, files[carol.node.id].read_bytes())
        data = files[carol.node.id].read_bytes()
        for position in (len(data) // 3, len(data) - 70, len(data) - 1):
            tampered = bytearray(data)
            tampered[position] ^= 0x01
            with pytest.raises(TeamError):
                import_share(carol, bytes(tampered))
        for junk in (b"", b"\x00", msgpack.packb(["aether-team-share/1", [], b""]), os.urandom(100)):
            with pytest.raises(TeamError):
                import_share(carol, junk)
        assert carol.store.teams() == []
        assert import_share(carol, data).index == 3
        sealed = [n.store.team_share(created.descriptor.team_id, 0) for n in nodes]
        key = combine_shares([open_share(n.identity, s, created.descriptor.team_id) for n, s in zip(nodes[1:], sealed[1:])])
        assert check_commitment(key, created.descriptor.team_id, 0, created.descriptor.commitment)
    finally:
        stop_all(nodes)


@ON_NETWORK
async def test_a_share_file_with_a_forged_descriptor_is_refused(tmp_path) -> None:
    """Mallory rewrites alice's team with herself as creator: the team ID gives her away."""
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    alice, bob = await start_node(alice_home, CONFIG), await start_node(bob_home, CONFIG)
    mallory = Identity.generate()
    try:
        created = await create_team(alice, "real", 1, [bob.identity.public], tmp_path / "out")
        d = created.descriptor
        forged = dataclasses.replace(d, members=(mallory.public, bob.identity.public))
        box = seal(bob.identity.public, split_key(bytes(32), 1, 2)[1], purpose="share", team_id=d.team_id, epoch=0)
        inbox = create_record(mallory, INBOX_KIND, inbox_name(bob.node.id, d.team_id, 0), next_seq(), box, 3600)
        with pytest.raises(TeamError, match="no valid descriptor"):
            import_share(bob, share_file([signed(mallory, forged)], inbox))
        assert bob.store.teams() == []
        # The real descriptor with mallory's delivery: the signer is not the creator.
        with pytest.raises(TeamError, match="not signed by the member who made that epoch"):
            import_share(bob, share_file([created.record], inbox))
    finally:
        stop_all([alice, bob])


async def test_the_inbox_remembers_at_most_max_remembered_judged_deliveries(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(team_inbox, "MAX_REMEMBERED", 3)
    node = await start_node(tmp_path / "reader", QUIET)
    try:
        inbox = Inbox(node)
        judged = [(bytes([i]) * 32, bytes(20), 0) for i in range(5)]
        for ident in judged:
            inbox._remember(ident)
        assert list(inbox._judged) == judged[-3:]
    finally:
        stop_all([node])


async def test_a_chain_read_from_the_held_epoch_keeps_the_approvals_of_earlier_epochs(tmp_path):
    """When the DHT no longer returns the old epochs, the node's own approvals of them must stay: readers from epoch 0 need them."""
    from aether.node.team_ceremony import _drop_lost_approvals

    alice, bob, carol = identities(3)
    members = [alice.public, bob.public, carol.public]
    d0 = epoch0(alice, members, k=2)
    k1, k2 = os.urandom(32), os.urandom(32)
    d1 = Descriptor(d0.team_id, d0.name, d0.salt, 1, 1, tuple(members), commitment(k1, d0.team_id, 1), d0.digest(),
                    chain_previous(k1, d0.team_id, 0, bytes(32)))
    d2 = Descriptor(d0.team_id, d0.name, d0.salt, 2, 1, tuple(members), commitment(k2, d0.team_id, 2), d1.digest(),
                    chain_previous(k2, d0.team_id, 1, k1))
    r0, r1, r2 = signed(alice, d0), signed(alice, d1), signed(alice, d2)
    bobs = approval(bob, r1)  # makes epoch 1 valid (K of epoch 0 is 2)
    assert [link.descriptor.epoch for link in follow_chain([r0, r1, r2, bobs], d0.team_id)] == [0, 1, 2]
    bob.save(tmp_path / "bob")
    node = await start_node(tmp_path / "bob", QUIET)
    try:
        node.store.put_entry(team_key(d0.team_id), bobs.author, bobs.name, bobs.encode(), seq=bobs.seq,
                             expires=bobs.expires, role="own")
        _drop_lost_approvals(node, follow_chain([r2], d0.team_id, start=r2))  # epochs 0 and 1 not found
        assert node.store.entry(team_key(d0.team_id), bobs.author, bobs.name) is not None
        # A chain from epoch 0 whose epoch 1 is another proposal does judge Bob's: it lost, and is dropped.
        other = dataclasses.replace(d1, commitment=commitment(k2, d0.team_id, 1),
                                    sealed_previous=chain_previous(k2, d0.team_id, 0, bytes(32)))
        r1_other = signed(alice, other)
        won = follow_chain([r0, r1_other, approval(carol, r1_other)], d0.team_id)
        assert [link.descriptor for link in won] == [d0, other]
        _drop_lost_approvals(node, won)
        assert node.store.entry(team_key(d0.team_id), bobs.author, bobs.name) is None
    finally:
        stop_all([node])

"""Team descriptors (node/teams.py; docs/teams.md "Names", "In the DHT"): real keys, real signatures."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest

from aether.crypto.identity import Identity, PublicIdentity
from aether.crypto.records import create_record
from aether.crypto.teams import chain_previous, commitment, new_team_id
from aether.node.server import next_seq
from aether.node.teams import (
    DESCRIPTOR_KIND,
    Descriptor,
    TeamError,
    descriptor_name,
    descriptor_of,
    follow_chain,
    inbox_name,
    parse_inbox_name,
)


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
    chain = follow_chain(records, first.team_id)
    assert [link.descriptor for link in chain] == [first, second]
    assert chain[1].record.author == bob.public.signing_public
    assert follow_chain(records[:1], first.team_id) == []
    assert [c.descriptor for c in follow_chain([records[3]], first.team_id, start=records[1])] == [first, second]


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

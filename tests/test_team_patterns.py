"""Team-private patterns through real networks on 127.0.0.1 (docs/teams.md "Team patterns").

Every node is a real AetherNode with its own SQLite home and UDP socket. A team is
created with the real ceremony and inbox; its members' keys are put in place the way
an unlock leaves them (the shares opened and combined here, then kept with
``team_keys.keep_unlocked``). A network of 10 nodes with k = 4 keeps most holders of
a team pattern outside the team, so what non-members store and serve is what is
checked for plaintext, down to the bytes of every node's SQLite files.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import pytest_asyncio
from kademlia.node import Node

from aether.crypto.records import create_record, decode_record
from aether.crypto.teams import (
    PATTERN_MAGIC,
    chain_previous,
    check_commitment,
    combine_shares,
    commitment,
    new_team_key,
    open_sealed,
)
from aether.node import api
from aether.node import entries as E
from aether.node.chunks import split
from aether.node.control import ControlError
from aether.node.pattern import parse_pattern
from aether.node.patterns import PatternLibrary, PatternNotFound, TeamLocked
from aether.node.server import AetherNode, QuotaExceeded, next_seq
from aether.node.team_ceremony import create_team
from aether.node.team_inbox import Inbox
from aether.node.team_keys import held_chain, keep_unlocked, unlocked_keys
from aether.node.teams import DESCRIPTOR_KIND, Descriptor, descriptor_name, team_key
from aether.node.values import Entry
from aether.simulations.network import local_network
from aether.storage.store import RESERVED_BYTES, TeamRow

from .conftest import QUIET, wait_for
from .test_patterns import lie_about, make_pattern, store_snapshot
from .test_teams import approval

SIZE = 10
K = 4
CONFIG = QUIET.replace(ksize=K)
TTL = 3600.0
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("tpatterns"), SIZE, CONFIG, seed=23) as nodes:
        yield nodes


async def make_team(nodes: list[AetherNode], name: str, unlocked: int) -> TeamRow:
    """A team of ``nodes`` (the first creates it, 2 of them unlock it) whose first ``unlocked`` members hold its key.

    The key is rebuilt from two members' sealed shares and kept as ``team unlock``
    would keep it; the others stay locked.
    """
    creator, *members = nodes
    created = await create_team(creator, name, 2, [m.identity.public for m in members])
    d = created.descriptor
    for member in members:
        assert (await Inbox(member).poll()).imported == [(d.team_id, 0)]
    shares = [open_sealed(n.identity, n.store.team_share(d.team_id, 0), purpose="share", team_id=d.team_id, epoch=0)
              for n in nodes[:2]]
    key = combine_shares(shares)
    assert check_commitment(key, d.team_id, 0, d.commitment)
    for node in nodes[:unlocked]:
        assert keep_unlocked(node, d.team_id, 0, key, TTL) == [0]
    row = creator.store.team(d.team_id)
    assert row is not None
    return row


def secrets_of(data: bytes) -> dict[str, bytes]:
    """What no non-member may learn of a pattern, as bytes to look for (case-insensitively)."""
    parsed = parse_pattern(data)
    digest = hashlib.sha256(data)
    found = {"id": parsed.id.encode(), "title": parsed.title.encode(), "hash hex": digest.hexdigest().encode(),
             "hash raw": digest.digest(), "body": b"quokkas gather under zanzibar moonlight"}
    for word in E.words(parsed.name):
        found[f"word {word}"] = word.encode()
    return found


def leaks(blob: bytes, secrets: dict[str, bytes]) -> list[str]:
    lowered = blob.lower()
    return [name for name, value in secrets.items() if value.lower() in lowered or value in blob]


def sqlite_bytes(node: AetherNode) -> bytes:
    """Every byte of the node's database files: the main file, its write-ahead log and index."""
    path = Path(node.store.path)
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def team_space(row: TeamRow, node: AetherNode, epoch: int = 0) -> E.TeamSpace:
    return E.TeamSpace(row.name, row.team_id, epoch, unlocked_keys(node, row.team_id)[epoch])


def secret_pattern(pattern_id: str, name: str, size: int = 20 * 1024) -> bytes:
    return make_pattern(pattern_id, name, category="Hidden Quokka Matters",
                        text="quokkas gather under zanzibar moonlight", size=size)


def holders_of(nodes: list[AetherNode], key: bytes) -> list[AetherNode]:
    return [n for n in nodes if n.store.has_entries(key)]


async def settle(nodes: list[AetherNode]) -> None:
    """Until no node has hand-offs, caching or repairs pending (a readiness wait)."""
    assert await wait_for(lambda: not any(n.busy for n in nodes), timeout=30)


# ---------------------------------------------------------------------- what holders read
async def test_holders_take_a_sealed_summary_only_under_a_team_pattern_topic(network):
    """A manifest whose summary is sealed links its blocks only when named for a team pattern; a
    public manifest name still needs a summary that describes the file."""
    author = network[0]
    manifest, _ = split(b"some ciphertext")
    space = E.TeamSpace("t", bytes(20), 0, bytes(32))
    summary = E.Summary.of(parse_pattern(secret_pattern("Pattern-NAME-050", "Named Right")), 1)
    payload = space.manifest_payload(E.ManifestEntry(manifest, summary, False))
    team_name = space.manifest_name(summary.hash)
    assert E.TEAM_PATTERN_TOPIC.fullmatch(team_name[:-1])
    named = create_record(author.identity, E.MANIFEST_KIND, team_name, 1, payload, 600)
    assert E.manifest_blocks(named) == manifest
    assert space.manifest_of(named).summary == summary
    for name in (E.manifest_name(manifest.pattern_hash.hex()), b"team-pattern:" + b"0" * 39 + b"#"):
        with pytest.raises(E.EntryError):
            E.manifest_blocks(create_record(author.identity, E.MANIFEST_KIND, name, 1, payload, 600))
    public = E.PUBLIC.manifest_payload(E.ManifestEntry(manifest, summary, False))  # a summary of other bytes
    with pytest.raises(E.EntryError):
        E.manifest_blocks(create_record(author.identity, E.MANIFEST_KIND, team_name, 1, public, 600))


# ---------------------------------------------------------------------- secrecy and round trips
async def test_non_members_store_and_serve_ciphertext_only_and_members_read_it_byte_identical(network):
    members, outsiders = network[:4], network[4:]
    row = await make_team(members, "quokka", unlocked=3)
    data = secret_pattern("Pattern-QUOKKA-731", "Marsupial Moonlight Rendezvous")
    secrets = secrets_of(data)
    published = await PatternLibrary(members[0]).publish(data, team=row)
    assert published.team == E.TeamMark("quokka", row.team_id.hex(), 0)
    assert published.replicas == K and published.index_terms == len(E.index_terms(published.pattern))

    # Members with the key: by ID, by hash, and by every kind of search term; marked with the team.
    reader = members[2]
    by_id = await PatternLibrary(reader).fetch("Pattern-QUOKKA-731")
    by_hash = await PatternLibrary(reader).fetch(published.pattern.hash)
    assert by_id.data == data and by_hash.data == data
    assert by_id.space.team == published.team and by_id.hash == published.pattern.hash
    assert by_id.authors == [members[0].node.id.hex()]
    for terms in (["marsupial"], ["rendezvous", "type:QUOKKA"], ["category:hidden quokka"], ["Pattern-QUOKKA-731"]):
        found = await PatternLibrary(reader).search(terms)
        assert [(f.summary.id, f.summary.hash, f.space.team) for f in found] == [
            ("Pattern-QUOKKA-731", published.pattern.hash, published.team)], terms
    history = await PatternLibrary(reader).history("Pattern-QUOKKA-731")
    assert [(h.space.team, versions[0][0]) for h, versions in history] == [(published.team, published.pattern.hash)]

    # A non-member reads every entry and block under the team's keys from the network: ciphertext only.
    space = team_space(row, members[0])
    outsider = next(n for n in outsiders if not n.store.has_entries(space.pattern_key(published.pattern.hash)))
    keys = [space.pattern_key(published.pattern.hash), space.id_key("Pattern-QUOKKA-731"),
            *(space.term_key(t) for t in E.index_terms(published.pattern))]
    seen = b""
    manifest, holders = None, []
    for key in keys:
        result = await outsider.get_entries(key)
        assert result.entries, "every team entry is on the network"
        for entry in result.entries:
            seen += entry.data
            assert entry.record.name.split(b":")[0] + b":" in E.TEAM_TOPICS
            if entry.record.kind == E.MANIFEST_KIND:
                manifest, holders = E.manifest_blocks(entry.record), result.holders
    assert manifest is not None and holders
    blocks = [(await outsider.pull_block(k, holders))[0] for k in manifest.blocks]
    assert all(b is not None for b in blocks)
    blob = b"".join(blocks)  # type: ignore[arg-type]
    assert blob.startswith(PATTERN_MAGIC + row.team_id + bytes(8)) and len(blob) == len(data) + 60
    assert leaks(seen + blob, secrets) == []
    # ... and the outsider's own library finds nothing and knows of no team to unlock.
    with pytest.raises(PatternNotFound) as missing:
        await PatternLibrary(outsider).fetch(published.pattern.hash)
    assert not isinstance(missing.value, TeamLocked)
    assert await PatternLibrary(outsider).search(["marsupial"]) == []
    with pytest.raises(PatternNotFound):
        await PatternLibrary(outsider).fetch("Pattern-QUOKKA-731")

    # Nothing in any node's database reveals the pattern: not the members', not the holders'.
    await settle(network)
    assert [(i, leaks(sqlite_bytes(n), secrets)) for i, n in enumerate(network)] == [(i, []) for i in range(SIZE)]


async def test_holders_of_a_team_manifest_link_its_blocks_and_ls_shows_what_each_can_read(network):
    members = network[:4]
    row = await make_team(members, "linked", unlocked=1)
    data = secret_pattern("Pattern-LINK-002", "Blocks Follow Their Manifest", size=14 * 1024)
    published = await PatternLibrary(members[0]).publish(data, team=row)
    space = team_space(row, members[0])
    key = space.pattern_key(published.pattern.hash)
    holders = [n for n in holders_of(network, key) if n is not members[0]]
    assert len(holders) == K
    held_blocks = None
    for holder in holders:
        entry = next(e for e in holder.store.entries(key) if e.name == space.manifest_name(published.pattern.hash))
        blocks = E.manifest_blocks(decode_record(entry.value)).blocks
        assert all(holder.store.contains(b) for b in blocks), "a holder takes a team pattern whole"
        assert [holder.store.group_of(b) for b in blocks] == [key] * len(blocks), "blocks live near the pattern"
        held_blocks = blocks
    assert held_blocks is not None and len(held_blocks) == 3

    # ls: the publisher (unlocked) reads its own team pattern; a holder outside the team sees an opaque key.
    mine = [h for h in PatternLibrary(members[0]).held() if h.key == key.hex()]
    assert [(h.summary.id if h.summary else None, h.team, h.role, h.complete) for h in mine] == [
        ("Pattern-LINK-002", E.TeamMark("linked", row.team_id.hex(), 0), "own", True)]
    outsider = next(h for h in holders if h not in members)
    theirs = [h for h in PatternLibrary(outsider).held() if h.key == key.hex()]
    assert [(h.summary, h.team, h.role, h.complete) for h in theirs] == [(None, None, "replica", True)]
    listed = await api.handle(PatternLibrary(outsider), "ls", {})
    row_of = next(p for p in listed["patterns"] if p["key"] == key.hex())
    assert row_of["readable"] is False and row_of["id"] is None and row_of["team"] is None


async def test_a_member_whose_team_is_locked_is_told_to_unlock_it(network):
    members = network[:4]
    row = await make_team(members, "lockedteam", unlocked=1)
    data = secret_pattern("Pattern-LOCK-003", "Locked Away Notes")
    published = await PatternLibrary(members[0]).publish(data, team=row)
    locked = members[3]
    assert unlocked_keys(locked, row.team_id) == {}
    message = "team locked: run aether-node team unlock lockedteam"
    for ref in ("Pattern-LOCK-003", published.pattern.hash):
        with pytest.raises(TeamLocked, match=message):
            await PatternLibrary(locked).fetch(ref)
    with pytest.raises(TeamLocked, match=message):
        await PatternLibrary(locked).search(["locked", "notes"])
    with pytest.raises(TeamLocked, match=message):
        await PatternLibrary(locked).history("Pattern-LOCK-003")
    # Through the operations table, as the CLI and the daemon see it.
    with pytest.raises(ControlError) as refused:
        await api.handle(PatternLibrary(locked), "fetch", {"ref": "Pattern-LOCK-003"})
    assert refused.value.reason == "team-locked" and message in refused.value.message
    # Publishing to a locked team stores nothing, here or anywhere.
    before = store_snapshot(network)
    with pytest.raises(ControlError) as refused:
        await api.handle(PatternLibrary(locked), "publish",
                         {"data": secret_pattern("Pattern-LOCK-004", "Never Sent"), "team": "lockedteam"})
    assert refused.value.reason == "team-locked" and message in refused.value.message
    assert store_snapshot(network) == before


async def test_patterns_of_two_epochs_are_read_with_the_keys_of_both(network):
    members = network[4:8]
    row0 = await make_team(members, "epochs", unlocked=2)
    old = secret_pattern("Pattern-EPOCH-010", "Written Before The Change", size=8 * 1024)
    first = await PatternLibrary(members[0]).publish(old, team=row0)
    assert first.team is not None and first.team.epoch == 0

    # Epoch 1, as a membership change will make it: a new key, chaining epoch 0's.
    key0 = unlocked_keys(members[0], row0.team_id)[0]
    key1 = new_team_key()
    d0 = held_chain(members[0], row0.team_id)[-1].descriptor
    d1 = Descriptor(d0.team_id, d0.name, d0.salt, 1, 2, d0.members, commitment(key1, d0.team_id, 1), d0.digest(),
                    chain_previous(key1, d0.team_id, 0, key0))
    record = create_record(members[0].identity, DESCRIPTOR_KIND, descriptor_name(d0.team_id, 1), next_seq(),
                           d1.encode(), 3600)
    agreed = approval(members[1].identity, record)  # K = 2 members of epoch 0 sign epoch 1
    for node in members:
        assert node.store.put_team(d0.team_id, "epochs", 1, record.encode())
        node.keep_entry(Entry(team_key(d0.team_id), agreed.encode(), agreed), role="replica", pinned=True)
        assert [link.descriptor.epoch for link in held_chain(node, d0.team_id)] == [0, 1]
    for node in members[:2]:
        assert keep_unlocked(node, d0.team_id, 1, key1, TTL) == [1, 0]
    row1 = members[0].store.team(d0.team_id)
    assert row1 is not None and row1.epoch == 1
    new = secret_pattern("Pattern-EPOCH-011", "Written After The Change", size=8 * 1024)
    second = await PatternLibrary(members[0]).publish(new, team=row1)
    assert second.team is not None and second.team.epoch == 1

    # A member that unlocked epoch 1 only (the older key comes from the chain) reads both.
    reader = members[1]
    reader.store.forget_team_keys(d0.team_id)
    assert keep_unlocked(reader, d0.team_id, 1, key1, TTL) == [1, 0]
    library = PatternLibrary(reader)
    for data, pattern_id, epoch in ((old, "Pattern-EPOCH-010", 0), (new, "Pattern-EPOCH-011", 1)):
        for ref in (pattern_id, hashlib.sha256(data).hexdigest()):
            fetched = await library.fetch(ref)
            assert fetched.data == data and fetched.space.team == E.TeamMark("epochs", d0.team_id.hex(), epoch)
    found = await library.search(["written", "change"])
    assert sorted((f.summary.id, f.space.team.epoch) for f in found if f.space.team) == [
        ("Pattern-EPOCH-010", 0), ("Pattern-EPOCH-011", 1)]
    # With epoch 0's key alone, the epoch 1 pattern is out of reach: the team counts as locked.
    other = members[2]
    assert keep_unlocked(other, d0.team_id, 0, key0, TTL) == [0]
    assert (await PatternLibrary(other).fetch("Pattern-EPOCH-010")).data == old
    with pytest.raises(TeamLocked, match="team unlock epochs"):
        await PatternLibrary(other).fetch("Pattern-EPOCH-011")


# ---------------------------------------------------------------------- lies and limits
async def test_tampered_ciphertext_blocks_are_caught_and_read_from_an_honest_holder(network, monkeypatch):
    row = await make_team(network, "honesty", unlocked=SIZE)  # every node a member: readers anywhere
    data = secret_pattern("Pattern-LIE-020", "Forged Ciphertext Is Caught", size=24 * 1024)
    published = await PatternLibrary(network[0]).publish(data, team=row)
    assert published.replicas == K
    space = team_space(row, network[0])
    key = space.pattern_key(published.pattern.hash)
    honest = [n for n in holders_of(network, key) if n is not network[0]]
    assert len(honest) >= K - 1, [n.store.entries(key) for n in network]
    fetcher, other = [n for n in network[1:] if n not in honest][:2]
    manifest = E.manifest_blocks(decode_record(honest[0].store.entries(key)[0].value))
    real = {k: honest[0].store.read(k) for k in manifest.blocks}
    seeds = fetcher.protocol.router.find_neighbors(Node(key), k=fetcher.ksize)
    keep = next(n for n in (next(x for x in network if x.node.id == s.id) for s in reversed(seeds)) if n in honest)
    for node in network:
        if node not in (keep, fetcher):
            lie_about(monkeypatch, node, real)

    fetched = await PatternLibrary(fetcher).fetch(published.pattern.hash)
    assert fetched.data == data and fetched.tampered >= 1

    # When every holder lies (the first fetcher, which cached the blocks, too), the fetch fails
    # with a clear error and keeps nothing.
    for node in (keep, fetcher):
        lie_about(monkeypatch, node, real)
    with pytest.raises(PatternNotFound, match="held by no reachable node"):
        await PatternLibrary(other).fetch("Pattern-LIE-020")
    await asyncio.sleep(0.1)
    assert not any(other.store.contains(k) for k in manifest.blocks)


async def test_a_team_publish_past_the_quota_is_refused_and_stores_nothing(network):
    members = network[6:10]
    row = await make_team(members, "quota", unlocked=1)
    node = members[0]
    data = secret_pattern("Pattern-OVER-030", "Too Large For This Node", size=30 * 1024)
    await settle(network)
    node.set_quota(RESERVED_BYTES + node.store.usage().pinned + 3 * 6 * 1024)
    before = store_snapshot(network)
    try:
        with pytest.raises(QuotaExceeded) as refused:
            await PatternLibrary(node).publish(data, team=row)
        assert refused.value.needed > len(data)
        await settle(network)
        assert store_snapshot(network) == before
    finally:
        node.set_quota(CONFIG.quota_bytes)
    published = await PatternLibrary(node).publish(data, team=row)
    assert published.replicas == K and split(data)[0].size == len(data)


async def test_a_member_pins_a_team_pattern_with_a_mirror_manifest_of_the_team_and_unpins_it(network):
    row = await make_team(network, "pins", unlocked=SIZE)  # every node a member: a pinner that holds nothing yet
    data = secret_pattern("Pattern-PIN-040", "Kept By A Member", size=9 * 1024)
    published = await PatternLibrary(network[0]).publish(data, team=row)
    space = team_space(row, network[0])
    key = space.pattern_key(published.pattern.hash)
    pinner = next(n for n in network[1:] if not n.store.has_entries(key))
    library = PatternLibrary(pinner)

    pinned = await library.pin("Pattern-PIN-040")
    assert pinned.data == data and pinned.space.team == E.TeamMark("pins", row.team_id.hex(), 0)
    mine = pinner.store.entry(key, library.me, space.manifest_name(published.pattern.hash))
    assert mine is not None and mine.pinned
    mirror = space.manifest_of(decode_record(mine.value))
    assert mirror.mirror and mirror.summary.hash == published.pattern.hash
    assert all(pinner.store.get(k, touch=False).pinned for k in mirror.manifest.blocks)
    assert [(h.summary.id, h.team, h.pinned) for h in library.held() if h.key == key.hex()] == [
        ("Pattern-PIN-040", pinned.space.team, True)]
    mirrored = [n for n in network if n is not pinner
                and n.store.entry(key, library.me, space.manifest_name(published.pattern.hash)) is not None]
    assert len(mirrored) == K, "the mirror manifest is placed like the publisher's"
    assert leaks(sqlite_bytes(pinner), secrets_of(data)) == []

    assert await library.unpin(published.pattern.hash) == published.pattern.hash
    assert pinner.store.entry(key, library.me, space.manifest_name(published.pattern.hash)) is None
    assert not any(pinner.store.get(k, touch=False).pinned for k in mirror.manifest.blocks)

"""The key ceremony: creating a team, and taking in the share a member is given.

``create_team`` is issue 6's "Creating a team": a fresh 256-bit key is split K-of-N,
each share sealed to its member, the descriptor and one inbox entry per other member
published in the DHT, signed by the creator. The creator keeps its own share (still
sealed to itself) and the descriptor, and nothing else: the key itself is never
stored, not even sealed at rest, so the creator holds no more power over the team
than any other member (it unlocks the team like everyone, with K shares).

``change_members`` is "Membership changes": the same ceremony for epoch e + 1, made by a
member who has epoch e unlocked, with the old key chained under the new one. Unless
epoch e's threshold K_e is 1, what it makes is a proposal: it becomes the team's
epoch once K_e members of epoch e in all have signed it, the maker and those who ran
:func:`approve_change` (the rule is :func:`~aether.node.teams.follow_chain`'s).
Every member's node then follows the newest valid epoch (:func:`refresh_team`), and
of two made at once, the one with the smaller digest.

A member takes in its share from its inbox in the DHT (node/team_inbox.py) or from
a share file carried by hand (``--shares-out``, ``team import-share``): both go
through :func:`accept_share`, which checks everything before keeping anything.

A share file is canonical msgpack ``["aether-team-share/1", [descriptor record, ...],
inbox entry]``: the member's signed inbox entry, and the descriptors from epoch 0 up
to the share's epoch, so a member with no network at all can check who made the
team and that the share comes from the member who made that epoch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from aether.crypto.identity import IdentityError, PublicIdentity
from aether.crypto.records import RecordError, SignedRecord, create_record, decode_record
from aether.crypto.teams import (
    TeamCryptoError,
    chain_previous,
    check_commitment,
    commitment,
    new_team_id,
    new_team_key,
    open_sealed,
    seal,
    share_index,
    split_key,
)
from aether.node.files import write_atomically
from aether.node.server import AetherNode, next_seq
from aether.node.team_keys import held_chain, unlocked_key
from aether.node.teams import (
    APPROVAL_KIND,
    DESCRIPTOR_KIND,
    INBOX_KIND,
    MAX_TEAM_MEMBERS,
    Approval,
    Descriptor,
    Link,
    Proposal,
    TeamError,
    approvers,
    check_distinct,
    check_team_name,
    check_threshold,
    descriptor_name,
    descriptor_of,
    follow_chain,
    inbox_name,
    parse_inbox_name,
    proposals,
    share_of,
    team_key,
    team_topic,
    verify_signature,
)
from aether.node.values import Entry, ValueRejected
from aether.storage.store import TeamRow

log = logging.getLogger(__name__)

SHARE_FILE_MAGIC = "aether-team-share/1"
SHARE_SUFFIX = ".share"
MAX_SHARE_FILE_BYTES = 1 << 20
"""A share file holds one inbox entry and at most a chain of descriptors (7 KiB each)."""
MAX_CHAIN = 1024
"""Descriptors and approvals one share file may carry."""
MAX_PARALLEL_DELIVERIES = 8
"""Inbox entries placed at once: each is a lookup and k STOREs."""


class TeamUnknown(TeamError):
    """No valid descriptor of the team and epoch a share is for could be found (yet)."""


class TeamLocked(TeamError):
    """The team's current epoch is not unlocked on this node, and the operation needs its key."""


# ------------------------------------------------------------------ checking a request
def parse_members(texts: Sequence[str]) -> list[PublicIdentity]:
    """Identity strings as given on a command line, each parsed, or TeamError naming the bad one."""
    members = []
    for position, text in enumerate(texts, start=1):
        try:
            members.append(PublicIdentity.from_string(text))
        except IdentityError as exc:
            raise TeamError(f"member {position} ({str(text)[:20]}…): invalid identity: {exc}") from None
    return members


@dataclass(frozen=True)
class Plan:
    """A team request that passed every check, ready for the ceremony: nothing written yet."""

    name: str
    k: int
    members: tuple[PublicIdentity, ...]
    """In share order; the creator first unless it was listed elsewhere."""
    files: dict[bytes, Path]
    """Where each other member's share file goes (by node ID), with ``--shares-out``."""


def plan_team(creator: PublicIdentity, name: str, k: int, members: Sequence[PublicIdentity],
              shares_out: Path | None = None) -> Plan:
    """Check a team request completely, or raise TeamError saying what is wrong.

    Every rule is checked here, before a key is drawn or a byte written: the name, no
    member listed twice, 1 ≤ K ≤ N ≤ 255, N within one descriptor record, and a
    ``shares_out`` folder that can take the files without overwriting any.
    """
    name = check_team_name(name)
    if not all(isinstance(m, PublicIdentity) for m in members):
        raise TeamError("members must be public identities")
    listed = tuple(members) if creator in members else (creator, *members)
    _check_members(listed, k)
    return Plan(name, k, listed, _share_paths(listed, creator, shares_out))


def plan_change(maker: PublicIdentity, current: Descriptor, add: Sequence[PublicIdentity] = (),
                remove: Sequence[PublicIdentity] = (), k: int | None = None,
                shares_out: Path | None = None) -> Plan:
    """Check a change of members of epoch ``current`` completely, or raise TeamError saying what is wrong.

    The same rules as at creation hold for the new epoch, and more: only a member of
    the current epoch may make the next (the descriptor rule), an added member is not
    one already, a removed member is one, and nobody is both added and removed. The
    maker cannot remove itself: it signs the new epoch and keeps its share of it, so
    another member removes it. Members keep their order; added ones come last. K stays
    unless ``k`` is given; a removal that leaves fewer than K members is refused
    unless ``k`` lowers it.
    """
    if not all(isinstance(m, PublicIdentity) for m in (*add, *remove)):
        raise TeamError("members must be public identities")
    team = f"team {current.name} ({current.team_id.hex()})"
    if current.index_of(maker.signing_public) is None:
        raise TeamError(f"this node is not a member of {team} epoch {current.epoch}: only a member can change it")
    if not add and not remove:
        raise TeamError("no member to add or remove: nothing to change")
    check_distinct((*add, *remove))
    for member in add:
        if current.index_of(member.signing_public) is not None:
            raise TeamError(f"{member.node_id.hex()} is already a member of {team}")
    for member in remove:
        if member not in current.members:
            raise TeamError(f"{member.node_id.hex()} is not a member of {team} epoch {current.epoch}")
        if member == maker:
            raise TeamError(f"this node cannot remove itself from {team}: another member removes it")
    listed = tuple(m for m in current.members if m not in remove) + tuple(add)
    if k is None:
        k = current.k
        if k > len(listed):
            raise TeamError(f"{team} would have {len(listed)} member(s), fewer than its threshold {k}: "
                            f"lower it with --threshold")
    _check_members(listed, k)
    return Plan(current.name, k, listed, _share_paths(listed, maker, shares_out))


def _check_members(listed: tuple[PublicIdentity, ...], k: int) -> None:
    """TeamError unless ``listed`` can be one epoch's members with threshold ``k``."""
    check_distinct(listed)
    check_threshold(k, len(listed))
    if len(listed) > MAX_TEAM_MEMBERS:
        raise TeamError(
            f"a team of {len(listed)} members does not fit one descriptor record: at most {MAX_TEAM_MEMBERS}"
        )


def _share_paths(listed: tuple[PublicIdentity, ...], maker: PublicIdentity,
                 shares_out: Path | None) -> dict[bytes, Path]:
    """Where each member but the maker gets its share file, none of them there already."""
    files: dict[bytes, Path] = {}
    if shares_out is not None:
        folder = _check_folder(Path(shares_out))
        for member in listed:
            if member != maker:
                path = folder / f"{member.node_id.hex()}{SHARE_SUFFIX}"
                if path.exists() or path.is_symlink():
                    raise TeamError(f"{path} already exists: move it away or choose another folder for the shares")
                files[member.node_id] = path
    return files


def _check_folder(folder: Path) -> Path:
    """The folder if it (or the folder it would be created in) can be written."""
    folder = folder.absolute()
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise TeamError(f"{existing} is not a folder: cannot write share files in {folder}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TeamError(f"cannot write in {existing}: share files go to {folder}")
    return folder


# ------------------------------------------------------------------ the ceremony
@dataclass(frozen=True)
class Delivery:
    """How one member's share left the creator."""

    member: PublicIdentity
    index: int
    replicas: int = 0
    """Peers that acknowledged the member's inbox entry (0 for the creator, whose share stays here)."""
    file: Path | None = None
    error: str | None = None
    """Why the inbox entry could not be placed, if it could not (the share file, if any, still carries it)."""


@dataclass(frozen=True)
class Created:
    """What ``create_team`` did."""

    descriptor: Descriptor
    record: SignedRecord
    replicas: int
    """Peers that acknowledged the descriptor entry."""
    deliveries: tuple[Delivery, ...]


async def create_team(node: AetherNode, name: str, k: int, members: Sequence[PublicIdentity],
                      shares_out: Path | None = None) -> Created:
    """Create a team of ``members`` (and this node), any ``k`` of whom unlock its key.

    Everything is checked first (:func:`plan_team`); then a fresh key is split, each
    share sealed to its member (purpose ``share``, bound to team, epoch 0 and member),
    and the signed descriptor and inbox entries are built in memory. Only then is
    anything written: the share files (owner-only, atomically), this node's own sealed
    share and the descriptor in the store, and the entries in the DHT, where members
    who are offline find their share when they come online. The key is then dropped.
    """
    creator = node.identity.public
    plan = plan_team(creator, name, k, members, shares_out)
    key = new_team_key()
    team_id, salt = new_team_id(creator.signing_public, plan.name)
    descriptor = Descriptor(team_id, plan.name, salt, 0, plan.k, plan.members, commitment(key, team_id, 0))
    ceremony = _prepare(node, plan, descriptor, key)
    del key  # the creator keeps a share, like every member, and never the key
    return await _place(node, plan, ceremony, [], "auto", keep_row=True)


@dataclass(frozen=True)
class _Ceremony:
    """One epoch made in memory: its signed descriptor, this node's sealed share, the inbox entries."""

    descriptor: Descriptor
    record: SignedRecord
    own: int
    """This node's position in the members."""
    own_share: bytes
    inbox: dict[int, SignedRecord]
    """Each other member's inbox entry, by position."""


def _prepare(node: AetherNode, plan: Plan, descriptor: Descriptor, key: bytes) -> _Ceremony:
    """Sign the descriptor, split ``key`` and seal each share to its member: nothing is written.

    The caller drops the key afterwards: from here on it lives only in the shares.
    """
    identity = node.identity
    team_id, epoch = descriptor.team_id, descriptor.epoch
    ttl = int(node.config.record_ttl)
    record = create_record(identity, DESCRIPTOR_KIND, descriptor_name(team_id, epoch), next_seq(),
                           descriptor.encode(), ttl)
    shares = split_key(key, plan.k, len(plan.members))
    sealed = [seal(m, s, purpose="share", team_id=team_id, epoch=epoch)
              for m, s in zip(plan.members, shares, strict=True)]
    own = plan.members.index(identity.public)
    inbox = {
        i: create_record(identity, INBOX_KIND, inbox_name(m.node_id, team_id, epoch), next_seq(), sealed[i], ttl)
        for i, m in enumerate(plan.members) if i != own
    }
    return _Ceremony(descriptor, record, own, sealed[own], inbox)


async def _place(node: AetherNode, plan: Plan, ceremony: _Ceremony, earlier: list[SignedRecord],
                 policy: str, *, keep_row: bool) -> Created:
    """Write what a ceremony made, in order: share files, own share, the team's row, then the DHT entries.

    ``earlier`` are the descriptor and approval records of the epochs before this one,
    which the share files carry so that a member with no network can check the whole
    chain. The row is written only when ``keep_row`` (creation): a new epoch is
    followed once it is valid, by :func:`refresh_team`.
    Inbox entries are placed at most MAX_PARALLEL_DELIVERIES at a time; a member whose
    entry cannot be placed is reported, not fatal (its file, if any, still carries it).
    """
    d, record = ceremony.descriptor, ceremony.record
    written = _write_share_files(plan, [*earlier, record], ceremony.inbox)
    node.store.put_team_share(d.team_id, d.epoch, ceremony.own_share)
    if keep_row:
        node.store.put_team(d.team_id, d.name, d.epoch, record.encode(), policy=policy)
    log.info("team %s (%s) epoch %d: %d of %d", d.name, d.team_id.hex(), d.epoch, d.k, d.n)

    places = asyncio.Semaphore(MAX_PARALLEL_DELIVERIES)

    async def deliver(i: int, entry: SignedRecord) -> Delivery:
        member = plan.members[i]
        async with places:
            try:
                report = await node.put_entry(entry)
            except ValueRejected as exc:
                return Delivery(member, i + 1, file=written.get(member.node_id), error=str(exc))
        return Delivery(member, i + 1, report.stored, written.get(member.node_id))

    descriptor_report, *delivered = await asyncio.gather(
        node.put_entry(record), *(deliver(i, entry) for i, entry in ceremony.inbox.items())
    )
    deliveries = sorted([Delivery(plan.members[ceremony.own], ceremony.own + 1), *delivered], key=lambda x: x.index)
    return Created(d, record, descriptor_report.stored, tuple(deliveries))


@dataclass(frozen=True)
class Changed:
    """What ``change_members`` did, and whether its epoch is the one the team follows or still a proposal."""

    made: Created
    """The new epoch as this node made it, and how its entries were placed."""
    previous: Descriptor
    """The epoch it follows."""
    winner: Descriptor | None
    """The descriptor of that epoch which every reader takes: ``made.descriptor`` unless
    another member's change of the same epoch is valid too and has the smaller digest;
    None while no descriptor of that epoch has its approvals (``made`` is pending)."""
    signers: int = 1
    """Members of ``previous`` who have signed ``made`` so far (its maker included)."""

    @property
    def won(self) -> bool:
        return self.winner == self.made.descriptor

    @property
    def pending(self) -> bool:
        """The change waits for approvals: ``needed - signers`` more members of ``previous`` must approve it."""
        return self.winner is None

    @property
    def needed(self) -> int:
        return self.previous.k


async def change_members(node: AetherNode, row: TeamRow, add: Sequence[PublicIdentity] = (),
                         remove: Sequence[PublicIdentity] = (), k: int | None = None,
                         shares_out: Path | None = None) -> Changed:
    """Start epoch e + 1 of the team in ``row`` (epoch e) with members added or removed, and K changed if ``k``.

    A removed member must not read what comes after, so the new epoch has a new key,
    split among its members alone, like at creation: the maker keeps its own share and
    drops the key (it unlocks epoch e + 1 like everyone). The new descriptor chains
    to epoch e: ``previous`` is its digest and ``sealed_previous`` its key under the
    new one, so whoever unlocks e + 1 reads every older epoch. That is why epoch e
    must be unlocked here (:class:`TeamLocked` otherwise).

    Everything is checked before anything is written (:func:`plan_change`). Then the
    writes go as at creation, but the row stays at epoch e: the new descriptor is a
    proposal until K_e members of epoch e have signed it (with K_e = 1, at once).
    The team's descriptors are then read back from the DHT: a complete change moves
    the row; if another member's valid epoch e + 1 has the smaller digest, every
    reader follows that one, so this node does too (its own epoch's entries and
    share are dropped) and says so in ``winner``.
    """
    current = descriptor_of(decode_record(row.descriptor))
    team_id, epoch = current.team_id, current.epoch
    plan = plan_change(node.identity.public, current, add, remove, k, shares_out)
    chain = [link for link in held_chain(node, team_id) if link.descriptor.epoch <= epoch]
    if not chain or chain[-1].descriptor.digest() != current.digest():
        raise TeamError(f"this node does not hold the descriptors of team {current.name} ({team_id.hex()}) "
                        f"from epoch 0 to {epoch}: wait for its inbox to be read, then try again")
    old_key = unlocked_key(node, team_id, epoch)
    if old_key is None or not check_commitment(old_key, team_id, epoch, current.commitment):
        raise TeamLocked(f"team locked: run aether-node team unlock {row.name}")
    key = new_team_key()
    descriptor = Descriptor(team_id, current.name, current.salt, epoch + 1, plan.k, plan.members,
                            commitment(key, team_id, epoch + 1), current.digest(),
                            chain_previous(key, team_id, epoch, old_key))
    del old_key
    ceremony = _prepare(node, plan, descriptor, key)
    del key  # like at creation: the maker keeps its share, never the key
    made = await _place(node, plan, ceremony, chain_records(chain), row.policy, keep_row=False)
    records = await team_records(node, team_id)
    followed, _ = refresh_team(node, team_id, records)
    winner = next((link.descriptor for link in followed if link.descriptor.epoch == epoch + 1), None)
    if winner is not None and winner != descriptor:
        log.warning("team %s (%s): another member's epoch %d was made at the same time and is the one followed",
                    current.name, team_id.hex(), epoch + 1)
    signers, _ = approvers(Link(descriptor, made.record), current, records)
    return Changed(made, current, winner, len(signers))


def chain_records(chain: Iterable[Link]) -> list[SignedRecord]:
    """Every record that makes ``chain`` verifiable: each epoch's descriptor and the approvals it counted."""
    return [record for link in chain for record in (link.record, *link.approvals)]


async def team_records(node: AetherNode, team_id: bytes) -> list[SignedRecord]:
    """The records the DHT (and this node) hold under the team's key now: descriptors and approvals."""
    found = await node.get_entries(team_key(team_id))
    return [entry.record for entry in found.entries]


def pending_changes(node: AetherNode, team_id: bytes, records: Iterable[SignedRecord]) -> list[Proposal]:
    """Proposals of the epoch after the one this node follows that still lack approvals, smallest digest first."""
    row = node.store.team(team_id)
    if row is None:
        return []
    return [p for p in proposals(records, descriptor_of(decode_record(row.descriptor))) if not p.complete]


@dataclass(frozen=True)
class Approved:
    """What ``approve_change`` did: the proposal as it stands now, and the epoch this node follows after it."""

    proposal: Proposal
    record: SignedRecord
    """This node's signed approval."""
    replicas: int
    """Peers that acknowledged the approval entry."""
    followed: Descriptor
    """The epoch the team's row holds afterwards: the proposal's, if this approval completed it."""


async def approve_change(node: AetherNode, row: TeamRow, proposal: str | None = None) -> Approved:
    """Sign this node's approval of a pending change of the team in ``row``, and follow it if that completes it.

    The approval is a signed entry under the team's key naming the proposed
    descriptor's digest and maker (:class:`~aether.node.teams.Approval`), so it counts
    for that exact payload only: another key, member list or maker needs approvals of
    its own. ``proposal`` (hex digits of the proposal ID, as ``team status`` shows it)
    chooses among several. TeamError, before anything is signed, when this node is
    not a member of the epoch it holds, has signed the proposal already, or no
    pending proposal builds on the epoch it holds.
    """
    team_id = row.team_id
    records = await team_records(node, team_id)
    refresh_team(node, team_id, records)  # a change completed meanwhile is followed first
    row = node.store.team(team_id) or row
    current = descriptor_of(decode_record(row.descriptor))
    team = f"team {current.name} ({team_id.hex()})"
    me = node.identity.public.signing_public
    if current.index_of(me) is None:
        raise TeamError(f"this node is not a member of {team} epoch {current.epoch}: only its members approve a change")
    pending = pending_changes(node, team_id, records)
    if proposal is not None:
        pending = [p for p in pending if Approval.of(p.link).proposal().hex().startswith(proposal.lower())]
    if not pending:
        later = [r for r in records if r.kind == DESCRIPTOR_KIND and _epoch_of(r) > current.epoch]
        if later and proposal is None:
            raise TeamError(f"the proposed change(s) of {team} do not build on epoch {current.epoch}, the one this "
                            f"node holds: wait for its inbox to be read, then try again")
        chosen = f" matching {proposal!r}" if proposal is not None else ""
        raise TeamError(f"no change{chosen} of {team} waits for approval: epoch {current.epoch} is the newest")
    if len(pending) > 1:
        ids = ", ".join(Approval.of(p.link).proposal().hex()[:16] for p in pending)
        raise TeamError(f"{len(pending)} changes of {team} wait for approval ({ids}): choose one with --proposal")
    chosen = pending[0]
    if me in chosen.signers:
        made = "made" if chosen.link.record.author == me else "already approved"
        raise TeamError(f"this node {made} that change of {team}: it needs {chosen.needed - len(chosen.signers)} "
                        f"more approval(s) from other members of epoch {current.epoch}")
    approval = Approval.of(chosen.link)
    record = create_record(node.identity, APPROVAL_KIND, approval.name(), next_seq(), approval.encode(),
                           int(node.config.record_ttl))
    report = await node.put_entry(record)
    chain, _ = refresh_team(node, team_id, [*records, record])
    after = Proposal(Link(chosen.link.descriptor, chosen.link.record, (*chosen.link.approvals, record)), current,
                     chosen.signers | {me})
    log.info("team %s (%s): approved the change to epoch %d (%d of %d)", current.name, team_id.hex(),
             current.epoch + 1, len(after.signers), after.needed)
    return Approved(after, record, report.stored, chain[-1].descriptor if chain else current)


def _epoch_of(record: SignedRecord) -> int:
    """The epoch a descriptor record names, or -1 for one that does not parse."""
    try:
        return descriptor_of(record).epoch
    except TeamError:
        return -1


async def redeliver(node: AetherNode) -> int:
    """Store this node's own team entries (descriptors, shares it delivers) on the nodes closest to them.

    A team created with no network (``--shares-out``) leaves its entries here only;
    the daemon calls this when it joins, so members who did not get a file find
    their share in their inbox. Returns how many entries were placed on a peer.
    """
    me = node.identity.public.signing_public
    placed = 0
    for prefix in (b"team:", b"inbox:"):
        for held in node.store.iter_entries(role="own", kind_prefix=prefix):
            if held.author != me or held.expires <= time.time():
                continue
            try:
                record = decode_record(held.value)
                if record.kind in (DESCRIPTOR_KIND, APPROVAL_KIND, INBOX_KIND) and (await node.put_entry(record)).stored:
                    placed += 1
            except (RecordError, ValueRejected) as exc:
                log.warning("could not deliver %r again: %s", held.name, exc)
    return placed


# ------------------------------------------------------------------ share files
def share_file(descriptors: Sequence[SignedRecord], inbox: SignedRecord) -> bytes:
    """The bytes of a share file: the member's inbox entry and the descriptors it needs."""
    return msgpack.packb([SHARE_FILE_MAGIC, [r.encode() for r in descriptors], inbox.encode()], use_bin_type=True)


def parse_share_file(data: bytes) -> tuple[list[SignedRecord], SignedRecord]:
    """(descriptor records, inbox entry) of a share file, each signature checked; TeamError otherwise."""
    if not isinstance(data, bytes):
        raise TeamError("a share file is bytes")
    if len(data) > MAX_SHARE_FILE_BYTES:
        raise TeamError(f"a share file is at most {MAX_SHARE_FILE_BYTES} bytes; this one is {len(data)}")
    try:
        fields = msgpack.unpackb(data, raw=False, max_str_len=64, max_bin_len=MAX_SHARE_FILE_BYTES,
                                 max_array_len=MAX_CHAIN, max_map_len=0, max_ext_len=0)
    except Exception:
        raise TeamError("not a share file: it is not msgpack") from None
    if not (isinstance(fields, list) and len(fields) == 3 and fields[0] == SHARE_FILE_MAGIC):
        raise TeamError(f"not a share file: it does not start with {SHARE_FILE_MAGIC!r}")
    _, descriptors, inbox = fields
    if not (isinstance(descriptors, list) and descriptors and all(isinstance(d, bytes) for d in descriptors)
            and isinstance(inbox, bytes)):
        raise TeamError("a share file carries descriptor records and an inbox entry")
    try:
        records = [decode_record(d) for d in descriptors]
        entry = decode_record(inbox)
    except RecordError as exc:
        raise TeamError(f"the share file carries a malformed record: {exc}") from None
    for record in (*records, entry):
        verify_signature(record)
    return records, entry


def _write_share_files(plan: Plan, descriptors: list[SignedRecord], inbox: dict[int, SignedRecord]) -> dict[bytes, Path]:
    """Write each member's share file (owner-only, atomically); on any failure none is left."""
    if not plan.files:
        return {}
    written: dict[bytes, Path] = {}
    folder = next(iter(plan.files.values())).parent
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i, entry in inbox.items():
            path = plan.files[plan.members[i].node_id]
            write_atomically(path, share_file(descriptors, entry))  # mode 0600
            written[plan.members[i].node_id] = path
    except OSError as exc:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise TeamError(f"cannot write the share files in {folder}: {exc.strerror or exc}") from None
    return written


# ------------------------------------------------------------------ taking a share in
@dataclass(frozen=True)
class Accepted:
    """A share this node took in (or already held)."""

    descriptor: Descriptor
    """The epoch the share is for."""
    index: int
    """This node's share index in that epoch."""
    newest: Descriptor
    """The newest epoch of the team known after this."""
    new: bool
    """False when the same share was already held."""


def accept_share(node: AetherNode, inbox: SignedRecord, descriptors: Iterable[SignedRecord]) -> Accepted:
    """Check a delivered share completely, then keep it (still sealed) with the team's descriptor.

    ``inbox`` is the signed inbox entry (signature already checked) and ``descriptors``
    candidate descriptor records of its team. The share is kept only if: it is
    addressed to this node; a valid chain of descriptors reaches its epoch; it is
    signed by the member who made that epoch (the creator for epoch 0); this node is
    a member of it; the box opens for this node; and the share inside has this
    node's index. The opened share is not kept: it stays sealed at rest.
    """
    member, team_id, epoch, sealed = share_of(inbox)
    descriptors = list(descriptors)
    me = node.identity.public
    if member != me.node_id:
        raise TeamError(f"this share is for node {member.hex()}, not for this node ({me.node_id.hex()})")
    chain = _chain(node, team_id, descriptors)
    link = next((c for c in chain if c.descriptor.epoch == epoch), None)
    if link is None:
        waiting = chain and chain[-1].descriptor.epoch == epoch - 1 and any(
            not p.complete for p in proposals(descriptors, chain[-1].descriptor))
        raise TeamUnknown(f"no valid descriptor of team {team_id.hex()} epoch {epoch} was found"
                          + (": the change is proposed and waits for approvals" if waiting else ""))
    descriptor = link.descriptor
    if inbox.author != link.record.author:
        raise TeamError(
            f"the share for team {descriptor.name} ({team_id.hex()}) epoch {epoch} is not signed by the member "
            f"who made that epoch"
        )
    index = descriptor.index_of(me.signing_public)
    if index is None:
        raise TeamError(f"this node is not a member of team {descriptor.name} ({team_id.hex()}) epoch {epoch}")
    try:
        share = open_sealed(node.identity, sealed, purpose="share", team_id=team_id, epoch=epoch)
        found = share_index(share)
    except TeamCryptoError as exc:
        raise TeamError(f"the share for team {descriptor.name} ({team_id.hex()}) epoch {epoch} is unusable: {exc}") from None
    del share
    if found != index:
        raise TeamError(
            f"the share for team {descriptor.name} ({team_id.hex()}) epoch {epoch} has index {found}, "
            f"not this node's {index}"
        )
    new = node.store.team_share(team_id, epoch) != sealed
    _follow(node, chain, join=True)  # before keeping the share: a lost fork's own share goes first
    if new:
        node.store.put_team_share(team_id, epoch, sealed)
    return Accepted(descriptor, index, chain[-1].descriptor, new)


def _chain(node: AetherNode, team_id: bytes, records: Iterable[SignedRecord]) -> list[Link]:
    """The team's verified epochs from ``records`` and the descriptor held in its row.

    From epoch 0 when the records reach back that far; else (older descriptors no
    longer found) from the one held, which was checked when it was taken in.
    """
    held = node.store.team(team_id)
    held_record = decode_record(held.descriptor) if held is not None else None
    pool = [*records, *([held_record] if held_record is not None else [])]
    chain = follow_chain(pool, team_id)
    if held is not None and held_record is not None and (not chain or chain[-1].descriptor.epoch < held.epoch):
        chain = follow_chain(pool, team_id, start=held_record)
    return chain


def refresh_team(node: AetherNode, team_id: bytes, records: Iterable[SignedRecord]) -> tuple[list[Link], bool]:
    """Follow the newest verified epoch of a team this node is in, from descriptor records found.

    The store's row then holds the epoch every reader takes (the newest; of two made
    at once, the one with the smaller digest), whether or not this node is a member of
    it: a removed member learns it is out, and the members who answer unlock requests
    judge them by it. Returns the chain followed (empty, nothing written, for a team
    this node is not in) and whether the row moved.
    """
    if node.store.team(team_id) is None:
        return [], False
    chain = _chain(node, team_id, records)
    return chain, bool(chain) and _follow(node, chain, join=False)


async def read_team(node: AetherNode, team_id: bytes) -> tuple[list[Link], bool]:
    """:func:`refresh_team` with the descriptors and approvals the DHT holds under the team's key now."""
    return refresh_team(node, team_id, await team_records(node, team_id))


def _follow(node: AetherNode, chain: list[Link], *, join: bool) -> bool:
    """Make the store follow ``chain``: its newest epoch in the row, every epoch's descriptor pinned.

    The row changes when the chain's newest epoch is newer than the one held, or is
    the same epoch with another descriptor (a fork that this node had followed the
    other way). A new row is made only when ``join`` (a share was taken in). True if
    the row changed.
    """
    newest = chain[-1]
    d = newest.descriptor
    held = node.store.team(d.team_id)
    if held is None and not join:
        return False
    _drop_lost_epochs(node, chain)
    moves = held is None or held.epoch < d.epoch or (
        held.epoch == d.epoch and descriptor_of(decode_record(held.descriptor)).digest() != d.digest())
    if moves:
        node.store.put_team(d.team_id, d.name, d.epoch, newest.record.encode(),
                            policy=held.policy if held is not None else "auto")
    _keep_descriptors(node, chain)
    return moves


def _drop_lost_epochs(node: AetherNode, chain: list[Link]) -> None:
    """Forget the epochs this node made that lost a fork: their descriptor, inbox entries and own share.

    Nobody follows them, so they are not republished, and the share kept for such an
    epoch opens nothing anyone uses (the winner's inbox brings this node's real share
    of that epoch, if it is a member).
    """
    me = node.identity.public.signing_public
    for link in chain:
        team_id, epoch = link.descriptor.team_id, link.descriptor.epoch
        name = descriptor_name(team_id, epoch)
        if link.record.author == me or node.store.entry(team_key(team_id), me, name) is None:
            continue
        log.warning("team %s (%s) epoch %d: this node's descriptor lost to another member's made at the "
                    "same time; following that one", link.descriptor.name, team_id.hex(), epoch)
        node.store.delete_entry(team_key(team_id), me, name)
        for held in node.store.iter_entries(role="own", kind_prefix=b"inbox:"):
            try:
                lost = held.author == me and parse_inbox_name(held.name)[1:] == (team_id, epoch)
            except TeamError:
                continue
            if lost:
                node.store.delete_entry(held.key, held.author, held.name)
        node.store.forget_team_share(team_id, epoch)
    _drop_lost_approvals(node, chain)


def _drop_lost_approvals(node: AetherNode, chain: list[Link]) -> None:
    """Forget this node's approvals of proposals that did not become their epoch: nobody needs them republished."""
    me = node.identity.public.signing_public
    kept = {Approval.of(link).name() for link in chain if link.descriptor.epoch > 0}
    newest = chain[-1].descriptor
    prefix = team_topic(newest.team_id) + b"#approval/"
    for held in node.store.entries(team_key(newest.team_id)):
        if held.author != me or not held.name.startswith(prefix) or held.name in kept:
            continue
        try:
            epoch = int(held.name[len(prefix):].split(b"/")[0])
        except ValueError:
            continue
        # Only the epochs this chain judged: one that starts at the held epoch (older
        # records not found) says nothing of the approvals that made earlier ones.
        if chain[0].descriptor.epoch < epoch <= newest.epoch:
            node.store.delete_entry(held.key, held.author, held.name)


def _keep_descriptors(node: AetherNode, chain: list[Link]) -> None:
    """Hold the team's descriptors and their approvals pinned, so this member's node serves and republishes them too.

    The approvals must stay with the descriptors: without them, no reader (this node's
    own :func:`~aether.node.team_keys.held_chain` included) takes the epochs they approve.
    """
    now = time.time()
    for link in chain:
        for record in (link.record, *link.approvals):
            if record.author == node.identity.public.signing_public or record.expires <= now:
                continue
            node.keep_entry(Entry(team_key(link.descriptor.team_id), record.encode(), record), role="replica",
                            pinned=True)


def import_share(node: AetherNode, data: bytes) -> Accepted:
    """Take in a share file written by ``--shares-out`` (team create or a change of members): no network needed.

    The descriptors bundled in the file are what the share is checked against; they
    are signed, and epoch 0's signer must be the creator the team ID names, so a file
    cannot bring a team of someone else's making.
    """
    descriptors, inbox = parse_share_file(data)
    return accept_share(node, inbox, descriptors)

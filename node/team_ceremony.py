"""The key ceremony: creating a team, and taking in the share a member is given.

``create_team`` is issue 6's "Creating a team": a fresh 256-bit key is split K-of-N,
each share sealed to its member, the descriptor and one inbox entry per other member
published in the DHT, signed by the creator. The creator keeps its own share (still
sealed to itself) and the descriptor, and nothing else: the key itself is never
stored, not even sealed at rest, so the creator holds no more power over the team
than any other member (it unlocks the team like everyone, with K shares).

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
from aether.node.teams import (
    DESCRIPTOR_KIND,
    INBOX_KIND,
    MAX_TEAM_MEMBERS,
    Descriptor,
    Link,
    TeamError,
    check_distinct,
    check_team_name,
    check_threshold,
    descriptor_name,
    follow_chain,
    inbox_name,
    share_of,
    team_key,
    verify_signature,
)
from aether.node.values import Entry, ValueRejected

log = logging.getLogger(__name__)

SHARE_FILE_MAGIC = "aether-team-share/1"
SHARE_SUFFIX = ".share"
MAX_SHARE_FILE_BYTES = 1 << 20
"""A share file holds one inbox entry and at most a chain of descriptors (7 KiB each)."""
MAX_CHAIN = 128
"""Descriptors one share file may carry."""
MAX_PARALLEL_DELIVERIES = 8
"""Inbox entries placed at once: each is a lookup and k STOREs."""


class TeamUnknown(TeamError):
    """No valid descriptor of the team and epoch a share is for could be found (yet)."""


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
    check_distinct(listed)
    check_threshold(k, len(listed))
    if len(listed) > MAX_TEAM_MEMBERS:
        raise TeamError(
            f"a team of {len(listed)} members does not fit one descriptor record: at most {MAX_TEAM_MEMBERS}"
        )
    files: dict[bytes, Path] = {}
    if shares_out is not None:
        folder = _check_folder(Path(shares_out))
        for member in listed:
            if member != creator:
                path = folder / f"{member.node_id.hex()}{SHARE_SUFFIX}"
                if path.exists() or path.is_symlink():
                    raise TeamError(f"{path} already exists: move it away or choose another folder for the shares")
                files[member.node_id] = path
    return Plan(name, k, listed, files)


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
    identity = node.identity
    creator = identity.public
    plan = plan_team(creator, name, k, members, shares_out)
    key = new_team_key()
    team_id, salt = new_team_id(creator.signing_public, plan.name)
    descriptor = Descriptor(team_id, plan.name, salt, 0, plan.k, plan.members, commitment(key, team_id, 0))
    ttl = int(node.config.record_ttl)
    record = create_record(identity, DESCRIPTOR_KIND, descriptor_name(team_id, 0), next_seq(), descriptor.encode(), ttl)
    shares = split_key(key, plan.k, len(plan.members))
    del key  # the creator keeps a share, like every member, and never the key
    sealed = [seal(m, s, purpose="share", team_id=team_id, epoch=0) for m, s in zip(plan.members, shares, strict=True)]
    own = plan.members.index(creator)
    inbox = {
        i: create_record(identity, INBOX_KIND, inbox_name(m.node_id, team_id, 0), next_seq(), sealed[i], ttl)
        for i, m in enumerate(plan.members) if i != own
    }
    written = _write_share_files(plan, [record], inbox)
    node.store.put_team_share(team_id, 0, sealed[own])
    node.store.put_team(team_id, plan.name, 0, record.encode())
    log.info("created team %s (%s), %d of %d", plan.name, team_id.hex(), plan.k, len(plan.members))

    deliveries = [Delivery(creator, own + 1)]
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
        node.put_entry(record), *(deliver(i, entry) for i, entry in inbox.items())
    )
    deliveries.extend(delivered)
    deliveries.sort(key=lambda d: d.index)
    return Created(descriptor, record, descriptor_report.stored, tuple(deliveries))


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
                if record.kind in (DESCRIPTOR_KIND, INBOX_KIND) and (await node.put_entry(record)).stored:
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
    me = node.identity.public
    if member != me.node_id:
        raise TeamError(f"this share is for node {member.hex()}, not for this node ({me.node_id.hex()})")
    held = node.store.team(team_id)
    held_record = decode_record(held.descriptor) if held is not None else None
    pool = [*descriptors, *([held_record] if held_record is not None else [])]
    chain = follow_chain(pool, team_id) or (follow_chain(pool, team_id, start=held_record) if held_record else [])
    link = next((c for c in chain if c.descriptor.epoch == epoch), None)
    if link is None:
        raise TeamUnknown(f"no valid descriptor of team {team_id.hex()} epoch {epoch} was found")
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
    if new:
        node.store.put_team_share(team_id, epoch, sealed)
    newest = chain[-1]
    if held is None or held.epoch < newest.descriptor.epoch:
        node.store.put_team(team_id, descriptor.name, newest.descriptor.epoch, newest.record.encode(),
                            policy=held.policy if held is not None else "auto")
    _keep_descriptors(node, chain)
    return Accepted(descriptor, index, newest.descriptor, new)


def _keep_descriptors(node: AetherNode, chain: list[Link]) -> None:
    """Hold the team's descriptors pinned, so this member's node serves and republishes them too."""
    now = time.time()
    for link in chain:
        record = link.record
        if record.author == node.identity.public.signing_public or record.expires <= now:
            continue
        node.keep_entry(Entry(team_key(link.descriptor.team_id), record.encode(), record), role="replica", pinned=True)


def import_share(node: AetherNode, data: bytes) -> Accepted:
    """Take in a share file written by ``team create --shares-out``: no network needed.

    The descriptors bundled in the file are what the share is checked against; they
    are signed, and epoch 0's signer must be the creator the team ID names, so a file
    cannot bring a team of someone else's making.
    """
    descriptors, inbox = parse_share_file(data)
    return accept_share(node, inbox, descriptors)

"""Teams in the DHT: each epoch's signed descriptor, the names of team entries, and the chain.

This is the "Names" and "In the DHT" sections of docs/teams.md made into code; the
layouts below are that contract. A team is known by its **descriptor**: who the members
are, how many of them unlock the key (K), which epoch it is, and a commitment to the
epoch's key. Descriptors travel as entries (signed records named ``topic#item``, see
:mod:`aether.node.entries`) under the team's topic, and each member's share of the key
travels as an entry under that member's inbox topic:

* ``team:<team ID hex>#descriptor/<epoch>``, kind ``team-descriptor``: the epoch's
  :class:`Descriptor`, signed by the member who made the epoch (the creator for epoch 0);
* ``team:<team ID hex>#approval/<epoch>/<proposal hex>``, kind ``team-approval``: a
  member of the epoch before agreeing to one proposed descriptor of ``epoch``
  (:class:`Approval`); epoch e + 1 counts only with K_e distinct signers of epoch e;
* ``inbox:<member node ID hex>#share/<team ID hex>/<epoch>``, kind ``team-inbox``: the
  member's share sealed to it (``crypto.teams.seal``, purpose ``share``), signed by the
  member who made the epoch.

Payloads are canonical msgpack, decoded strictly: a peer's bytes give either a
well-formed value or a :class:`TeamError` that says what is wrong. Shapes are checked
here; who may sign what is :meth:`Descriptor.verify`, :func:`approvers` and :func:`follow_chain`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from aether.crypto.identity import IdentityError, PublicIdentity, node_id_for
from aether.crypto.records import MAX_RECORD_BYTES, RecordError, SignedRecord, topic_key, topic_of, verify_record
from aether.crypto.teams import (
    COMMITMENT_BYTES,
    MAX_EPOCH,
    MAX_MEMBERS,
    TEAM_ID_BYTES,
    TeamCryptoError,
    team_id_for,
)

__all__ = [
    "APPROVAL_KIND",
    "DESCRIPTOR_KIND",
    "INBOX_KIND",
    "MAX_NAME_BYTES",
    "MAX_TEAM_MEMBERS",
    "Approval",
    "Descriptor",
    "Link",
    "Proposal",
    "approval_name",
    "approval_of",
    "approvers",
    "TeamError",
    "check_distinct",
    "check_team_name",
    "check_threshold",
    "descriptor_name",
    "descriptor_of",
    "follow_chain",
    "inbox_key",
    "inbox_name",
    "inbox_topic",
    "is_team_id",
    "parse_inbox_name",
    "proposals",
    "share_of",
    "team_key",
    "team_topic",
    "verify_signature",
]

DESCRIPTOR_KIND = "team-descriptor"
APPROVAL_KIND = "team-approval"
INBOX_KIND = "team-inbox"
MAX_NAME_BYTES = 64
"""A team name is a short label (UTF-8)."""
SALT_BYTES = 16
DIGEST_BYTES = 32
"""``previous`` is the SHA-256 of the previous epoch's descriptor encoding."""
SEALED_PREVIOUS_BYTES = 12 + 32 + 16
"""``crypto.teams.chain_previous``: nonce, the 32-byte old key, tag."""
MEMBER_BYTES = 64
"""A member in a descriptor: its signing key then its sealing key, raw (an identity string without its checksum)."""
MAX_SEALED_SHARE_BYTES = 256
"""A sealed share is 93 bytes (ephemeral key, nonce, 33-byte share, tag); room to spare, no more."""

_HEX_ID = re.compile(r"[0-9a-f]{40}")
_DESCRIPTOR_FIELDS = 9


class TeamError(ValueError):
    """A team value that is malformed, forged or inconsistent, or a team request that cannot be met.

    The message says which field or rule failed, so a refused descriptor or share can be
    explained to the user and in logs.
    """


# ------------------------------------------------------------------ names
def team_topic(team_id: bytes) -> bytes:
    return b"team:" + _check_team_id(team_id).hex().encode()


def team_key(team_id: bytes) -> bytes:
    """The shared DHT key of a team: where every epoch's descriptor lives."""
    return topic_key(team_topic(team_id))


def descriptor_name(team_id: bytes, epoch: int) -> bytes:
    return team_topic(team_id) + b"#descriptor/" + str(_check_epoch(epoch)).encode()


def approval_name(team_id: bytes, epoch: int, proposal: bytes) -> bytes:
    """Name of an approval of the proposed epoch ``epoch`` whose :meth:`Approval.proposal` is ``proposal``.

    One name per proposal, so a member's approvals of two competing proposals are two
    entries, and approving the same one again replaces the first.
    """
    if not isinstance(proposal, bytes) or len(proposal) != DIGEST_BYTES:
        raise TeamError(f"a proposal is named by a {DIGEST_BYTES}-byte digest")
    return team_topic(team_id) + b"#approval/" + str(_check_epoch(epoch)).encode() + b"/" + proposal.hex().encode()


def inbox_topic(node_id: bytes) -> bytes:
    if not isinstance(node_id, bytes) or len(node_id) != 20:
        raise TeamError("a node ID is 20 bytes")
    return b"inbox:" + node_id.hex().encode()


def inbox_key(node_id: bytes) -> bytes:
    """The shared DHT key where a node's shares are delivered: its inbox."""
    return topic_key(inbox_topic(node_id))


def inbox_name(member_node_id: bytes, team_id: bytes, epoch: int) -> bytes:
    return (
        inbox_topic(member_node_id) + b"#share/" + _check_team_id(team_id).hex().encode()
        + b"/" + str(_check_epoch(epoch)).encode()
    )


_INBOX_NAME = re.compile(rb"inbox:([0-9a-f]{40})#share/([0-9a-f]{40})/(0|[1-9][0-9]{0,18})")


def parse_inbox_name(name: bytes) -> tuple[bytes, bytes, int]:
    """(member node ID, team ID, epoch) of an inbox entry's name, or TeamError."""
    match = _INBOX_NAME.fullmatch(name) if isinstance(name, bytes) else None
    if match is None or int(match[3]) > MAX_EPOCH:
        raise TeamError(f"not the name of a share in an inbox: {name!r}")
    return bytes.fromhex(match[1].decode()), bytes.fromhex(match[2].decode()), int(match[3])


def is_team_id(text: str) -> bool:
    """Whether ``text`` is written as a team ID (40 lowercase hex digits)."""
    return _HEX_ID.fullmatch(text) is not None


def check_team_name(name: object) -> str:
    """The name if it can label a team, else TeamError saying why.

    Names are shown in lists and typed on command lines: printable text of at most 64
    UTF-8 bytes, without spaces at either end, and never 40 hex digits (that reads as
    a team ID wherever a name or an ID is accepted).
    """
    if not isinstance(name, str) or not name:
        raise TeamError("a team name must be non-empty text")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise TeamError("the team name is not valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise TeamError(f"the team name is {size} bytes in UTF-8, more than {MAX_NAME_BYTES}")
    if name != name.strip():
        raise TeamError(f"the team name {name!r} begins or ends with white space")
    bad = next((c for c in name if unicodedata.category(c)[0] == "C"), None)
    if bad is not None:
        raise TeamError(f"the team name contains the control or unassigned character {bad!r}")
    if is_team_id(name.lower()):
        raise TeamError(f"the team name {name!r} is 40 hex digits, which reads as a team ID")
    return name


def _check_team_id(team_id: object) -> bytes:
    if not isinstance(team_id, bytes) or len(team_id) != TEAM_ID_BYTES:
        raise TeamError(f"a team ID is {TEAM_ID_BYTES} bytes")
    return team_id


def _check_epoch(epoch: object) -> int:
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise TeamError(f"an epoch is a whole number from 0 to 2**63 - 1, got {epoch!r}")
    return epoch


# ------------------------------------------------------------------ msgpack
def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: object, what: str) -> object:
    if not isinstance(data, bytes):
        raise TeamError(f"a {what} is bytes, got {type(data).__name__}")
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, max_str_len=MAX_RECORD_BYTES,
            max_bin_len=MAX_RECORD_BYTES, max_array_len=MAX_MEMBERS + 1, max_map_len=0, max_ext_len=0,
        )
    except Exception:
        raise TeamError(f"the {what} is not valid msgpack") from None
    if _pack(value) != data:
        raise TeamError(f"the {what} is not in canonical form")
    return value


# ------------------------------------------------------------------ descriptor
@dataclass(frozen=True)
class Descriptor:
    """One epoch of a team: its members, threshold and key commitment (docs/teams.md "In the DHT").

    Construction checks every field's shape and bound, so a Descriptor in hand is well
    formed; whether its signer had the right to make it is :meth:`verify`.
    """

    team_id: bytes
    name: str
    salt: bytes
    """The 16 random bytes that, with the creator's key and the name, give the team ID."""
    epoch: int
    k: int
    """How many members' shares rebuild the epoch key."""
    members: tuple[PublicIdentity, ...]
    """In share order: member i (1-based) holds share i."""
    commitment: bytes
    """``crypto.teams.commitment`` of the epoch key: checks a combined key."""
    previous: bytes | None = None
    """SHA-256 of the previous epoch's encoding; None for epoch 0."""
    sealed_previous: bytes | None = None
    """The previous epoch's key under this epoch's key (``crypto.teams.chain_previous``); None for epoch 0."""

    def __post_init__(self) -> None:
        _check_team_id(self.team_id)
        try:
            check_team_name(self.name)
        except TeamError as exc:
            raise TeamError(f"descriptor: {exc}") from None
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_BYTES:
            raise TeamError(f"descriptor: the salt is {SALT_BYTES} bytes")
        _check_epoch(self.epoch)
        if not isinstance(self.members, tuple) or not all(isinstance(m, PublicIdentity) for m in self.members):
            raise TeamError("descriptor: members must be a tuple of public identities")
        check_threshold(self.k, len(self.members))
        check_distinct(self.members)
        if not isinstance(self.commitment, bytes) or len(self.commitment) != COMMITMENT_BYTES:
            raise TeamError(f"descriptor: the commitment is {COMMITMENT_BYTES} bytes")
        if self.epoch == 0:
            if self.previous is not None or self.sealed_previous is not None:
                raise TeamError("descriptor: epoch 0 has no previous epoch")
        else:
            if not isinstance(self.previous, bytes) or len(self.previous) != DIGEST_BYTES:
                raise TeamError(f"descriptor: epoch {self.epoch} must name its previous epoch (a {DIGEST_BYTES}-byte digest)")
            if not isinstance(self.sealed_previous, bytes) or len(self.sealed_previous) != SEALED_PREVIOUS_BYTES:
                raise TeamError(
                    f"descriptor: epoch {self.epoch} must carry the previous key sealed ({SEALED_PREVIOUS_BYTES} bytes)"
                )

    @property
    def n(self) -> int:
        return len(self.members)

    def index_of(self, signing_public: bytes) -> int | None:
        """The 1-based share index of the member with this signing key, or None for a non-member."""
        for index, member in enumerate(self.members, start=1):
            if member.signing_public == signing_public:
                return index
        return None

    def encode(self) -> bytes:
        """Canonical msgpack list: [team ID, name, salt, epoch, k, [member keys], commitment, previous, sealed previous]."""
        return _pack([
            self.team_id, self.name, self.salt, self.epoch, self.k,
            [m.signing_public + m.sealing_public for m in self.members],
            self.commitment, self.previous, self.sealed_previous,
        ])

    def digest(self) -> bytes:
        """SHA-256 of the encoding: what the next epoch's ``previous`` names."""
        return hashlib.sha256(self.encode()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Descriptor:
        """Parse untrusted bytes; raises TeamError only, whatever the input."""
        fields = _unpack(data, "descriptor")
        if not isinstance(fields, list) or len(fields) != _DESCRIPTOR_FIELDS:
            raise TeamError(f"a descriptor is a list of {_DESCRIPTOR_FIELDS} fields")
        team_id, name, salt, epoch, k, members, commitment, previous, sealed_previous = fields
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            raise TeamError(f"a descriptor lists 1 to {MAX_MEMBERS} members")
        if type(k) is not int:
            raise TeamError("descriptor: the threshold k is a whole number")
        identities = []
        for position, keys in enumerate(members, start=1):
            if not isinstance(keys, bytes) or len(keys) != MEMBER_BYTES:
                raise TeamError(f"descriptor: member {position} must be {MEMBER_BYTES} bytes of keys")
            try:
                identities.append(PublicIdentity(keys[:32], keys[32:]))
            except IdentityError as exc:
                raise TeamError(f"descriptor: member {position}: {exc}") from None
        return cls(team_id, name, salt, epoch, k, tuple(identities), commitment, previous, sealed_previous)

    def verify(self, signer: bytes, previous: Descriptor | None = None) -> None:
        """Raise TeamError unless ``signer`` (an Ed25519 key) had the right to make this epoch.

        Epoch 0 is the team as created: its signer is the creator, whose key with the
        name and salt gives the team ID (``crypto.teams.team_id_for``), and who is a
        member. Epoch e + 1 must follow ``previous`` (epoch e, already verified): same
        team, name and salt, ``previous`` is the SHA-256 of its encoding, and its signer
        is one of its members. So nobody outside a team can make a new epoch of it; that
        enough members of epoch e agree to it is :func:`approvers`, checked by
        :func:`follow_chain`.
        """
        if self.epoch == 0:
            try:
                expected = team_id_for(signer, self.name, self.salt)
            except TeamCryptoError as exc:
                raise TeamError(f"epoch 0 of team {self.team_id.hex()}: {exc}") from None
            if expected != self.team_id:
                raise TeamError(
                    f"team ID {self.team_id.hex()} is not the one its signer {node_id_for(signer).hex()}, "
                    f"name and salt give: epoch 0 must be signed by the team's creator"
                )
            if self.index_of(signer) is None:
                raise TeamError(f"the creator of team {self.team_id.hex()} is not among its members")
            return
        if previous is None:
            raise TeamError(f"epoch {self.epoch} of team {self.team_id.hex()} can only be checked against epoch {self.epoch - 1}")
        if previous.team_id != self.team_id or previous.epoch != self.epoch - 1:
            raise TeamError(
                f"epoch {self.epoch} of team {self.team_id.hex()} does not follow epoch {previous.epoch} "
                f"of team {previous.team_id.hex()}"
            )
        if previous.name != self.name or previous.salt != self.salt:
            raise TeamError(f"epoch {self.epoch} of team {self.team_id.hex()} changes the team's name or salt")
        if self.previous != previous.digest():
            raise TeamError(
                f"epoch {self.epoch} of team {self.team_id.hex()} names another previous epoch than the one held"
            )
        if previous.index_of(signer) is None:
            raise TeamError(
                f"epoch {self.epoch} of team {self.team_id.hex()} is signed by {node_id_for(signer).hex()}, "
                f"who is not a member of epoch {previous.epoch}"
            )


def check_threshold(k: object, n: int) -> int:
    """K if it suits a team of ``n`` members (1 ≤ K ≤ N ≤ 255), else TeamError with the rule it breaks."""
    if n > MAX_MEMBERS:
        raise TeamError(f"a team has at most {MAX_MEMBERS} members (a share's index is one byte), got {n}")
    if n < 1:
        raise TeamError("a team needs at least one member")
    if type(k) is not int:
        raise TeamError(f"the threshold must be a whole number, got {k!r}")
    if k < 1:
        raise TeamError(f"the threshold must be at least 1, got {k}")
    if k > n:
        raise TeamError(f"the threshold {k} is more than the {n} members: nobody could unlock the team")
    return k


def check_distinct(members: Iterable[PublicIdentity]) -> None:
    """TeamError naming the first member listed twice (by signing key, or sharing a sealing key)."""
    signing: dict[bytes, int] = {}
    sealing: dict[bytes, int] = {}
    for position, member in enumerate(members, start=1):
        for seen, key, what in ((signing, member.signing_public, "listed twice"),
                                (sealing, member.sealing_public, "shares a sealing key with another")):
            if key in seen:
                raise TeamError(
                    f"member {position} ({member.node_id.hex()}) is {what}: member {seen[key]}"
                )
            seen[key] = position


def _largest_team() -> int:
    """How many members a descriptor record can list in the worst case (longest name, largest numbers).

    A descriptor is one signed record of at most MAX_RECORD_BYTES, and each member takes
    66 bytes of it; this is the size a peer accepts, so a larger team cannot be published.
    """
    name = descriptor_name(b"i" * TEAM_ID_BYTES, MAX_EPOCH)
    fits = 0
    for n in range(1, MAX_MEMBERS + 1):
        payload = _pack([b"i" * TEAM_ID_BYTES, "n" * MAX_NAME_BYTES, b"s" * SALT_BYTES, MAX_EPOCH, n,
                         [b"m" * MEMBER_BYTES] * n, b"c" * COMMITMENT_BYTES, b"p" * DIGEST_BYTES,
                         b"q" * SEALED_PREVIOUS_BYTES])
        if len(payload) > MAX_RECORD_BYTES:
            break
        record = SignedRecord(b"a" * 32, DESCRIPTOR_KIND, name, MAX_EPOCH, MAX_EPOCH, payload, b"s" * 64)
        if len(record.encode()) > MAX_RECORD_BYTES:
            break
        fits = n
    return fits


MAX_TEAM_MEMBERS = _largest_team()
"""Members one descriptor record carries (101): the practical bound on N, below the 255 of the key splitting."""


# ------------------------------------------------------------------ records
def descriptor_of(record: SignedRecord) -> Descriptor:
    """The descriptor a record carries, checked to be named for its own team and epoch.

    The record's signature is not checked here (the DHT checks it on arrival, and
    :func:`verify_signature` checks records from elsewhere); :meth:`Descriptor.verify`
    checks that its author could make it.
    """
    if record.kind != DESCRIPTOR_KIND:
        raise TeamError(f"a {record.kind!r} record is not a team descriptor")
    descriptor = Descriptor.decode(record.payload)
    if record.name != descriptor_name(descriptor.team_id, descriptor.epoch):
        raise TeamError(
            f"the descriptor of team {descriptor.team_id.hex()} epoch {descriptor.epoch} is named {record.name!r}"
        )
    return descriptor


def share_of(record: SignedRecord) -> tuple[bytes, bytes, int, bytes]:
    """(member node ID, team ID, epoch, sealed share) of an inbox entry, checked for shape only.

    Whether its author made that epoch and whether the box opens for the member is the
    receiver's business (node/team_ceremony.py).
    """
    if record.kind != INBOX_KIND:
        raise TeamError(f"a {record.kind!r} record is not a share delivery")
    member, team_id, epoch = parse_inbox_name(record.name)
    if not 0 < len(record.payload) <= MAX_SEALED_SHARE_BYTES:
        raise TeamError(f"a sealed share is 1 to {MAX_SEALED_SHARE_BYTES} bytes, got {len(record.payload)}")
    return member, team_id, epoch, record.payload


def verify_signature(record: SignedRecord) -> None:
    """TeamError unless the record is signed by its author; its lifetime is not judged.

    A share file may be carried by hand for weeks, and a descriptor kept in a home
    outlives the record's expiry: what matters there is who signed it, which does not
    expire. (Values from the DHT are checked with their lifetime on arrival.)
    """
    try:
        verify_record(record, now=record.expires - 1)
    except RecordError as exc:
        raise TeamError(f"record {record.name!r}: {exc}") from None


@dataclass(frozen=True)
class Approval:
    """A member's consent to one proposed descriptor: its digest and who made (signed) it.

    The maker is part of what is approved because the descriptor encoding does not
    name it, and the maker is whose inbox entries members take in: an approval of
    Alice's descriptor must not make a copy re-signed by someone else valid.
    """

    team_id: bytes
    epoch: int
    digest: bytes
    """SHA-256 of the proposed descriptor's encoding (:meth:`Descriptor.digest`)."""
    maker: bytes
    """The Ed25519 key that signed the proposed descriptor's record."""

    def __post_init__(self) -> None:
        _check_team_id(self.team_id)
        _check_epoch(self.epoch)
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise TeamError(f"approval: the digest is {DIGEST_BYTES} bytes")
        if not isinstance(self.maker, bytes) or len(self.maker) != 32:
            raise TeamError("approval: the maker is a 32-byte signing key")

    @classmethod
    def of(cls, link: Link) -> Approval:
        """What approving this proposed epoch signs."""
        d = link.descriptor
        return cls(d.team_id, d.epoch, d.digest(), link.record.author)

    def proposal(self) -> bytes:
        """SHA-256 of digest and maker: the name's last part, one per proposal."""
        return hashlib.sha256(b"aether-team-proposal/1" + self.digest + self.maker).digest()

    def name(self) -> bytes:
        return approval_name(self.team_id, self.epoch, self.proposal())

    def encode(self) -> bytes:
        """Canonical msgpack list: [team ID, epoch, digest, maker]."""
        return _pack([self.team_id, self.epoch, self.digest, self.maker])

    @classmethod
    def decode(cls, data: bytes) -> Approval:
        """Parse untrusted bytes; raises TeamError only, whatever the input."""
        fields = _unpack(data, "approval")
        if not isinstance(fields, list) or len(fields) != 4:
            raise TeamError("an approval is a list of 4 fields")
        return cls(*fields)


def approval_of(record: SignedRecord) -> Approval:
    """The approval a record carries, checked to be named for the proposal it approves.

    Like :func:`descriptor_of`, the signature is checked elsewhere; who may approve is
    :func:`approvers`.
    """
    if record.kind != APPROVAL_KIND:
        raise TeamError(f"a {record.kind!r} record is not a team approval")
    approval = Approval.decode(record.payload)
    if record.name != approval.name():
        raise TeamError(f"the approval of team {approval.team_id.hex()} epoch {approval.epoch} is named {record.name!r}")
    return approval


@dataclass(frozen=True)
class Link:
    """One verified epoch of a team: the descriptor, the signed record that carried it, and its approvals."""

    descriptor: Descriptor
    record: SignedRecord
    approvals: tuple[SignedRecord, ...] = ()
    """The approval records of members of the epoch before that count for it (not the maker's own signature)."""


def approvers(link: Link, previous: Descriptor, records: Iterable[SignedRecord]) -> tuple[set[bytes], list[SignedRecord]]:
    """Who of ``previous``'s members agreed to ``link`` (the maker first among them), and the records that say so.

    An approval counts only if it is signed by a member of ``previous`` and approves
    exactly this descriptor made by this maker; approvals of any other payload, by
    non-members, and a member's second approval add nobody. The maker's signature on
    the descriptor counts as its approval.
    """
    wanted = Approval.of(link)
    signers = {link.record.author} if previous.index_of(link.record.author) is not None else set()
    counted: list[SignedRecord] = []
    for record in records:
        if record.kind != APPROVAL_KIND or record.author in signers or previous.index_of(record.author) is None:
            continue
        try:
            if approval_of(record) != wanted:
                continue
        except TeamError:
            continue
        signers.add(record.author)
        counted.append(record)
    return signers, counted


def follow_chain(records: Iterable[SignedRecord], team_id: bytes, start: SignedRecord | None = None) -> list[Link]:
    """The team's verified epochs, from ``start`` (or epoch 0) up to the newest one that follows.

    ``records`` are candidate descriptor records (from the DHT or a share file; their
    signatures already checked); ``start`` is a descriptor this node already trusts.
    ``records`` may also hold approvals (kind ``team-approval``): epoch e + 1 (e ≥ 0) is
    valid only when at least K_e distinct members of epoch e signed it, its maker
    and the approvers together (:func:`approvers`), so one member alone cannot change
    a team whose threshold is 2 or more, nor undo its own removal. Records of other
    teams, forged ones, and epochs that do not follow the chain are left out: a
    reader takes the newest valid epoch. When several valid records claim one epoch
    (two changes approved at once), the one with the smallest digest is taken, so
    that every reader takes the same; a descriptor short of approvals takes no part
    in that. Empty if nothing verifies.
    """
    candidates: dict[int, list[Link]] = {}
    approvals: list[SignedRecord] = []
    for record in records:
        if topic_of(record.name) != team_topic(team_id):
            continue
        if record.kind == APPROVAL_KIND:
            approvals.append(record)
            continue
        try:
            link = Link(descriptor_of(record), record)
        except TeamError:
            continue
        if link.descriptor.team_id == team_id:
            candidates.setdefault(link.descriptor.epoch, []).append(link)
    chain: list[Link] = []
    if start is not None:
        chain.append(Link(descriptor_of(start), start))
    else:
        for link in sorted(candidates.get(0, []), key=lambda c: c.descriptor.digest()):
            try:
                link.descriptor.verify(link.record.author)
            except TeamError:
                continue
            chain.append(link)
            break
    while chain:
        held = chain[-1].descriptor
        following = sorted(candidates.get(held.epoch + 1, []), key=lambda c: c.descriptor.digest())
        for link in following:
            try:
                link.descriptor.verify(link.record.author, held)
            except TeamError:
                continue
            signers, counted = approvers(link, held, approvals)
            if len(signers) < held.k:
                continue
            chain.append(Link(link.descriptor, link.record, tuple(counted)))
            break
        else:
            break
    return chain


@dataclass(frozen=True)
class Proposal:
    """A descriptor of the epoch after ``previous`` whose maker may make it, with the approvals it has so far."""

    link: Link
    previous: Descriptor
    signers: frozenset[bytes]
    """Distinct members of ``previous`` who signed it: its maker and each approver."""

    @property
    def needed(self) -> int:
        """Approvals (signers) it takes to be valid: K of the previous epoch."""
        return self.previous.k

    @property
    def complete(self) -> bool:
        return len(self.signers) >= self.needed


def proposals(records: Iterable[SignedRecord], previous: Descriptor) -> list[Proposal]:
    """Every descriptor of epoch ``previous.epoch + 1`` in ``records`` that builds on ``previous``, smallest digest first.

    Complete or not: what `team status` and `team approve-change` show. A record signed
    by a non-member of ``previous``, or naming another previous epoch, is no proposal.
    """
    records = list(records)
    approvals = [r for r in records if r.kind == APPROVAL_KIND and topic_of(r.name) == team_topic(previous.team_id)]
    found: dict[tuple[bytes, bytes], Proposal] = {}
    for record in records:
        if record.kind != DESCRIPTOR_KIND:
            continue
        try:
            descriptor = descriptor_of(record)
            if descriptor.epoch != previous.epoch + 1:
                continue
            descriptor.verify(record.author, previous)
        except TeamError:
            continue
        link = Link(descriptor, record)
        signers, counted = approvers(link, previous, approvals)
        found[(descriptor.digest(), record.author)] = Proposal(Link(descriptor, record, tuple(counted)), previous,
                                                               frozenset(signers))
    return [found[k] for k in sorted(found)]

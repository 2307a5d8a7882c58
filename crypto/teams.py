"""Team cryptography: the team key, its K-of-N shares, and everything encrypted with it.

This module is the "Cryptography" section of docs/teams.md made into code; the layouts
and labels below are that contract, so change them there first. It uses `cryptography`
and pycryptodome for every primitive and hand-rolls none.

- A team key is 32 random bytes, one per epoch, split with Shamir's scheme so that any K
  of the N members can rebuild it and fewer learn nothing.
- A commitment (an HMAC of the team and epoch under the key) is published with the team,
  so whoever combines K shares can tell the real key from the garbage a bad share gives.
- Shares and unlock answers travel sealed to one member (ephemeral X25519, HKDF-SHA256,
  AES-256-GCM), bound to their purpose, team, epoch and recipient.
- Patterns, summaries, DHT locators, the copy kept at rest and the chain of older keys
  all derive from the epoch key.

Every function checks its arguments and raises a TeamCryptoError subclass that says what
is wrong; nothing decrypts to garbage: authenticated decryption either returns the
plaintext that was sealed or raises DecryptionError.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import random
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Generic, NamedTuple, TypeVar

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .identity import Identity, IdentityError, PublicIdentity, check_signing_public

__all__ = [
    "COMMITMENT_BYTES",
    "KEY_BYTES",
    "LOCATOR_BYTES",
    "LOCATOR_LABELS",
    "MAX_COMBINATIONS",
    "MAX_EPOCH",
    "MAX_MEMBERS",
    "PATTERN_MAGIC",
    "SEAL_PURPOSES",
    "SHARE_BYTES",
    "TEAM_ID_BYTES",
    "DecryptionError",
    "FormatError",
    "ShareCheck",
    "ShareError",
    "TeamCryptoError",
    "blob_header",
    "chain_previous",
    "check_commitment",
    "combine_shares",
    "commitment",
    "decrypt_pattern",
    "decrypt_summary",
    "encrypt_pattern",
    "encrypt_summary",
    "find_bad_shares",
    "locator",
    "new_team_id",
    "team_id_for",
    "new_team_key",
    "open_at_rest",
    "open_sealed",
    "seal",
    "seal_at_rest",
    "share_index",
    "split_key",
    "unchain_previous",
]

KEY_BYTES = 32
TEAM_ID_BYTES = 20
COMMITMENT_BYTES = 32
LOCATOR_BYTES = 20
MAX_MEMBERS = 255  # a share's index is one byte, and index 0 would be the key itself
MAX_EPOCH = 2**63 - 1  # epochs travel as 8 bytes and are stored as SQLite integers

_HALF = 16  # pycryptodome's Shamir shares 16-byte secrets
SHARE_BYTES = 1 + 2 * _HALF  # index || share of half 1 || share of half 2

_NONCE = 12
_TAG = 16
_X25519 = 32

PATTERN_MAGIC = b"ATP1"
_PATTERN_HEADER = len(PATTERN_MAGIC) + TEAM_ID_BYTES + 8  # magic || team ID || epoch

SEAL_PURPOSES = frozenset({"share", "unlock-answer"})
# No label is a prefix of another, so `label || value` is never ambiguous.
LOCATOR_LABELS = frozenset({"pattern", "id", "term"})

# find_bad_shares combines at most this many K-subsets by default. One combination of
# a 32-byte key costs ~4 ms at K = 3 (pycryptodome's GF(2^128) is pure Python) and
# grows with K^2, so the default bounds a worst case to tens of seconds; callers with a
# deadline pass a smaller bound.
MAX_COMBINATIONS = 10_000

_TEAM_ID_DOMAIN = b"aether-team\0"
_COMMIT_DOMAIN = b"aether-team-commit\0"
_SEAL_DOMAIN = b"aether-seal-v1\0"
_PATTERN_DOMAIN = b"aether-team-pattern\0"
_SUMMARY_DOMAIN = b"aether-team-summary\0"
_AT_REST_DOMAIN = b"aether-team-at-rest-v1\0"
_TEAM_ID_SALT_BYTES = 16


class TeamCryptoError(ValueError):
    """An argument cannot be used (wrong type, length or range); the message says which."""


class ShareError(TeamCryptoError):
    """Shares that cannot be combined: malformed, index 0, a duplicate index, or too few."""


class FormatError(TeamCryptoError):
    """Bytes without the layout they claim (sealed box, team blob, summary, sealed key)."""


class DecryptionError(TeamCryptoError):
    """Authenticated decryption failed.

    AES-GCM cannot tell why: the key (or recipient) is wrong, the bound context (purpose,
    team, epoch) differs from the one used when sealing, or the bytes were altered. The
    message lists what to check; no plaintext is ever returned in that case.
    """


# --- arguments --------------------------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes"
    return type(value).__name__


def _check_bytes(value: object, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise TeamCryptoError(f"{what} must be {length} bytes, got {_describe(value)}")
    return value


def _check_key(key: object, what: str = "team key") -> bytes:
    return _check_bytes(key, KEY_BYTES, what)


def _check_team_id(team_id: object) -> bytes:
    return _check_bytes(team_id, TEAM_ID_BYTES, "team ID")


def _epoch_bytes(epoch: object, what: str = "epoch") -> bytes:
    # bool is an int in Python; True as an epoch is a bug, not epoch 1.
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCH:
        raise TeamCryptoError(f"{what} must be an integer from 0 to 2**63 - 1, got {epoch!r}")
    return epoch.to_bytes(8, "big")


def _check_data(data: object, what: str) -> bytes:
    if not isinstance(data, bytes):
        raise TeamCryptoError(f"{what} must be bytes, got {type(data).__name__}")
    return data


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TeamCryptoError(f"{what} must be an integer, got {type(value).__name__}")
    return value


# --- keys and names -----------------------------------------------------------------------


def new_team_key() -> bytes:
    """A fresh 256-bit epoch key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def new_team_id(creator_signing_public: bytes, name: str) -> tuple[bytes, bytes]:
    """A new 20-byte team ID and the random salt it was made with (see :func:`team_id_for`).

    The salt makes every team distinct even when one creator reuses a name; it is
    published in the team's first descriptor, so anyone can check the ID.
    """
    salt = os.urandom(_TEAM_ID_SALT_BYTES)
    return team_id_for(creator_signing_public, name, salt), salt


def team_id_for(creator_signing_public: bytes, name: str, salt: bytes) -> bytes:
    """SHA-256("aether-team\0" || creator key || name || salt)[:20].

    A team ID thus commits to its creator: an epoch-0 descriptor signed by anyone
    else, or naming another creator or name, does not match the ID. The name is a
    label only (UTF-8, not normalised), and two teams may share it.
    """
    try:
        check_signing_public(creator_signing_public)
    except IdentityError as exc:
        raise TeamCryptoError(f"creator: {exc}") from exc
    if not isinstance(name, str) or not name:
        raise TeamCryptoError(f"team name must be non-empty text, got {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TeamCryptoError("team name is not valid Unicode text") from exc
    if not isinstance(salt, bytes) or len(salt) != _TEAM_ID_SALT_BYTES:
        raise TeamCryptoError(f"team ID salt must be {_TEAM_ID_SALT_BYTES} bytes")
    digest = hashlib.sha256(_TEAM_ID_DOMAIN + creator_signing_public + encoded + salt).digest()
    return digest[:TEAM_ID_BYTES]


# --- Shamir K-of-N ------------------------------------------------------------------------


def _check_threshold(k: object, n: object) -> tuple[int, int]:
    k = _check_int(k, "threshold k")
    n = _check_int(n, "member count n")
    if n < 1:
        raise TeamCryptoError(f"a team needs at least 1 member, got n = {n}")
    if n > MAX_MEMBERS:
        raise TeamCryptoError(f"a team has at most {MAX_MEMBERS} members, got n = {n}")
    if k < 1:
        raise TeamCryptoError(f"threshold k must be at least 1, got k = {k}")
    if k > n:
        raise TeamCryptoError(f"threshold k = {k} exceeds the {n} members: nobody could unlock")
    return k, n


def split_key(key: bytes, k: int, n: int) -> list[bytes]:
    """Split a 32-byte key into n shares (33 bytes each) of which any k rebuild it.

    pycryptodome shares 16-byte secrets over GF(2^128), so each half of the key is split
    on its own (independent random polynomials, same k and n, ssss=False) and member i
    (1-based) gets ``i || share of half 1 || share of half 2``. Fewer than k shares give
    no information about either half. With k = 1 every share holds the key itself.
    """
    key = _check_key(key)
    k, n = _check_threshold(k, n)
    first = Shamir.split(k, n, key[:_HALF], ssss=False)
    second = Shamir.split(k, n, key[_HALF:], ssss=False)
    shares = []
    for (index, a), (index_b, b) in zip(first, second, strict=True):
        if index != index_b:  # pragma: no cover - the library numbers shares 1..n
            raise AssertionError("Shamir.split numbered the two halves differently")
        shares.append(bytes([index]) + a + b)
    return shares


def _parse_share(share: object, what: str = "share") -> tuple[int, bytes, bytes]:
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise ShareError(f"{what} must be {SHARE_BYTES} bytes, got {_describe(share)}")
    index = share[0]
    if index == 0:
        # Shamir's x = 0 is the secret itself: such a "share" would override the rest.
        raise ShareError(f"{what} has index 0, which no member holds")
    return index, share[1 : 1 + _HALF], share[1 + _HALF :]


def share_index(share: bytes) -> int:
    """The 1-based member index a share claims (its first byte), after checking its form.

    Callers compare it with the member's position in the descriptor: a share presented
    by member i under another index is a bad share of member i.
    """
    return _parse_share(share)[0]


def _combine(parsed: Sequence[tuple[int, bytes, bytes]]) -> bytes:
    first = Shamir.combine([(index, a) for index, a, _ in parsed], ssss=False)
    second = Shamir.combine([(index, b) for index, _, b in parsed], ssss=False)
    return first + second


def combine_shares(shares: Sequence[bytes]) -> bytes:
    """Rebuild a 32-byte key from shares made by split_key().

    Any k or more consistent shares give the key. Fewer than k give a random-looking
    32-byte value: Shamir interpolation cannot tell, and neither can this function,
    which does not know k. Check the result with check_commitment() (or use
    find_bad_shares(), which does) before trusting it.

    Raises ShareError for no shares, a malformed share, index 0 or a repeated index.
    """
    if isinstance(shares, (bytes, bytearray, str)):
        raise ShareError("combine_shares takes a sequence of shares, not a single share")
    parsed = [_parse_share(share, f"share {i}") for i, share in enumerate(shares)]
    if not parsed:
        raise ShareError("no shares to combine")
    seen: dict[int, int] = {}
    for position, (index, _, _) in enumerate(parsed):
        if index in seen:
            raise ShareError(f"shares {seen[index]} and {position} both have index {index}")
        seen[index] = position
    return _combine(parsed)


# --- commitment ---------------------------------------------------------------------------


def commitment(key: bytes, team_id: bytes, epoch: int) -> bytes:
    """HMAC-SHA256(key, "aether-team-commit\\0" || team ID || epoch), 32 bytes.

    Published in the team descriptor so that whoever combines shares can check the
    result; without the key it reveals nothing about it.
    """
    return _commit(_check_key(key), _commit_message(team_id, epoch))


def check_commitment(key: bytes, team_id: bytes, epoch: int, commitment: bytes) -> bool:
    """True if `key` is the key the commitment was made for (constant-time comparison)."""
    expected = _commit(_check_key(key), _commit_message(team_id, epoch))
    return hmac.compare_digest(expected, _check_bytes(commitment, COMMITMENT_BYTES, "commitment"))


def _commit_message(team_id: object, epoch: object) -> bytes:
    return _COMMIT_DOMAIN + _check_team_id(team_id) + _epoch_bytes(epoch)


def _commit(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


# --- naming bad shares --------------------------------------------------------------------

M = TypeVar("M", bound=Hashable)


class ShareCheck(NamedTuple, Generic[M]):
    """What find_bad_shares() found: the key (None if no K shares gave it) and the members
    whose shares are shown to be bad."""

    key: bytes | None
    bad: set[M]


def find_bad_shares(
    shares: Mapping[M, bytes],
    k: int,
    team_id: bytes,
    epoch: int,
    commitment: bytes,
    *,
    max_combinations: int = MAX_COMBINATIONS,
) -> ShareCheck[M]:
    """Rebuild the key from shares keyed by member, and name the members whose shares are bad.

    Shamir shares are points of a polynomial of degree k - 1 whose constant term is the
    key, and the commitment tells the right constant term from any other. The search
    combines K-subsets until one passes the commitment; the points of that subset fix a
    polynomial, and each other member is checked against it by combining its share with
    k - 1 shares of the subset (it passes if and only if its point lies on it). Such a
    *group* of mutually consistent members is what the doc calls "appearing in a passing
    subset".

    Naming:
      - When a group is larger than any other could be (2|G| > n + k - 2: two different
        polynomials with the same key agree on at most k - 2 members), every member
        outside it is bad, and the search stops. With no bad share that is the first
        subset tried; with a few it takes a few more.
      - Otherwise the search goes on for subsets that include a member no group explains
        yet, and in the end names the members that failed against a group and belong to
        none (they appear only in failing subsets while another subset passes).

    Exactness: corrupted or independently forged shares are always named exactly once a
    group is found and every member checked against it. Members who pool their shares can forge shares that agree with each
    other on a second polynomial with the same key; they cannot change the key (the
    commitment holds), and they are still named whenever they are fewer than
    (n - k + 2) / 2 or every subset could be tried; beyond that, naming is best effort.

    Bounds: at most `max_combinations` combinations (default MAX_COMBINATIONS), each a
    full Shamir combine (~4 ms at k = 3, growing with k^2). Blocks of disjoint members
    are tried first, then every K-subset in a random order when there are at most
    `max_combinations` of them, else random K-subsets that include an unexplained member
    (seeded from the shares, so the same input gives the same answer).

    Returns ShareCheck(key, bad): `key` passes the commitment, or is None when no K-subset
    tried did. With exactly k shares and a failure, nobody can be named: the result is
    (None, set()) and the caller reports that one of the k members' shares is bad.

    Malformed shares (wrong length, index 0) are named bad without being combined. The
    caller checks beforehand that each share's index (share_index()) is its member's
    position; two members presenting the same index raise ShareError, as do fewer than
    k shares in all.
    """
    k = _check_int(k, "threshold k")
    if not 1 <= k <= MAX_MEMBERS:
        raise TeamCryptoError(f"threshold k must be from 1 to {MAX_MEMBERS}, got k = {k}")
    mac_message = _commit_message(team_id, epoch)
    expected = _check_bytes(commitment, COMMITMENT_BYTES, "commitment")
    max_combinations = _check_int(max_combinations, "max_combinations")
    if max_combinations < 1:
        raise TeamCryptoError(f"max_combinations must be at least 1, got {max_combinations}")
    if not isinstance(shares, Mapping):
        raise ShareError(f"shares must be a mapping of member to share, got {type(shares).__name__}")
    if len(shares) < k:
        raise ShareError(f"{len(shares)} shares cannot rebuild a key that needs {k}")

    parsed: dict[M, tuple[int, bytes, bytes]] = {}
    malformed: set[M] = set()
    holder: dict[int, M] = {}
    for member, share in shares.items():
        try:
            parsed[member] = _parse_share(share, f"share of {member!r}")
        except ShareError:
            malformed.add(member)
            continue
        index = parsed[member][0]
        if index in holder:
            raise ShareError(
                f"members {holder[index]!r} and {member!r} both present a share with index "
                f"{index}; check each share's index against its member's position first"
            )
        holder[index] = member
    members = sorted(parsed, key=lambda m: parsed[m][0])
    n = len(members)
    if n < k:
        return ShareCheck(None, malformed)

    spent = 0

    def passes(subset: Sequence[M]) -> bytes | None:
        nonlocal spent
        spent += 1
        key = _combine([parsed[m] for m in subset])
        return key if hmac.compare_digest(_commit(key, mac_message), expected) else None

    found_key: bytes | None = None
    explained: set[M] = set()  # members of some group
    failed: set[M] = set()  # members whose share failed against a group's polynomial
    unique: frozenset[M] | None = None

    for subset in _subsets(members, k, max_combinations, parsed, explained):
        if spent >= max_combinations:
            break
        if all(m in explained for m in subset):
            continue  # nothing to learn: every member already belongs to a group
        key = passes(subset)
        if key is None:
            continue
        found_key = key
        group = set(subset)
        complete = True
        for member in members:
            if member in group:
                continue
            if spent >= max_combinations:
                complete = False
                break
            if passes((*subset[1:], member)) is not None:
                group.add(member)
            else:
                failed.add(member)
        explained.update(group)
        if complete and 2 * len(group) > n + k - 2:
            unique = frozenset(group)
            break
        if len(explained) == n:
            break

    if found_key is None:
        return ShareCheck(None, malformed)
    if unique is not None:
        return ShareCheck(found_key, malformed | (set(members) - unique))
    return ShareCheck(found_key, malformed | (failed - explained))


def _subsets(
    members: list[M],
    k: int,
    limit: int,
    parsed: Mapping[M, tuple[int, bytes, bytes]],
    explained: set[M],
) -> Iterator[tuple[M, ...]]:
    """K-subsets in the order find_bad_shares tries them (see there); `explained` is
    read live, so later draws aim at members no group explains yet."""
    seed = hashlib.sha256(b"".join(b"%c%s%s" % parsed[m] for m in members)).digest()
    rng = random.Random(seed)
    tried: set[tuple[M, ...]] = set()
    for start in range(0, len(members) - k + 1, k):
        block = tuple(members[start : start + k])
        tried.add(block)
        yield block
    position = {m: i for i, m in enumerate(members)}
    if math.comb(len(members), k) <= limit:
        every = [s for s in itertools.combinations(members, k) if s not in tried]
        rng.shuffle(every)
        yield from every
        return
    # Too many to try them all: draw subsets that each include an unexplained member.
    for _ in range(limit * 20):  # duplicates are rare; this only bounds the loop
        open_members = [m for m in members if m not in explained]
        if not open_members:
            return
        first = rng.choice(open_members)
        rest = rng.sample([m for m in members if m != first], k - 1)
        subset = tuple(sorted([first, *rest], key=position.__getitem__))
        if subset not in tried:
            tried.add(subset)
            yield subset


# --- sealing to a member ------------------------------------------------------------------


def _check_purpose(purpose: object) -> bytes:
    if not isinstance(purpose, str) or purpose not in SEAL_PURPOSES:
        raise TeamCryptoError(
            f"purpose must be one of {sorted(SEAL_PURPOSES)}, got {purpose!r}"
        )
    return purpose.encode("ascii")


def _seal_key(shared: bytes, ephemeral_public: bytes, sealing_public: bytes, purpose: bytes) -> bytes:
    # Both public keys go into the derivation: X25519 ignores the top bit of a public key,
    # so without them an altered ephemeral key could still open the box.
    info = _SEAL_DOMAIN + ephemeral_public + sealing_public + purpose
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def seal(
    recipient: PublicIdentity, plaintext: bytes, *, purpose: str, team_id: bytes, epoch: int
) -> bytes:
    """Encrypt `plaintext` so that only `recipient` can open it, for one purpose, team and epoch.

    Ephemeral X25519 with the recipient's sealing key, HKDF-SHA256 to an AES-256-GCM key,
    random 12-byte nonce; the associated data binds purpose, team ID, epoch and the
    recipient's signing key, so a box cannot be replayed into another context or passed
    off as meant for someone else. Layout: ephemeral public (32) || nonce (12) ||
    ciphertext + tag (16). The sender is anonymous: authenticate it by signing what
    carries the box.
    """
    if not isinstance(recipient, PublicIdentity):
        raise TeamCryptoError(f"recipient must be a PublicIdentity, got {type(recipient).__name__}")
    plaintext = _check_data(plaintext, "plaintext")
    label = _check_purpose(purpose)
    associated = label + _check_team_id(team_id) + _epoch_bytes(epoch) + recipient.signing_public
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.sealing_public))
    key = _seal_key(shared, ephemeral_public, recipient.sealing_public, label)
    nonce = os.urandom(_NONCE)
    return ephemeral_public + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(identity: Identity, sealed: bytes, *, purpose: str, team_id: bytes, epoch: int) -> bytes:
    """Open a box made by seal() for this identity, purpose, team and epoch.

    Raises FormatError if `sealed` is too short to be a box, DecryptionError if it was
    sealed to someone else, for another purpose, team or epoch, or altered.
    """
    if not isinstance(identity, Identity):
        raise TeamCryptoError(f"identity must be an Identity, got {type(identity).__name__}")
    sealed = _check_data(sealed, "sealed box")
    label = _check_purpose(purpose)
    public = identity.public
    associated = label + _check_team_id(team_id) + _epoch_bytes(epoch) + public.signing_public
    if len(sealed) < _X25519 + _NONCE + _TAG:
        raise FormatError(
            f"sealed box is {len(sealed)} bytes, shorter than the {_X25519 + _NONCE + _TAG} "
            "of an empty one"
        )
    ephemeral_public = sealed[:_X25519]
    nonce = sealed[_X25519 : _X25519 + _NONCE]
    try:
        shared = identity.sealing_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError as exc:  # a low-order point gives an all-zero secret, refused by OpenSSL
        raise DecryptionError("sealed box carries an unusable ephemeral key: it was altered") from exc
    key = _seal_key(shared, ephemeral_public, public.sealing_public, label)
    try:
        return AESGCM(key).decrypt(nonce, sealed[_X25519 + _NONCE :], associated)
    except InvalidTag:
        raise DecryptionError(
            f"cannot open sealed box: it is not sealed to this identity, or was sealed for "
            f"another purpose than {purpose!r}, another team or epoch than "
            f"{team_id.hex()}/{epoch}, or it was altered"
        ) from None


# --- authenticated encryption under a key ---------------------------------------------------


def _encrypt(key: bytes, plaintext: bytes, associated: bytes, prefix: bytes = b"") -> bytes:
    """`prefix || nonce || ciphertext + tag`, with a fresh random nonce; one copy of the
    ciphertext (a pattern is up to megabytes)."""
    nonce = os.urandom(_NONCE)
    return prefix + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def _decrypt(key: bytes, data: bytes, associated: bytes, what: str, why: str, start: int = 0) -> bytes:
    """Open `nonce || ciphertext + tag` found at data[start:] (a view: a pattern is not copied)."""
    data = _check_data(data, what)
    if len(data) - start < _NONCE + _TAG:
        raise FormatError(
            f"{what} is {len(data) - start} bytes, shorter than the {_NONCE + _TAG} of an empty one"
        )
    view = memoryview(data)
    try:
        return AESGCM(key).decrypt(view[start : start + _NONCE], view[start + _NONCE :], associated)
    except InvalidTag:
        raise DecryptionError(f"cannot decrypt {what}: {why}, or it was altered") from None


# --- team patterns ------------------------------------------------------------------------


def encrypt_pattern(key: bytes, team_id: bytes, epoch: int, plaintext: bytes) -> bytes:
    """The published blob of a team pattern: "ATP1" || team ID || epoch || nonce || ciphertext + tag.

    AES-256-GCM under the epoch key with AD "aether-team-pattern\\0" || team ID || epoch ||
    SHA-256(plaintext), so the clear header cannot be changed without the blob failing to
    decrypt, and a blob opens only for a reader who names the hash it looks for. The hash
    itself is never in the blob: a reader knows it (or reads it from an encrypted summary).
    """
    key = _check_key(key)
    header = PATTERN_MAGIC + _check_team_id(team_id) + _epoch_bytes(epoch)
    plaintext = _check_data(plaintext, "plaintext")
    associated = _PATTERN_DOMAIN + header[len(PATTERN_MAGIC) :] + hashlib.sha256(plaintext).digest()
    return _encrypt(key, plaintext, associated, prefix=header)


def blob_header(blob: bytes) -> tuple[bytes, int]:
    """(team ID, epoch) of a team pattern blob, read without a key: which key to use.

    Raises FormatError if `blob` is not an "ATP1" blob. The header is only a hint until
    decrypt_pattern() authenticates it.
    """
    blob = _check_data(blob, "team pattern blob")
    if len(blob) < _PATTERN_HEADER + _NONCE + _TAG:
        raise FormatError(
            f"team pattern blob is {len(blob)} bytes, shorter than the "
            f"{_PATTERN_HEADER + _NONCE + _TAG} of an empty pattern"
        )
    if blob[: len(PATTERN_MAGIC)] != PATTERN_MAGIC:
        raise FormatError(f"not a team pattern blob: it starts with {blob[:4]!r}, not {PATTERN_MAGIC!r}")
    team_id = blob[len(PATTERN_MAGIC) : len(PATTERN_MAGIC) + TEAM_ID_BYTES]
    epoch = int.from_bytes(blob[len(PATTERN_MAGIC) + TEAM_ID_BYTES : _PATTERN_HEADER], "big")
    if epoch > MAX_EPOCH:
        raise FormatError(f"team pattern blob claims epoch {epoch}, beyond 2**63 - 1")
    return team_id, epoch


def decrypt_pattern(key: bytes, blob: bytes, pattern_hash: bytes | str) -> tuple[bytes, int, bytes]:
    """(team ID, epoch, plaintext) of a blob made by encrypt_pattern() for the plaintext of ``pattern_hash``.

    ``pattern_hash`` is the SHA-256 of the plaintext looked for (32 bytes or 64 hex
    digits); it is part of the associated data, and the plaintext is checked against it
    once more after decryption, so what is returned is exactly the pattern asked for even
    if a key holder sealed other bytes under that hash.

    Raises FormatError for something that is not a blob, DecryptionError when `key` is not
    the key of the team and epoch in its header, the blob was made for another hash, or
    any byte was changed.
    """
    key = _check_key(key)
    digest = _pattern_hash(pattern_hash)
    team_id, epoch = blob_header(blob)
    plaintext = _decrypt(
        key,
        blob,
        _PATTERN_DOMAIN + blob[len(PATTERN_MAGIC) : _PATTERN_HEADER] + digest,
        "team pattern blob",
        f"the key is not the key of team {team_id.hex()} epoch {epoch}, the blob is not pattern {digest.hex()}",
        start=_PATTERN_HEADER,
    )
    if hashlib.sha256(plaintext).digest() != digest:
        raise DecryptionError(f"team pattern blob decrypts to bytes that are not pattern {digest.hex()}")
    return team_id, epoch, plaintext


# --- locators and summaries -----------------------------------------------------------------


def locator(key: bytes, label: str, value: bytes | str) -> bytes:
    """A 20-byte DHT key for a team fact: HMAC-SHA256(epoch key, label || value)[:20].

    Without the key nobody can tell which pattern, ID or term a locator stands for.
    Labels: "pattern" (value: the plaintext hash, as 32 raw bytes or 64 hex digits, both
    giving the same locator), "id" (a pattern ID) and "term" (an index term, as the index
    normalises it); text is taken as UTF-8.
    """
    key = _check_key(key)
    if not isinstance(label, str) or label not in LOCATOR_LABELS:
        raise TeamCryptoError(f"locator label must be one of {sorted(LOCATOR_LABELS)}, got {label!r}")
    if label == "pattern":
        data = _pattern_hash(value)
    elif isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TeamCryptoError(f"locator value for {label!r} is not valid Unicode text") from exc
    elif isinstance(value, bytes):
        data = value
    else:
        raise TeamCryptoError(f"locator value must be bytes or text, got {type(value).__name__}")
    return hmac.new(key, label.encode("ascii") + data, hashlib.sha256).digest()[:LOCATOR_BYTES]


def _pattern_hash(value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == 32:
        return value
    if isinstance(value, str) and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise TeamCryptoError(
        f"a pattern locator takes the SHA-256 of the plaintext as 32 bytes or 64 hex digits, "
        f"got {_describe(value) if isinstance(value, bytes) else repr(value)}"
    )


def encrypt_summary(key: bytes, team_id: bytes, epoch: int, data: bytes) -> bytes:
    """Encrypt a team entry's summary: nonce (12) || AES-256-GCM ciphertext + tag.

    AD "aether-team-summary\\0" || team ID || epoch keeps a summary from being moved to
    another team or epoch.
    """
    key = _check_key(key)
    associated = _SUMMARY_DOMAIN + _check_team_id(team_id) + _epoch_bytes(epoch)
    return _encrypt(key, _check_data(data, "summary"), associated)


def decrypt_summary(key: bytes, team_id: bytes, epoch: int, data: bytes) -> bytes:
    """Decrypt what encrypt_summary() made for this team and epoch, or raise DecryptionError."""
    key = _check_key(key)
    associated = _SUMMARY_DOMAIN + _check_team_id(team_id) + _epoch_bytes(epoch)
    return _decrypt(
        key, data, associated, "encrypted summary", f"the key is not the key of team {team_id.hex()} epoch {epoch}"
    )


# --- the unlocked key at rest and the chain of epoch keys ---------------------------------------


def _at_rest_key(identity: Identity) -> bytes:
    if not isinstance(identity, Identity):
        raise TeamCryptoError(f"identity must be an Identity, got {type(identity).__name__}")
    # The raw private key stays local to this call; HKDF with a label of its own keeps the
    # derived key unrelated to anything the X25519 key is used for elsewhere.
    secret = identity.sealing_private_key.private_bytes_raw()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_AT_REST_DOMAIN).derive(secret)


def seal_at_rest(identity: Identity, team_id: bytes, epoch: int, key: bytes) -> bytes:
    """Encrypt an unlocked epoch key for this node's store: nonce || ciphertext + tag (60 bytes).

    AES-256-GCM under HKDF-SHA256(the node's X25519 private key), AD = team ID || epoch.
    The store alone does not reveal the key; the node's key files do, so this protects a
    copied database, not a copied home.
    """
    key = _check_key(key)
    associated = _check_team_id(team_id) + _epoch_bytes(epoch)
    return _encrypt(_at_rest_key(identity), key, associated)


def open_at_rest(identity: Identity, team_id: bytes, epoch: int, sealed: bytes) -> bytes:
    """The epoch key seal_at_rest() stored, or DecryptionError for another node, team or epoch."""
    associated = _check_team_id(team_id) + _epoch_bytes(epoch)
    key = _decrypt(
        _at_rest_key(identity),
        sealed,
        associated,
        "key sealed at rest",
        f"it was sealed by another node, or for another team or epoch than {team_id.hex()}/{epoch}",
    )
    return _check_key(key, "key opened at rest")


def chain_previous(new_key: bytes, team_id: bytes, old_epoch: int, old_key: bytes) -> bytes:
    """`sealed_previous` of the epoch old_epoch + 1 descriptor: the old key under the new one.

    AES-256-GCM, nonce (12) || ciphertext + tag, AD = team ID || old epoch. Whoever unlocks
    the newest epoch can walk back to every older key; the chain never runs forward.
    """
    new_key = _check_key(new_key, "new epoch key")
    old_key = _check_key(old_key, "old epoch key")
    associated = _check_team_id(team_id) + _check_old_epoch(old_epoch)
    return _encrypt(new_key, old_key, associated)


def unchain_previous(new_key: bytes, team_id: bytes, old_epoch: int, sealed_previous: bytes) -> bytes:
    """The epoch old_epoch key from the `sealed_previous` of epoch old_epoch + 1.

    Raises DecryptionError if `new_key` is not the next epoch's key or team and epoch do not
    match what was chained.
    """
    new_key = _check_key(new_key, "new epoch key")
    associated = _check_team_id(team_id) + _check_old_epoch(old_epoch)
    key = _decrypt(
        new_key,
        sealed_previous,
        associated,
        "sealed previous key",
        f"the key is not the key of epoch {old_epoch + 1} of team {team_id.hex()}",
    )
    return _check_key(key, "previous epoch key")


def _check_old_epoch(old_epoch: object) -> bytes:
    encoded = _epoch_bytes(old_epoch, "old epoch")
    if old_epoch == MAX_EPOCH:
        raise TeamCryptoError("old epoch is the last one: there is no next epoch to chain from")
    return encoded

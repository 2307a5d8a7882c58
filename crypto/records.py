"""Signed mutable records carried by the DHT.

Anything mutable (newest version of a pattern ID, index entries, team descriptors, inbox
messages, contact records) travels as a record signed by its author, with a sequence
number and an expiry. A record's DHT key is derived from its author and name, so only the
author can write under it. Every record has exactly one byte encoding (canonical msgpack),
so equal records are equal bytes and a peer cannot create variants that hash differently.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .identity import Identity, is_weak_signing_key

__all__ = [
    "CLOCK_SKEW",
    "MAX_KIND_CHARS",
    "MAX_NAME_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_TTL",
    "RECORD_MAGIC",
    "RecordError",
    "SignedRecord",
    "create_record",
    "decode_record",
    "parse_and_verify",
    "record_key",
    "signed_bytes",
    "topic_key",
    "topic_of",
    "verify_record",
]

RECORD_MAGIC = "aether-record/1"
MAX_RECORD_BYTES = 7168  # fits one UDP datagram under 8 KiB with RPC framing to spare
MAX_NAME_BYTES = 256
MAX_KIND_CHARS = 64
CLOCK_SKEW = 300  # seconds of clock disagreement tolerated between peers
MAX_TTL = 30 * 24 * 3600  # longest lifetime a record may claim; authors republish
_MAX_INT = 2**63  # seq and expires fit a signed 64-bit integer (SQLite INTEGER)

AUTHOR_BYTES = 32
SIGNATURE_BYTES = 64
RECORD_KEY_BYTES = 20
_FIELDS = 8

REASONS = frozenset({"malformed", "too-large", "bad-signature", "expired", "future", "wrong-key"})
_DEFAULT_MESSAGES = {
    "malformed": "record is malformed",
    "too-large": f"record is larger than {MAX_RECORD_BYTES} bytes",
    "bad-signature": "record signature does not verify",
    "expired": "record has expired",
    "future": "record expires implausibly far in the future",
    "wrong-key": "record does not belong under the requested key",
}


class RecordError(ValueError):
    """A record was refused; `reason` is a short machine code, the message is for people."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown record error reason {reason!r}")
        self.reason = reason
        super().__init__(message or _DEFAULT_MESSAGES[reason])

    def __reduce__(self) -> tuple[type[RecordError], tuple[str, str]]:
        # Keep the reason when pickled (e.g. across a process pool in the simulations).
        return (type(self), (self.reason, str(self)))


def record_key(author: bytes, name: bytes) -> bytes:
    """The 160-bit DHT key of the record `name` by `author`.

    Binding the key to the author means nobody else can publish under it.
    """
    return hashlib.sha256(b"aether-record\x00" + author + name).digest()[:RECORD_KEY_BYTES]


TOPIC_SEPARATOR = b"#"


def topic_of(name: bytes) -> bytes | None:
    """The topic of a record named ``topic#item``, or None for a name without one.

    A record with a topic may also be stored under the topic's key, which every
    author shares: that is how many authors publish under one index term or one
    pattern hash. Its own key stays its author's alone.
    """
    topic, separator, _ = name.partition(TOPIC_SEPARATOR)
    return topic if separator else None


def topic_key(topic: bytes) -> bytes:
    """The 160-bit DHT key shared by every author's records under ``topic``."""
    return hashlib.sha256(b"aether-topic\x00" + topic).digest()[:RECORD_KEY_BYTES]


def signed_bytes(
    author: bytes, kind: str, name: bytes, seq: int, expires: int, payload: bytes
) -> bytes:
    """The exact bytes the author signs: every field but the signature, magic first, so a
    record signature can never be replayed as a signature over some other message type."""
    return msgpack.packb(
        [RECORD_MAGIC, author, kind, name, seq, expires, payload], use_bin_type=True
    )


def _malformed(message: str) -> RecordError:
    return RecordError("malformed", f"record is malformed: {message}")


@dataclass(frozen=True)
class SignedRecord:
    """One signed record. Construction checks field types and sizes, not the signature."""

    author: bytes
    kind: str
    name: bytes
    seq: int
    expires: int
    payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.author, bytes) or len(self.author) != AUTHOR_BYTES:
            raise _malformed(f"author must be a {AUTHOR_BYTES}-byte Ed25519 public key")
        if not isinstance(self.kind, str) or not 1 <= len(self.kind) <= MAX_KIND_CHARS:
            raise _malformed(f"kind must be text of 1 to {MAX_KIND_CHARS} characters")
        try:
            self.kind.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("kind is not valid Unicode text") from None
        if not isinstance(self.name, bytes) or len(self.name) > MAX_NAME_BYTES:
            raise _malformed(f"name must be at most {MAX_NAME_BYTES} bytes")
        for field in ("seq", "expires"):
            value = getattr(self, field)
            if type(value) is not int or not 0 <= value < _MAX_INT:
                raise _malformed(f"{field} must be an integer in [0, 2**63)")
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_RECORD_BYTES:
            raise _malformed(f"payload must be bytes, at most {MAX_RECORD_BYTES}")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise _malformed(f"signature must be {SIGNATURE_BYTES} bytes")

    @property
    def key(self) -> bytes:
        """The DHT key this record lives under."""
        return record_key(self.author, self.name)

    @property
    def topic_key(self) -> bytes | None:
        """The shared key this record may also live under (see :func:`topic_of`)."""
        topic = topic_of(self.name)
        return None if topic is None else topic_key(topic)

    def signed_bytes(self) -> bytes:
        """The message the signature covers."""
        return signed_bytes(
            self.author, self.kind, self.name, self.seq, self.expires, self.payload
        )

    def encode(self) -> bytes:
        """Canonical wire form: msgpack list [magic, author, kind, name, seq, expires,
        payload, signature]."""
        return msgpack.packb(
            [
                RECORD_MAGIC,
                self.author,
                self.kind,
                self.name,
                self.seq,
                self.expires,
                self.payload,
                self.signature,
            ],
            use_bin_type=True,
        )


def create_record(
    identity: Identity,
    kind: str,
    name: bytes,
    seq: int,
    payload: bytes,
    ttl: int,
    now: float | None = None,
) -> SignedRecord:
    """Sign a new record that expires `ttl` seconds from `now`.

    Refuses anything a peer would refuse (bad sizes, ttl over MAX_TTL, encoded size over
    MAX_RECORD_BYTES), so a failure shows up at the author, not silently on the network.
    """
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        raise _malformed(f"ttl must be an integer from 1 to {MAX_TTL} seconds")
    if isinstance(payload, bytes) and len(payload) > MAX_RECORD_BYTES:
        raise RecordError(
            "too-large", f"payload of {len(payload)} bytes cannot fit a {MAX_RECORD_BYTES}-byte record"
        )
    expires = int(time.time() if now is None else now) + ttl
    author = identity.public.signing_public
    # Validate fields before signing (the placeholder signature is replaced below).
    unsigned = SignedRecord(author, kind, name, seq, expires, payload, bytes(SIGNATURE_BYTES))
    record = SignedRecord(
        author, kind, name, seq, expires, payload, identity.sign(unsigned.signed_bytes())
    )
    size = len(record.encode())
    if size > MAX_RECORD_BYTES:
        raise RecordError(
            "too-large", f"record would be {size} bytes, more than {MAX_RECORD_BYTES}"
        )
    return record


def decode_record(data: bytes) -> SignedRecord:
    """Parse a record from untrusted bytes; raises only RecordError, whatever the input.

    Only the canonical encoding is accepted, so one record has one byte string.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _malformed(f"expected bytes, got {type(data).__name__}")
    try:
        data = bytes(data)
    except Exception:  # exotic buffer formats
        raise _malformed("unreadable buffer") from None
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(
            "too-large", f"record is {len(data)} bytes, more than {MAX_RECORD_BYTES}"
        )
    try:
        fields: Any = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_RECORD_BYTES,
            max_bin_len=MAX_RECORD_BYTES,
            max_array_len=_FIELDS,
            max_map_len=0,
            max_ext_len=0,
        )
    # Untrusted input: msgpack signals problems with ExtraData, FormatError, StackError,
    # ValueError, UnicodeDecodeError, TypeError...; the contract is RecordError only.
    except Exception as exc:
        raise _malformed(f"not a msgpack record ({type(exc).__name__})") from None
    if type(fields) is not list or len(fields) != _FIELDS:
        raise _malformed(f"expected a list of {_FIELDS} fields")
    magic, author, kind, name, seq, expires, payload, signature = fields
    if type(magic) is not str or magic != RECORD_MAGIC:
        raise _malformed(f"missing {RECORD_MAGIC!r} marker")
    for label, value, expected in (
        ("author", author, bytes),
        ("kind", kind, str),
        ("name", name, bytes),
        ("seq", seq, int),
        ("expires", expires, int),
        ("payload", payload, bytes),
        ("signature", signature, bytes),
    ):
        if type(value) is not expected:
            raise _malformed(f"{label} must be {expected.__name__}")
    record = SignedRecord(author, kind, name, seq, expires, payload, signature)
    if record.encode() != data:
        raise _malformed("not in canonical encoding")
    return record


def verify_record(
    record: SignedRecord, *, key: bytes | None = None, now: float | None = None
) -> None:
    """Raise RecordError unless `record` is authentic, current, and (if `key` is given)
    stored under `key`: its own key or its topic's. Cheap checks run before the
    signature, to shed forged junk fast."""
    if key is not None and key != record.key and key != record.topic_key:
        raise RecordError("wrong-key", "record's author and name do not hash to the requested key")
    if now is None:
        now = time.time()
    if record.expires <= now:
        raise RecordError("expired", f"record expired {now - record.expires:.0f} s ago")
    if record.expires > now + MAX_TTL + CLOCK_SKEW:
        raise RecordError(
            "future",
            f"record claims to live until {record.expires}, more than {MAX_TTL} s from now",
        )
    if is_weak_signing_key(record.author):
        # OpenSSL accepts forged signatures for small-order keys; refuse such authors.
        raise RecordError("bad-signature", "record author is not a valid Ed25519 key")
    if not _verify_ed25519(record.author, record.signature, record.signed_bytes()):
        raise RecordError("bad-signature")


def _verify_ed25519(author: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(author).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def parse_and_verify(
    data: bytes, key: bytes | None = None, now: float | None = None
) -> SignedRecord:
    """Decode untrusted bytes and verify the record: the one call a DHT handler needs."""
    record = decode_record(data)
    verify_record(record, key=key, now=now)
    return record

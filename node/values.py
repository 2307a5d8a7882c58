"""The only two kinds of value the DHT carries, and how each is checked.

A peer may send us anything. We keep and serve only what can be checked
without trusting the sender:

* a **block**: immutable bytes whose key is derived from their SHA-256, so a
  block can be checked against its key alone;
* a **signed record**: a mutable value (author, kind, name, sequence number,
  expiry, payload) signed with the author's Ed25519 key, whose key is derived
  from author and name.

The same check runs on STORE and on every value a lookup returns.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from aether.crypto.records import MAX_RECORD_BYTES, RecordError, SignedRecord, decode_record, verify_record

KEY_BYTES = 20
MAX_VALUE_BYTES = MAX_RECORD_BYTES
"""Largest block or record, so that a STORE or a FIND_VALUE reply fits one 8 KiB datagram."""


class ValueRejected(ValueError):
    """A value that must not be stored or used; ``reason`` is sent to the peer."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def block_key(data: bytes) -> bytes:
    """The DHT key of a block: the first 160 bits of its SHA-256."""
    return hashlib.sha256(data).digest()[:KEY_BYTES]


@dataclass(frozen=True)
class Block:
    key: bytes
    data: bytes


@dataclass(frozen=True)
class Record:
    key: bytes
    data: bytes
    record: SignedRecord


def check_value(key: object, value: object, *, now: float | None = None) -> Block | Record:
    """Classify and verify a value offered under ``key``, or raise :class:`ValueRejected`."""
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueRejected("malformed", "key must be 20 bytes")
    if not isinstance(value, bytes):
        raise ValueRejected("malformed", "value must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueRejected("too-large", f"value of {len(value)} bytes exceeds {MAX_VALUE_BYTES}")
    if not value:
        raise ValueRejected("malformed", "empty value")
    if block_key(value) == key:
        return Block(key, value)
    try:
        record = decode_record(value)
    except RecordError:
        raise ValueRejected("wrong-key", "neither a block matching its key nor a signed record") from None
    try:
        verify_record(record, key=key, now=time.time() if now is None else now)
    except RecordError as exc:
        raise ValueRejected(exc.reason, str(exc)) from None
    return Record(key, value, record)

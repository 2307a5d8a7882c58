"""The kinds of value the DHT carries, and how each is checked.

A peer may send us anything. We keep and serve only what can be checked
without trusting the sender:

* a **block**: immutable bytes whose key is derived from their SHA-256, so a
  block can be checked against its key alone;
* a **signed record**: a mutable value (author, kind, name, sequence number,
  expiry, payload) signed with the author's Ed25519 key, whose key is derived
  from author and name;
* an **entry**: a signed record named ``topic#item`` stored under its topic's
  shared key, where many authors' entries live side by side (index terms,
  the manifests of one pattern hash). A FIND_VALUE reply carries the entries
  of such a key as a **bundle**, a page of them that fits one datagram.

The same check runs on STORE and on every value a lookup returns.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from aether.crypto.records import MAX_RECORD_BYTES, RecordError, SignedRecord, decode_record, verify_record

KEY_BYTES = 20
MAX_VALUE_BYTES = MAX_RECORD_BYTES
"""Largest block or record, so that a STORE or a FIND_VALUE reply fits one 8 KiB datagram."""
BUNDLE_MAGIC = "aether-entries/1"
MAX_BUNDLE_BYTES = 8000
"""Largest page of entries in a FIND_VALUE reply: with framing it stays within one 8 KiB datagram."""
MAX_BUNDLE_ENTRIES = 256
_BUNDLE_PREFIX = msgpack.packb([BUNDLE_MAGIC, [], None])[:2 + len(BUNDLE_MAGIC)]


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


@dataclass(frozen=True)
class Entry:
    """A signed record held under its topic's shared key."""

    key: bytes
    data: bytes
    record: SignedRecord


@dataclass(frozen=True)
class Entries:
    """One page of the entries a peer holds under a shared key."""

    key: bytes
    entries: tuple[Entry, ...]
    next_offset: int | None
    """Where the next page starts, or None when this was the last one."""


def merge_entries(merged: dict[tuple[bytes, bytes], Entry], entries: Iterable[Entry]) -> None:
    """Fold entries into ``merged``, keeping each (author, name)'s highest sequence number."""
    for item in entries:
        ident = (item.record.author, item.record.name)
        held = merged.get(ident)
        if held is None or item.record.seq > held.record.seq:
            merged[ident] = item


def newest_first(entries: Iterable[Entry]) -> list[Entry]:
    """Latest expiry first (authors re-sign as they republish), then author and name."""
    return sorted(entries, key=lambda e: (-e.record.expires, e.record.author, e.record.name))


def encode_bundle(entries: list[bytes], next_offset: int | None) -> bytes:
    return msgpack.packb([BUNDLE_MAGIC, entries, next_offset], use_bin_type=True)


def bundle_fit(entries: list[bytes], budget: int = MAX_BUNDLE_BYTES) -> int:
    """How many of ``entries``, in order, fit one bundle (at least one, which always fits)."""
    used = 32  # magic, list and offset headers
    for count, data in enumerate(entries):
        used += len(data) + 5
        if used > budget and count:
            return count
    return len(entries)


def check_value(key: object, value: object, *, now: float | None = None) -> Block | Record | Entry:
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
    if now is not None:
        return _checked_record(key, value, now)
    checked = _verified_record(key, value)
    # The signature check is remembered; the clock is not.
    if checked.record.expires <= time.time():
        raise ValueRejected("expired", "record has expired")
    return checked


@functools.lru_cache(maxsize=8192)
def _verified_record(key: bytes, value: bytes) -> Record | Entry:
    # Entries come back from every holder of a shared key, again and again;
    # an Ed25519 check costs more than the rest of a reply's handling.
    return _checked_record(key, value, time.time())


def _checked_record(key: bytes, value: bytes, now: float) -> Record | Entry:
    try:
        record = decode_record(value)
    except RecordError:
        raise ValueRejected("wrong-key", "neither a block matching its key nor a signed record") from None
    try:
        verify_record(record, key=key, now=now)
    except RecordError as exc:
        raise ValueRejected(exc.reason, str(exc)) from None
    if key == record.key:
        return Record(key, value, record)
    return Entry(key, value, record)


def check_found(key: bytes, value: object) -> Block | Record | Entries:
    """Check what a FIND_VALUE reply carried: a block, a record, or a page of entries.

    A stock node holding one entry returns it alone, as a value; it counts as a
    page of one. Any entry that fails its check condemns the whole page: honest
    holders check what they keep. Entries that expired on the way are left out.
    """
    if isinstance(value, bytes) and value.startswith(_BUNDLE_PREFIX) and block_key(value) != key:
        return _check_bundle(key, value)
    checked = check_value(key, value)
    if isinstance(checked, Entry):
        return Entries(key, (checked,), None)
    return checked


def _check_bundle(key: bytes, value: bytes) -> Entries:
    if len(value) > MAX_BUNDLE_BYTES:
        raise ValueRejected("too-large", f"bundle of {len(value)} bytes exceeds {MAX_BUNDLE_BYTES}")
    try:
        fields = msgpack.unpackb(
            value, raw=False, use_list=True, max_str_len=64, max_bin_len=MAX_RECORD_BYTES,
            max_array_len=MAX_BUNDLE_ENTRIES, max_map_len=0, max_ext_len=0,
        )
    except Exception:
        raise ValueRejected("malformed", "bundle is not valid msgpack") from None
    if not (isinstance(fields, list) and len(fields) == 3 and fields[0] == BUNDLE_MAGIC):
        raise ValueRejected("malformed", "not an entries bundle")
    _, items, next_offset = fields
    if not isinstance(items, list) or not (next_offset is None or (type(next_offset) is int and next_offset > 0)):
        raise ValueRejected("malformed", "bundle fields have the wrong types")
    entries = []
    for item in items:
        try:
            checked = check_value(key, item)
        except ValueRejected as exc:
            if exc.reason == "expired":
                continue
            raise
        if not isinstance(checked, Entry):
            raise ValueRejected("wrong-key", "a bundle may only carry entries of its key")
        entries.append(checked)
    return Entries(key, tuple(entries), next_offset)

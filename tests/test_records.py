"""Signed records: encoding, signatures, expiry, limits, and hostile input. Real keys."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether.crypto.identity import Identity
from aether.crypto.records import (
    CLOCK_SKEW,
    MAX_KIND_CHARS,
    MAX_NAME_BYTES,
    MAX_RECORD_BYTES,
    MAX_TTL,
    RECORD_MAGIC,
    RecordError,
    SignedRecord,
    create_record,
    decode_record,
    parse_and_verify,
    record_key,
    signed_bytes,
    verify_record,
)

NOW = 1_750_000_000
TTL = 3600
ALICE = Identity.generate()
BOB = Identity.generate()
IDENTITY_POINT = b"\x01" + bytes(31)


def make(**overrides: object) -> SignedRecord:
    args: dict[str, object] = dict(
        kind="pattern-head", name=b"Pattern-DHT-001", seq=7, payload=b"\x01\x02hash", ttl=TTL,
        now=NOW,
    )
    args.update(overrides)
    return create_record(ALICE, **args)  # type: ignore[arg-type]


RECORD = make()
ENCODED = RECORD.encode()


def reason(excinfo: pytest.ExceptionInfo[RecordError]) -> str:
    return excinfo.value.reason


# --- keys and layout --------------------------------------------------------------------


def test_record_key_derivation() -> None:
    author = ALICE.public.signing_public
    expected = hashlib.sha256(b"aether-record\x00" + author + b"Pattern-DHT-001").digest()[:20]
    assert record_key(author, b"Pattern-DHT-001") == expected
    assert RECORD.key == expected
    assert record_key(BOB.public.signing_public, b"Pattern-DHT-001") != expected
    assert record_key(author, b"Pattern-DHT-002") != expected


def test_encoding_layout() -> None:
    fields = msgpack.unpackb(ENCODED, raw=False)
    assert fields == [
        RECORD_MAGIC,
        ALICE.public.signing_public,
        "pattern-head",
        b"Pattern-DHT-001",
        7,
        NOW + TTL,
        b"\x01\x02hash",
        RECORD.signature,
    ]
    assert RECORD.expires == NOW + TTL
    message = msgpack.packb(fields[:7], use_bin_type=True)
    assert signed_bytes(*fields[1:7]) == message == RECORD.signed_bytes()
    assert ALICE.public.verify(RECORD.signature, message)


def test_round_trip() -> None:
    decoded = decode_record(ENCODED)
    assert decoded == RECORD
    assert decoded.encode() == ENCODED
    verify_record(decoded, key=RECORD.key, now=NOW)
    assert parse_and_verify(ENCODED, RECORD.key, NOW) == RECORD
    assert parse_and_verify(bytearray(ENCODED), now=NOW) == RECORD
    assert parse_and_verify(memoryview(ENCODED), now=NOW) == RECORD


def test_now_defaults_to_the_clock() -> None:
    record = create_record(ALICE, "k", b"n", 0, b"", ttl=60)
    verify_record(record)  # verified against time.time(), fresh record is valid


def test_fractional_now_is_truncated() -> None:
    assert make(now=NOW + 0.9).expires == NOW + TTL  # type: ignore[arg-type]


# --- signatures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("author", BOB.public.signing_public),
        ("kind", "pattern-headx"),
        ("name", b"Pattern-DHT-002"),
        ("seq", 8),
        ("expires", NOW + TTL + 1),
        ("payload", b"\x01\x02hasH"),
        ("signature", bytes([RECORD.signature[0] ^ 1]) + RECORD.signature[1:]),
        ("signature", RECORD.signature[:32] + bytes([RECORD.signature[32] ^ 1]) + RECORD.signature[33:]),
    ],
)
def test_tampering_with_any_field_breaks_signature(field: str, value: object) -> None:
    tampered = dataclasses.replace(RECORD, **{field: value})
    with pytest.raises(RecordError) as info:
        verify_record(tampered, now=NOW)
    assert reason(info) == "bad-signature"
    with pytest.raises(RecordError) as info:
        parse_and_verify(tampered.encode(), now=NOW)
    assert reason(info) == "bad-signature"


def test_signature_by_other_author_refused() -> None:
    forged = dataclasses.replace(RECORD, signature=BOB.sign(RECORD.signed_bytes()))
    with pytest.raises(RecordError) as info:
        verify_record(forged, now=NOW)
    assert reason(info) == "bad-signature"


def test_small_order_author_refused_even_though_openssl_accepts_the_forgery() -> None:
    """With the identity point as author, R = identity and S = 0 verify for any message in
    OpenSSL: anyone could write such records. They must be refused."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    forged = SignedRecord(
        IDENTITY_POINT, "pattern-head", b"x", 1, NOW + TTL, b"evil", IDENTITY_POINT + bytes(32)
    )
    Ed25519PublicKey.from_public_bytes(IDENTITY_POINT).verify(
        forged.signature, forged.signed_bytes()
    )  # the library alone is fooled
    with pytest.raises(RecordError) as info:
        parse_and_verify(forged.encode(), forged.key, NOW)
    assert reason(info) == "bad-signature"


def test_record_error_keeps_reason_when_pickled() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(RecordError("expired", "gone")))
    assert isinstance(error, RecordError) and error.reason == "expired" and str(error) == "gone"


# --- time -------------------------------------------------------------------------------


def test_expiry_boundary() -> None:
    verify_record(RECORD, now=RECORD.expires - 1)
    verify_record(RECORD, now=RECORD.expires - 0.001)
    for now in (RECORD.expires, RECORD.expires + 1, RECORD.expires + 10**6):
        with pytest.raises(RecordError) as info:
            verify_record(RECORD, now=now)
        assert reason(info) == "expired"


def test_future_records_refused() -> None:
    longest = make(ttl=MAX_TTL)
    verify_record(longest, now=NOW)
    verify_record(longest, now=NOW - CLOCK_SKEW)  # a peer whose clock is behind
    with pytest.raises(RecordError) as info:
        verify_record(longest, now=NOW - CLOCK_SKEW - 1)
    assert reason(info) == "future"
    far = make(now=NOW + 365 * 86400)
    with pytest.raises(RecordError) as info:
        parse_and_verify(far.encode(), now=NOW)
    assert reason(info) == "future"


@pytest.mark.parametrize("ttl", [0, -1, MAX_TTL + 1, 1.5, True])
def test_create_refuses_bad_ttl(ttl: object) -> None:
    with pytest.raises(RecordError) as info:
        make(ttl=ttl)
    assert reason(info) == "malformed"


# --- keys -------------------------------------------------------------------------------


def test_wrong_key_refused() -> None:
    other = make(name=b"Pattern-DHT-002")
    with pytest.raises(RecordError) as info:
        parse_and_verify(ENCODED, other.key, NOW)
    assert reason(info) == "wrong-key"
    with pytest.raises(RecordError) as info:
        verify_record(RECORD, key=bytes(20), now=NOW)
    assert reason(info) == "wrong-key"
    verify_record(RECORD, key=RECORD.key, now=NOW)


# --- sizes ------------------------------------------------------------------------------


def test_largest_record_fits_exactly() -> None:
    base = len(make(payload=b"").encode())  # empty payload: 2-byte bin8 header
    payload_len = MAX_RECORD_BYTES - base - 1  # >= 256 bytes: 3-byte bin16 header
    biggest = make(payload=b"p" * payload_len)
    encoded = biggest.encode()
    assert len(encoded) == MAX_RECORD_BYTES
    assert parse_and_verify(encoded, biggest.key, NOW) == biggest
    with pytest.raises(RecordError) as info:
        make(payload=b"p" * (payload_len + 1))
    assert reason(info) == "too-large"


@pytest.mark.parametrize("size", [MAX_RECORD_BYTES, 10**6])
def test_oversize_payload_refused_at_creation(size: int) -> None:
    with pytest.raises(RecordError) as info:
        make(payload=b"x" * size)
    assert reason(info) == "too-large"


def test_oversize_input_refused_before_parsing() -> None:
    with pytest.raises(RecordError) as info:
        decode_record(ENCODED + b"\x00" * (MAX_RECORD_BYTES - len(ENCODED) + 1))
    assert reason(info) == "too-large"
    with pytest.raises(RecordError) as info:
        decode_record(b"\xc0" * 10**6)
    assert reason(info) == "too-large"


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": ""},
        {"kind": "k" * (MAX_KIND_CHARS + 1)},
        {"kind": "\ud800"},
        {"kind": b"bytes"},
        {"name": b"n" * (MAX_NAME_BYTES + 1)},
        {"name": "text"},
        {"seq": -1},
        {"seq": 2**63},
        {"seq": True},
        {"seq": 1.0},
        {"payload": "text"},
    ],
)
def test_create_validates_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(RecordError) as info:
        make(**overrides)
    assert reason(info) == "malformed"


def test_limits_are_inclusive() -> None:
    record = make(kind="é" * MAX_KIND_CHARS, name=b"n" * MAX_NAME_BYTES, seq=2**63 - 1)
    assert parse_and_verify(record.encode(), record.key, NOW) == record


# --- malformed input --------------------------------------------------------------------


def _fields() -> list[object]:
    return msgpack.unpackb(ENCODED, raw=False)


def _malformed(data: object) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(data)  # type: ignore[arg-type]
    assert reason(info) == "malformed", str(info.value)


def test_trailing_bytes_refused() -> None:
    _malformed(ENCODED + b"\x00")
    _malformed(ENCODED + ENCODED)


def test_truncations_refused() -> None:
    for length in range(len(ENCODED)):
        _malformed(ENCODED[:length])


@pytest.mark.parametrize("data", [None, "text", 42, [1, 2], b"", b"\x90", b"\xc1"])
def test_not_a_record(data: object) -> None:
    _malformed(data)


@pytest.mark.parametrize("index", range(8))
def test_wrong_type_in_each_field(index: int) -> None:
    for bad in (None, True, 1, -1, 1.5, "s", b"b", [], {}):
        fields = _fields()
        if type(bad) is type(fields[index]):
            continue
        fields[index] = bad
        _malformed(msgpack.packb(fields, use_bin_type=True))


def test_wrong_magic_and_field_count() -> None:
    fields = _fields()
    _malformed(msgpack.packb(["aether-record/2"] + fields[1:], use_bin_type=True))
    _malformed(msgpack.packb([RECORD_MAGIC.encode()] + fields[1:], use_bin_type=True))
    _malformed(msgpack.packb(fields[:7], use_bin_type=True))
    _malformed(msgpack.packb(fields + [b""], use_bin_type=True))
    _malformed(msgpack.packb({"magic": RECORD_MAGIC}, use_bin_type=True))
    _malformed(msgpack.packb(tuple(fields), use_bin_type=False))  # bytes as str type


def test_non_canonical_encoding_refused_although_signature_is_valid() -> None:
    """Same values, different bytes (a str8 header for a short kind): one record must have
    exactly one encoding, or the same record could be stored and counted many times."""
    fields = _fields()
    kind = fields[2].encode()
    head = msgpack.packb(fields[:2], use_bin_type=True)[1:]  # drop the 2-element array header
    tail = msgpack.packb(fields[3:], use_bin_type=True)[1:]
    variant = b"\x98" + head + b"\xd9" + bytes([len(kind)]) + kind + tail
    assert variant != ENCODED
    assert msgpack.unpackb(variant, raw=False) == fields  # msgpack itself accepts it
    _malformed(variant)
    # A seq written as uint64 instead of a positive fixint.
    head = msgpack.packb(fields[:4], use_bin_type=True)[1:]
    tail = msgpack.packb(fields[5:], use_bin_type=True)[1:]
    variant = b"\x98" + head + b"\xcf" + fields[4].to_bytes(8, "big") + tail
    assert msgpack.unpackb(variant, raw=False) == fields
    _malformed(variant)


def test_exotic_msgpack_refused() -> None:
    fields = _fields()
    fields[6] = msgpack.ExtType(1, b"x")
    _malformed(msgpack.packb(fields, use_bin_type=True))
    _malformed(b"\xd6\xff\x00\x00\x00\x00")  # timestamp ext
    _malformed(b"\x91" * 5000)  # deep nesting
    _malformed(b"\xdd\xff\xff\xff\xff")  # array claiming 4 billion items
    _malformed(b"\xa2\xff\xfe")  # invalid UTF-8 string
    _malformed(b"\x81\x90\x00")  # map with a list as key


# --- properties -------------------------------------------------------------------------

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MANY
@given(st.binary(max_size=MAX_RECORD_BYTES + 16))
def test_arbitrary_bytes_raise_only_record_error(data: bytes) -> None:
    try:
        record = decode_record(data)
    except RecordError as exc:
        assert exc.reason in ("malformed", "too-large")
    else:  # pragma: no cover - only if hypothesis finds a real record
        assert record.encode() == data


msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=70)
    | st.sampled_from([RECORD_MAGIC, b"\x00" * 32, b"\x00" * 64])
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda children: st.lists(children, max_size=9)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@FAST
@given(msgpack_values)
def test_arbitrary_msgpack_raises_only_record_error(value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    with pytest.raises(RecordError):
        decode_record(data)


@FAST
@given(st.lists(msgpack_leaves | st.lists(msgpack_leaves, max_size=2), min_size=8, max_size=8), st.integers(-1, 7))
def test_records_with_random_fields_raise_only_record_error(fields: list[object], keep: int) -> None:
    real = _fields()
    fields[: keep + 1] = real[: keep + 1]  # keep a valid prefix, so deeper checks run
    data = msgpack.packb(fields, use_bin_type=True)
    try:
        parse_and_verify(data, now=NOW)
    except RecordError:
        pass
    else:
        assert data == ENCODED


@FAST
@given(st.data())
def test_mutated_records_never_verify(data: st.DataObject) -> None:
    mutated = bytearray(ENCODED)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] ^= data.draw(st.integers(1, 255))
    if bytes(mutated) == ENCODED:
        return
    with pytest.raises(RecordError):
        parse_and_verify(bytes(mutated), now=NOW)


def test_every_single_bit_flip_is_refused() -> None:
    for position in range(len(ENCODED)):
        for bit in range(8):
            mutated = bytearray(ENCODED)
            mutated[position] ^= 1 << bit
            with pytest.raises(RecordError):
                parse_and_verify(bytes(mutated), now=NOW)


@FAST
@given(
    kind=st.text(min_size=1, max_size=MAX_KIND_CHARS),
    name=st.binary(max_size=MAX_NAME_BYTES),
    seq=st.integers(0, 2**63 - 1),
    payload=st.binary(max_size=2000),
    ttl=st.integers(1, MAX_TTL),
)
def test_any_valid_record_round_trips(
    kind: str, name: bytes, seq: int, payload: bytes, ttl: int
) -> None:
    try:
        record = create_record(ALICE, kind, name, seq, payload, ttl, now=NOW)
    except RecordError as exc:  # lone surrogates in kind cannot be encoded
        assert exc.reason == "malformed"
        return
    assert parse_and_verify(record.encode(), record.key, NOW) == record

"""Identities: node ID derivation, identity strings, key files. Real keys, real files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from aether.crypto.identity import (
    IDENTITY_PREFIX,
    IDENTITY_STRING_LENGTH,
    SEALING_KEY_FILE,
    SIGNING_KEY_FILE,
    Identity,
    IdentityError,
    PublicIdentity,
    check_signing_public,
    is_weak_signing_key,
    node_id_for,
)

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
P = 2**255 - 19
IDENTITY_POINT = b"\x01" + bytes(31)
# Encodings of the small-order Ed25519 points (libsodium's blocklist, canonical forms).
SMALL_ORDER_KEYS = [
    bytes(32),
    IDENTITY_POINT,
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    (P - 1).to_bytes(32, "little"),
]


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.generate()


def _string_for(signing: bytes, sealing: bytes) -> str:
    """Build an identity string by hand (bypassing validation) with a correct checksum."""
    import base64

    body = signing + sealing
    raw = body + hashlib.sha256(b"aether-identity" + body).digest()[:4]
    return "aether1" + base64.b32encode(raw).decode().rstrip("=").lower()


# --- node IDs -------------------------------------------------------------------------


def test_node_id_is_truncated_sha256_of_signing_key(identity: Identity) -> None:
    key = identity.public.signing_public
    assert len(key) == 32
    assert identity.node_id == hashlib.sha256(key).digest()[:20]
    assert identity.public.node_id == identity.node_id == node_id_for(key)
    assert len(identity.node_id) == 20


def test_distinct_identities_have_distinct_ids() -> None:
    assert Identity.generate().node_id != Identity.generate().node_id


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), "x" * 32, None])
def test_node_id_rejects_wrong_key_size(bad: object) -> None:
    with pytest.raises(IdentityError, match="32"):
        node_id_for(bad)  # type: ignore[arg-type]


# --- signing ----------------------------------------------------------------------------


def test_sign_and_verify(identity: Identity) -> None:
    signature = identity.sign(b"hello")
    assert len(signature) == 64
    assert identity.public.verify(signature, b"hello")
    assert not identity.public.verify(signature, b"hellO")
    assert not Identity.generate().public.verify(signature, b"hello")
    # Cross-check with the library directly: the signature is plain Ed25519.
    Ed25519PublicKey.from_public_bytes(identity.public.signing_public).verify(signature, b"hello")


@pytest.mark.parametrize("signature", [b"", bytes(63), bytes(64), bytes(65), None, "sig", 12])
def test_verify_never_raises(identity: Identity, signature: object) -> None:
    assert identity.public.verify(signature, b"data") is False  # type: ignore[arg-type]
    assert identity.public.verify(identity.sign(b"d"), None) is False  # type: ignore[arg-type]


def test_sealing_private_key_matches_public(identity: Identity) -> None:
    key = identity.sealing_private_key
    assert isinstance(key, X25519PrivateKey)
    assert key.public_key().public_bytes_raw() == identity.public.sealing_public
    # It works for a real key agreement with a peer.
    peer = X25519PrivateKey.generate()
    assert key.exchange(peer.public_key()) == peer.exchange(
        X25519PublicKey.from_public_bytes(identity.public.sealing_public)
    )


def test_repr_shows_no_key_material(identity: Identity) -> None:
    text = repr(identity)
    assert identity.node_id.hex() in text
    assert identity.sealing_private_key.private_bytes_raw().hex() not in text


# --- small-order keys -------------------------------------------------------------------


def test_small_order_keys_really_allow_forgery_in_openssl() -> None:
    """Why we refuse them: with the identity point as public key, an all-zero S and R =
    identity verifies for every message in the underlying library."""
    forged = IDENTITY_POINT + bytes(32)
    key = Ed25519PublicKey.from_public_bytes(IDENTITY_POINT)
    for message in (b"a", b"pay mallory", b"x" * 100):
        key.verify(forged, message)  # no InvalidSignature: a forgery


@pytest.mark.parametrize("raw", SMALL_ORDER_KEYS)
@pytest.mark.parametrize("sign_bit", [False, True])
def test_small_order_keys_refused(raw: bytes, sign_bit: bool) -> None:
    if sign_bit:
        raw = raw[:31] + bytes([raw[31] | 0x80])
    assert is_weak_signing_key(raw)
    with pytest.raises(IdentityError, match="not a valid Ed25519 key"):
        check_signing_public(raw)


def test_order_8_constant_is_correct() -> None:
    """The two hard-coded order-8 y values: on the curve, and doubling gives y = 0 (an
    order-4 point), i.e. d*y^4 + 2*y^2 - 1 == 0 (mod p) for a = -1 Edwards curves."""
    d = (-121665 * pow(121666, P - 2, P)) % P
    for raw in SMALL_ORDER_KEYS[2:4]:
        y = int.from_bytes(raw, "little")
        assert (d * pow(y, 4, P) + 2 * y * y - 1) % P == 0


def test_non_canonical_and_off_curve_keys_refused() -> None:
    with pytest.raises(IdentityError, match="non-canonical"):
        check_signing_public((P + 5).to_bytes(32, "little"))
    # y = 2 gives x^2 = 3 / (4d + 1), which is not a square mod p.
    with pytest.raises(IdentityError, match="not a point on the curve"):
        check_signing_public((2).to_bytes(32, "little"))
    check_signing_public(Identity.generate().public.signing_public)  # real keys pass


def test_public_identity_validates_keys(identity: Identity) -> None:
    sealing = identity.public.sealing_public
    with pytest.raises(IdentityError):
        PublicIdentity(IDENTITY_POINT, sealing)
    with pytest.raises(IdentityError, match="sealing key"):
        PublicIdentity(identity.public.signing_public, bytes(32))
    with pytest.raises(IdentityError, match="32"):
        PublicIdentity(identity.public.signing_public, sealing[:31])


# --- identity strings -------------------------------------------------------------------


def test_identity_string_round_trip(identity: Identity) -> None:
    text = identity.public.to_string()
    assert text.startswith(IDENTITY_PREFIX)
    assert len(text) == IDENTITY_STRING_LENGTH == 116
    assert text == text.lower() and "=" not in text
    assert set(text[len(IDENTITY_PREFIX):]) <= set(ALPHABET)
    assert PublicIdentity.from_string(text) == identity.public
    assert PublicIdentity.from_string(text.upper()) == identity.public
    assert PublicIdentity.from_string(f"  \n\t{text}\r\n ") == identity.public


def test_identity_string_matches_specified_layout(identity: Identity) -> None:
    pub = identity.public
    assert pub.to_string() == _string_for(pub.signing_public, pub.sealing_public)


def test_every_single_character_substitution_is_rejected(identity: Identity) -> None:
    text = identity.public.to_string()
    checked = 0
    for position, original in enumerate(text):
        for replacement in ALPHABET + "1":
            if replacement == original:
                continue
            mutated = text[:position] + replacement + text[position + 1:]
            with pytest.raises(IdentityError):
                PublicIdentity.from_string(mutated)
            checked += 1
    assert checked > 116 * 30


def test_last_character_unused_bit_is_not_ignored(identity: Identity) -> None:
    """The final base32 character carries one unused bit; a decoder that ignores it would
    accept two spellings of one identity."""
    text = identity.public.to_string()
    flipped = ALPHABET[ALPHABET.index(text[-1]) ^ 1]
    with pytest.raises(IdentityError, match="last character"):
        PublicIdentity.from_string(text[:-1] + flipped)


def test_every_truncation_and_extension_is_rejected(identity: Identity) -> None:
    text = identity.public.to_string()
    for length in range(len(text)):
        with pytest.raises(IdentityError):
            PublicIdentity.from_string(text[:length])
    for length in range(len(IDENTITY_PREFIX) + 1, len(text)):
        with pytest.raises(IdentityError, match="expected 116"):
            PublicIdentity.from_string(text[:length])
    with pytest.raises(IdentityError, match="truncated or has extra"):
        PublicIdentity.from_string(text + "a")


@pytest.mark.parametrize("prefix", ["", "aether", "aether2", "bether1", "nostr1", "xaether1"])
def test_wrong_prefix(identity: Identity, prefix: str) -> None:
    body = identity.public.to_string()[len(IDENTITY_PREFIX):]
    with pytest.raises(IdentityError, match="must start with 'aether1'"):
        PublicIdentity.from_string(prefix + body)


def test_empty_string() -> None:
    with pytest.raises(IdentityError, match="empty"):
        PublicIdentity.from_string("   ")
    with pytest.raises(IdentityError, match="text"):
        PublicIdentity.from_string(b"aether1")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_char", ["0", "1", "8", "9", "=", "-", " ", "é", "\u200b"])
def test_bad_character_is_named_with_its_position(identity: Identity, bad_char: str) -> None:
    text = identity.public.to_string()
    mutated = text[:20] + bad_char + text[21:]
    with pytest.raises(IdentityError) as info:
        PublicIdentity.from_string(mutated)
    message = str(info.value)
    assert repr(bad_char) in message
    assert "position 21" in message  # 1-based


@pytest.mark.parametrize("lookalike", ["\u212a", "\u0130", "\uff41"])  # Kelvin K, dotted I, fullwidth a
def test_unicode_lookalikes_are_not_case_folded(identity: Identity, lookalike: str) -> None:
    text = identity.public.to_string()
    with pytest.raises(IdentityError, match=f"invalid character '{lookalike}' at position 31"):
        PublicIdentity.from_string(text[:30] + lookalike + text[31:])
    with pytest.raises(IdentityError, match="must start with"):
        PublicIdentity.from_string("aether" + lookalike + text[7:])


def test_transposition_gives_checksum_message(identity: Identity) -> None:
    text = identity.public.to_string()
    for i in range(10, 100):
        if text[i] != text[i + 1]:
            swapped = text[:i] + text[i + 1] + text[i] + text[i + 2:]
            break
    with pytest.raises(
        IdentityError, match="checksum does not match: the string was mistyped or truncated"
    ):
        PublicIdentity.from_string(swapped)


def test_string_with_valid_checksum_but_invalid_keys(identity: Identity) -> None:
    sealing = identity.public.sealing_public
    with pytest.raises(IdentityError, match="invalid key.*signing key"):
        PublicIdentity.from_string(_string_for(IDENTITY_POINT, sealing))
    with pytest.raises(IdentityError, match="invalid key.*sealing key"):
        PublicIdentity.from_string(_string_for(identity.public.signing_public, bytes(32)))


# --- key files --------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_load_round_trip(tmp_path: Path, identity: Identity) -> None:
    home = tmp_path / "home"
    assert not Identity.exists(home)
    identity.save(home)
    assert Identity.exists(home)
    loaded = Identity.load(home)
    assert loaded.public == identity.public
    assert identity.public.verify(loaded.sign(b"m"), b"m")
    assert (
        loaded.sealing_private_key.private_bytes_raw()
        == identity.sealing_private_key.private_bytes_raw()
    )
    for name in (SIGNING_KEY_FILE, SEALING_KEY_FILE):
        pem = (home / name).read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # unencrypted PKCS8


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_key_files_are_owner_only_even_with_umask_zero(tmp_path: Path, identity: Identity) -> None:
    old = os.umask(0)
    try:
        identity.save(tmp_path)
    finally:
        os.umask(old)
    assert _mode(tmp_path / SIGNING_KEY_FILE) == 0o600
    assert _mode(tmp_path / SEALING_KEY_FILE) == 0o600


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_home_directory_is_owner_only(tmp_path: Path, identity: Identity) -> None:
    old = os.umask(0)
    try:
        identity.save(tmp_path / "new")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == 0o700


def test_save_refuses_to_overwrite(tmp_path: Path, identity: Identity) -> None:
    identity.save(tmp_path)
    before = (tmp_path / SIGNING_KEY_FILE).read_bytes()
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        Identity.generate().save(tmp_path)
    assert (tmp_path / SIGNING_KEY_FILE).read_bytes() == before
    assert Identity.load(tmp_path).public == identity.public


def test_save_refuses_partial_identity_and_leaves_no_half_written_key(tmp_path: Path) -> None:
    (tmp_path / SEALING_KEY_FILE).write_bytes(b"precious")
    assert Identity.exists(tmp_path)
    with pytest.raises(IdentityError, match="sealing.key"):
        Identity.generate().save(tmp_path)
    assert not (tmp_path / SIGNING_KEY_FILE).exists()
    assert (tmp_path / SEALING_KEY_FILE).read_bytes() == b"precious"


def test_save_refuses_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / SIGNING_KEY_FILE).symlink_to(target)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        Identity.generate().save(tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("missing", [SIGNING_KEY_FILE, SEALING_KEY_FILE])
def test_load_names_missing_file(tmp_path: Path, identity: Identity, missing: str) -> None:
    identity.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(IdentityError, match=f"{missing} is missing"):
        Identity.load(tmp_path)


def test_load_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="missing"):
        Identity.load(tmp_path / "nowhere")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o004])
def test_load_refuses_group_or_other_access(tmp_path: Path, identity: Identity, mode: int) -> None:
    identity.save(tmp_path)
    path = tmp_path / SIGNING_KEY_FILE
    os.chmod(path, mode)
    with pytest.raises(IdentityError) as info:
        Identity.load(tmp_path)
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)
    os.chmod(path, 0o400)  # stricter than 0600 is fine
    assert Identity.load(tmp_path).public == identity.public


def test_load_refuses_wrong_key_type(tmp_path: Path, identity: Identity) -> None:
    identity.save(tmp_path)
    # Swap the two files: each now holds a key of the wrong type.
    signing, sealing = tmp_path / SIGNING_KEY_FILE, tmp_path / SEALING_KEY_FILE
    a, b = signing.read_bytes(), sealing.read_bytes()
    for path, data in ((signing, b), (sealing, a)):
        path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
    with pytest.raises(IdentityError, match=r"signing\.key holds a X25519PrivateKey, expected an Ed25519"):
        Identity.load(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"\x00" * 100,
    ],
    ids=["empty", "text", "bad-pem", "zeros"],
)
def test_load_refuses_garbage(tmp_path: Path, identity: Identity, content: bytes) -> None:
    identity.save(tmp_path)
    path = tmp_path / SIGNING_KEY_FILE
    path.write_bytes(content)
    with pytest.raises(IdentityError, match="signing.key is not an unencrypted PEM private key"):
        Identity.load(tmp_path)


def test_load_refuses_encrypted_key(tmp_path: Path, identity: Identity) -> None:
    identity.save(tmp_path)
    path = tmp_path / SIGNING_KEY_FILE
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(IdentityError, match="signing.key"):
        Identity.load(tmp_path)


def test_load_refuses_unreadable_entry(tmp_path: Path, identity: Identity) -> None:
    identity.save(tmp_path)
    (tmp_path / SEALING_KEY_FILE).unlink()
    (tmp_path / SEALING_KEY_FILE).mkdir(mode=0o700)
    with pytest.raises(IdentityError, match="sealing.key"):
        Identity.load(tmp_path)


def test_signature_is_over_exact_bytes(identity: Identity) -> None:
    sig = identity.sign(b"abc")
    key = Ed25519PublicKey.from_public_bytes(identity.public.signing_public)
    with pytest.raises(InvalidSignature):
        key.verify(sig, b"abd")

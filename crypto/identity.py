"""Node identities: an Ed25519 key that signs and an X25519 key that receives sealed data.

The node ID is derived from the signing key, so a peer can check any claimed ID against
the key that signs for it and nobody can pick an ID to land next to a target in the DHT.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

__all__ = [
    "IDENTITY_PREFIX",
    "IDENTITY_STRING_LENGTH",
    "NODE_ID_BYTES",
    "SEALING_KEY_FILE",
    "SIGNING_KEY_FILE",
    "Identity",
    "IdentityError",
    "PublicIdentity",
    "check_signing_public",
    "is_weak_signing_key",
    "node_id_for",
]

NODE_ID_BYTES = 20
KEY_BYTES = 32
SIGNING_KEY_FILE = "signing.key"
SEALING_KEY_FILE = "sealing.key"

IDENTITY_PREFIX = "aether1"
_CHECKSUM_BYTES = 4
_CHECKSUM_DOMAIN = b"aether-identity"
_RAW_BYTES = KEY_BYTES * 2 + _CHECKSUM_BYTES  # 68 bytes
_BASE32_CHARS = (_RAW_BYTES * 8 + 4) // 5  # 109 characters, no padding
IDENTITY_STRING_LENGTH = len(IDENTITY_PREFIX) + _BASE32_CHARS
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")

_MAX_KEY_FILE_BYTES = 64 * 1024  # a PEM key is ~120 bytes; refuse to slurp huge files

# Edwards25519 field prime and curve constant, used only to validate public key encodings
# (the `cryptography` library accepts any 32 bytes when loading an Ed25519 public key).
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
# y coordinate of the order-8 points; its negation is the other one. Together with
# y = 0 (order 4), y = 1 (identity) and y = -1 (order 2) these are all 8 small-order points.
_Y_ORDER_8 = int.from_bytes(
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "little",
)
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _Y_ORDER_8, _P - _Y_ORDER_8})


class IdentityError(ValueError):
    """An identity, identity string or key file is unusable; the message says why."""


def node_id_for(signing_public: bytes) -> bytes:
    """Return the 160-bit node ID of a raw Ed25519 public key: SHA-256(key)[:20].

    Deriving the ID from the key lets any peer check a claimed ID and stops a node from
    choosing where in the key space it sits.
    """
    if not isinstance(signing_public, bytes) or len(signing_public) != KEY_BYTES:
        raise IdentityError(
            f"a signing public key is {KEY_BYTES} raw bytes, got {_describe(signing_public)}"
        )
    return hashlib.sha256(signing_public).digest()[:NODE_ID_BYTES]


def check_signing_public(signing_public: bytes) -> None:
    """Raise IdentityError unless `signing_public` is a usable Ed25519 public key.

    OpenSSL loads any 32 bytes and, for a small-order key, accepts signatures that anyone
    can forge (for the identity point, an all-zero S verifies every message). Refusing
    such keys keeps a signature meaning "made by the holder of the private key".
    """
    if not isinstance(signing_public, bytes) or len(signing_public) != KEY_BYTES:
        raise IdentityError(
            f"signing key must be {KEY_BYTES} raw bytes, got {_describe(signing_public)}"
        )
    problem = _signing_key_problem(signing_public)
    if problem:
        raise IdentityError(f"signing key is not a valid Ed25519 key ({problem})")


@functools.lru_cache(maxsize=4096)
def _signing_key_problem(signing_public: bytes) -> str | None:
    """Why 32 bytes are no usable Ed25519 key, or None. Cached: a team's descriptor names the
    same members' keys at every read, and the on-curve test is a modular exponentiation."""
    weakness = _weakness(signing_public)
    if weakness:
        return weakness
    y = int.from_bytes(signing_public, "little") & ((1 << 255) - 1)
    # x^2 = (y^2 - 1) / (d*y^2 + 1) must have a square root; u/v is a square iff u*v is.
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    if pow(u * v % _P, (_P - 1) // 2, _P) != 1:
        return "not a point on the curve"
    try:
        Ed25519PublicKey.from_public_bytes(signing_public)
    except ValueError as exc:
        return str(exc)
    return None


def is_weak_signing_key(signing_public: bytes) -> bool:
    """True if signatures under this 32-byte key could be forged without a private key.

    A fast subset of check_signing_public() for hot paths (verifying every record): it
    skips the on-curve test, because OpenSSL already fails verification for such keys.
    """
    return _weakness(signing_public) is not None


def _weakness(signing_public: bytes) -> str | None:
    y = int.from_bytes(signing_public, "little") & ((1 << 255) - 1)
    if y >= _P:
        return "non-canonical encoding"
    if y in _SMALL_ORDER_Y:
        return "small-order point"
    return None


def _check_sealing_public(sealing_public: bytes) -> None:
    """Raise IdentityError unless `sealing_public` is an X25519 key that can be sealed to."""
    if not isinstance(sealing_public, bytes) or len(sealing_public) != KEY_BYTES:
        raise IdentityError(
            f"sealing key must be {KEY_BYTES} raw bytes, got {_describe(sealing_public)}"
        )
    if not _sealing_key_usable(sealing_public):
        raise IdentityError("sealing key is not a usable X25519 key (low-order point)")


@functools.lru_cache(maxsize=4096)
def _sealing_key_usable(sealing_public: bytes) -> bool:
    """Cached like _signing_key_problem: each check draws a key pair and agrees a secret."""
    try:
        key = X25519PublicKey.from_public_bytes(sealing_public)
        # A low-order key gives an all-zero shared secret, which OpenSSL refuses; find out
        # now rather than when someone first tries to seal a team share to this member.
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        return False
    return True


def _describe(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    return type(value).__name__


@dataclass(frozen=True)
class PublicIdentity:
    """What a node shares: its signing and sealing public keys (raw 32 bytes each).

    Construction validates both keys, so every PublicIdentity can verify and be sealed to.
    """

    signing_public: bytes
    sealing_public: bytes

    def __post_init__(self) -> None:
        check_signing_public(self.signing_public)
        _check_sealing_public(self.sealing_public)

    @property
    def node_id(self) -> bytes:
        """The 160-bit DHT node ID this identity is entitled to."""
        return node_id_for(self.signing_public)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if `signature` is this identity's Ed25519 signature of `data`; never raises,
        so callers handling untrusted input need no exception plumbing."""
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_public).verify(signature, data)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def to_string(self) -> str:
        """A copy-paste-safe text form: 'aether1' + base32 of both keys and a checksum.

        Lowercase base32 survives chat clients and terminals; the checksum catches typos
        and truncation before a wrong key is trusted.
        """
        body = self.signing_public + self.sealing_public
        raw = body + _checksum(body)
        return IDENTITY_PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    @classmethod
    def from_string(cls, text: str) -> PublicIdentity:
        """Parse an identity string, saying exactly what is wrong if it cannot be used."""
        if not isinstance(text, str):
            raise IdentityError(f"an identity string must be text, got {type(text).__name__}")
        text = text.strip()
        head = text[: len(IDENTITY_PREFIX)]
        # Case folding is ASCII-only: str.lower() maps look-alikes such as the Kelvin sign
        # onto 'k', and some characters grow when lowered, which would shift positions.
        if not (head.isascii() and head.lower() == IDENTITY_PREFIX):
            raise IdentityError(
                f"not an aether identity: it must start with {IDENTITY_PREFIX!r}"
                + (f", but starts with {head!r}" if head else " (the string is empty)")
            )
        body = text[len(IDENTITY_PREFIX):]
        for index, char in enumerate(body):
            if not char.isascii() or char.lower() not in _BASE32_ALPHABET:
                position = len(IDENTITY_PREFIX) + index + 1  # 1-based, as people count
                raise IdentityError(
                    f"invalid character {char!r} at position {position}: identity "
                    f"strings use only the letters a-z and the digits 2-7"
                )
        body = body.lower()
        if len(body) != _BASE32_CHARS:
            raise IdentityError(
                f"identity string has {len(text)} characters, expected "
                f"{IDENTITY_STRING_LENGTH}: it was truncated or has extra characters"
            )
        padded = body.upper() + "=" * (-len(body) % 8)
        try:
            raw = base64.b32decode(padded)
        except (binascii.Error, ValueError) as exc:  # unreachable after the checks above
            raise IdentityError(f"identity string is not valid base32 ({exc})") from exc
        # The last character carries one unused bit; base32 decoders ignore it, so two
        # strings would name one identity. Only the canonical spelling is accepted.
        canonical = base64.b32encode(raw).decode("ascii").rstrip("=").lower()
        if canonical != body or len(raw) != _RAW_BYTES:
            raise IdentityError(
                f"invalid last character {text[-1]!r}: the string was mistyped or truncated"
            )
        keys, checksum = raw[: 2 * KEY_BYTES], raw[2 * KEY_BYTES:]
        if _checksum(keys) != checksum:
            raise IdentityError(
                "checksum does not match: the string was mistyped or truncated"
            )
        try:
            return cls(signing_public=keys[:KEY_BYTES], sealing_public=keys[KEY_BYTES:])
        except IdentityError as exc:
            raise IdentityError(f"identity string holds an invalid key: {exc}") from exc


def _checksum(keys: bytes) -> bytes:
    return hashlib.sha256(_CHECKSUM_DOMAIN + keys).digest()[:_CHECKSUM_BYTES]


class Identity:
    """A node's private keys: Ed25519 for signing, X25519 for receiving sealed data."""

    def __init__(self, signing_key: Ed25519PrivateKey, sealing_key: X25519PrivateKey) -> None:
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise IdentityError("signing key must be an Ed25519 private key")
        if not isinstance(sealing_key, X25519PrivateKey):
            raise IdentityError("sealing key must be an X25519 private key")
        self._signing_key = signing_key
        self._sealing_key = sealing_key
        self._public = PublicIdentity(
            signing_public=signing_key.public_key().public_bytes_raw(),
            sealing_public=sealing_key.public_key().public_bytes_raw(),
        )

    def __repr__(self) -> str:  # never show key material
        return f"Identity(node_id={self.node_id.hex()})"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @property
    def public(self) -> PublicIdentity:
        """The shareable half of this identity."""
        return self._public

    @property
    def node_id(self) -> bytes:
        """The 160-bit node ID derived from the signing key."""
        return self._public.node_id

    @property
    def sealing_private_key(self) -> X25519PrivateKey:
        """The X25519 private key, for opening data sealed to this identity."""
        return self._sealing_key

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of `data`."""
        return self._signing_key.sign(data)

    @staticmethod
    def exists(directory: Path) -> bool:
        """True if either key file is present in `directory`.

        A half-present identity counts, so callers never silently replace it with a new one.
        """
        directory = Path(directory)
        return any(
            (directory / name).exists() or (directory / name).is_symlink()
            for name in (SIGNING_KEY_FILE, SEALING_KEY_FILE)
        )

    def save(self, directory: Path) -> None:
        """Write both keys as unencrypted PKCS8 PEM, owner-only from the first byte.

        Refuses to overwrite an existing key: losing a private key loses the node's identity.
        """
        directory = Path(directory)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(f"cannot create directory {directory}: {exc}") from exc
        files = {
            SIGNING_KEY_FILE: _pem(self._signing_key),
            SEALING_KEY_FILE: _pem(self._sealing_key),
        }
        for name in files:
            if (directory / name).exists() or (directory / name).is_symlink():
                raise IdentityError(
                    f"refusing to overwrite existing key {directory / name}: "
                    "move it away first if you really want a new identity"
                )
        written: list[Path] = []
        try:
            for name, pem in files.items():
                path = directory / name
                _write_private_file(path, pem)
                written.append(path)
        except BaseException:
            for path in written:  # do not leave half an identity behind
                try:
                    path.unlink()
                except OSError:
                    pass
            raise
        _fsync_directory(directory)

    @classmethod
    def load(cls, directory: Path) -> Identity:
        """Read the keys written by save(), refusing files others could read."""
        directory = Path(directory)
        signing = _load_private_key(directory / SIGNING_KEY_FILE, Ed25519PrivateKey, "Ed25519")
        sealing = _load_private_key(directory / SEALING_KEY_FILE, X25519PrivateKey, "X25519")
        return cls(signing, sealing)


def _pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _write_private_file(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise IdentityError(f"refusing to overwrite existing key {path}") from exc
    except OSError as exc:
        raise IdentityError(f"cannot create key file {path}: {exc.strerror or exc}") from exc
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # the umask may have cleared bits, never add any
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise IdentityError(f"cannot write key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entries durable (POSIX only; Windows cannot open dirs)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_Key = TypeVar("_Key", Ed25519PrivateKey, X25519PrivateKey)


def _load_private_key(path: Path, key_type: type[_Key], label: str) -> _Key:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise IdentityError(f"key file {path} is missing") from exc
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if os.name == "posix" and mode & 0o077:
            raise IdentityError(
                f"key file {path} is accessible by group or others (mode {mode:04o}); "
                f"run `chmod 600 {path}`"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise IdentityError(f"key file {path} is too large to be a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(
            f"key file {path} is not an unencrypted PEM private key ({exc})"
        ) from exc
    except Exception as exc:  # e.g. UnsupportedAlgorithm for exotic key types
        raise IdentityError(f"key file {path} holds an unsupported key ({exc})") from exc
    if not isinstance(key, key_type):
        raise IdentityError(
            f"key file {path} holds a {type(key).__name__.lstrip('_')}, expected an {label} key"
        )
    return key

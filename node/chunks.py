"""A pattern's bytes as content-addressed blocks plus a manifest that lists them.

No datagram may exceed 8 KiB, so a pattern travels as blocks of at most
``BLOCK_BYTES``, each stored under its own content key
(:func:`aether.node.values.block_key`), and a small manifest naming the whole
file's SHA-256, its size and the block keys in order. Every block is checked
against its key as it arrives and the reassembled file against the pattern
hash, so a holder that alters a byte is caught and named.

The manifest is plain data here; how it is signed and where it is stored on
the network is the publishing code's concern.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack

from aether.node.values import KEY_BYTES, block_key

BLOCK_BYTES = 6 * 1024
"""Bytes per block: with RPC framing a STORE stays well under the 8 KiB datagram limit."""
MANIFEST_MAGIC = "aether-manifest/1"
MAX_BLOCKS = 256
"""Up to 1.5 MiB per pattern at BLOCK_BYTES, above the default 1 MiB pattern limit."""


class ManifestError(ValueError):
    """A manifest that does not parse, or blocks that do not make up the file it names."""


@dataclass(frozen=True)
class Manifest:
    pattern_hash: bytes
    """SHA-256 of the whole file (32 bytes)."""
    size: int
    blocks: tuple[bytes, ...]
    """Block keys in file order."""

    def encode(self) -> bytes:
        return msgpack.packb([MANIFEST_MAGIC, self.pattern_hash, self.size, list(self.blocks)], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse strictly: exact types and sizes, canonical encoding, nothing else raised but ManifestError."""
        try:
            fields = msgpack.unpackb(
                data, raw=False, use_list=True, strict_map_key=True, max_str_len=64, max_bin_len=64,
                max_array_len=MAX_BLOCKS, max_map_len=0, max_ext_len=0,
            )
        except Exception:
            raise ManifestError("manifest is not valid msgpack") from None
        if not (isinstance(fields, list) and len(fields) == 4 and fields[0] == MANIFEST_MAGIC):
            raise ManifestError("not an aether manifest")
        _, pattern_hash, size, blocks = fields
        if not (isinstance(pattern_hash, bytes) and len(pattern_hash) == 32):
            raise ManifestError("manifest hash must be 32 bytes")
        if type(size) is not int or not 0 < size <= MAX_BLOCKS * BLOCK_BYTES:
            raise ManifestError("manifest size out of range")
        if not (isinstance(blocks, list) and all(isinstance(b, bytes) and len(b) == KEY_BYTES for b in blocks)):
            raise ManifestError("manifest blocks must be 20-byte keys")
        if len(blocks) != -(-size // BLOCK_BYTES):
            raise ManifestError(f"{size} bytes need {-(-size // BLOCK_BYTES)} blocks, the manifest lists {len(blocks)}")
        manifest = cls(pattern_hash, size, tuple(blocks))
        if manifest.encode() != bytes(data):
            raise ManifestError("manifest is not in canonical form")
        return manifest


def split(data: bytes) -> tuple[Manifest, list[bytes]]:
    """The manifest and the blocks of a file, in order."""
    if not data:
        raise ValueError("an empty file has no blocks")
    blocks = [data[i : i + BLOCK_BYTES] for i in range(0, len(data), BLOCK_BYTES)]
    if len(blocks) > MAX_BLOCKS:
        raise ValueError(f"{len(data)} bytes need more than {MAX_BLOCKS} blocks")
    manifest = Manifest(hashlib.sha256(data).digest(), len(data), tuple(block_key(b) for b in blocks))
    return manifest, blocks


def check_block(manifest: Manifest, index: int, data: bytes) -> None:
    """Raise ManifestError if ``data`` is not block ``index`` of the manifest."""
    if block_key(data) != manifest.blocks[index]:
        raise ManifestError(f"block {index + 1} of {len(manifest.blocks)} does not match its key")


def assemble(manifest: Manifest, blocks: list[bytes]) -> bytes:
    """The file, once every block and the whole have been checked."""
    if len(blocks) != len(manifest.blocks):
        raise ManifestError(f"{len(blocks)} blocks given, the manifest lists {len(manifest.blocks)}")
    for index, block in enumerate(blocks):
        check_block(manifest, index, block)
    data = b"".join(blocks)
    if len(data) != manifest.size or hashlib.sha256(data).digest() != manifest.pattern_hash:
        raise ManifestError("the blocks do not make up the file the manifest names")
    return data

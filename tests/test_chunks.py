"""Files become checked blocks and a manifest, and come back byte for byte."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.node.chunks import BLOCK_BYTES, MAX_BLOCKS, Manifest, ManifestError, assemble, split
from aether.node.values import MAX_VALUE_BYTES, block_key


@given(st.binary(min_size=1, max_size=5 * BLOCK_BYTES))
def test_split_and_assemble_round_trip(data):
    manifest, blocks = split(data)
    assert all(len(b) <= BLOCK_BYTES for b in blocks)
    assert manifest.pattern_hash == hashlib.sha256(data).digest()
    assert Manifest.decode(manifest.encode()) == manifest
    assert assemble(manifest, blocks) == data


def test_a_block_and_a_full_manifest_fit_one_value():
    data = bytes(range(256)) * (MAX_BLOCKS * BLOCK_BYTES // 256)
    manifest, blocks = split(data)
    assert len(blocks) == MAX_BLOCKS
    assert BLOCK_BYTES <= MAX_VALUE_BYTES
    assert len(manifest.encode()) < MAX_VALUE_BYTES - 512  # room left for a record's signature and fields


def test_a_tampered_block_is_named():
    data = b"x" * (2 * BLOCK_BYTES + 10)
    manifest, blocks = split(data)
    blocks[1] = blocks[1][:-1] + b"y"
    with pytest.raises(ManifestError, match="block 2 of 3"):
        assemble(manifest, blocks)


def test_blocks_in_the_wrong_order_or_missing_are_refused():
    manifest, blocks = split(b"a" * BLOCK_BYTES + b"b" * BLOCK_BYTES)
    with pytest.raises(ManifestError):
        assemble(manifest, blocks[::-1])
    with pytest.raises(ManifestError):
        assemble(manifest, blocks[:1])


def test_a_lying_manifest_is_caught():
    manifest, blocks = split(b"genuine content")
    liar = Manifest(hashlib.sha256(b"something else").digest(), manifest.size, manifest.blocks)
    with pytest.raises(ManifestError, match="do not make up"):
        assemble(liar, blocks)


def test_empty_and_oversized_files_cannot_be_split():
    with pytest.raises(ValueError):
        split(b"")
    with pytest.raises(ValueError):
        split(b"z" * (MAX_BLOCKS * BLOCK_BYTES + 1))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x94", b"\xc0", b"\x94\xafaether-manifest/1\xc4\x01x\x01\x90",
     Manifest(b"\x00" * 32, 10, (b"\x01" * 20, b"\x02" * 20)).encode()],  # 10 bytes in 2 blocks
)
def test_malformed_manifests_raise_only_manifest_errors(data):
    with pytest.raises(ManifestError):
        Manifest.decode(data)


@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_a_manifest_error(data):
    try:
        Manifest.decode(data)
    except ManifestError:
        pass


def test_block_keys_are_the_dht_keys_of_the_blocks():
    manifest, blocks = split(b"q" * (BLOCK_BYTES + 1))
    assert list(manifest.blocks) == [block_key(b) for b in blocks]

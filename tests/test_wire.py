"""The wire stays byte-compatible with rpcudp's u-msgpack and never lets bad input escape."""

from __future__ import annotations

import os

import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from aether.node import wire

# What the protocol actually sends: ids, keys, values, addresses, lists of contacts, maps.
scalars = st.one_of(
    st.binary(max_size=64), st.text(max_size=32), st.integers(-(2**63), 2**64 - 1), st.booleans(), st.none()
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_c_msgpack_writes_the_same_bytes_as_umsgpack(value):
    assert wire.pack(value) == umsgpack.packb(value)


@given(values)
def test_what_umsgpack_writes_decodes_to_the_same_value(value):
    assert wire.unpack(umsgpack.packb(value)) == value


def test_a_request_is_framed_like_rpcudp():
    msg_id = os.urandom(20)
    args = (b"\x01" * 20, b"\x02" * 20)
    ours = wire.encode_request(msg_id, "find_node", args)
    stock = b"\x00" + msg_id + umsgpack.packb(["find_node", args])
    assert ours == stock
    decoded = wire.decode(ours)
    assert (decoded.kind, decoded.msg_id, decoded.body) == (wire.REQUEST, msg_id, ["find_node", list(args)])


def test_oversized_messages_are_refused_both_ways():
    with pytest.raises(wire.WireError):
        wire.encode_request(os.urandom(20), "store", [b"x" * wire.MAX_DATAGRAM])
    with pytest.raises(wire.WireError):
        wire.decode(b"\x00" + os.urandom(20) + umsgpack.packb(["ping", [b"x" * wire.MAX_DATAGRAM]]))


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00" * 21,
        b"\x02" + b"\x00" * 20 + umsgpack.packb(["ping", []]),
        b"\x00" + b"\x00" * 20 + umsgpack.packb(["ping", []])[:-1] + b"\xdb",  # truncated str header
        b"\x00" + b"\x00" * 20 + umsgpack.packb(["ping"]),  # wrong arity
        b"\x00" + b"\x00" * 20 + umsgpack.packb([1, []]),  # name not a string
        b"\x00" + b"\x00" * 20 + umsgpack.packb(["ping", []]) + b"\x00",  # trailing bytes
        b"\x00" + b"\x00" * 20 + b"\x91" * 5000,  # deep nesting
        b"\x00" + b"\x00" * 20 + b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x00" + b"\x00" * 20 + b"\xc7\x01\x05\x00",  # ext type
        b"\x00" + b"\x00" * 20 + umsgpack.packb({b"\x00": 1}),  # not a request list
    ],
)
def test_malformed_datagrams_raise_only_wire_errors(datagram):
    with pytest.raises(wire.WireError):
        wire.decode(datagram)


@settings(max_examples=500)
@given(st.binary(max_size=2 * wire.MAX_DATAGRAM))
def test_random_bytes_raise_only_wire_errors(data):
    try:
        wire.decode(data)
    except wire.WireError:
        pass


def nest(depth: int, innermost: object = None) -> object:
    for _ in range(depth):
        innermost = [innermost]
    return innermost


def test_values_nested_deeper_than_max_depth_are_refused():
    # The C unpacker alone accepts 1023 levels, too deep for str() or == to walk.
    assert wire.unpack(wire.pack(nest(wire.MAX_DEPTH))) == nest(wire.MAX_DEPTH)
    with pytest.raises(wire.WireError, match="nested"):
        wire.unpack(wire.pack(nest(wire.MAX_DEPTH + 1)))
    with pytest.raises(wire.WireError, match="nested"):
        wire.unpack(wire.pack({"error": nest(wire.MAX_DEPTH)}))  # maps count as levels too
    with pytest.raises(wire.WireError, match="nested"):
        wire.decode(b"\x01" + bytes(20) + wire.pack({"error": nest(1000)}))

"""The bytes on the wire: rpcudp's framing, encoded with the C msgpack.

rpcudp frames every datagram as one type byte (0x00 request, 0x01 response), a
20-byte message id, and a msgpack body: ``[name, args]`` for a request, the
result for a response. Stock nodes encode with u-msgpack-python; the C
``msgpack`` package produces the same bytes for the types we send (bytes as
bin, str as str, lists and tuples as arrays, smallest integer forms), so a
stock ``kademlia`` node and ours understand each other.

Decoding is where outside bytes first meet our code, so it is strict: the
datagram size is bounded, every msgpack length is bounded by that size, the
nesting depth is bounded, and any failure becomes :class:`WireError`, never
another exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST = 0x00
RESPONSE = 0x01
MSG_ID_BYTES = 20
HEADER_BYTES = 1 + MSG_ID_BYTES
MAX_DATAGRAM = 8192
"""No datagram we send or accept is larger than this (8 KiB)."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and maps accepted; no message of ours nests more than five levels.

The C unpacker stops only at 1024 levels, deeper than Python code that walks a
value (``str``, ``repr``, ``==``, ``copy``) can follow: a peer's STORE reply
``{"error": [[[...]]]}`` nested 1000 levels deep made ``str()`` of the error raise
RecursionError in the storing node.
"""


class WireError(ValueError):
    """A datagram that is not a well-formed rpcudp message."""


@dataclass(frozen=True)
class Message:
    kind: int  # REQUEST or RESPONSE
    msg_id: bytes
    body: Any


def pack(obj: Any) -> bytes:
    """Encode a value exactly as rpcudp's u-msgpack would."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, *, limit: int = MAX_DATAGRAM) -> Any:
    """Decode one msgpack value with every length bounded by ``limit`` (the datagram size)."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"malformed msgpack body: {exc.__class__.__name__}") from None
    if _nested_deeper(value, MAX_DEPTH):
        raise WireError(f"msgpack body nested more than {MAX_DEPTH} levels deep")
    return value


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether arrays and maps nest more than ``limit`` levels in ``value``; a loop, not recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item if type(item) is list else item.values() if type(item) is dict else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if type(child) in (list, dict))
    return False


def encode_request(msg_id: bytes, name: str, args: list[Any] | tuple[Any, ...]) -> bytes:
    return _frame(REQUEST, msg_id, pack([name, list(args)]))


def encode_response(msg_id: bytes, result: Any) -> bytes:
    return _frame(RESPONSE, msg_id, pack(result))


def _frame(kind: int, msg_id: bytes, body: bytes) -> bytes:
    if len(msg_id) != MSG_ID_BYTES:
        raise ValueError("message id must be 20 bytes")
    datagram = bytes([kind]) + msg_id + body
    if len(datagram) > MAX_DATAGRAM:
        raise WireError(f"message of {len(datagram)} bytes exceeds the {MAX_DATAGRAM}-byte datagram limit")
    return datagram


def decode(datagram: bytes) -> Message:
    """Parse a datagram; raise :class:`WireError` for anything malformed."""
    if len(datagram) > MAX_DATAGRAM:
        raise WireError(f"datagram of {len(datagram)} bytes exceeds {MAX_DATAGRAM}")
    if len(datagram) <= HEADER_BYTES:
        raise WireError("datagram too short")
    kind = datagram[0]
    if kind not in (REQUEST, RESPONSE):
        raise WireError(f"unknown message type 0x{kind:02x}")
    body = unpack(datagram[HEADER_BYTES:])
    if kind == REQUEST:
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[0], str) and isinstance(body[1], list)):
            raise WireError("request body is not [name, args]")
    return Message(kind, bytes(datagram[1:HEADER_BYTES]), body)

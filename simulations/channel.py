"""Length-prefixed msgpack frames between a simulation and its worker processes.

A frame is 4 bytes of big-endian length then one msgpack map. Requests are
``{"id", "op", "args"}``; replies ``{"id", "ok", "result"}`` or ``{"id", "ok": False,
"error"}``. Both ends are asyncio streams (the worker's stdin and stdout).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

MAX_FRAME = 64 << 20
_LENGTH = struct.Struct(">I")


def frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at the end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return msgpack.unpackb(await reader.readexactly(length), raw=False, strict_map_key=False)

"""Faults a simulation injects into real nodes' transports: loss, added latency, partitions.

Each node's outgoing datagrams pass through :class:`FaultyTransport`, which wraps
the node's UDP transport (everything but ``sendto`` goes straight through). Every
datagram is sent by some node, so acting on the way out covers both directions of
a conversation. One :class:`Faults` object is shared by all the nodes of a worker
process and changed while they run.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]


@dataclass
class Faults:
    loss: float = 0.0
    """Share of datagrams dropped, 0 to 0.9."""
    latency_ms: float = 0.0
    """Added one-way delay of every datagram."""
    jitter_ms: float = 0.0
    """Each datagram's delay varies uniformly by up to this much either way (never below 0)."""
    groups: dict[Address, int] = field(default_factory=dict)
    """While partitioned, each address's side; datagrams between sides are dropped. Empty when healed."""
    rng: random.Random = field(default_factory=random.Random)

    def set_transport(self, loss: float = 0.0, latency_ms: float = 0.0, jitter_ms: float = 0.0) -> None:
        self.loss, self.latency_ms, self.jitter_ms = loss, latency_ms, jitter_ms

    def partition(self, groups: list[list[Address]]) -> None:
        self.groups = {tuple(a): side for side, members in enumerate(groups) for a in members}

    def heal(self) -> None:
        self.groups = {}

    def fate(self, source: Address, destination: Address) -> float | None:
        """None to drop the datagram, or the seconds to hold it before sending."""
        if self.groups:
            a, b = self.groups.get(source), self.groups.get(destination)
            if a is not None and b is not None and a != b:
                return None
        if self.loss and self.rng.random() < self.loss:
            return None
        delay = self.latency_ms
        if self.jitter_ms:
            delay += self.rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, delay) / 1000


class FaultyTransport:
    """A node's datagram transport, with :class:`Faults` applied to what it sends."""

    def __init__(self, inner: asyncio.DatagramTransport, faults: Faults):
        self._inner = inner
        self._faults = faults
        self._source: Address = tuple(inner.get_extra_info("sockname")[:2])
        self.sent = self.sent_bytes = self.dropped = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        self.sent_bytes += len(data)
        delay = self._faults.fate(self._source, (addr[0], addr[1]))
        if delay is None:
            self.dropped += 1
        elif delay == 0:
            self._inner.sendto(data, addr)
        else:
            asyncio.get_running_loop().call_later(delay, self._send_later, data, addr)

    def _send_later(self, data: bytes, addr: Any) -> None:
        if not self._inner.is_closing():
            self._inner.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def inject(node: Any, faults: Faults) -> FaultyTransport:
    """Route a listening node's outgoing datagrams through ``faults``."""
    wrapped = FaultyTransport(node.protocol.transport, faults)
    node.protocol.transport = wrapped
    return wrapped

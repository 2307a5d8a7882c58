"""Per-source token buckets, so one peer cannot take a node's CPU or fill its quota.

Each source (:func:`aether.node.addresses.source_of`) has two buckets: one
for requests (PING, STUN, FIND_NODE, FIND_VALUE, TEAM_SHARE) and one for the
bytes it asks us to STORE. A bucket holds at most ``burst`` tokens and refills
at ``rate`` per second; a new source starts full, so an honest peer's bursts
(a join's bucket refreshes, a hand-off to a new neighbour) pass untouched.

Over the limit:

* a request is dropped without a reply, as BitTorrent's DHT and OpenDHT do: a
  reply would cost the bandwidth the limit is there to save;
* a STORE is answered ``{"error": "busy"}`` (``error_reply``) before its value
  is checked: an honest storer that met the limit learns that the value belongs
  on the next closest node, instead of timing out and counting us as failing.
  The refusal costs the source a request token, so a source past both
  allowances (a flooder) is dropped like any other request.

Sources are kept in an LRU of ``rate_limited_sources`` entries, so memory is
bounded whatever the number of addresses a peer sends from.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

from aether.node.addresses import Source, source_of
from aether.node.config import NodeConfig
from aether.storage.store import value_charge

BUSY = "busy"
"""The error a STORE gets from a node its sender has sent more bytes than its allowance."""
SERVE, REFUSE, DROP = "serve", "refuse", "drop"
"""What to do with a request: :meth:`RequestLimits.admit`."""


class SourceLimiter:
    """Token buckets keyed by source, least recently used forgotten first."""

    def __init__(self, rate: float, burst: float, max_sources: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._clock = clock
        self._buckets: OrderedDict[Source, tuple[float, float]] = OrderedDict()
        """Per source: tokens left, and when they were counted."""

    def take(self, source: Source, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens of ``source``'s bucket; False (and nothing spent) if it holds fewer."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= amount
        if allowed:
            tokens -= amount
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


def store_cost(key: Any, value: Any) -> int:
    """Bytes a STORE is charged: what holding its value would cost, so tiny STOREs are not free."""
    key_len = len(key) if isinstance(key, bytes) else 0
    value_len = len(value) if isinstance(value, bytes) else 0
    return value_charge(key_len, value_len)


class RequestLimits:
    """The node's per-source limits: which requests to serve, drop, or refuse."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic):
        self.restrict_loopback = config.restrict_loopback
        self.requests = SourceLimiter(config.requests_per_second, config.requests_burst,
                                      config.rate_limited_sources, clock)
        self.store_bytes = SourceLimiter(config.store_bytes_per_second, config.store_burst_bytes,
                                         config.rate_limited_sources, clock)

    def admit(self, name: str, args: list, address: tuple) -> str:
        """SERVE, REFUSE (a STORE past its byte allowance) or DROP a request from ``address``, spending its allowance.

        A refusal costs a request token: a source past both allowances (a
        flooder, not a storer that sent a large hand-off) is not even answered.
        """
        source = source_of(address, self.restrict_loopback)
        if name == "store" and self.store_bytes.take(source, store_cost(args[1], args[2])):
            return SERVE
        if not self.requests.take(source):
            return DROP
        return REFUSE if name == "store" else SERVE

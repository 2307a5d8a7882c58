"""Round-trip-time estimates that set each RPC's timeout.

The stock protocol waits a fixed 5 s for every reply: far too long on a LAN
(a dead peer stalls a lookup for 5 s) and too short on a congested phone link.
We keep, per peer, the smoothed RTT and its variation as TCP does (RFC 6298)
and wait ``srtt + 4 * rttvar``, bounded. Peers never measured use the
estimate over all peers, so a new contact gets a timeout fitted to the network
we are actually on.

A lookup does not wait a whole timeout before it moves on:
:meth:`RttEstimator.prompt_for` is the much shorter time after which an
unanswered peer is *probably* gone, judged from the round trips of all peers
right now, and the lookup then asks the next peer as well (see
:mod:`aether.node.lookup`).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

ALPHA = 1 / 8
BETA = 1 / 4

PROMPT_FACTOR = 8
"""A peer silent for this many times the fastest recent round trip is probably gone."""

RECENT_SAMPLES = 64
"""Round trips (to any peer) whose fastest sets the prompt."""

PROMPT_MIN = 0.02
"""The shortest wait before a lookup asks another peer beside a silent one.

A late reply is still accepted, so a short wait costs one extra request, never
an answer; 20 ms is many loopback or LAN round trips.
"""


@dataclass
class _Estimate:
    srtt: float
    rttvar: float
    rto: float
    backed_off_at: float = float("-inf")


class RttEstimator:
    def __init__(self, *, initial: float = 1.0, minimum: float = 0.2, maximum: float = 5.0, max_peers: int = 4096):
        if not 0 < minimum <= initial <= maximum:
            raise ValueError("need 0 < minimum <= initial <= maximum")
        self.initial = initial
        self.minimum = minimum
        self.maximum = maximum
        self._max_peers = max_peers
        self._peers: OrderedDict[tuple[str, int], _Estimate] = OrderedDict()
        self._overall: _Estimate | None = None
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)

    def timeout_for(self, peer: tuple[str, int]) -> float:
        """Seconds to wait for this peer's reply."""
        est = self._peers.get(peer) or self._overall
        return est.rto if est else self.initial

    def prompt_for(self, peer: tuple[str, int]) -> float:
        """Seconds after which a silent peer is probably gone: a lookup then asks the next one too.

        :data:`PROMPT_FACTOR` times the fastest of the last
        :data:`RECENT_SAMPLES` round trips to any peer, not this peer's own
        estimate nor the smoothed one over all peers: both keep what they
        learned while this machine or its network was busy (a peer asked once
        an hour keeps the timeout it earned on a busy evening), while the
        fastest recent round trip still shows what the path can do. Never
        longer than the peer's own timeout, never shorter than
        :data:`PROMPT_MIN`. On a network whose peers are far apart in round
        trip this sends a few more requests (a far peer is asked beside,
        never instead of, and its late reply counts), not slower lookups.
        """
        quick = PROMPT_FACTOR * min(self._recent) if self._recent else self.initial
        return min(self.timeout_for(peer), max(PROMPT_MIN, quick))

    def srtt(self, peer: tuple[str, int]) -> float | None:
        """The smoothed round trip to this peer in seconds, or None if it never answered a request.

        ``peers`` shows it so a user can tell a near peer from a far or struggling one.
        """
        est = self._peers.get(peer)
        return est.srtt if est else None

    def observe(self, peer: tuple[str, int], rtt: float) -> None:
        """Feed one measured round trip (a reply to a request sent once)."""
        self._overall = self._update(self._overall, rtt)
        self._recent.append(rtt)
        est = self._update(self._peers.pop(peer, None), rtt)
        self._peers[peer] = est
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)

    def backoff(self, peer: tuple[str, int], now: float) -> None:
        """A timeout: double the peer's wait, as RFC 6298 asks, up to the maximum.

        Requests that were out together and time out together are one silence
        and double the wait once: RFC 6298 backs off per expiry of its one
        timer, and a node with several requests out to a peer would otherwise
        jump from 0.2 s to the 5 s maximum in one burst. ``now`` is on the
        clock that times requests out.
        """
        est = self._peers.get(peer)
        if est is not None and now - est.backed_off_at >= est.rto / 2:
            est.rto = min(self.maximum, est.rto * 2)
            est.backed_off_at = now

    def _update(self, est: _Estimate | None, rtt: float) -> _Estimate:
        if est is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            rttvar = (1 - BETA) * est.rttvar + BETA * abs(est.srtt - rtt)
            srtt = (1 - ALPHA) * est.srtt + ALPHA * rtt
        rto = min(self.maximum, max(self.minimum, srtt + 4 * rttvar))
        return _Estimate(srtt, rttvar, rto)

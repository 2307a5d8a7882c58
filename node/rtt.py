"""Round-trip-time estimates that set each RPC's timeout.

The stock protocol waits a fixed 5 s for every reply: far too long on a LAN
(a dead peer stalls a lookup for 5 s) and too short on a congested phone link.
We keep, per peer, the smoothed RTT and its variation as TCP does (RFC 6298)
and wait ``srtt + 4 * rttvar``, bounded. Peers never measured use the
estimate over all peers, so a new contact gets a timeout fitted to the network
we are actually on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

ALPHA = 1 / 8
BETA = 1 / 4


@dataclass
class _Estimate:
    srtt: float
    rttvar: float
    rto: float


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

    def timeout_for(self, peer: tuple[str, int]) -> float:
        """Seconds to wait for this peer's reply."""
        est = self._peers.get(peer) or self._overall
        return est.rto if est else self.initial

    def srtt(self, peer: tuple[str, int]) -> float | None:
        """The smoothed round trip to this peer in seconds, or None if it never answered a request.

        ``peers`` shows it so a user can tell a near peer from a far or struggling one.
        """
        est = self._peers.get(peer)
        return est.srtt if est else None

    def observe(self, peer: tuple[str, int], rtt: float) -> None:
        """Feed one measured round trip (a reply to a request sent once)."""
        self._overall = self._update(self._overall, rtt)
        est = self._update(self._peers.pop(peer, None), rtt)
        self._peers[peer] = est
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)

    def backoff(self, peer: tuple[str, int]) -> None:
        """A timeout: double the peer's wait, as RFC 6298 asks, up to the maximum."""
        est = self._peers.get(peer)
        if est is not None:
            est.rto = min(self.maximum, est.rto * 2)

    def _update(self, est: _Estimate | None, rtt: float) -> _Estimate:
        if est is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            rttvar = (1 - BETA) * est.rttvar + BETA * abs(est.srtt - rtt)
            srtt = (1 - ALPHA) * est.srtt + ALPHA * rtt
        rto = min(self.maximum, max(self.minimum, srtt + 4 * rttvar))
        return _Estimate(srtt, rttvar, rto)

"""Iterative α-parallel lookups that never wait on the slowest peer.

The stock crawler works in rounds: it asks α peers, waits for *all* of them,
then starts the next round, so one dead peer stalls each round for a full
timeout. Here up to α requests are in flight at all times; each reply
immediately makes room for the next-closest unasked peer. The lookup ends
when the k closest peers it knows of have all answered (Kademlia's
termination rule), when a valid block is found, or when nobody is left to ask.

A dead peer would still hold its slot until its timeout (0.2 s at least, and
seconds for a peer whose estimate is old). So a request unanswered after the
much shorter :meth:`~aether.node.rtt.RttEstimator.prompt_for` *stalls*: it no
longer counts against α, the lookup asks the next peer, and a late reply is
still used (BitTorrent's DHT in libtorrent widens its lookups on a "short
timeout" the same way). The lookup waits for a stalled peer only where its
answer could change the result (see :meth:`Lookup._may_end`). At most 2α
requests are stalled at once, so a lookup never has more than 3α out.

Values returned by peers are checked (:func:`aether.node.values.check_value`)
before use; a peer returning a bad value is counted as a liar and its answer
ignored. For records the lookup keeps going and returns the highest sequence
number seen, with the peers that still hold older ones, so callers can repair
them. For shared keys it merges the pages of entries the holders return,
keeping each author's newest, and either stops at the first holder
(``first_entries``, enough for a pattern's manifest) or goes on to the k
closest (an index term, where each holder may know other authors).

A few malicious peers near a key could still hide its value: a lookup ends at
the k closest peers that *answer*, and peers that answer with no value and
with contacts only among themselves (an eclipse) become those k. So a lookup
may run on d *disjoint paths* (S/Kademlia, Baumgart and Mies 2007): the seeds
are dealt out among the paths, each path keeps its own α requests, its own
stalls and refills and ends at its own k closest answers, and no peer is asked
by two paths. A colluder asked by one path is spent for the others, which must
go past it to peers it cannot answer for. :func:`find_value` decides when a
lookup pays for d paths.

Nobody has to prove a node ID to route (a stock node cannot), so a peer may
answer with any number of invented IDs next to the key, all at its own
address, and they would all "answer" when asked. In a lookup one endpoint
(address and port) therefore stands for one ID at a time: of two claims, the
ID closer to the key while the endpoint has not been asked, else the first (our
own ID for the address we listen on); the other claim is dropped and counted in
:attr:`LookupResult.same_address`. And no
more of the k closest candidates share a subnet than the routing table lets
share a bucket (``contacts_per_subnet_bucket``, with loopback exempt unless
``restrict_loopback``: :mod:`aether.node.addresses`) while there are others to
take their places, so many ports of one host cannot fill them either. Neither
costs a message.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kademlia.node import Node

from aether.node.addresses import endpoint_of, subnet_of
from aether.node.values import Block, Entries, Entry, Record, ValueRejected, check_found, merge_entries, newest_first

if TYPE_CHECKING:
    from aether.node.protocol import AetherProtocol, FindReply

_NEW, _ASKED, _STALLED, _ANSWERED, _FAILED = range(5)
MAX_REFILLS = 3


@dataclass
class LookupResult:
    target: bytes
    closest: list[Node] = field(default_factory=list)
    """The k closest peers that answered, nearest first."""
    value: Block | Record | None = None
    holders: list[Node] = field(default_factory=list)
    """Peers that returned the chosen value."""
    stale: list[Node] = field(default_factory=list)
    """Peers that returned an older record than the chosen one."""
    without_value: list[Node] = field(default_factory=list)
    """Peers that answered without a value (nearest first)."""
    entries: list[Entry] = field(default_factory=list)
    """Entries of a shared key, each author's newest per name, newest first."""
    candidates: list[Node] = field(default_factory=list)
    """The k closest peers known when the lookup ended, asked or not, nearest first
    (a lookup that stops at its first holder has asked only a few of them)."""
    beyond: list[Node] = field(default_factory=list)
    """Peers past the k closest that the lookup met, nearest first (a subnet's peers past its
    share last): where a replica goes when one of the k closest refuses it (its quota is full)."""
    more: list[tuple[Node, int]] = field(default_factory=list)
    """Holders that have more entries than one page, with where their next page starts."""
    messages: int = 0
    failures: int = 0
    stalls: int = 0
    """Requests that went unanswered past the prompt time, so the lookup asked further without waiting."""
    rejected: int = 0
    hops: int = 0
    seconds: float = 0.0
    paths: int = 1
    """Disjoint paths of the last lookup that made this result (1: a plain lookup)."""
    same_address: int = 0
    """Contacts dropped because their endpoint already stood for another ID in this lookup (or is our own)."""

    def add_costs(self, earlier: LookupResult) -> None:
        """Count an earlier lookup's requests and time in this one's (a lookup that was retried)."""
        self.messages += earlier.messages
        self.failures += earlier.failures
        self.stalls += earlier.stalls
        self.rejected += earlier.rejected
        self.same_address += earlier.same_address
        self.seconds += earlier.seconds


@dataclass
class _Entry:
    node: Node
    distance: int
    depth: int
    subnet: str | None = None
    """The /24 or /48 the peer's address is in, counted against the subnet cap; None when exempt."""
    state: int = _NEW
    prompt: asyncio.TimerHandle | None = None
    path: int = -1
    """The path that asked this peer (-1: none yet); no other path may ask it."""


def _distance(entry: _Entry) -> int:
    return entry.distance


class _Path:
    """One path's share of a lookup: the peers it has heard of, its requests out, and whether it has ended."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.known: set[bytes] = set()
        self.in_flight = 0
        self.stalled = 0
        self.refills = 0
        self.done = False


def deal_seeds(seeds: list[Node], target: bytes, paths: int) -> list[list[Node]]:
    """The seeds dealt out among ``paths`` paths by distance to ``target``, nearest first: each starts as near.

    Path i takes the i-th, (i+d)-th, ... nearest seed, so no path starts from
    only the far ones and no seed is given to two paths.
    """
    target_long = int.from_bytes(target, "big")
    unique = list({node.id: node for node in seeds}.values())
    unique.sort(key=lambda node: node.long_id ^ target_long)
    return [unique[i::paths] for i in range(paths)]


class Lookup:
    """One iterative lookup of ``target``; on ``paths`` > 1, that many disjoint paths with one result.

    The seeds are dealt out among the paths (:func:`deal_seeds`); the paths
    share the table of peers met and the reply handling, and each keeps its own
    requests in flight (:class:`_Path`). A block found by any path ends them all.
    """

    def __init__(
        self,
        protocol: AetherProtocol,
        target: bytes,
        seeds: list[Node],
        *,
        k: int,
        alpha: int,
        want_value: bool,
        first_entries: bool = False,
        paths: int = 1,
    ):
        self.protocol = protocol
        self.target = target
        self.target_long = int.from_bytes(target, "big")
        self.k = k
        self.alpha = alpha
        self.want_value = want_value
        self.first_entries = first_entries
        self._entries: dict[tuple[bytes, bytes], Entry] = {}
        self.entries: dict[bytes, _Entry] = {}
        self._nearest: list[_Entry] = []
        """Every entry, nearest to the target first."""
        self.own_id = protocol.source_node.id
        router = protocol.router
        self.per_subnet: int = router.per_bucket
        self.restrict_loopback: bool = router.restrict_loopback
        self.endpoints: dict[tuple[str, int], bytes] = {}
        """The one ID each endpoint stands for in this lookup: ours for our own, else the first met."""
        sockname = protocol.transport.get_extra_info("sockname") if protocol.transport is not None else None
        if sockname:
            self.endpoints[endpoint_of(sockname[0], sockname[1])] = self.own_id
        self.result = LookupResult(target, paths=paths)
        self._records: list[tuple[Record, Node]] = []
        self.paths = [_Path(i) for i in range(paths)]
        for path, dealt in zip(self.paths, deal_seeds(seeds, target, paths)):
            for node in dealt:
                self._add(node, 1, path)

    def _add(self, node: Node, depth: int, path: _Path) -> None:
        if node.id == self.own_id:
            return
        entry = self.entries.get(node.id)
        if entry is None:
            endpoint = endpoint_of(node.ip, node.port)
            holder = self.endpoints.setdefault(endpoint, node.id)
            if holder != node.id:
                self.result.same_address += 1  # one endpoint, one ID: one of the two claims is dropped
                if not self._displaces(holder, node, endpoint):
                    return
            subnet = subnet_of(endpoint[0], self.restrict_loopback)
            entry = self.entries[node.id] = _Entry(node, node.long_id ^ self.target_long, depth, subnet)
            bisect.insort(self._nearest, entry, key=_distance)
        elif depth < entry.depth and entry.state == _NEW:
            entry.depth = depth
        path.known.add(node.id)

    def _displaces(self, holder: bytes, node: Node, endpoint: tuple[str, int]) -> bool:
        """Whether ``node`` takes ``endpoint`` from the ID that claimed it first: only a closer ID, before anyone asked.

        Any peer can name someone else's endpoint under an ID far from the key;
        if the first claim always stood, that would push an honest node near the
        key out of the lookup when its real ID came later. The closer claim wins
        instead, so a far one hides nobody, while one endpoint still stands for one
        ID at a time. Once asked, the endpoint keeps the ID it was asked as.
        """
        held = self.entries.get(holder)
        if held is None or held.state != _NEW or node.long_id ^ self.target_long >= held.distance:
            return False
        del self.entries[holder]
        self._nearest.remove(held)
        for path in self.paths:
            path.known.discard(holder)
        self.endpoints[endpoint] = node.id
        return True

    def _live(self, path: _Path | None = None) -> Iterator[_Entry]:
        """Peers that may still answer in time (neither failed nor stalled), nearest first.

        For a path: those it has heard of and that no other path has asked.
        Read from the list kept in order: a reply asks only for the k nearest,
        which lie at its front, not for a sort of the hundreds of peers met.
        """
        for entry in self._nearest:
            if entry.state == _FAILED or entry.state == _STALLED:
                continue
            if path is None or (entry.path in (-1, path.number) and entry.node.id in path.known):
                yield entry

    def _closest_live(self, path: _Path | None = None) -> list[_Entry]:
        return self._capped(self._live(path), self.k)

    def _capped(self, entries: Iterable[_Entry], limit: int | None = None) -> list[_Entry]:
        """``entries`` (nearest first) with those past ``per_subnet`` of their subnet moved behind all others.

        A subnet's further peers are asked, and count among the k closest, only
        when there are not k others: many ports of one host next to a key do not
        crowd out the rest, and a network that is all one LAN still finds its k
        closest. When a nearer peer of the subnet fails, the next one moves up.
        """
        counts: dict[str, int] = {}
        kept: list[_Entry] = []
        extra: list[_Entry] = []
        for entry in entries:
            if limit is not None and len(kept) >= limit:
                break
            if entry.subnet is not None:
                count = counts[entry.subnet] = counts.get(entry.subnet, 0) + 1
                if count > self.per_subnet:
                    extra.append(entry)
                    continue
            kept.append(entry)
        kept.extend(extra)
        return kept if limit is None else kept[:limit]

    async def run(self) -> LookupResult:
        loop = asyncio.get_running_loop()
        started = loop.time()  # the loop's clock: the same as time.monotonic, or simulated time in the model
        self._done = loop.create_future()
        self._pump()
        await self._done
        for entry in self.entries.values():
            if entry.prompt is not None:
                entry.prompt.cancel()
        self._finish()
        self.result.seconds = loop.time() - started
        return self.result

    def _pump(self) -> None:
        """Keep each path's α requests in flight; end when every path has ended."""
        if self._done.done():
            return
        for path in self.paths:
            if not path.done:
                self._pump_path(path)
        if all(path.done for path in self.paths):
            self._done.set_result(None)

    def _pump_path(self, path: _Path) -> None:
        """Keep α requests in flight to the path's closest peers not yet asked; end it when none is left."""
        while True:
            for entry in self._closest_live(path):
                if path.in_flight >= self.alpha:
                    break
                if entry.state == _NEW:
                    self._ask(path, entry)
            if path.in_flight or not self._refill(path):
                break
        if path.in_flight == 0 and self._may_end(path):
            path.done = True

    def _ask(self, path: _Path, entry: _Entry) -> None:
        entry.state = _ASKED
        entry.path = path.number
        self.result.messages += 1
        path.in_flight += 1
        request = self.protocol.request_find(entry.node, self.target, self.want_value)
        request.add_done_callback(functools.partial(self._on_reply, entry))
        wait = self.protocol.rtt.prompt_for((entry.node.ip, entry.node.port))
        entry.prompt = asyncio.get_running_loop().call_later(wait, self._stall, entry)

    def _may_end(self, path: _Path) -> bool:
        """Whether a path, with nobody left to ask, may end without its stalled peers' answers.

        They are probably gone, but a slow one may hold the value, or be one of
        the k closest nodes, which a lookup for nodes (where to store) must
        find. So a lookup for a value waits for them until it has found one,
        and a lookup for nodes waits for those closer than the k-th that
        answered; only stalled peers that cannot change the result are left.
        """
        if not path.stalled:
            return True
        live = self._closest_live(path)
        if len(live) < self.k:
            return False
        if self.want_value:
            return bool(self._records or self._entries)
        farthest = max(e.distance for e in live)  # a subnet's extra peers may stand behind farther ones
        return not any(e.state == _STALLED and e.distance < farthest for e in self._reachable(path))

    def _stall(self, entry: _Entry) -> None:
        """No reply yet after the prompt time: free the slot and ask the next peer; a late reply still counts."""
        entry.prompt = None
        path = self.paths[entry.path]
        if self._done.done() or entry.state != _ASKED or path.stalled >= 2 * self.alpha:
            return
        entry.state = _STALLED
        path.in_flight -= 1
        path.stalled += 1
        self.result.stalls += 1
        self._pump()

    def _refill(self, path: _Path) -> bool:
        """When fewer than k peers answered and some failed or stalled, seed again from the routing table.

        The first seeds are the k closest contacts we had; after churn they may
        all be gone (and now dropped from the table), while contacts a little
        farther away, which know the holders, were never asked. Each refill
        takes the closest contacts no path has tried yet; a path refills at
        most MAX_REFILLS times.
        """
        states = [e.state for e in self._reachable(path)]
        if path.refills >= MAX_REFILLS or states.count(_ANSWERED) >= self.k or not ({_FAILED, _STALLED} & set(states)):
            return False
        path.refills += 1
        wanted = self.k + len(self.entries)
        fresh = [n for n in self.protocol.router.find_neighbors(Node(self.target), k=wanted) if n.id not in self.entries]
        for node in fresh[: self.k]:
            self._add(node, 1, path)
        return any(e.state == _NEW for e in self._live(path))

    def _reachable(self, path: _Path) -> list[_Entry]:
        """The peers this path has heard of that no other path has asked, in any state."""
        return [e for e in map(self.entries.__getitem__, path.known) if e.path in (-1, path.number)]

    def _on_reply(self, entry: _Entry, request: asyncio.Future) -> None:
        # Replies are handled in the future's callback, not in a task per
        # request: fewer trips through the event loop per hop.
        if entry.prompt is not None:
            entry.prompt.cancel()
            entry.prompt = None
        path = self.paths[entry.path]
        if entry.state == _STALLED:
            path.stalled -= 1
        else:
            path.in_flight -= 1
        try:
            reply = self.protocol.find_reply(entry.node, request.result())
            if self._done.done():
                return  # a straggler after the end: the routing table has learned from it, nothing more
            if self._handle(entry, reply):
                self._done.set_result(None)
            else:
                self._pump()
        except Exception as exc:  # a bug must fail the lookup, not leave it waiting forever
            if not self._done.done():
                self._done.set_exception(exc)
            else:
                raise

    def _handle(self, entry: _Entry, reply: FindReply) -> bool:
        """Fold one reply into the lookup; True when a valid block ends it."""
        if not reply.ok:
            entry.state = _FAILED
            self.result.failures += 1
            return False
        entry.state = _ANSWERED
        if reply.value is not None:
            try:
                checked = check_found(self.target, reply.value)
            except ValueRejected:
                self.result.rejected += 1
                entry.state = _FAILED  # a liar: neither trusted for the value nor counted among the closest
                return False
            if isinstance(checked, Block):
                self.result.value = checked
                self.result.holders.append(entry.node)
                self.result.hops = entry.depth
                return True
            if isinstance(checked, Entries):
                return self._merge(entry, checked)
            self._records.append((checked, entry.node))
            self.result.hops = max(self.result.hops, entry.depth)
            return False
        self.result.without_value.append(entry.node)
        path = self.paths[entry.path]
        for contact in reply.contacts:
            self._add(contact, entry.depth + 1, path)
        return False

    def _merge(self, entry: _Entry, page: Entries) -> bool:
        merge_entries(self._entries, page.entries)
        self.result.holders.append(entry.node)
        if page.next_offset is not None:
            self.result.more.append((entry.node, page.next_offset))
        self.result.hops = max(self.result.hops, entry.depth)
        return self.first_entries and bool(page.entries)

    def _finish(self) -> None:
        self.result.entries = newest_first(self._entries.values())
        by_distance = functools.partial(sorted, key=lambda e: e.distance)
        # The cap chooses which k; callers get them nearest first (replica_targets reads bands from the order).
        answered = by_distance(self._capped((e for e in self._nearest if e.state == _ANSWERED), self.k))
        self.result.closest = [e.node for e in answered]
        self.result.candidates = [e.node for e in by_distance(self._closest_live())]
        closest = {n.id for n in self.result.closest}
        self.result.beyond = [e.node for e in self._capped(self._live()) if e.node.id not in closest][: self.k]
        if not self.result.hops and answered:
            self.result.hops = max(e.depth for e in answered)
        self.result.without_value.sort(key=lambda n: n.long_id ^ self.target_long)
        if self._records:
            best = max(self._records, key=lambda rn: rn[0].record.seq)[0]
            self.result.value = best
            for checked, node in self._records:
                if checked.record.seq == best.record.seq and checked.data == best.data:
                    self.result.holders.append(node)
                else:
                    self.result.stale.append(node)


def seeds_for(protocol: AetherProtocol, key: bytes, k: int, paths: int = 1) -> list[Node]:
    """The contacts a lookup starts from: our k closest to ``key`` for each path.

    Each path gets k seeds of its own, not a d-th of k. Colluders near a key
    may fill our nearest few contacts; with seeds of its own a little farther
    out, a path that finds the colluders already asked by another path still
    has honest contacts of its own to go on with, some of which hold the value
    or know who does.
    """
    return protocol.router.find_neighbors(Node(key), k=k * paths)


async def find_value(
    run: Callable[[int], Awaitable[LookupResult]], *, paths: int, collect: bool = False,
) -> LookupResult:
    """Look a value up so that a few malicious peers near its key cannot hide it; ``run(d)`` runs one lookup on d paths.

    A lookup that stops at its first holder (a block, a pattern's manifest) runs
    as one path first: any copy it finds is checked against the key, so a value
    found is the value, and only a lookup that found nothing is tried again on
    ``paths`` disjoint paths. With nobody lying it costs what one lookup costs.
    A lookup that *collects* (a record, where the newest sequence number wins,
    or all the entries of an index term) cannot tell from its answer that it
    was eclipsed: colluders can replay an older record or hold back entries,
    and the answer still looks whole. So it runs on ``paths`` disjoint paths
    from the start, for about ``paths`` times the messages.
    """
    if collect or paths == 1:
        return await run(paths)
    first = await run(1)
    if first.value is not None or first.entries:
        return first
    result = await run(paths)
    result.add_costs(first)
    return result

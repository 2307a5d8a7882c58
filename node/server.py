"""A DHT node that stores only verifiable values, kept in the node's SQLite store.

:class:`AetherNode` subclasses ``kademlia.network.Server``: the routing table,
bootstrapping and the wire protocol are kademlia's, with the weak spots fixed
in :class:`~aether.node.protocol.AetherProtocol` and lookups done by
:class:`~aether.node.lookup.Lookup`. Its public API speaks in blocks and
signed records, the two kinds of value the network carries.

Maintenance follows the Kademlia paper, with every interval in
:class:`~aether.node.config.NodeConfig`: publishers republish their own values,
holders hand replicas to the nodes now closest to each key, quiet buckets are
refreshed, expired values are dropped, and the routing table is saved to the
home so that a restarted node rejoins without being told where.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import itertools
import logging
import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator

from kademlia.network import Server
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import RecordError, SignedRecord, create_record, decode_record, record_key
from aether.node.chunks import BLOCK_BYTES
from aether.node.config import NodeConfig
from aether.node.entries import MANIFEST_KIND, EntryError, manifest_blocks
from aether.node.lookup import Lookup, LookupResult, find_value, seeds_for
from aether.node.proofs import UNPROVEN, ProvingProtocol
from aether.node.protocol import AetherProtocol, error_reply
from aether.node.routing import ID_BITS
from aether.node.ratelimit import BUSY
from aether.node.values import (
    Block, Entries, Entry, Record, ValueRejected, block_key, bundle_fit, check_found, check_value, encode_bundle,
    merge_entries, newest_first,
)
from aether.storage.store import (
    BLOCK, KEY_LEN, RECORD, RESERVED_BYTES, Eviction, Placement, PutResult, Store, StoreError, StoredEntry, StoredValue,
    entry_charge, value_charge,
)

if TYPE_CHECKING:
    from aether.node.team_unlock import Answerer

log = logging.getLogger(__name__)


def next_seq(previous: int = 0) -> int:
    """A sequence number above ``previous`` and at least the time in milliseconds.

    Time-based numbers keep rising even when a node has lost its copy of what it
    published last, so a new version is never refused as older than its own past.
    """
    return max(previous + 1, int(time.time() * 1000))


def random_id_in(id_range: tuple[int, int]) -> bytes:
    """A random 160-bit ID inside a bucket's range (kademlia's top bound is 2**160, one past the last ID)."""
    low, high = id_range
    return random.randint(low, min(high, 2**160 - 1)).to_bytes(20, "big")


class _Closer:
    """Where no known contact is closer than this node to a key, as far as ID prefixes tell.

    A key that first differs from this node's ID at bit ``p`` has a closer
    contact whenever one agrees with the key on every bit from ``p`` up: such
    contacts fill one range of IDs, the "sibling" subtree at that bit. A full
    routing table has contacts in every sibling subtree but the deepest few, so
    the keys it leaves open are few and lie in a handful of key ranges, which a
    hand-off pass reads instead of everything held. (A contact outside the range
    may still be closer; the exact test follows for the places inside.)
    """

    def __init__(self, contact_ids: Iterable[int], own_id: int) -> None:
        self._ids = sorted(contact_ids)
        self._own = own_id

    def _empty(self, low: int, high: int) -> bool:
        i = bisect.bisect_left(self._ids, low)
        return i == len(self._ids) or self._ids[i] > high

    def surely_closer(self, place: int, node: int) -> int:
        """How many contacts are closer to ``place`` than ``node`` at least (those agreeing with it from the bit where ``node`` differs)."""
        differ = (place ^ node).bit_length() - 1
        if differ < 0:
            return 0
        low = (place >> differ) << differ
        return bisect.bisect_right(self._ids, low + (1 << differ) - 1) - bisect.bisect_left(self._ids, low)

    def reaches(self, low: int, node: int, ksize: int) -> bool:
        """Whether ``node`` may be among the ``ksize`` closest to some key of the open range starting at ``low``.

        Open ranges are whole subtrees. From outside one, ``node`` first differs
        from all of its keys at the same bit, so the contacts surely closer than
        it are the same for every key there; inside one, no contact is.
        """
        return self.surely_closer(low, node) < ksize

    def open_ranges(self) -> list[tuple[bytes, bytes]]:
        """Inclusive key ranges holding every key no contact is known to be closer to (our own ID included)."""
        own, spans = self._own, []
        for bit in range(ID_BITS):
            low = ((own >> (bit + 1)) << (bit + 1)) | ((((own >> bit) & 1) ^ 1) << bit)
            if self._empty(low, low + (1 << bit) - 1):
                spans.append((low, low + (1 << bit) - 1))
        # The deepest open siblings and our own ID make one subtree: one range, not many.
        depth = 0
        while depth < len(spans) and spans[depth][0] >> depth == (own >> depth) ^ 1:
            depth += 1
        base = (own >> depth) << depth
        merged = [(base, base + (1 << depth) - 1), *spans[depth:]]
        return [(low.to_bytes(KEY_LEN, "big"), high.to_bytes(KEY_LEN, "big")) for low, high in merged]


def _hand_off_ranges(
    own: int, others: list[int], newcomers: list[int], ksize: int
) -> tuple[_Closer, list[tuple[bytes, bytes]]]:
    """The contacts other than the newcomers, and the key ranges a hand-off to the newcomers must read.

    Of the ranges no other contact is closer to (:meth:`_Closer.open_ranges`),
    only those where some newcomer may be among the ``ksize`` closest. Whether
    there is any is told first from how many contacts share each prefix length
    with us, without sorting or range tests: for most newcomers, which are far
    from us, there is none, and a hand-off pass then costs one walk over the
    contacts.
    """
    if not _may_take_over(own, others, newcomers, ksize):
        return _Closer((), own), []
    closer = _Closer(others, own)
    reached = [
        (low, high) for low, high in closer.open_ranges()
        if any(closer.reaches(int.from_bytes(low, "big"), n, ksize) for n in newcomers)
    ]
    return closer, reached


def _may_take_over(own: int, others: list[int], newcomers: list[int], ksize: int) -> bool:
    """Whether a newcomer may be among the ``ksize`` closest to a key no other contact is closer to than we are.

    Such a key first differs from our ID at a bit ``s`` where no contact's ID
    first differs from ours, or nowhere (our own ID). For a newcomer first
    differing from us at bit ``d``, the contacts surely closer to the key
    (:meth:`_Closer.surely_closer`) are none when ``s >= d``, and exactly those
    first differing from us below ``d`` when ``s < d``.
    """
    differing = [0] * ID_BITS
    for contact in others:
        if contact != own:
            differing[(contact ^ own).bit_length() - 1] += 1
    for newcomer in newcomers:
        d = (newcomer ^ own).bit_length() - 1
        if d < 0 or sum(differing[:d]) < ksize or 0 in differing[d:]:
            return True
    return False


class QuotaExceeded(Exception):
    """Our own data does not fit the quota even with every replica and cached copy evicted."""

    def __init__(self, what: str, needed: int, node: AetherNode):
        usage = node.store.usage()
        self.needed = needed
        super().__init__(
            f"{what} needs {needed:,} bytes, but the quota of {node.config.quota_bytes:,} bytes "
            f"({node.budget:,} for data after the database's reserve) already holds {usage.pinned:,} bytes "
            f"of own and pinned data; raise the quota with `aether-node storage set SIZE` or unpin patterns"
        )


FULL = "full"
"""The error a STORE gets from a node with no room left: the value belongs on the next closest node."""
LIGHT = "light"
"""The error a STORE gets from a light client (a phone, a device on battery): it holds no replicas."""
REFUSED_ELSEWHERE = frozenset({FULL, LIGHT, BUSY, UNPROVEN})
"""Refusals that send the value on to the next closest node.

BUSY: we sent that node more than its limit; UNPROVEN: it did not prove its node ID (node/proofs.py)."""
LIGHT_MEMORY = 600.0
"""Seconds a peer that answered "light" is not offered replicas (it may be plugged in by then)."""
USED_REREAD = 10.0
"""Seconds a STORE receipt may report spare room from the running count before reading the store."""
MAX_OFFERS = 4096
"""Peers whose last STORE receipt (spare quota, uptime) is remembered."""
MAX_LIGHT_PEERS = 4096
"""Peers remembered as light clients; the oldest is forgotten first (it is offered a replica again, no harm)."""
OFFER_SCALE = (10**9, 24 * 3600)
"""Spare bytes and uptime seconds at which a peer counts as fully preferred for replicas."""
HAND_OFF_IN_FLIGHT = 32
"""STOREs a hand-off pass keeps in flight in all."""
HAND_OFF_PER_PEER = 8
"""STOREs a hand-off pass keeps in flight to one newcomer: 8 full blocks (~72 KiB with the kernel's overhead) fit a small receive buffer."""
KEY_FULL = "key-full"
"""The error for an entry older than all those a shared key already holds at its limit."""


@dataclass
class PutReport:
    """What a publish achieved: how many peers hold the value, who refused and why."""

    key: bytes
    stored: int = 0
    refused: Counter = field(default_factory=Counter)
    unreachable: int = 0
    lookup: LookupResult | None = None
    accepted: list[Node] = field(default_factory=list)
    """The nodes that acknowledged the STORE."""


class Spares:
    """The next closest peers for replicas refused elsewhere, widened once when they run out.

    A lookup for k meets only a few peers past the k closest (often one), too
    few when several of the closest are full or light; then one lookup for 2k
    finds more, once per placement, and only when a refusal needs it.
    """

    def __init__(self, owner: AetherNode, place: bytes, chosen: list[Node], rest: Iterator[Node]):
        self._owner, self._place, self._rest = owner, place, rest
        self._seen = {n.id for n in chosen}
        self._wider: asyncio.Future | None = None

    async def next(self) -> Node | None:
        """The next peer to offer the replica to, or None when there is none left."""
        while True:
            node = next(self._rest, None)
            if node is None:
                if self._wider is None:
                    self._wider = asyncio.ensure_future(self._widen())
                elif self._wider.done():
                    return None
                await asyncio.shield(self._wider)  # concurrent refusals share the one wider lookup
                continue
            if node.id not in self._seen:
                self._seen.add(node.id)
                return node

    async def _widen(self) -> None:
        owner = self._owner
        result = await owner.lookup(self._place, k=2 * owner.ksize)
        _, self._rest = owner.replica_targets(self._place, [], [*result.closest, *result.beyond])


def charge_of(checked: Block | Record | Entry) -> int:
    """What holding a checked value costs against the quota."""
    if isinstance(checked, Entry):
        record = checked.record
        return entry_charge(len(checked.key), len(record.author), len(record.name), len(checked.data))
    return value_charge(len(checked.key), len(checked.data))


class AetherNode(Server):
    protocol_class = ProvingProtocol

    def __init__(self, identity: Identity, store: Store, config: NodeConfig | None = None):
        self.config = config or NodeConfig()
        super().__init__(ksize=self.config.ksize, alpha=self.config.alpha, node_id=identity.node_id, storage=store)
        self.identity = identity
        self.store = store
        self.address: tuple[str, int] | None = None
        self.started_at: float | None = None
        self._started: float | None = None
        self._jobs: list[asyncio.Task] = []
        self._newcomers: dict[bytes, Node] = {}
        self._saved_contacts: set[tuple[bytes, str, int]] = set()
        self._used, self._used_read_at = store.used_bytes(), time.monotonic()
        self.light = False
        """A light client looks up, fetches and publishes, but holds no replicas and hands none off."""
        self._light_peers: OrderedDict[bytes, float] = OrderedDict()
        """Until when each peer that answered "light" is not offered replicas, latest last."""
        self._offers: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        """(spare bytes, uptime s) from each peer's last STORE receipt, most recent last."""
        self._hand_off_task: asyncio.Future | None = None

    @functools.cached_property
    def team_answerer(self) -> Answerer:
        """Answers team members' share requests (node/team_unlock.py); made at the first one."""
        from aether.node.team_unlock import Answerer

        return Answerer(self)

    # ------------------------------------------------------------- lifecycle
    def _create_protocol(self) -> AetherProtocol:
        return self.protocol_class(self)

    async def listen(self, port: int, interface: str = "127.0.0.1") -> None:
        """Open the UDP socket (port 0 picks a free one) and start maintenance."""
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            self._create_protocol, local_addr=(interface, port)
        )
        host, bound_port = self.transport.get_extra_info("sockname")[:2]
        self.address = (host, bound_port)
        self.started_at, self._started = time.time(), time.monotonic()
        self._start_jobs()
        log.info("node %s listening on %s:%d", self.node.id.hex(), host, bound_port)

    def stop(self) -> None:
        """Stop serving: maintenance cancelled, contacts saved, socket closed (the store stays open)."""
        for job in self._jobs:
            job.cancel()
        self._jobs.clear()
        if self.protocol is not None:
            self.save_contacts()
            self.protocol.close()
        if self.transport is not None:
            self.transport.close()

    def halt(self) -> None:
        """Stop at once, as a crashed process would: nothing saved, the socket dropped.

        Simulations use it for abrupt kills; peers see the node fall silent, as after ``kill -9``.
        """
        for job in self._jobs:
            job.cancel()
        self._jobs.clear()
        if self.protocol is not None:
            self.protocol.close()
        if self.transport is not None:
            self.transport.abort()

    async def bootstrap(self, addrs: list[tuple[str, int]]) -> list[Node]:
        """Join through known addresses: ping them, then look up our own ID."""
        replies = await asyncio.gather(*(self.bootstrap_node(tuple(a)) for a in addrs))
        seeds = [n for n in replies if n is not None]
        if not seeds:
            return []
        result = await self.lookup(self.node.id, seeds=seeds)
        if result.failures and len(self.protocol.contacts()) < self.ksize:
            # Requests went unanswered on a busy or lossy network: look again
            # from what we know now rather than start with a sparse table.
            result = await self.lookup(self.node.id)
        # As the Kademlia paper asks of a joining node: refresh every bucket
        # farther than our closest neighbour that is not full yet, so the table
        # covers the whole ID space and not just our neighbourhood.
        await asyncio.gather(*(self.lookup(target) for target in self._far_bucket_targets()))
        self.save_contacts()
        return result.closest

    def _far_bucket_targets(self) -> list[bytes]:
        own = self.node.long_id
        return [
            random_id_in(bucket.range) for bucket in self.protocol.router.buckets
            if not bucket.range[0] <= own <= bucket.range[1] and len(bucket) < self.ksize
        ]

    async def bootstrap_node(self, addr: tuple[str, int], attempts: int = 3) -> Node | None:
        """Ping a bootstrap address, a few times: one lost datagram must not leave us alone."""
        for _ in range(attempts):
            ok, node_id = await self.protocol.ping(addr, self.node.id)
            if ok:
                break
        if not ok or not isinstance(node_id, bytes) or len(node_id) != 20 or node_id == self.node.id:
            return None
        node = Node(node_id, addr[0], addr[1])
        self.protocol.welcome_if_new(node)
        return node

    async def rejoin(self) -> list[Node]:
        """Bootstrap from the contacts saved at the last run."""
        saved = self.store.load_contacts()
        return await self.bootstrap([(host, port) for _, host, port in saved])

    def save_contacts(self) -> None:
        """Write the routing table to the store, unless the same contacts were written last time.

        Compared as a set: every contact heard from moves within its bucket, so
        the table's order changes all the time while its members rarely do, and a
        rewrite of every row each minute is flash wear on a phone for nothing.
        """
        contacts = [(n.id, n.ip, n.port) for n in self.protocol.contacts()] if self.protocol else []
        current = set(contacts)
        if current and current != self._saved_contacts:
            self.store.save_contacts(contacts)
            self._saved_contacts = current

    # ------------------------------------------------------------- lookups
    async def lookup(
        self, key: bytes, *, want_value: bool = False, first_entries: bool = False, seeds: list[Node] | None = None,
        k: int | None = None, paths: int = 1,
    ) -> LookupResult:
        """The ``k`` (default: the node's k) peers closest to ``key`` that answer, and what they hold.

        On ``paths`` > 1 the lookup takes that many disjoint paths (node/lookup.py).
        """
        k = k or self.ksize
        if seeds is None:
            seeds = seeds_for(self.protocol, key, k, paths)
        return await Lookup(
            self.protocol, key, seeds, k=k, alpha=self.alpha, want_value=want_value,
            first_entries=first_entries, paths=paths,
        ).run()

    async def find_value(self, key: bytes, *, first_entries: bool = False, collect: bool = False) -> LookupResult:
        """A value lookup that a few colluding peers near ``key`` cannot blind (:func:`~aether.node.lookup.find_value`)."""
        return await find_value(
            lambda d: self.lookup(key, want_value=True, first_entries=first_entries, paths=d),
            paths=self.config.lookup_paths, collect=collect,
        )

    # ------------------------------------------------------------- blocks
    async def put_block(self, data: bytes) -> PutReport:
        """Store a block pinned here and on the k nodes closest to its key."""
        key = block_key(data)
        check_value(key, data)
        self.store.put(key, data, kind=BLOCK, role="own", pinned=True)
        return await self._replicate(key, data)

    async def pull_block(self, key: bytes, holders: list[Node]) -> tuple[bytes | None, list[Node]]:
        """A block from the first of ``holders`` that returns it intact, and the holders that lied.

        No lookup: the holders are the nodes closest to the block's pattern,
        which a single lookup has already found.
        """
        liars = []
        for node in holders:
            reply = await self.protocol.query(node, key, want_value=True)
            if not reply.ok or reply.value is None:
                continue
            if block_key(reply.value) == key:
                return reply.value, liars
            self.protocol.stats["tampered_blocks"] += 1
            liars.append(node)
        return None, liars

    async def get_block(self, key: bytes) -> bytes | None:
        """A block's bytes, checked against its key, from here or the network."""
        held = self.store.read(key)
        if held is not None:
            return held
        result = await self.find_value(key)
        if not isinstance(result.value, Block):
            return None
        data = result.value.data
        # The cached copy is written after the caller has its bytes, off the
        # fetch's critical path (a background task, so stopping cancels it).
        self.background(self._cache(key, data))
        if result.without_value:  # Kademlia's caching along the lookup path
            self.background(self.protocol.call_store(result.without_value[0], key, data))
        return data

    async def _cache(self, key: bytes, data: bytes) -> None:
        if self.store.contains(key) or self.make_room(value_charge(len(key), len(data)), role="cache"):
            self.store.put(key, data, kind=BLOCK, role="cache", expires=time.time() + self.config.cache_ttl)

    # ------------------------------------------------------------- records
    async def put_record(self, record: SignedRecord) -> PutReport:
        """Store a signed record here (pinned when it is ours) and on the k closest nodes."""
        data = record.encode()
        checked = check_value(record.key, data)
        own = record.author == self.identity.public.signing_public
        result = self.store.put(
            record.key, data, kind=RECORD, role="own" if own else "replica", pinned=own,
            seq=record.seq, expires=record.expires,
        )
        if result in (PutResult.REFUSED_OLDER, PutResult.REFUSED_CONFLICT):
            raise ValueRejected("older", f"a record with sequence number >= {record.seq} is already held")
        return await self._replicate(checked.key, data)

    async def publish_record(self, kind: str, name: bytes, payload: bytes, *, ttl: float | None = None) -> SignedRecord:
        """Sign ``payload`` under ``name`` with the next sequence number and publish it."""
        key = record_key(self.identity.public.signing_public, name)
        current = await self.get_record(key)
        seq = current.seq + 1 if current is not None else 1
        record = create_record(self.identity, kind, name, seq, payload, int(ttl or self.config.record_ttl))
        await self.put_record(record)
        return record

    async def get_record(self, key: bytes) -> SignedRecord | None:
        """The newest valid record under ``key``; peers holding older ones are updated."""
        result = await self.find_value(key, collect=True)
        best = result.value.record if isinstance(result.value, Record) else None
        held = self.store.read(key)
        if held is not None:
            local = check_value(key, held)
            if isinstance(local, Record) and (best is None or local.record.seq > best.seq):
                best = local.record
        if best is not None:
            data = best.encode()
            if self.store.contains(key) or self.make_room(value_charge(len(key), len(data)), role="cache"):
                self.store.put(key, data, kind=RECORD, role="cache", seq=best.seq, expires=best.expires)
            for node in result.stale + result.without_value[:1]:
                self.background(self.protocol.call_store(node, key, data))
        return best

    # ------------------------------------------------------------- entries (shared keys)
    def keep_entry(self, entry: Entry, *, role: str, pinned: bool = False) -> PutResult:
        """Hold an entry here; a manifest also ties its blocks to the pattern's key."""
        record = entry.record
        links: tuple[bytes, ...] = ()
        if record.kind == MANIFEST_KIND:
            try:
                links = manifest_blocks(record).blocks
            except EntryError:
                pass  # an unreadable manifest links nothing; its signature was still good
        return self.store.put_entry(
            entry.key, record.author, record.name, entry.data, seq=record.seq, expires=record.expires,
            role=role, pinned=pinned, limit=self.config.max_entries_per_key, links=links,
        )

    async def put_entry(self, record: SignedRecord, *, placement: LookupResult | None = None) -> PutReport:
        """Hold one of our entries here, pinned, and store it on the k nodes closest to its topic."""
        key = record.topic_key
        if key is None:
            raise ValueError("an entry's name must have a topic (topic#item)")
        data = record.encode()
        checked = check_value(key, data)
        assert isinstance(checked, Entry)
        outcome = self.keep_entry(checked, role="own", pinned=True)
        if outcome in (PutResult.REFUSED_OLDER, PutResult.REFUSED_CONFLICT):
            raise ValueRejected("older", f"an entry with sequence number >= {record.seq} is already held")
        if outcome is PutResult.REFUSED_FULL:
            raise ValueRejected(KEY_FULL, "this node holds its limit of newer entries under that key")
        if placement is None:
            return await self._replicate(key, data)
        return await self.store_on(placement.closest, key, data, placement.beyond)

    async def get_entries(self, key: bytes, *, first: bool = False, max_pages: int = 4) -> LookupResult:
        """Entries under a shared key from the network and this node, each author's newest per name.

        ``first`` stops at the first holder (a pattern's manifest: any holder will
        do); otherwise the lookup asks the k closest and merges what they know,
        reading further pages from the nearest holder that has more.
        """
        result = await self.find_value(key, first_entries=first, collect=not first)
        merged = {(e.record.author, e.record.name): e for e in result.entries}
        for node, offset in result.more[:1]:
            for _ in range(max_pages):
                reply = await self.protocol.call_find_page(node, key, offset)
                if not reply.ok or reply.value is None:
                    break
                try:
                    page = check_found(key, reply.value)
                except ValueRejected:
                    break
                if not isinstance(page, Entries):
                    break
                merge_entries(merged, page.entries)
                if page.next_offset is None or page.next_offset <= offset:
                    break
                offset = page.next_offset
        local = []
        for held in self.store.entries(key):
            try:
                checked = check_value(key, held.value)
            except ValueRejected:
                continue
            if isinstance(checked, Entry):
                local.append(checked)
        merge_entries(merged, local)
        # A key holds the newest max_entries_per_key; holders that have not yet
        # dropped older ones do not make it hold more.
        result.entries = newest_first(merged.values())[: self.config.max_entries_per_key]
        return result

    # ------------------------------------------------------------- serving peers
    def local_value(self, key: bytes, offset: int = 0) -> bytes | None:
        """What FIND_VALUE answers: a block or record, else a page of the entries under ``key``."""
        if offset == 0:
            value = self.store.read(key)
            if value is not None:
                return value
        page = self.store.entries(key, offset=offset, limit=self.config.max_entries_per_key + 1)
        if not page:
            return None
        data = [held.value for held in page]
        fit = bundle_fit(data)
        more = fit < len(data)
        return encode_bundle(data[:fit], offset + fit if more else None)

    def accept_store(self, key: Any, value: Any) -> Any:
        """A peer's STORE: keep it if it verifies and fits, else say why not.

        A disk that cannot take the write (full, or failing) is answered as a
        full quota: the storer then places the copy on the next closest node,
        where silence would have cost it a timeout and us our place in its table.
        """
        try:
            return self._accept_store(key, value)
        except StoreError as exc:
            self.protocol.stats["store_refused_disk"] += 1
            log.error("a peer's STORE not kept: %s", exc)
            return error_reply(FULL, "this node cannot write to its disk")

    def _accept_store(self, key: Any, value: Any) -> Any:
        try:
            checked = check_value(key, value)
        except ValueRejected as exc:
            self.protocol.stats[f"store_refused_{exc.reason}"] += 1
            return error_reply(exc.reason, str(exc))
        if self.light:
            self.protocol.stats["store_refused_light"] += 1
            return error_reply(LIGHT, "this node is a light client and holds no replicas")
        grows = charge_of(checked) - self._held_charge(checked)  # a newer version may be larger
        grows += self._blocks_to_come(checked)
        if grows > 0 and not self.make_room(grows, role="replica", place=self._place_of(key)):
            self.protocol.stats["store_refused_full"] += 1
            return error_reply(FULL, "this node's storage quota is full")
        now = time.time()
        if isinstance(checked, Entry):
            outcome = self.keep_entry(checked, role="replica")
            if outcome is PutResult.REFUSED_FULL:
                return error_reply(KEY_FULL, "this key holds its limit of newer entries")
            if outcome is PutResult.UNCHANGED:
                record = checked.record
                self.store.mark_entries_republished([(key, record.author, record.name)], now=now)
        elif isinstance(checked, Record):
            outcome = self.store.put(
                key, value, kind=RECORD, role="replica", seq=checked.record.seq, expires=checked.record.expires, now=now
            )
        else:
            outcome = self.store.put(key, value, kind=BLOCK, role="replica", expires=now + self.config.value_ttl, now=now)
        if outcome is PutResult.REFUSED_OLDER:
            return error_reply("older", "a newer record is held for this key")
        if outcome is PutResult.REFUSED_CONFLICT:
            return error_reply("conflict", "a different record with the same sequence number is held")
        if outcome is PutResult.UNCHANGED and not isinstance(checked, Entry):
            # Someone else re-replicated it (the store kept the later expiry):
            # our own hourly re-replication can skip it (Kademlia, section 2.5).
            self.store.mark_republished([key], now=now)
        return self.receipt()

    def receipt(self) -> dict[str, Any]:
        """A STORE's success reply: what room and uptime we offer, for the storer's next placements.

        A stock kademlia node reads any non-error reply as success. The running
        count of bytes used only grows between exact reads (expiry and
        eviction shrink the store behind it), so it is read again when stale.
        """
        now = time.monotonic()
        if now - self._used_read_at > USED_REREAD:
            self._used, self._used_read_at = self.store.used_bytes(), now
        uptime = 0 if self._started is None else now - self._started
        return {"stored": True, "spare": max(0, self.budget - self._used), "uptime": int(uptime)}

    # ------------------------------------------------------------- quota
    @property
    def budget(self) -> int:
        """Bytes the rows may be charged: the quota less the store's reserve (log, fixed pages)."""
        return max(0, self.config.quota_bytes - RESERVED_BYTES)

    def make_room(self, needed: int, *, role: str, place: bytes | None = None) -> bool:
        """Whether ``needed`` more bytes fit the quota, evicting what may go for them.

        ``role`` is what the bytes will be: our own data may push out any
        replica or cached copy; a peer's replica only replicas farther from us
        than its ``place`` (and cached copies); a cached copy only other cached
        copies.
        """
        if self._used + needed <= self.budget:
            self._used += needed  # a running count between exact reads
            return True
        self._used = self.store.used_bytes()
        if self._used + needed <= self.budget:
            self._used += needed
            return True
        keep = None if role == "own" or place is None else int.from_bytes(place, "big") ^ self.node.long_id
        eviction = self.store.make_room(
            needed, self.budget, near=self.node.id, keep_closer_than=keep, replicas=role != "cache"
        )
        self._used = self.store.used_bytes() + (needed if eviction.fits else 0)
        if eviction.freed:
            log.info("evicted %d cached copies and %d replicas (%d bytes) for %d bytes of %s data",
                     eviction.cached, eviction.replicas, eviction.freed, needed, role)
        return eviction.fits

    def reserve_own(self, what: str, needed: int) -> None:
        """Make room for ``needed`` bytes of our own data before writing any of it, or raise QuotaExceeded."""
        if not self.make_room(needed, role="own"):
            raise QuotaExceeded(what, needed, self)

    def set_quota(self, quota_bytes: int) -> Eviction:
        """Change the quota now; a lower one evicts down to it at once (own and pinned data stay)."""
        self.config = self.config.replace(quota_bytes=quota_bytes)
        eviction = self.store.make_room(0, self.budget, near=self.node.id)
        if not eviction.fits:
            # Own and pinned data alone are over the quota: every replica and cached copy goes.
            freed = self.store.make_room(0, self.store.usage().pinned, near=self.node.id)
            eviction = dataclasses.replace(freed, expired=freed.expired + eviction.expired, fits=False)
        self._used = self.store.used_bytes()
        return eviction

    def _blocks_to_come(self, checked: Block | Record | Entry) -> int:
        """For a manifest: what its blocks not held yet will cost. A holder takes a pattern whole or not at all.

        A node that kept a manifest without room for its blocks would answer
        fetches with a pattern it cannot serve; refusing the manifest sends the
        whole copy to the next closest node instead.
        """
        if not isinstance(checked, Entry) or checked.record.kind != MANIFEST_KIND:
            return 0
        try:
            manifest = manifest_blocks(checked.record)
        except EntryError:
            return 0
        missing = [k for k in manifest.blocks if not self.store.contains(k)]
        return len(missing) * value_charge(KEY_LEN, min(BLOCK_BYTES, manifest.size))

    def _held_charge(self, checked: Block | Record | Entry) -> int:
        """What the version of ``checked`` held here is charged against the quota (0 if none is held)."""
        if isinstance(checked, Entry):
            return self.store.held_size(checked.key, checked.record.author, checked.record.name)
        return self.store.held_size(checked.key)

    def _place_of(self, key: bytes) -> bytes:
        """The key a value lives near: its own, or its pattern's for a block already linked to one."""
        return self.store.group_of(key) or key

    def on_new_contact(self, node: Node) -> None:
        """Hand a newly seen node the values it is now among the closest to.

        New contacts are gathered for ``handoff_delay`` and handed off in one pass
        over what we hold: during a join or a burst of lookups a node meets many
        contacts at once, and one pass per contact would cost a neighbour query
        per held value each time.
        """
        if self.light or not self.store.has_values():
            return
        self._newcomers[node.id] = node
        if self._hand_off_task is None:
            self._hand_off_task = asyncio.ensure_future(self._hand_off_batch())
            self.protocol.adopt(self._hand_off_task)

    async def _hand_off_batch(self) -> None:
        await asyncio.sleep(self.config.handoff_delay)
        batch, self._newcomers, self._hand_off_task = self._newcomers, {}, None
        sends = asyncio.Semaphore(HAND_OFF_IN_FLIGHT)
        # Per newcomer too: a burst of full-size STOREs to one peer overflows its
        # socket's receive buffer (208 KiB by default on Linux, less on some
        # phones), and a hand-off the kernel drops is not sent again.
        per_peer: dict[bytes, asyncio.Semaphore] = {}

        async def send(node: Node, held: Placement) -> None:
            peer = per_peer.setdefault(node.id, asyncio.Semaphore(HAND_OFF_PER_PEER))
            async with peer, sends:
                # Read only now: at most HAND_OFF_IN_FLIGHT values are in memory at once.
                value = self._held_bytes(held)
                if value is not None:
                    await self.protocol.call_store(node, held.key, value)

        jobs = [send(node, held) for node, held in await self._hand_off_plan(list(batch.values()))]
        await asyncio.gather(*jobs)

    async def _hand_off_plan(self, newcomers: list[Node]) -> list[tuple[Node, Placement]]:
        """Which held values and entries go to which newcomers: one decision per place, not per item.

        Only places no other contact is known to be closer to are read
        (:class:`_Closer`), and of those only the ranges some newcomer can reach
        among the k closest: a newcomer far from us, as most are, costs no read
        at all. For the other places, that closer contact hands them over. A
        pattern's manifest and blocks share a place, so they share the decision.
        """
        ids = {n.id for n in newcomers}
        others = [c.long_id for c in self.protocol.contacts() if c.id not in ids]
        closer, reached = _hand_off_ranges(self.node.long_id, others, [n.long_id for n in newcomers], self.ksize)
        decided: dict[bytes, list[Node]] = {}
        plan: list[tuple[Node, Placement]] = []
        for i, held in enumerate(self.store.placements(reached)):
            targets = decided.get(held.place)
            if targets is None:
                # A newcomer with k contacts surely closer to the place is not among its k closest.
                place = int.from_bytes(held.place, "big")
                near = [n for n in newcomers if closer.surely_closer(place, n.long_id) < self.ksize]
                targets = decided[held.place] = self._hand_off_targets(near, held.place) if near else []
            plan.extend((node, held) for node in targets)
            if i % 1024 == 1023:
                await asyncio.sleep(0)  # a large store is read without holding up the node's replies
        return plan

    def _held_bytes(self, held: Placement) -> bytes | None:
        """The bytes of a held value or entry, or None if it was dropped since the plan was made."""
        if held.author is None:
            stored: StoredValue | StoredEntry | None = self.store.get(held.key, touch=False)
        else:
            stored = self.store.entry(held.key, held.author, held.name or b"")
        return None if stored is None else stored.value

    def _hand_off_targets(self, newcomers: list[Node], key: bytes) -> list[Node]:
        """The newcomers now among the k closest to ``key``, if we are the closest other holder."""
        target = Node(key)  # the key itself, not a hash of it
        now = time.monotonic()
        newcomers = [n for n in newcomers if self._light_peers.get(n.id, 0.0) <= now]
        ids = {n.id for n in newcomers}
        router = self.protocol.router
        # Cheap test first: for most keys we hold, another contact is closer than
        # we are, and that contact hands the value over, not us.
        nearest = [n for n in router.find_neighbors(target, k=1 + len(newcomers)) if n.id not in ids][:1]
        if nearest and self.node.distance_to(target) > nearest[0].distance_to(target):
            return []
        neighbors = [n for n in router.find_neighbors(target, k=self.ksize + len(newcomers)) if n.id not in ids]
        neighbors = neighbors[: self.ksize]
        if len(neighbors) < self.ksize:
            return newcomers
        farthest = neighbors[-1].distance_to(target)
        return [n for n in newcomers if n.distance_to(target) < farthest]

    def _placement(self, held: StoredValue | StoredEntry) -> bytes:
        """The key a held value lives near: a block listed by a held manifest lives near its pattern."""
        if isinstance(held, StoredValue) and held.kind == BLOCK:
            return self._place_of(held.key)
        return held.key

    # ------------------------------------------------------------- helpers
    async def _replicate(self, key: bytes, value: bytes) -> PutReport:
        """Look up the k nodes closest to ``key`` and store the value on them."""
        result = await self.lookup(key)
        report = await self.store_on(result.closest, key, value, result.beyond)
        report.lookup = result
        return report

    async def store_on(
        self, nodes: list[Node], key: bytes, value: bytes, spares: Iterable[Node] = (), *, place: bytes | None = None
    ) -> PutReport:
        """STORE one value on each of ``nodes`` at once, and count the outcomes.

        ``nodes`` and ``spares`` are the peers closest to ``place`` (the key the
        value lives near: its own by default), nearest first. A node that
        answers "full" or "light" is replaced by the next spare, so a refusal
        does not cost a replica.
        """
        report = PutReport(key)
        place = place or key
        nodes, rest = self.replica_targets(place, nodes, spares)
        spare = Spares(self, place, nodes, rest)

        async def store(node: Node | None) -> None:
            while node is not None:
                ok, body = await self.protocol.call_store(node, key, value)
                if not ok:
                    report.unreachable += 1
                    return
                reason = self.refusal(node, body)
                if reason is None:
                    report.stored += 1
                    report.accepted.append(node)
                    return
                report.refused[reason] += 1
                node = await spare.next() if reason in REFUSED_ELSEWHERE else None

        await asyncio.gather(*(store(n) for n in nodes))
        return report

    def replica_targets(
        self, key: bytes, nodes: list[Node], spares: Iterable[Node]
    ) -> tuple[list[Node], Iterator[Node]]:
        """Where ``len(nodes)`` replicas of ``key`` go, and the spares, nearest first, for refusals.

        ``nodes`` are the closest peers and ``spares`` the next ones, nearest
        first. Peers known to be light are left out. Among peers equally close
        to the key as the last one chosen (in the same distance band: the same
        highest bit of the XOR distance), those that offered more spare quota
        and longer uptime in their STORE receipts come first, so always-on
        desktops carry most replicas. A peer not heard from counts as the
        typical (median) peer of its band, so it is neither favoured nor shunned.
        """
        now = time.monotonic()
        usable = [n for n in [*nodes, *spares] if self._light_peers.get(n.id, 0.0) <= now]
        want = len(nodes)
        if want == 0:
            return [], iter(usable)
        if len(usable) <= want:
            return usable, iter(())
        target = int.from_bytes(key, "big")
        band = (usable[want - 1].long_id ^ target).bit_length()
        closer = [n for n in usable if (n.long_id ^ target).bit_length() < band]
        peers = [n for n in usable if (n.long_id ^ target).bit_length() == band]
        known = sorted(self._offer_score(self._offers[n.id]) for n in peers if n.id in self._offers)
        typical = known[len(known) // 2] if known else 0

        def score(node: Node) -> int:
            offer = self._offers.get(node.id)
            return typical if offer is None else self._offer_score(offer)

        peers.sort(key=score, reverse=True)  # stable: equal scores stay nearest first
        chosen = closer + peers[: want - len(closer)]
        picked = {n.id for n in chosen}
        return chosen, iter([n for n in usable if n.id not in picked])

    @staticmethod
    def _offer_score(offer: tuple[int, int]) -> int:
        """0 to 20: tenths of OFFER_SCALE's spare bytes and uptime.

        Coarse on purpose: peers whose offers differ a little keep their order by distance.
        """
        return sum(min(value, scale) * 10 // scale for value, scale in zip(offer, OFFER_SCALE))

    def refusal(self, node: Node, body: Any) -> str | None:
        """Why a STORE reply refused the value (None if it did not).

        A light peer is remembered, and so is what a receipt offers.
        """
        if not isinstance(body, dict):
            return None
        if "error" not in body:
            spare, uptime = body.get("spare"), body.get("uptime")
            if type(spare) is int and type(uptime) is int and spare >= 0 and uptime >= 0:
                self._remember_offer(node.id, spare, uptime)
            return None
        reason = str(body.get("error"))
        if reason == LIGHT:
            self._light_peers[node.id] = time.monotonic() + LIGHT_MEMORY
            self._light_peers.move_to_end(node.id)
            while len(self._light_peers) > MAX_LIGHT_PEERS:
                self._light_peers.popitem(last=False)
        elif reason == FULL:
            self._remember_offer(node.id, 0, self._offers.get(node.id, (0, 0))[1])
        return reason

    def _remember_offer(self, node_id: bytes, spare: int, uptime: int) -> None:
        self._offers[node_id] = (spare, uptime)
        self._offers.move_to_end(node_id)
        while len(self._offers) > MAX_OFFERS:
            self._offers.popitem(last=False)

    @property
    def busy(self) -> bool:
        """Whether background work (hand-offs, caching, repairs) is pending or running."""
        return bool(self._newcomers) or self._hand_off_task is not None or bool(self.protocol and self.protocol.pending_tasks)

    def background(self, coro: Awaitable) -> None:
        """Run work off the caller's path; stopping the node cancels it."""
        self.protocol.adopt(asyncio.ensure_future(coro))

    # ------------------------------------------------------------- maintenance
    def _start_jobs(self) -> None:
        c = self.config
        schedule: list[tuple[float, Callable[[], Awaitable[None]]]] = [
            (c.refresh_interval, self.refresh_buckets),
            (c.republish_interval, self.republish_own),
            (c.replicate_interval, self.replicate_held),
            (c.expire_interval, self.drop_expired),
            (c.contacts_save_interval, self._save_contacts_job),
        ]
        self._jobs = [asyncio.ensure_future(self._every(interval, job)) for interval, job in schedule]

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        # Jitter keeps a thousand nodes started together from acting in lockstep.
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # a full or failing disk: said in one line, tried again next time
                log.error("maintenance job %s failed: %s", job.__name__, exc)
            except Exception:
                log.exception("maintenance job %s failed", job.__name__)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    async def refresh_buckets(self) -> None:
        quiet_since = time.monotonic() - self.config.refresh_interval
        targets = [self.node.id]
        if self.light:
            # On battery only our own neighbourhood is kept fresh (what our own lookups
            # start from); far buckets wait until the device serves fully again.
            await self.lookup(self.node.id)
            return
        for bucket in self.protocol.router.buckets:
            if bucket.last_updated < quiet_since:
                targets.append(random_id_in(bucket.range))
        for target in targets:
            await self.lookup(target)

    async def republish_own(self) -> None:
        """Store our own values and entries on the k closest nodes again; re-sign those near expiry.

        Pinned copies of others' values (a user's pins) are republished as well,
        so that what a user keeps stays findable while its signatures are valid.
        """
        now = time.time()
        renew_before = 2 * self.config.republish_interval
        items: list[tuple[StoredValue | StoredEntry, bytes]] = []
        for entry in self.store.iter_entries():
            if entry.role != "own" and not entry.pinned:
                continue
            value = entry.value
            if entry.role == "own" and entry.expires - now < renew_before:
                value = self._renewed_entry(entry) or value
            items.append((entry, value))
        for held in list(self.store.iter_values()):
            if held.role != "own" and not held.pinned:
                continue
            value = held.value
            if held.kind == RECORD and held.expires is not None and held.expires - now < renew_before:
                value = self._renewed(held) or value
            items.append((held, value))
        await self._store_near(items, now)
        self.store.meta_set("last_republish", str(now))

    async def _store_near(self, items: list[tuple[StoredValue | StoredEntry, bytes]], now: float) -> None:
        """Store each item on the k nodes closest to where it lives: one lookup per place.

        A pattern's manifest and all its blocks live near the pattern's key, so
        republishing a 171-block pattern costs one lookup, not 172.
        """
        by_place: dict[bytes, list[tuple[StoredValue | StoredEntry, bytes]]] = {}
        for held, value in items:
            by_place.setdefault(self._placement(held), []).append((held, value))
        for place, group in by_place.items():
            result = await self.lookup(place)
            for held, value in group:
                await self.store_on(result.closest, held.key, value, result.beyond, place=place)
                if isinstance(held, StoredEntry):
                    self.store.mark_entries_republished([held.ident], now=now)
                else:
                    self.store.mark_republished([held.key], now=now)

    def _own_record(self, held: StoredValue | StoredEntry) -> SignedRecord | None:
        """The record this node signed that ``held`` carries, expired or not; None for anything else.

        Not ``check_value``: it refuses an expired record, and an own record past
        its expiry (after a week off, or a wall clock set forward) is exactly what
        must be re-signed. Its signature was checked when it was stored.
        """
        try:
            record = decode_record(held.value)
        except RecordError:
            return None
        return record if record.author == self.identity.public.signing_public else None

    def _renewed_entry(self, held: StoredEntry) -> bytes | None:
        """Our own entry close to (or past) expiry, re-signed with a higher sequence number."""
        old = self._own_record(held)
        if old is None or held.key != old.topic_key:
            return None
        new = create_record(
            self.identity, old.kind, old.name, next_seq(old.seq), old.payload, int(self.config.record_ttl)
        )
        self.keep_entry(Entry(held.key, new.encode(), new), role="own", pinned=True)
        return new.encode()

    def _renewed(self, held: StoredValue) -> bytes | None:
        """Our own record close to (or past) expiry, re-signed with the next sequence number."""
        old = self._own_record(held)
        if old is None or held.key != old.key:
            return None
        new = create_record(self.identity, old.kind, old.name, old.seq + 1, old.payload, int(self.config.record_ttl))
        data = new.encode()
        self.store.put(held.key, data, kind=RECORD, role="own", pinned=True, seq=new.seq, expires=new.expires)
        return data

    async def replicate_held(self) -> None:
        """Store each replica not re-stored by another holder within the interval on the k closest nodes.

        The time of the run is kept in the store, beside ``last_republish``, for ``status``.
        """
        if self.light:
            return  # deferred until the device serves fully again
        now = time.time()
        due: list[StoredValue | StoredEntry] = [
            *self.store.entries_due(self.config.replicate_interval, now=now, role="replica"),
            *self.store.due_for_republish(self.config.replicate_interval, now=now, role="replica"),
        ]
        await self._store_near([(held, held.value) for held in due], now)
        self.store.meta_set("last_replicate", str(now))

    async def drop_expired(self) -> None:
        """Drop expired replicas and cached copies; re-sign own records the wall clock has overtaken.

        The store never drops own records. The daily republish renews them days
        before they expire, but after a week off or a clock set forward they are
        past their expiry, unserved: they are re-signed and stored out now, not
        up to a day later.
        """
        expiry = self.store.earliest_own_expiry()
        if expiry is not None and expiry <= time.time() + self.config.expire_interval:
            log.info("own records past or near their expiry: re-signing them")
            await self.republish_own()
        dropped = self.store.drop_expired()
        if dropped:
            log.info("dropped %d expired values", dropped)

    async def _save_contacts_job(self) -> None:
        self.save_contacts()

    # The stock API stores arbitrary values under hashed keys; this network does not.
    async def get(self, key: Any) -> Any:
        raise NotImplementedError("use get_block(key) or get_record(key)")

    async def set(self, key: Any, value: Any) -> Any:
        raise NotImplementedError("use put_block(data) or put_record(record)")

    async def set_digest(self, dkey: Any, value: Any) -> Any:
        raise NotImplementedError("use put_block(data) or put_record(record)")

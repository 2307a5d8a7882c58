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
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from kademlia.network import Server
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import SignedRecord, create_record, record_key
from aether.node.config import NodeConfig
from aether.node.lookup import Lookup, LookupResult
from aether.node.protocol import AetherProtocol, error_reply
from aether.node.values import Block, Record, ValueRejected, block_key, check_value
from aether.storage.store import BLOCK, RECORD, PutResult, Store, StoredValue

log = logging.getLogger(__name__)


def random_id_in(id_range: tuple[int, int]) -> bytes:
    """A random 160-bit ID inside a bucket's range (kademlia's top bound is 2**160, one past the last ID)."""
    low, high = id_range
    return random.randint(low, min(high, 2**160 - 1)).to_bytes(20, "big")


@dataclass
class PutReport:
    """What a publish achieved: how many peers hold the value, who refused and why."""

    key: bytes
    stored: int = 0
    refused: Counter = field(default_factory=Counter)
    unreachable: int = 0
    lookup: LookupResult | None = None


class AetherNode(Server):
    protocol_class = AetherProtocol

    def __init__(self, identity: Identity, store: Store, config: NodeConfig | None = None):
        self.config = config or NodeConfig()
        super().__init__(ksize=self.config.ksize, alpha=self.config.alpha, node_id=identity.node_id, storage=store)
        self.identity = identity
        self.store = store
        self.address: tuple[str, int] | None = None
        self.started_at: float | None = None
        self._jobs: list[asyncio.Task] = []

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
        self.started_at = time.time()
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
        contacts = self.protocol.contacts() if self.protocol else []
        if contacts:
            self.store.save_contacts([(n.id, n.ip, n.port) for n in contacts])

    # ------------------------------------------------------------- lookups
    async def lookup(self, key: bytes, *, want_value: bool = False, seeds: list[Node] | None = None) -> LookupResult:
        if seeds is None:
            seeds = self.protocol.router.find_neighbors(Node(key), k=self.ksize)
        return await Lookup(self.protocol, key, seeds, k=self.ksize, alpha=self.alpha, want_value=want_value).run()

    # ------------------------------------------------------------- blocks
    async def put_block(self, data: bytes) -> PutReport:
        """Store a block pinned here and on the k nodes closest to its key."""
        key = block_key(data)
        check_value(key, data)
        self.store.put(key, data, kind=BLOCK, role="own", pinned=True)
        return await self._replicate(key, data)

    async def get_block(self, key: bytes) -> bytes | None:
        """A block's bytes, checked against its key, from here or the network."""
        held = self.store.read(key)
        if held is not None:
            return held
        result = await self.lookup(key, want_value=True)
        if not isinstance(result.value, Block):
            return None
        data = result.value.data
        # The cached copy is written after the caller has its bytes, off the
        # fetch's critical path (a background task, so stopping cancels it).
        self._background(self._cache(key, data))
        if result.without_value:  # Kademlia's caching along the lookup path
            self._background(self.protocol.call_store(result.without_value[0], key, data))
        return data

    async def _cache(self, key: bytes, data: bytes) -> None:
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
        result = await self.lookup(key, want_value=True)
        best = result.value.record if isinstance(result.value, Record) else None
        held = self.store.read(key)
        if held is not None:
            local = check_value(key, held)
            if isinstance(local, Record) and (best is None or local.record.seq > best.seq):
                best = local.record
        if best is not None:
            data = best.encode()
            self.store.put(key, data, kind=RECORD, role="cache", seq=best.seq, expires=best.expires)
            for node in result.stale + result.without_value[:1]:
                self._background(self.protocol.call_store(node, key, data))
        return best

    # ------------------------------------------------------------- serving peers
    def local_value(self, key: bytes) -> bytes | None:
        return self.store.read(key)

    def accept_store(self, key: Any, value: Any) -> Any:
        """A peer's STORE: keep it if it verifies and fits, else say why not."""
        try:
            checked = check_value(key, value)
        except ValueRejected as exc:
            self.protocol.stats[f"store_refused_{exc.reason}"] += 1
            return error_reply(exc.reason, str(exc))
        if not self.store.contains(key) and self.store.used_bytes() + len(value) > self.config.max_replica_bytes:
            return error_reply("full", "this node's storage for replicas is full")
        now = time.time()
        if isinstance(checked, Record):
            outcome = self.store.put(
                key, value, kind=RECORD, role="replica", seq=checked.record.seq, expires=checked.record.expires, now=now
            )
        else:
            outcome = self.store.put(key, value, kind=BLOCK, role="replica", expires=now + self.config.value_ttl, now=now)
        if outcome is PutResult.REFUSED_OLDER:
            return error_reply("older", "a newer record is held for this key")
        if outcome is PutResult.REFUSED_CONFLICT:
            return error_reply("conflict", "a different record with the same sequence number is held")
        if outcome is PutResult.UNCHANGED:
            # Someone else re-replicated it (the store kept the later expiry):
            # our own hourly re-replication can skip it (Kademlia, section 2.5).
            self.store.mark_republished([key], now=now)
        return True

    def on_new_contact(self, node: Node) -> None:
        """Hand a newly seen node the values it is now among the closest to."""
        if self.store.has_values():
            self._background(self._hand_off(node))

    async def _hand_off(self, node: Node) -> None:
        router = self.protocol.router
        for held in self.store.iter_values():
            target = Node(held.key)  # the key itself, not a hash of it
            neighbors = router.find_neighbors(target, exclude=node)
            if neighbors:
                farthest = neighbors[-1].distance_to(target)
                if len(neighbors) >= self.ksize and node.distance_to(target) >= farthest:
                    continue
                if self.node.distance_to(target) > neighbors[0].distance_to(target):
                    continue
            await self.protocol.call_store(node, held.key, held.value)

    # ------------------------------------------------------------- helpers
    async def _replicate(self, key: bytes, value: bytes) -> PutReport:
        result = await self.lookup(key)
        report = PutReport(key, lookup=result)
        replies = await asyncio.gather(*(self.protocol.call_store(n, key, value) for n in result.closest))
        for ok, body in replies:
            if not ok:
                report.unreachable += 1
            elif isinstance(body, dict) and "error" in body:
                report.refused[str(body.get("error"))] += 1
            else:
                report.stored += 1
        return report

    def _background(self, coro: Awaitable) -> None:
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
            except Exception:
                log.exception("maintenance job %s failed", job.__name__)
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    async def refresh_buckets(self) -> None:
        quiet_since = time.monotonic() - self.config.refresh_interval
        targets = [self.node.id]
        for bucket in self.protocol.router.buckets:
            if bucket.last_updated < quiet_since:
                targets.append(random_id_in(bucket.range))
        for target in targets:
            await self.lookup(target)

    async def republish_own(self) -> None:
        now = time.time()
        for held in list(self.store.iter_values(role="own")):
            value = held.value
            if held.kind == RECORD and held.expires is not None and held.expires - now < 2 * self.config.republish_interval:
                value = self._renewed(held) or value
            await self._replicate(held.key, value)
            self.store.mark_republished([held.key], now=now)
        self.store.meta_set("last_republish", str(now))

    def _renewed(self, held: StoredValue) -> bytes | None:
        """Our own record close to expiry, re-signed with the next sequence number."""
        checked = check_value(held.key, held.value)
        if not isinstance(checked, Record) or checked.record.author != self.identity.public.signing_public:
            return None
        old = checked.record
        new = create_record(self.identity, old.kind, old.name, old.seq + 1, old.payload, int(self.config.record_ttl))
        data = new.encode()
        self.store.put(held.key, data, kind=RECORD, role="own", pinned=True, seq=new.seq, expires=new.expires)
        return data

    async def replicate_held(self) -> None:
        now = time.time()
        for held in self.store.due_for_republish(self.config.replicate_interval, now=now, role="replica"):
            await self._replicate(held.key, held.value)
            self.store.mark_republished([held.key], now=now)

    async def drop_expired(self) -> None:
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

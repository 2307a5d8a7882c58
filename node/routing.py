"""The routing table: kademlia's k-buckets, with a neighbour query that is exact.

Stock ``find_neighbors`` walks buckets outward from the target's bucket but
gives up as soon as it meets empty buckets on one side, so once contacts have
been dropped it can answer with no contacts at all — and a publish then stores
nowhere. Ours walks outward in both directions, always taking the side whose
next bucket can come closer to the target (moving away from the target's
bucket, that bound never decreases: every ID there differs from the target at
a higher bit), and stops when neither side can beat the k-th contact found.

Two stock helpers that run for every datagram are made cheaper without
changing what they return: the bucket of an ID is found by bisection, not a
scan, and a full bucket's depth (its contacts' shared ID prefix) comes from
the XOR of its smallest and largest ID, not from 160-character bit strings.

Diversity (as S/Kademlia and libtorrent's ``restrict_routing_ips``): a new
contact is refused when its /24 (IPv4) or /48 (IPv6) already has
``per_bucket`` contacts in its bucket or ``per_table`` in the whole table,
replacement caches included (the stock bucket promotes a replacement without
asking us). One host or one hosting block can then not fill the table, nor
the bucket nearest a key, with IDs it generated. Loopback contacts are exempt
unless ``restrict_loopback`` is set (:mod:`aether.node.addresses`).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from itertools import chain
from typing import Any, Iterable

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable

from aether.node.addresses import subnet_of

ID_BITS = 160
GOOD_FOR = 15 * 60.0
"""Seconds a contact that spoke to us counts as alive without a ping (BEP 5's "good" node)."""


def bucket_depth(bucket: KBucket) -> int:
    """Length of the ID prefix all of a bucket's contacts share (stock ``KBucket.depth``).

    The common prefix of a set of numbers is that of its smallest and largest.
    """
    ids = [n.long_id for n in bucket.nodes.values()]
    if not ids:
        return 0
    return ID_BITS - (min(ids) ^ max(ids)).bit_length()


def _bound_right(bucket_range: tuple[int, int], target: int) -> int:
    """A lower bound on ``x ^ target`` for x in a bucket above the target's; never decreases further right."""
    return _top_bit(bucket_range[0] ^ target)


def _bound_left(bucket_range: tuple[int, int], target: int) -> int:
    """A lower bound on ``x ^ target`` for x in a bucket below the target's; never decreases further left."""
    return _top_bit(bucket_range[1] ^ target)


def _top_bit(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value else 0


def _members(bucket: KBucket) -> Iterable[Node]:
    """A bucket's contacts and its replacement cache (which the stock bucket promotes on removal)."""
    return chain(bucket.nodes.values(), bucket.replacement_nodes.values())


class AetherRoutingTable(RoutingTable):
    def __init__(self, protocol: Any, ksize: int, node: Node, *, per_bucket: int = 2, per_table: int = 8,
                 restrict_loopback: bool = False):
        super().__init__(protocol, ksize, node)
        self.per_bucket, self.per_table, self.restrict_loopback = per_bucket, per_table, restrict_loopback
        self.subnet_refusals = 0
        """New contacts refused because their subnet had its share of the table already."""

    def get_bucket_for(self, node: Node) -> int:
        """Index of the bucket whose range holds ``node`` (buckets only ever split, so ranges stay sorted)."""
        uppers = self._uppers()
        return min(bisect.bisect_right(uppers, node.long_id), len(uppers) - 1)

    def _uppers(self) -> list[int]:
        # A split replaces one bucket by two, so the count tells whether ranges changed.
        cached = getattr(self, "_upper_cache", None)
        if cached is None or cached[0] is not self.buckets or len(cached[1]) != len(self.buckets):
            cached = (self.buckets, [bucket.range[1] for bucket in self.buckets])
            self._upper_cache = cached
        return cached[1]

    def add_contact(self, node: Node) -> None:
        """Stock ``add_contact`` (Kademlia section 4.2 splitting), with the cheap depth."""
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if not self._diverse_with(node, bucket):
            self.subnet_refusals += 1
            return
        if bucket.add_node(node):
            return
        if bucket.has_in_range(self.node) or bucket_depth(bucket) % 5 != 0:
            self.split_bucket(index)
            self.add_contact(node)
        elif not self._heard_lately(bucket.head()):
            # The newcomer waits in the replacement cache; it takes the head's place if the ping fails.
            asyncio.ensure_future(self.protocol.call_ping(bucket.head()))

    def _heard_lately(self, contact: Node) -> bool:
        """Whether ``contact`` named itself to us within ``GOOD_FOR``: then it is alive, and a ping would tell nothing.

        Kademlia pings a full bucket's least recently seen contact for every new
        contact that would join it. In a busy network that is a ping for most
        requests a node receives from a stranger (a publish to 20 strangers costs
        20 of them); BEP 5 counts a node heard from within 15 minutes as good and
        does not ask it. Only traffic that names the ID counts (a request from the
        contact, a PING reply): a FIND or STORE reply names nobody, and an endpoint
        now answering under another ID must still get the ping that notices it.
        A wall clock set back makes the time look negative: not
        fresh, so the head is pinged as before.
        """
        seen = self.protocol.last_named(contact.id)
        return seen is not None and 0 <= time.time() - seen < GOOD_FOR

    def _diverse_with(self, node: Node, bucket: KBucket) -> bool:
        """Whether ``node`` may join ``bucket`` without its subnet passing its share of the bucket or table."""
        subnet = subnet_of(node.ip, self.restrict_loopback)
        if subnet is None or node.id in bucket.nodes or node.id in bucket.replacement_nodes:
            return True

        def same(n: Node) -> bool:
            return subnet_of(n.ip, self.restrict_loopback) == subnet

        if sum(map(same, _members(bucket))) >= self.per_bucket:
            return False
        return sum(map(same, chain.from_iterable(map(_members, self.buckets)))) < self.per_table

    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Node]:
        """The ``k`` contacts closest to ``node``, nearest first, leaving out ``node`` and ``exclude``'s address."""
        k = k or self.ksize
        target = node.long_id
        buckets = self.buckets
        start = self.get_bucket_for(node)
        buckets[start].touch_last_updated()  # as the stock query does: the bucket is in use
        left, right = start - 1, start + 1
        found = [(contact.long_id ^ target, contact) for contact in buckets[start].nodes.values()]
        wanted = k + 2  # the target itself and the excluded address may be among them
        kth = None
        while left >= 0 or right < len(buckets):
            if len(found) >= wanted:
                found.sort()  # distances are distinct: a table holds each ID once
                del found[wanted:]
                kth = found[-1][0]
            left_bound = _bound_left(buckets[left].range, target) if left >= 0 else None
            right_bound = _bound_right(buckets[right].range, target) if right < len(buckets) else None
            if right_bound is None or (left_bound is not None and left_bound <= right_bound):
                if kth is not None and left_bound > kth:
                    break
                found.extend((c.long_id ^ target, c) for c in buckets[left].nodes.values())
                left -= 1
            else:
                if kth is not None and right_bound > kth:
                    break
                found.extend((c.long_id ^ target, c) for c in buckets[right].nodes.values())
                right += 1
        found.sort()
        skip = (exclude.ip, exclude.port) if exclude is not None else None
        result = [c for _, c in found if c.id != node.id and (skip is None or (c.ip, c.port) != skip)]
        return result[:k]

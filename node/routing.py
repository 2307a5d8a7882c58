"""The routing table: kademlia's k-buckets, with a neighbour query that is exact.

Stock ``find_neighbors`` walks buckets outward from the target's bucket but
gives up as soon as it meets empty buckets on one side, so once contacts have
been dropped it can answer with no contacts at all — and a publish then stores
nowhere. Ours walks outward in both directions, always taking the side whose
next bucket can come closer to the target (moving away from the target's
bucket, that bound never decreases: every ID there differs from the target at
a higher bit), and stops when neither side can beat the k-th contact found.
"""

from __future__ import annotations

from kademlia.node import Node
from kademlia.routing import RoutingTable


def _bound_right(bucket_range: tuple[int, int], target: int) -> int:
    """A lower bound on ``x ^ target`` for x in a bucket above the target's; never decreases further right."""
    return _top_bit(bucket_range[0] ^ target)


def _bound_left(bucket_range: tuple[int, int], target: int) -> int:
    """A lower bound on ``x ^ target`` for x in a bucket below the target's; never decreases further left."""
    return _top_bit(bucket_range[1] ^ target)


def _top_bit(value: int) -> int:
    return 1 << (value.bit_length() - 1) if value else 0


class AetherRoutingTable(RoutingTable):
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

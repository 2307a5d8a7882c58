"""The routing table: kademlia's k-buckets, with an exact neighbour query.

Stock ``find_neighbors`` walks buckets outward from the target's bucket and
stops after k contacts, which can return farther contacts than the table
holds. Ours visits buckets in order of how close their range can come to the
target, so the answer is exact and most buckets are never opened.
"""

from __future__ import annotations

from operator import itemgetter

from kademlia.node import Node
from kademlia.routing import RoutingTable


class AetherRoutingTable(RoutingTable):
    def find_neighbors(self, node: Node, k: int | None = None, exclude: Node | None = None) -> list[Node]:
        """The ``k`` contacts closest to ``node``, nearest first, without ``node`` itself or ``exclude``'s address.

        Buckets are visited in order of the smallest XOR distance any ID in
        their range can have to the target, and the walk stops once no
        unvisited bucket can hold a contact closer than the k-th found.
        """
        k = k or self.ksize
        target = node.long_id
        order = sorted((_closest_possible(bucket.range, target), index) for index, bucket in enumerate(self.buckets))
        skip = (exclude.ip, exclude.port) if exclude is not None else None
        found: list[tuple[int, Node]] = []
        for bound, index in order:
            if len(found) >= k and bound > found[k - 1][0]:
                break
            for contact in self.buckets[index].nodes.values():
                if contact.id != node.id and (contact.ip, contact.port) != skip:
                    found.append((contact.long_id ^ target, contact))
            found.sort(key=itemgetter(0))
        return [contact for _, contact in found[:k]]


def _closest_possible(id_range: tuple[int, int], target: int) -> int:
    """A lower bound on ``x ^ target`` for x in the range: the bits above where low and high differ are fixed."""
    low, high = id_range
    free_bits = (low ^ high).bit_length()
    return ((low ^ target) >> free_bits) << free_bits

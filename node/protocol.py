"""The wire protocol of a node: kademlia's RPCs, made safe to face the network.

:class:`AetherProtocol` subclasses ``kademlia.protocol.KademliaProtocol`` and
keeps its RPC names, arguments and replies, so stock nodes interoperate. What
changes, each at its root:

* datagrams are decoded by :mod:`aether.node.wire` (C msgpack, bounded
  sizes); nothing a peer sends raises out of ``datagram_received``;
* every RPC waits for a timeout fitted to the peer's measured round trips
  (:mod:`aether.node.rtt`) instead of a fixed 5 s, and a reply is only accepted
  from the address the request went to (and a PING reply only if it names the
  ID asked);
* a contact leaves the routing table after several consecutive unanswered
  requests, not the first one, so a node survives packet loss and churn;
* STORE accepts only verifiable values (:mod:`aether.node.values`) and
  answers a refusal with an error reply;
* a new contact is handed the values it should hold using the key itself as
  the distance target (the stock code hashes the key a second time).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from aether.node import wire
from aether.node.ratelimit import BUSY, REFUSE, SERVE, RequestLimits
from aether.node.routing import AetherRoutingTable
from aether.node.rtt import RttEstimator
from aether.node.values import KEY_BYTES

if TYPE_CHECKING:
    from aether.node.server import AetherNode

log = logging.getLogger(__name__)

RPC_ARITY = {
    "ping": {1}, "stun": {0}, "store": {3, 4}, "find_node": {2}, "find_value": {2, 3}, "team_share": {2},
    "identify": {2},
}
"""Each RPC a peer may call, with the numbers of arguments it takes.

STORE's optional fourth argument and IDENTIFY (node id, nonce) prove the
sender's node ID (node/proofs.py); a stock node sends neither.

FIND_VALUE's optional third argument asks a holder of a shared key for the
page of entries starting at that offset; only aether nodes send it, and only
to holders that said they have more. TEAM_SHARE (node id, signed share request)
asks a team member's node for its share (node/team_unlock.py); a stock node
ignores it.
"""

MAX_REMEMBERED_TIMEOUTS = 1024
"""Timed-out requests remembered so that a late reply still teaches the RTT estimator."""

MAX_REMEMBERED_SEEN = 4096
"""Contacts whose last-heard time is kept for ``peers``; more than a routing table holds (160 buckets of k)."""

MAX_OUTSTANDING = 8192
"""Requests of this node awaiting a reply at once. Peers can make a node send requests (a new contact in a
full bucket costs a ping of its oldest), so a storm of them must not grow the table without end; past the
limit a request fails at once, unsent, as an unanswered one would. Far above what a node's own lookups,
stores and hand-offs keep in flight (a few hundred)."""


def error_reply(reason: str, message: str) -> dict[str, str]:
    """The reply to a refused request; stock nodes read any reply to STORE as success."""
    return {"error": reason, "message": message}


def is_node_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_BYTES


def parse_contact(item: Any) -> Node | None:
    """A ``[id, host, port]`` triple from a peer, or None if it is not a valid contact."""
    # Exact type checks (a bool is not a port); this runs for every contact a peer sends.
    if type(item) is not list or len(item) != 3:
        return None
    node_id, host, port = item
    if type(node_id) is not bytes or len(node_id) != KEY_BYTES or type(host) is not str or type(port) is not int:
        return None
    if not 0 < port < 65536 or len(host) > 64 or not _is_ip_address(host):
        return None
    return Node(node_id, host, port)


@functools.lru_cache(maxsize=4096)
def _is_ip_address(host: str) -> bool:
    # Cached: a joining node parses over a thousand contacts, mostly repeats.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class FindReply:
    ok: bool
    value: bytes | None = None
    contacts: list[Node] = field(default_factory=list)


def _remember(times: OrderedDict[bytes, float], node_id: bytes) -> None:
    """Note ``node_id`` at the current wall-clock time, keeping at most MAX_REMEMBERED_SEEN, oldest forgotten first."""
    times.pop(node_id, None)
    times[node_id] = time.time()
    while len(times) > MAX_REMEMBERED_SEEN:
        times.popitem(last=False)


class AetherProtocol(KademliaProtocol):
    def __init__(self, owner: AetherNode):
        super().__init__(owner.node, owner.store, owner.ksize)
        config = owner.config
        self.router = AetherRoutingTable(
            self, owner.ksize, owner.node, per_bucket=config.contacts_per_subnet_bucket,
            per_table=config.contacts_per_subnet, restrict_loopback=config.restrict_loopback,
        )
        self.owner = owner
        self.rtt = RttEstimator(
            initial=config.rpc_timeout_initial, minimum=config.rpc_timeout_min, maximum=config.rpc_timeout_max
        )
        self.stale_after = config.stale_after_failures
        self.stats: Counter[str] = Counter()
        self.limits = RequestLimits(config, clock=self._clock)
        self._failures: dict[bytes, tuple[int, float]] = {}
        """Per contact: unanswered requests in a row, and when the last was counted (loop clock)."""
        self._last_seen: OrderedDict[bytes, float] = OrderedDict()
        self._last_named: OrderedDict[bytes, float] = OrderedDict()
        """Per contact: when its endpoint last named its ID itself (a request, or a PING reply)."""
        self._timed_out: OrderedDict[bytes, tuple[tuple[str, int], float]] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._graced: set[bytes] = set()
        """Requests whose timeout fired late, during a stall of this node's loop, and were given more time."""

    # ----------------------------------------------------------- background tasks
    def adopt(self, task: asyncio.Future) -> None:
        """Keep a reference to a background task so it is neither lost nor leaked at stop."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    def _task_done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for future, handle, _, _ in list(self._outstanding.values()):
            handle.cancel()
            if not future.done():
                future.set_result((False, None))
        self._outstanding.clear()
        self._graced.clear()

    # ----------------------------------------------------------- datagrams in
    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            message = wire.decode(data)
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            log.debug("dropped datagram from %s: %s", addr, exc)
            return
        if message.kind == wire.RESPONSE:
            self._accept_response(message.msg_id, message.body, addr)
        else:
            self._serve(message, addr)

    def _serve(self, message: wire.Message, address: tuple) -> None:
        """Answer a request at once: every handler is synchronous, so nothing queues here.

        An exception must not leave this method: asyncio closes a datagram
        transport whose protocol raises, which would take the node offline.
        """
        name, args = message.body
        if len(args) not in RPC_ARITY.get(name, ()):
            self.stats["bad_request"] += 1
            log.debug("dropped request %r with %d args from %s", name, len(args), address)
            return
        self.stats[f"rpc_{name}"] += 1
        try:
            verdict = self.limits.admit(name, args, address)  # see aether.node.ratelimit
            if verdict == SERVE:
                result = getattr(self, f"rpc_{name}")(address, *args)
            elif verdict == REFUSE:
                self.stats["store_refused_busy"] += 1
                result = error_reply(BUSY, "this peer has stored more than its allowance here; try the next node")
            else:
                self.stats["rate_dropped"] += 1
                return
            self.transport.sendto(wire.encode_response(message.msg_id, result), address)
        except wire.WireError as exc:
            log.error("reply to %s not sent: %s", address, exc)
        except Exception:
            self.stats["handler_error"] += 1
            log.exception("serving %s from %s failed", name, address)

    def _accept_response(self, msg_id: bytes, data: Any, address: tuple) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is None:
            late = self._timed_out.pop(msg_id, None)
            if late is not None and tuple(address[:2]) == late[0]:
                # The peer answered after we gave up: a real round trip, and the
                # estimator must learn it or it will keep timing out too early.
                self.stats["late_reply"] += 1
                self.rtt.observe(late[0], self._clock() - late[1])
            else:
                self.stats["unexpected_reply"] += 1
            return
        future, handle, peer, sent_at = pending
        if tuple(address[:2]) != peer:
            self.stats["reply_from_wrong_address"] += 1
            return
        del self._outstanding[msg_id]
        handle.cancel()
        if msg_id in self._graced:
            self._graced.discard(msg_id)  # its round trip includes our stall: nothing to learn from it
        else:
            self.rtt.observe(peer, self._clock() - sent_at)
        if not future.done():
            future.set_result((True, data))

    def _timeout(self, msg_id: bytes) -> None:
        pending = self._outstanding.get(msg_id)
        if pending is None:
            return
        future, handle, peer, sent_at = pending
        loop = asyncio.get_running_loop()
        wait = handle.when() - sent_at
        if loop.time() - handle.when() > wait / 2 and msg_id not in self._graced:
            # The timer fired long after it was due: this node's own loop stalled (a long
            # disk write, a busy CPU), and the reply may be waiting in the socket. The
            # peer gets its own time to answer once more, counted from now, before its
            # silence is held against it.
            self._graced.add(msg_id)
            self.stats["timeouts_graced"] += 1
            self._outstanding[msg_id] = (future, loop.call_later(wait, self._timeout, msg_id), peer, sent_at)
            return
        del self._outstanding[msg_id]
        self._graced.discard(msg_id)
        self.stats["timeouts"] += 1
        self.rtt.backoff(peer, loop.time())
        self._timed_out[msg_id] = (peer, sent_at)
        while len(self._timed_out) > MAX_REMEMBERED_TIMEOUTS:
            self._timed_out.popitem(last=False)
        if not future.done():
            future.set_result((False, None))

    @staticmethod
    def _clock() -> float:
        """The event loop's clock, which times requests out: time.monotonic on a real loop, simulated in the model."""
        return asyncio.get_running_loop().time()

    # ----------------------------------------------------------- calls out
    def _call(self, address: tuple, name: str, *args: Any) -> asyncio.Future:
        """Send one request; the future resolves to ``(True, reply)`` or ``(False, None)``."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        peer = (str(address[0]), int(address[1]))
        if len(self._outstanding) >= MAX_OUTSTANDING:
            self.stats["requests_over_limit"] += 1
            future.set_result((False, None))
            return future
        msg_id = os.urandom(wire.MSG_ID_BYTES)
        datagram = wire.encode_request(msg_id, name, args)
        handle = loop.call_later(self.rtt.timeout_for(peer), self._timeout, msg_id)
        self._outstanding[msg_id] = (future, handle, peer, loop.time())
        self.stats["requests_sent"] += 1
        if self.transport is None or self.transport.is_closing():
            self._timeout(msg_id)
            handle.cancel()
        else:
            self.transport.sendto(datagram, peer)
        return future

    # Explicit stubs replace rpcudp's __getattr__ magic; stock code calling
    # ``protocol.ping(address, node_id)`` reaches these.
    def ping(self, address: tuple, nodeid: bytes) -> asyncio.Future:
        return self._call(address, "ping", nodeid)

    def stun(self, address: tuple) -> asyncio.Future:
        return self._call(address, "stun")

    def store(self, address: tuple, nodeid: bytes, key: bytes, value: bytes) -> asyncio.Future:
        return self._call(address, "store", nodeid, key, value)

    def find_node(self, address: tuple, nodeid: bytes, key: bytes) -> asyncio.Future:
        return self._call(address, "find_node", nodeid, key)

    def find_value(self, address: tuple, nodeid: bytes, key: bytes, offset: int | None = None) -> asyncio.Future:
        if offset is None:
            return self._call(address, "find_value", nodeid, key)
        return self._call(address, "find_value", nodeid, key, offset)

    async def call_team_share(self, address: tuple, request: bytes) -> tuple[bool, Any]:
        """Send a signed share request to a member's node; ``(True, reply)`` or ``(False, None)`` on no answer."""
        return await self._call(address, "team_share", self.source_node.id, request)

    async def call_find_page(self, node: Node, key: bytes, offset: int) -> FindReply:
        """A further page of a shared key's entries from a holder that has more."""
        result = await self.find_value((node.ip, node.port), self.source_node.id, key, offset)
        return self.find_reply(node, result)

    def request_find(self, node: Node, target: bytes, want_value: bool) -> asyncio.Future:
        """Send FIND_VALUE or FIND_NODE; read the outcome with :meth:`find_reply`."""
        method = self.find_value if want_value else self.find_node
        return method((node.ip, node.port), self.source_node.id, target)

    def find_reply(self, node: Node, result: tuple[bool, Any]) -> FindReply:
        """Account for the outcome of a find request and parse what the peer said."""
        ok, body = self.handle_call_response(result, node)
        if not ok:
            return FindReply(False)
        if isinstance(body, dict):
            value = body.get("value")
            return FindReply(True, value=value if isinstance(value, bytes) else None)
        contacts = []
        if isinstance(body, list):
            for item in body[: self.router.ksize]:
                contact = parse_contact(item)
                if contact is not None and contact.id != self.source_node.id:
                    contacts.append(contact)
        return FindReply(True, contacts=contacts)

    async def query(self, node: Node, target: bytes, want_value: bool) -> FindReply:
        """FIND_VALUE or FIND_NODE to one peer, with its reply checked and parsed."""
        return self.find_reply(node, await self.request_find(node, target, want_value))

    async def call_ping(self, node_to_ask: Node) -> tuple[bool, Any]:
        """PING a contact; a reply naming another ID than the one asked counts as no reply.

        PING's reply is the one in kademlia's framing that names its sender
        (FIND_NODE, FIND_VALUE and STORE replies carry no ID, only the address
        they come from, which :meth:`_accept_response` checks). Whoever answers
        at the address under another ID is not the contact we hold: a node
        restarted with a new ID, or one of several IDs a peer invented for one
        address. The contact fails and, after ``stale_after`` such pings, leaves
        the table.
        """
        result = await self.ping((node_to_ask.ip, node_to_ask.port), self.source_node.id)
        if result[0] and result[1] != node_to_ask.id:
            self.stats["ping_from_other_id"] += 1
            result = (False, None)
        if result[0]:
            _remember(self._last_named, node_to_ask.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> tuple[bool, Any]:
        result = await self.store((node_to_ask.ip, node_to_ask.port), self.source_node.id, key, value)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        result = await self.find_node((node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        result = await self.find_value((node_to_ask.ip, node_to_ask.port), self.source_node.id, node_to_find.id)
        return self.handle_call_response(result, node_to_ask)

    # ----------------------------------------------------------- routing table
    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        """Count failures per contact; drop it only after ``stale_after`` in a row."""
        if result[0]:
            self._failures.pop(node.id, None)
            self.welcome_if_new(node)
            return result
        if self.router.is_new_node(node):
            return result  # not in the table: nothing to count
        failures, last = self._failures.get(node.id, (0, float("-inf")))
        now = self._clock()
        if now - last < self.rtt.timeout_for((node.ip, node.port)) / 2:
            # Requests that were out at once and timed out together are one silence, not
            # several: when this node's own loop stalls (a long disk write, a busy CPU),
            # every request in flight times out at the same moment, and counting each
            # would empty the routing table of peers that are all alive.
            return result
        failures += 1
        if failures >= self.stale_after:
            log.info("%s failed %d requests in a row; removing it", node, failures)
            self._failures.pop(node.id, None)
            self.router.remove_contact(node)
        else:
            self._failures[node.id] = (failures, now)
        return result

    def welcome_if_new(self, node: Node) -> None:
        if node.id == self.source_node.id:
            return
        if not self.router.is_new_node(node):
            self._heard_from(node)
            return
        self.router.add_contact(node)
        if not self.router.is_new_node(node):
            self._seen(node)
            self.owner.on_new_contact(node)

    def _heard_from(self, node: Node) -> None:
        """A known contact spoke: move it to its bucket's tail; follow a port change on the same host.

        A node restarted on a new port keeps its ID, and its peers should use the
        new port at once rather than after the old one has failed repeatedly. A
        different host claiming a known ID is not believed: the old address stays
        until it goes stale.
        """
        bucket = self.router.buckets[self.router.get_bucket_for(node)]
        known = bucket[node.id]
        if known is None or known.ip != node.ip:
            return
        if known.port != node.port:
            self._failures.pop(node.id, None)
            bucket.add_node(node)
        else:
            bucket.add_node(known)
        self._seen(node)

    def _seen(self, node: Node) -> None:
        _remember(self._last_seen, node.id)

    def last_named(self, node_id: bytes) -> float | None:
        """When the contact's endpoint last sent its ID itself, as a Unix time; None if never.

        FIND_NODE, FIND_VALUE and STORE replies name nobody: an endpoint that now
        answers under another ID (a restart with a new one) would keep the old ID
        looking alive. Only a request it sent, or a PING reply naming the ID,
        counts here; the routing table spares a full bucket's head its ping on this
        time alone (node/routing.py).
        """
        return self._last_named.get(node_id)

    def last_seen(self, node_id: bytes) -> float | None:
        """When a contact last spoke to us (a request or a reply), as a Unix time; None if unknown.

        Kademlia keeps this per bucket only; ``peers`` shows it per contact so a
        user can see which peers are alive.
        """
        return self._last_seen.get(node_id)

    def failures(self, node_id: bytes) -> int:
        """Requests to this contact left unanswered in a row (it is dropped at ``stale_after``)."""
        return self._failures.get(node_id, (0, 0.0))[0]

    def contacts(self) -> list[Node]:
        return [n for bucket in self.router.buckets for n in bucket.get_nodes()]

    # ----------------------------------------------------------- requests in
    def _sender(self, sender: tuple, nodeid: Any) -> Node | None:
        if not is_node_id(nodeid):
            return None
        source = Node(nodeid, sender[0], sender[1])
        _remember(self._last_named, nodeid)
        self.welcome_if_new(source)
        return source

    def rpc_stun(self, sender: tuple) -> list:
        return [sender[0], sender[1]]

    def rpc_ping(self, sender: tuple, nodeid: Any) -> Any:
        if self._sender(sender, nodeid) is None:
            return error_reply("malformed", "node id must be 20 bytes")
        return self.source_node.id

    def rpc_store(self, sender: tuple, nodeid: Any, key: Any, value: Any) -> Any:
        if self._sender(sender, nodeid) is None:
            return error_reply("malformed", "node id must be 20 bytes")
        return self.owner.accept_store(key, value)

    def rpc_find_node(self, sender: tuple, nodeid: Any, key: Any) -> Any:
        source = self._sender(sender, nodeid)
        if source is None or not is_node_id(key):
            return error_reply("malformed", "node id and key must be 20 bytes")
        return self._neighbors(key, source)

    def _neighbors(self, key: bytes, source: Node) -> list[list]:
        """The FIND_NODE answer: ``[id, host, port]`` of our k contacts closest to ``key``, without the asker."""
        return [[n.id, n.ip, n.port] for n in self.router.find_neighbors(Node(key), exclude=source)]

    def rpc_find_value(self, sender: tuple, nodeid: Any, key: Any, offset: Any = 0) -> Any:
        if not is_node_id(key):
            return error_reply("malformed", "key must be 20 bytes")
        if type(offset) is not int or not 0 <= offset < 1 << 20:
            return error_reply("malformed", "offset must be a small whole number")
        source = self._sender(sender, nodeid)
        if source is None:
            return error_reply("malformed", "node id must be 20 bytes")
        value = self.owner.local_value(key, offset)
        if value is None:
            return self._neighbors(key, source)
        return {"value": value}

    def rpc_team_share(self, sender: tuple, nodeid: Any, request: Any) -> Any:
        """A member asks for this node's share of a team: judged by the node's answerer, never raising."""
        if self._sender(sender, nodeid) is None:
            return error_reply("malformed", "node id must be 20 bytes")
        return self.owner.team_answerer.handle(request)

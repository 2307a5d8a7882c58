"""Unlocking a team: share requests, the members' answers, and combining K shares (docs/teams.md "Unlocking").

The protocol logic is kept apart from the I/O. A requester signs a **share request**
(kind ``team-unlock``) and sends it to each other member's node over the RPC
``team_share`` (node/protocol.py). Each member's :class:`Answerer` judges it without
any I/O and replies with a signed **share answer** (kind ``team-share``) carrying the
request's nonce and the member's share sealed to the requester, or with an error
reply naming the precise reason, or ``pending`` while the owner has to approve it.
:func:`unlock` is the requester's side: it asks every member at once, keeps only
answers signed by the member it asked and bound to its own nonce, and combines as
soon as it holds K shares, naming and leaving out bad ones.

Both records carry canonical msgpack payloads decoded strictly with every field
bounded: their bytes come from the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import msgpack

from aether.crypto.identity import PublicIdentity
from aether.crypto.records import RecordError, SignedRecord, create_record, decode_record, verify_record
from aether.crypto.teams import (
    MAX_EPOCH,
    TEAM_ID_BYTES,
    ShareError,
    TeamCryptoError,
    check_commitment,
    combine_shares,
    find_bad_shares,
    open_sealed,
    seal,
    share_index,
)
from aether.node.contact import Reach, reach
from aether.node.protocol import error_reply
from aether.node.server import next_seq
from aether.node.teams import Descriptor, TeamError, descriptor_of
from aether.node import team_keys

if TYPE_CHECKING:
    from aether.node.server import AetherNode
    from aether.storage.store import TeamRow

log = logging.getLogger(__name__)

REQUEST_KIND = "team-unlock"
ANSWER_KIND = "team-share"
REQUEST_NAME = b"team-unlock"
ANSWER_NAME = b"team-share"
NONCE_BYTES = 16
"""A fresh random nonce per request (16 bytes or more are accepted, at most MAX_NONCE_BYTES)."""
MAX_NONCE_BYTES = 64
MAX_REQUEST_BYTES = 1024
"""A request record is about 260 bytes; anything much larger is not one."""
MAX_ANSWER_BYTES = 1024
"""An answer record is about 400 bytes (its sealed share is 93): it fits one datagram with room to spare."""
MAX_SEALED_BYTES = 256
RECORD_TTL = 120
"""Lifetime of request and answer records; the request's own time is what the answerer judges."""
MAX_SKEW = 60.0
"""A request's time must be within this many seconds of the answerer's clock."""
REPLAY_WINDOW = 600.0
"""Nonces answered (or pending) are remembered this long: a request sent again is refused as a replay."""
MAX_SEEN = 4096
PENDING_EXPIRY = 600.0
"""A request waiting for ``team approve`` is forgotten after this long."""
MAX_PENDING = 64
RESEND_PENDING = 1.0
"""Seconds between re-sends of a request a member keeps pending."""
REACH_RETRY = 0.5
"""Seconds before a member's node that could not be reached is looked up again; doubles up to MAX_REACH_RETRY."""
MAX_REACH_RETRY = 4.0
COMBINE_SECONDS = 0.005
"""Rough cost of one combination at K = 3 (pure-Python GF(2^128)), to bound the bad-share search by time."""
DEFAULT_TIMEOUT = 10.0

REFUSALS = frozenset({
    "too-large", "malformed", "bad-signature", "wrong-kind", "unknown-team", "no-share", "stale-epoch",
    "unknown-epoch", "not-member", "clock", "replay", "denied", "busy", "failed",
})
"""Reasons an answerer gives for refusing a request (the ``error`` of its reply)."""


class UnlockError(TeamError):
    """A request or answer that cannot be used; ``reason`` is one of REFUSALS (or ``bad-answer``)."""

    def __init__(self, reason: str, message: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.epoch = epoch


# ------------------------------------------------------------------ the two records
def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _fields(payload: bytes, count: int, what: str) -> list:
    """The ``count`` fields of a canonical msgpack list, or UnlockError("malformed")."""
    try:
        value = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True, max_str_len=0,
                                max_bin_len=MAX_SEALED_BYTES, max_array_len=count, max_map_len=0, max_ext_len=0)
    except Exception:
        raise UnlockError("malformed", f"the {what} payload is not valid msgpack") from None
    if type(value) is not list or len(value) != count or _pack(value) != payload:
        raise UnlockError("malformed", f"the {what} payload is not a canonical list of {count} fields")
    return value


@dataclass(frozen=True)
class _Bound:
    """The fields a request and its answer share, which bind the answer to the request."""

    team_id: bytes
    epoch: int
    requester: bytes
    """The requester's signing key: the request record's author."""
    nonce: bytes

    WHAT: ClassVar[str] = ""

    def _last(self) -> Any:
        raise NotImplementedError

    @classmethod
    def _check_last(cls, value: Any) -> None:
        raise NotImplementedError

    def encode(self) -> bytes:
        """Canonical msgpack list [team ID, epoch, requester, nonce, last field]."""
        return _pack([self.team_id, self.epoch, self.requester, self.nonce, self._last()])

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Strictly from untrusted bytes: UnlockError("malformed") for anything but the canonical form."""
        what = cls.WHAT
        team_id, epoch, requester, nonce, last = _fields(payload, 5, what)
        if type(team_id) is not bytes or len(team_id) != TEAM_ID_BYTES:
            raise UnlockError("malformed", f"the {what}'s team ID is not {TEAM_ID_BYTES} bytes")
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise UnlockError("malformed", f"the {what}'s epoch is not a whole number from 0 to 2**63 - 1")
        if type(requester) is not bytes or len(requester) != 32:
            raise UnlockError("malformed", f"the {what}'s requester is not a 32-byte signing key")
        if type(nonce) is not bytes or not NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
            raise UnlockError("malformed", f"the {what}'s nonce is not {NONCE_BYTES} to {MAX_NONCE_BYTES} bytes")
        cls._check_last(last)
        return cls(team_id, epoch, requester, nonce, last)

    def binding(self) -> tuple[bytes, int, bytes, bytes]:
        return (self.team_id, self.epoch, self.requester, self.nonce)


@dataclass(frozen=True)
class ShareRequest(_Bound):
    """What a requester asks: its share of ``team_id`` at ``epoch``, for this ``nonce``, made at ``time_ms``."""

    time_ms: int
    WHAT: ClassVar[str] = "request"

    def _last(self) -> Any:
        return self.time_ms

    @classmethod
    def _check_last(cls, value: Any) -> None:
        if type(value) is not int or not 0 <= value < 2**63:
            raise UnlockError("malformed", "the request's time is not a whole number of milliseconds")


@dataclass(frozen=True)
class ShareAnswer(_Bound):
    """A member's answer: its share sealed to the requester (purpose ``unlock-answer``), bound to the nonce."""

    sealed: bytes
    WHAT: ClassVar[str] = "answer"

    def _last(self) -> Any:
        return self.sealed

    @classmethod
    def _check_last(cls, value: Any) -> None:
        if type(value) is not bytes or not 0 < len(value) <= MAX_SEALED_BYTES:
            raise UnlockError("malformed", f"the answer's sealed share is not 1 to {MAX_SEALED_BYTES} bytes")


def make_request(node: AetherNode, team_id: bytes, epoch: int, *, now: float | None = None) -> SignedRecord:
    """A fresh signed share request of this node for one team epoch (a new random nonce each time)."""
    now = time.time() if now is None else now
    request = ShareRequest(team_id, epoch, node.identity.public.signing_public, os.urandom(NONCE_BYTES),
                           int(now * 1000))
    return create_record(node.identity, REQUEST_KIND, REQUEST_NAME, next_seq(), request.encode(), RECORD_TTL,
                         now=now)


def _signed(data: Any, kind: str, limit: int, what: str) -> SignedRecord:
    """A record of ``kind`` from untrusted bytes, its signature checked (its lifetime is not: see below)."""
    if not isinstance(data, bytes):
        raise UnlockError("malformed", f"a {what} is bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise UnlockError("too-large", f"a {what} is at most {limit} bytes, got {len(data)}")
    try:
        record = decode_record(data)
        # The signature only: the time inside the payload is judged against MAX_SKEW, which
        # says more than "expired" when two clocks disagree.
        verify_record(record, now=record.expires - 1)
    except RecordError as exc:
        reason = "bad-signature" if exc.reason == "bad-signature" else "malformed"
        raise UnlockError(reason, f"{what}: {exc}") from None
    if record.kind != kind:
        raise UnlockError("wrong-kind", f"a {record.kind!r} record is not a {what}")
    return record


def read_answer(data: Any, member: PublicIdentity, request: ShareRequest) -> ShareAnswer:
    """The answer in a reply's bytes, if it is signed by ``member`` and bound to ``request``; else UnlockError.

    Anything else (garbage, an answer signed by someone else or for another nonce)
    is not the member's answer: it is left out, and the member is not named for it.
    """
    record = _signed(data, ANSWER_KIND, MAX_ANSWER_BYTES, "share answer")
    if record.author != member.signing_public:
        raise UnlockError("bad-answer", "the answer is not signed by the member asked")
    answer = ShareAnswer.decode(record.payload)
    if answer.binding() != request.binding():
        raise UnlockError("bad-answer", "the answer is not bound to this request (team, epoch, requester or nonce)")
    return answer


# ------------------------------------------------------------------ the answering member
def own_share(node: AetherNode, team_id: bytes, epoch: int) -> bytes:
    """This node's share of one epoch, opened from its store (where it stays sealed) for one use."""
    sealed = node.store.team_share(team_id, epoch)
    if sealed is None:
        raise UnlockError("no-share", f"this node holds no share of epoch {epoch}", epoch)
    return open_sealed(node.identity, sealed, purpose="share", team_id=team_id, epoch=epoch)


@dataclass
class Pending:
    """A request waiting for the owner's ``team approve`` or ``team deny``."""

    team_id: bytes
    epoch: int
    requester: PublicIdentity
    nonce: bytes
    data: bytes
    received: float
    state: str = "waiting"
    """``waiting``, ``approved`` or ``denied``."""


class Answerer:
    """A member's side of unlocking: judges each share request and answers it, refuses it, or holds it.

    One per node (``AetherNode.team_answerer``); its handler is synchronous and never
    raises for anything a peer sends. It remembers the nonces it answered for
    REPLAY_WINDOW seconds, and the requests waiting for approval (at most
    MAX_PENDING, each for PENDING_EXPIRY seconds).
    """

    def __init__(self, node: AetherNode) -> None:
        self.node = node
        self.on_daemon = False
        """Set by the daemon: only there can a pending request be approved later."""
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._pending: OrderedDict[bytes, Pending] = OrderedDict()

    # -------------------------------------------------------------- the RPC
    def handle(self, data: Any, now: float | None = None) -> dict[str, Any]:
        """The reply to one ``team_share`` request: ``{"answer": bytes}``, ``{"pending": ...}`` or an error reply."""
        now = time.time() if now is None else now
        try:
            return self._handle(data, now)
        except UnlockError as exc:
            log.info("share request refused (%s): %s", exc.reason, exc)
            reply: dict[str, Any] = error_reply(exc.reason, str(exc))
            if exc.epoch is not None:
                reply["epoch"] = exc.epoch
            return reply
        except Exception:  # this node's own state (a damaged row or share): refuse, and keep serving
            log.exception("answering a share request failed")
            return error_reply("failed", "this node could not answer; its log says why")

    def _handle(self, data: Any, now: float) -> dict[str, Any]:
        record = _signed(data, REQUEST_KIND, MAX_REQUEST_BYTES, "share request")
        request = ShareRequest.decode(record.payload)
        if request.requester != record.author:
            raise UnlockError("malformed", "the request names another requester than its signer")
        self._expire(now)
        held = self._pending.get(request.nonce)
        if held is not None:
            return self._resent(held, data, now)
        if request.nonce in self._seen:
            raise UnlockError("replay", "this request was already answered: a new request needs a new nonce")
        row, descriptor = self._team(request)
        requester = self._member(descriptor, request.requester)
        if abs(now - request.time_ms / 1000) > MAX_SKEW:
            raise UnlockError(
                "clock", f"the request was made at {request.time_ms / 1000:.0f}, {now - request.time_ms / 1000:+.0f} s "
                f"from this node's clock: more than {MAX_SKEW:.0f} s apart")
        self._remember(request.nonce, now)
        if row.policy == "approve":
            if len(self._pending) >= MAX_PENDING:
                self._seen.pop(request.nonce, None)
                raise UnlockError("busy", f"{MAX_PENDING} requests already wait for approval here; try later")
            self._pending[request.nonce] = Pending(request.team_id, request.epoch, requester, request.nonce, data, now)
            log.info("share request for team %s from %s waits for approval (`team approve`)", row.name,
                     requester.node_id.hex())
            return self._waiting()
        return self._answer(request, requester, now)

    def _resent(self, held: Pending, data: bytes, now: float) -> dict[str, Any]:
        """A pending request sent again: still waiting, answered once approved, refused once denied."""
        if held.data != data:
            raise UnlockError("replay", "another request with this nonce is already waiting")
        if held.state == "waiting":
            return self._waiting()
        del self._pending[held.nonce]  # from now on, the same bytes are a replay
        if held.state == "denied":
            raise UnlockError("denied", "the member refused this request (`team deny`)")
        request = ShareRequest.decode(decode_record(data).payload)
        return self._answer(request, held.requester, now)

    @staticmethod
    def _waiting() -> dict[str, Any]:
        return {"pending": "waiting for the member's approval (`aether-node team approve`)"}

    def _team(self, request: ShareRequest) -> tuple[TeamRow, Descriptor]:
        store = self.node.store
        row = store.team(request.team_id)
        if row is None:
            raise UnlockError("unknown-team", f"this node is in no team {request.team_id.hex()}")
        if request.epoch < row.epoch:
            raise UnlockError("stale-epoch", f"epoch {request.epoch} is not the current one: this node holds "
                              f"epoch {row.epoch}", row.epoch)
        if request.epoch > row.epoch:
            raise UnlockError("unknown-epoch", f"epoch {request.epoch} is not known here: this node holds epoch "
                              f"{row.epoch}", row.epoch)
        if store.team_share(row.team_id, row.epoch) is None:
            raise UnlockError("no-share", f"this node holds no share of epoch {row.epoch}", row.epoch)
        return row, descriptor_of(decode_record(row.descriptor))

    @staticmethod
    def _member(descriptor: Descriptor, signing_public: bytes) -> PublicIdentity:
        index = descriptor.index_of(signing_public)
        if index is None:
            raise UnlockError("not-member", f"the requester is not a member of epoch {descriptor.epoch}",
                              descriptor.epoch)
        return descriptor.members[index - 1]

    def share(self, team_id: bytes, epoch: int) -> bytes:
        """The share this node answers with (a method, so that tests can make a member that lies)."""
        return own_share(self.node, team_id, epoch)

    def _answer(self, request: ShareRequest, requester: PublicIdentity, now: float) -> dict[str, Any]:
        try:
            share = self.share(request.team_id, request.epoch)
        except TeamCryptoError as exc:
            log.warning("team %s: this node's own share does not open: %s", request.team_id.hex(), exc)
            raise UnlockError("no-share", "this node's share of the epoch does not open", request.epoch) from None
        sealed = seal(requester, share, purpose="unlock-answer", team_id=request.team_id, epoch=request.epoch)
        answer = ShareAnswer(request.team_id, request.epoch, request.requester, request.nonce, sealed)
        record = create_record(self.node.identity, ANSWER_KIND, ANSWER_NAME, next_seq(), answer.encode(),
                               RECORD_TTL, now=now)
        log.info("answered a share request for team %s from %s", request.team_id.hex(), requester.node_id.hex())
        return {"answer": record.encode()}

    # -------------------------------------------------------------- bounded memory
    def _expire(self, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) <= now - REPLAY_WINDOW:
            self._seen.popitem(last=False)
        for nonce in [n for n, p in self._pending.items() if p.received <= now - PENDING_EXPIRY]:
            del self._pending[nonce]

    def _remember(self, nonce: bytes, now: float) -> None:
        """Remember an accepted nonce; when full, forget the oldest only if its time check alone refuses it now."""
        if len(self._seen) >= MAX_SEEN:
            oldest = next(iter(self._seen.values()))
            if oldest > now - 2 * MAX_SKEW:
                raise UnlockError("busy", "too many share requests in the last two minutes; try later")
            self._seen.popitem(last=False)
        self._seen[nonce] = now

    # -------------------------------------------------------------- the owner's decisions
    def pending(self, team_id: bytes | None = None, now: float | None = None) -> list[Pending]:
        """Requests waiting for approval (of one team, or all), oldest first."""
        self._expire(time.time() if now is None else now)
        return [p for p in self._pending.values() if team_id is None or p.team_id == team_id]

    def decide(self, team_id: bytes, who: str | None, approve: bool) -> list[Pending]:
        """Approve or deny the waiting requests of a team from ``who`` (identity, or 8+ hex of a node ID), or all.

        The requester, which re-sends its request while it waits, then gets the
        answer or the "denied" refusal.
        """
        chosen = [p for p in self.pending(team_id) if p.state == "waiting" and (who is None or _names(p.requester, who))]
        for p in chosen:
            p.state = "approved" if approve else "denied"
            log.info("%s the share request for team %s from %s", "approved" if approve else "denied",
                     team_id.hex(), p.requester.node_id.hex())
        return chosen


def _names(member: PublicIdentity, who: str) -> bool:
    text = who.strip().lower()
    if text.startswith("aether1"):
        return member.to_string().lower() == text
    return len(text) >= 8 and member.node_id.hex().startswith(text)


# ------------------------------------------------------------------ the requester
@dataclass
class MemberResult:
    """How one member took part in an unlock."""

    member: PublicIdentity
    index: int
    state: str
    """``self``, ``answered``, ``pending``, ``refused``, ``no-answer``, ``bad`` (its share was bad), or
    ``not-needed`` (still being asked when K good shares were in hand)."""
    reason: str | None = None
    message: str | None = None
    epoch: int | None = None
    """The epoch the member holds, when it refused a request for another one."""


@dataclass
class UnlockResult:
    """What an unlock achieved, member by member."""

    team_id: bytes
    name: str
    epoch: int
    k: int
    unlocked: bool
    members: list[MemberResult]
    epochs: list[int] = field(default_factory=list)
    """Epochs whose key is now kept here (the unlocked one and those it unchains), newest first."""
    used: list[PublicIdentity] = field(default_factory=list)
    """The members whose shares gave the key."""
    bad_unnamed: bool = False
    """K shares gave a wrong key and no other share could tell whose was bad."""

    def of(self, *states: str) -> list[MemberResult]:
        return [m for m in self.members if m.state in states]

    @property
    def got(self) -> int:
        """Good shares in hand (this node's own included)."""
        return len(self.of("self", "answered"))


async def unlock(node: AetherNode, row: TeamRow, timeout: float = DEFAULT_TIMEOUT, *,
                 ttl: float = 8 * 3600.0) -> UnlockResult:
    """Unlock ``row``'s current epoch with K shares: this node's own and those of the members who answer.

    Every other member is asked at once (found through its contact record; a member
    not reached, or silent, is looked up again until time runs out, since its node
    may be starting or have moved), and a member that keeps a request pending is asked again with the same request until it
    approves or denies. As soon as K good shares are in hand they are combined in a
    worker thread and checked against the commitment; a failure is searched for the
    bad share with every share collected by then, and the search goes on as more
    answers come. Never takes more than ``timeout`` seconds. On success the key (and
    the older ones it unchains) is kept for ``ttl`` seconds (team_keys.keep_unlocked).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    descriptor = descriptor_of(decode_record(row.descriptor))
    me = node.identity.public
    index = descriptor.index_of(me.signing_public)
    if index is None:
        raise TeamError(f"this node is not a member of team {row.name} epoch {row.epoch}")
    results = {m.signing_public: MemberResult(m, i, "asked") for i, m in enumerate(descriptor.members, start=1)}
    result = UnlockResult(row.team_id, row.name, row.epoch, descriptor.k, False, list(results.values()))
    shares: dict[bytes, bytes] = {}
    arrived = asyncio.Event()

    mine = results[me.signing_public]
    try:
        shares[me.signing_public] = own_share(node, row.team_id, row.epoch)
        mine.state = "self"
    except (UnlockError, TeamCryptoError) as exc:
        mine.state, mine.reason, mine.message = "refused", "no-share", str(exc)

    def take(member: PublicIdentity, position: int, share: bytes) -> None:
        outcome = results[member.signing_public]
        try:
            if share_index(share) != position:
                raise ShareError(f"the share has index {share_index(share)}, not the member's {position}")
        except ShareError as exc:
            outcome.state, outcome.reason, outcome.message = "bad", "bad-share", str(exc)
        else:
            shares[member.signing_public] = share
            outcome.state = "answered"
        arrived.set()

    asks = [asyncio.ensure_future(_ask(node, row, m, i, results[m.signing_public], deadline, take, arrived))
            for i, m in enumerate(descriptor.members, start=1) if m != me]
    tried: frozenset[bytes] = frozenset()
    try:
        while True:
            arrived.clear()
            good = {s: shares[s] for s in shares if results[s].state in ("self", "answered")}
            if len(good) >= descriptor.k and frozenset(good) != tried:
                tried = frozenset(good)
                key, bad = await _combine(good, descriptor, deadline - loop.time())
                for signing in bad:
                    results[signing].state, results[signing].reason = "bad", "bad-share"
                    results[signing].message = "its share does not give the team's key with the others"
                result.bad_unnamed = key is None and not bad
                if key is not None:
                    result.unlocked = True
                    result.used = [results[s].member for s in good if s not in bad]
                    result.epochs = team_keys.keep_unlocked(node, row.team_id, row.epoch, key, ttl)
                    break
                if arrived.is_set():
                    continue  # more came in while combining
            remaining = deadline - loop.time()
            waiting = [a for a in asks if not a.done()]
            if remaining <= 0 or not waiting:
                break
            waiter = asyncio.ensure_future(arrived.wait())
            await asyncio.wait([waiter, *waiting], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
    finally:
        for ask in asks:
            ask.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
    for outcome in result.members:
        if outcome.state in ("asked", "pending") and result.unlocked:
            outcome.state, outcome.reason = "not-needed", None
        elif outcome.state == "asked":
            outcome.state, outcome.reason = "no-answer", outcome.reason or "no answer within the timeout"
    return result


async def _combine(good: Mapping[bytes, bytes], descriptor: Descriptor, time_left: float) -> tuple[bytes | None, set[bytes]]:
    """The key from the good shares and the members shown bad, in a worker thread bounded by ``time_left``."""
    team_id, epoch, k = descriptor.team_id, descriptor.epoch, descriptor.k

    def work() -> tuple[bytes | None, set[bytes]]:
        key = combine_shares(list(good.values())[:k])  # K points fix the key; more only cost time
        if check_commitment(key, team_id, epoch, descriptor.commitment):
            return key, set()
        if len(good) == k:
            return None, set()
        budget = max(1, int(time_left / (COMBINE_SECONDS * max(1.0, (k / 3) ** 2))))
        found = find_bad_shares(dict(good), k, team_id, epoch, descriptor.commitment, max_combinations=budget)
        return found.key, set(found.bad)

    if time_left <= 0:
        return None, set()
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), time_left)
    except asyncio.TimeoutError:
        return None, set()


async def _ask(node: AetherNode, row: TeamRow, member: PublicIdentity, position: int, outcome: MemberResult,
               deadline: float, take: Any, arrived: asyncio.Event) -> None:
    """Ask one member for its share until it answers, refuses, or time runs out; record how it went."""
    loop = asyncio.get_running_loop()

    def left() -> float:
        return deadline - loop.time()

    # A member's node may be starting, or have moved since its contact record was read:
    # until time runs out it is looked up again, with growing pauses, rather than given up on.
    found: Reach | None = None
    pause = REACH_RETRY
    record = make_request(node, row.team_id, row.epoch)
    while left() > 0:
        if found is None:
            try:
                found = await asyncio.wait_for(reach(node, member), left())
            except asyncio.TimeoutError:
                outcome.reason = outcome.reason or "its node was not found in time"
                break
            if not found.reachable or found.address is None:
                outcome.reason = f"not reachable: {found.reason}"
                found = None
                await asyncio.sleep(min(pause, max(left(), 0)))
                pause = min(pause * 2, MAX_REACH_RETRY)
                continue
        request = ShareRequest.decode(record.payload)
        try:
            ok, reply = await asyncio.wait_for(node.protocol.call_team_share(found.address, record.encode()), left())
        except asyncio.TimeoutError:
            break
        if not ok:  # lost, or its reply was: ask anew (the same bytes would be refused as a replay)
            outcome.reason = "no answer"
            record = make_request(node, row.team_id, row.epoch)
            found = None  # and look its node up again: it may listen elsewhere now
            continue
        if isinstance(reply, dict) and "pending" in reply:
            if outcome.state != "pending":
                outcome.state, outcome.reason = "pending", "waiting for the member's approval"
                arrived.set()
            await asyncio.sleep(min(RESEND_PENDING, max(left(), 0)))
            continue
        if isinstance(reply, dict) and "error" in reply:
            reason, message, epoch = reply.get("error"), reply.get("message"), reply.get("epoch")
            outcome.state = "refused"
            outcome.reason = reason if isinstance(reason, str) and reason in REFUSALS else "refused"
            outcome.message = message[:300] if isinstance(message, str) else None
            outcome.epoch = epoch if type(epoch) is int else None
            arrived.set()
            return
        answer_bytes = reply.get("answer") if isinstance(reply, dict) else None
        try:
            answer = read_answer(answer_bytes, member, request)
            share = open_sealed(node.identity, answer.sealed, purpose="unlock-answer", team_id=row.team_id,
                                epoch=row.epoch)
        except UnlockError as exc:
            # Not the member's answer to this request: left out, and the member not named for it.
            log.info("left out a reply from %s: %s", member.node_id.hex(), exc)
            outcome.state, outcome.reason, outcome.message = "refused", "bad-answer", str(exc)
            arrived.set()
            return
        except TeamCryptoError as exc:
            # Signed by the member and bound to our nonce, yet unusable: the member's share is bad.
            outcome.state, outcome.reason, outcome.message = "bad", "bad-share", f"its answer does not open: {exc}"
            arrived.set()
            return
        take(member, position, share)
        return

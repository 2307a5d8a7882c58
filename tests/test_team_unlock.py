"""Unlocking a team (node/team_unlock.py; docs/teams.md "Unlocking").

Real nodes over UDP on 127.0.0.1, each with a real SQLite home: members find each
other through their contact records and exchange share requests and answers over
the ``team_share`` RPC. Every wait is bounded; no assert is about time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest
import pytest_asyncio

from aether.crypto.identity import Identity
from aether.crypto.records import create_record, decode_record
from aether.crypto.teams import check_commitment, seal
from aether.node.contact import publish_contact
from aether.node.server import AetherNode, next_seq
from aether.node.team_api import TEAM_OPS
from aether.node.team_ceremony import approve_change, change_members, create_team
from aether.node.team_inbox import Inbox
from aether.node.team_keys import lock, unlocked_key, unlocked_keys
from aether.node import team_unlock
from aether.node.team_unlock import (
    ANSWER_KIND,
    MAX_ANSWER_BYTES,
    MAX_REQUEST_BYTES,
    REQUEST_KIND,
    REQUEST_NAME,
    Answerer,
    ShareAnswer,
    ShareRequest,
    UnlockResult,
    make_request,
    unlock,
)
from aether.node.teams import Descriptor, TeamError
from aether.node.patterns import PatternLibrary
from aether.simulations.network import address_of, local_network, start_node, stop_all

from .conftest import QUIET, wait_for

CONFIG = QUIET.replace(ksize=8)
SIZE = 10
BOUND = 30.0
"""Upper bound on any one unlock in these tests (their own timeouts are shorter)."""
ON_NETWORK = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def network(tmp_path_factory):
    async with local_network(tmp_path_factory.mktemp("unlock"), SIZE, CONFIG, seed=9) as nodes:
        for node in nodes:
            await publish_contact(node, [address_of(node)])
        yield nodes


async def make_team(creator: AetherNode, others: list, k: int, name: str = "core") -> Descriptor:
    """A team of ``creator`` and ``others`` (nodes, or bare identities never online), each node holding its share."""
    members = [m.identity.public if isinstance(m, AetherNode) else m.public for m in others]
    created = await create_team(creator, name, k, members)
    for member in others:
        if isinstance(member, AetherNode):
            assert (created.descriptor.team_id, 0) in (await Inbox(member).poll()).imported
    return created.descriptor


async def run_unlock(node: AetherNode, team_id: bytes, timeout: float = 10.0, ttl: float = 3600.0) -> UnlockResult:
    return await asyncio.wait_for(unlock(node, node.store.team(team_id), timeout, ttl=ttl), BOUND)


def states(result: UnlockResult) -> dict[bytes, str]:
    return {m.member.node_id: m.state for m in result.members}


def reasons(result: UnlockResult) -> dict[bytes, str | None]:
    return {m.member.node_id: m.reason for m in result.members}


def handle(member: AetherNode, data: object, now: float | None = None) -> dict:
    return member.team_answerer.handle(data, now)


# ---------------------------------------------------------------------- unlocking
@ON_NETWORK
async def test_three_of_five_unlock_and_the_key_is_kept_sealed_until_lock_or_expiry(network) -> None:
    creator, *others = network[:5]
    d = await make_team(creator, others, 3)
    requester = others[1]  # any member, not only the creator
    result = await run_unlock(requester, d.team_id)
    assert result.unlocked and result.epochs == [0] and not result.bad_unnamed
    assert result.got >= 3 and requester.identity.public in result.used and len(result.used) >= 3
    assert states(result)[requester.node.id] == "self"
    assert not [m for m in result.members if m.state in ("refused", "bad", "no-answer", "pending")]
    key = unlocked_key(requester, d.team_id, 0)
    assert key is not None and check_commitment(key, d.team_id, 0, d.commitment)
    # At rest the store holds the key sealed, never in clear.
    rows = requester.store._conn.execute("SELECT sealed FROM team_keys WHERE team_id = ?", (d.team_id,)).fetchall()
    assert len(rows) == 1 and key not in bytes(rows[0][0])
    shares = requester.store._conn.execute("SELECT sealed FROM team_shares").fetchall()
    assert all(key not in bytes(s) for (s,) in shares)
    for other in (creator, *others):  # nobody else holds the key
        if other is not requester:
            assert unlocked_keys(other, d.team_id) == {}
    # team lock forgets it at once.
    assert lock(requester, d.team_id) == 1 and unlocked_keys(requester, d.team_id) == {}
    # A short unlock_ttl: the key is gone once it has passed, and the store drops the row.
    again = await run_unlock(requester, d.team_id, ttl=60.0)
    assert again.unlocked
    expires = requester.store.team_key_expiry(d.team_id, 0)
    assert expires is not None and requester.store.team_keys(d.team_id, now=expires - 1) != {}
    assert requester.store.team_keys(d.team_id, now=expires) == {}
    assert requester.store.forget_team_keys(now=expires) == 1
    assert unlocked_keys(requester, d.team_id) == {}


@ON_NETWORK
async def test_with_k_minus_one_members_online_the_result_says_who_answered_and_who_did_not(network, tmp_path) -> None:
    requester, online = network[5], network[6]
    gone = await start_node(tmp_path / "gone", CONFIG)
    await gone.bootstrap([address_of(network[0])])
    await publish_contact(gone, [address_of(gone)])
    never = Identity.generate()  # never online: no contact record at all
    d = await make_team(requester, [online, gone, never], 3, name="short")
    stop_all([gone])  # its contact record stays, its node does not answer
    result = await run_unlock(requester, d.team_id, timeout=3.0)
    assert not result.unlocked and result.got == 2 and result.k == 3 and result.epochs == []
    assert states(result) == {requester.node.id: "self", online.node.id: "answered", gone.node.id: "no-answer",
                              never.public.node_id: "no-answer"}
    assert "no contact record" in reasons(result)[never.public.node_id]
    assert unlocked_keys(requester, d.team_id) == {}


@ON_NETWORK
async def test_a_tampered_share_is_named_and_left_out_and_k_good_shares_still_unlock(network) -> None:
    requester, liar, good, slow = network[1], network[7], network[8], network[9]
    d = await make_team(requester, [liar, good, slow], 3, name="tamper")
    # The liar's store holds a share of the right index and wrong value, sealed to itself as usual.
    wrong = bytes([2]) + os.urandom(32)
    liar.store.put_team_share(d.team_id, 0, seal(liar.identity.public, wrong, purpose="share", team_id=d.team_id,
                                                  epoch=0))
    # `slow` asks its owner first: until it approves, the requester holds its own, the liar's and good's shares.
    slow.store.set_team_policy(d.team_id, "approve")
    slow.team_answerer.on_daemon = True
    task = asyncio.ensure_future(run_unlock(requester, d.team_id, timeout=20.0))
    try:
        assert await wait_for(lambda: slow.team_answerer.pending(d.team_id), BOUND)
        assert await wait_for(lambda: liar.team_answerer._seen and good.team_answerer._seen, BOUND)
        assert len(slow.team_answerer.decide(d.team_id, requester.node.id.hex()[:10], approve=True)) == 1
        result = await task
    finally:
        task.cancel()
        slow.team_answerer.on_daemon = False
    assert result.unlocked
    assert states(result) == {requester.node.id: "self", liar.node.id: "bad", good.node.id: "answered",
                              slow.node.id: "answered"}
    assert reasons(result)[liar.node.id] == "bad-share"
    assert {m.node_id for m in result.used} == {requester.node.id, good.node.id, slow.node.id}
    assert check_commitment(unlocked_key(requester, d.team_id, 0), d.team_id, 0, d.commitment)


class FlippingAnswerer(Answerer):
    """A member that answers with its share's bytes flipped (index kept)."""

    def share(self, team_id: bytes, epoch: int) -> bytes:
        share = super().share(team_id, epoch)
        return share[:1] + bytes(b ^ 0xFF for b in share[1:])


@ON_NETWORK
async def test_with_exactly_k_shares_and_one_bad_the_unlock_fails_saying_a_share_is_bad(network) -> None:
    requester, flipper, good = network[2], network[3], network[4]
    d = await make_team(requester, [flipper, good], 3, name="exact")
    flipper.team_answerer = FlippingAnswerer(flipper)
    try:
        result = await run_unlock(requester, d.team_id, timeout=5.0)
    finally:
        flipper.team_answerer = Answerer(flipper)
    assert not result.unlocked and result.bad_unnamed and result.got == 3
    assert unlocked_keys(requester, d.team_id) == {}


# ---------------------------------------------------------------------- the answerer refuses
@ON_NETWORK
async def test_a_replayed_request_is_refused(network) -> None:
    requester, member = network[0], network[1]
    d = await make_team(requester, [member], 2, name="replay")
    data = make_request(requester, d.team_id, 0).encode()
    first_ok, first = await requester.protocol.call_team_share(address_of(member), data)
    assert first_ok and set(first) == {"answer"}
    assert len(data) <= MAX_REQUEST_BYTES and len(first["answer"]) <= MAX_ANSWER_BYTES  # each fits one datagram
    answer = decode_record(first["answer"])
    assert answer.kind == ANSWER_KIND and answer.author == member.identity.public.signing_public
    assert ShareAnswer.decode(answer.payload).nonce == ShareRequest.decode(decode_record(data).payload).nonce
    again_ok, again = await requester.protocol.call_team_share(address_of(member), data)
    assert again_ok and again["error"] == "replay"


@ON_NETWORK
async def test_forged_requests_are_refused_with_the_reason(network) -> None:
    requester, member, outsider = network[2], network[5], network[9]
    d = await make_team(requester, [member], 2, name="forged")

    def request(identity: Identity, *, epoch: int = 0, at: float | None = None, team_id: bytes = d.team_id,
                nonce: bytes | None = None, signer_is_requester: bool = True) -> bytes:
        at = time.time() if at is None else at
        requester_key = identity.public.signing_public if signer_is_requester else bytes(31) + b"\x01"
        payload = ShareRequest(team_id, epoch, requester_key, nonce or os.urandom(16), int(at * 1000)).encode()
        return create_record(identity, REQUEST_KIND, REQUEST_NAME, next_seq(), payload, 120, now=at).encode()

    good = request(requester.identity)
    signature_broken = good[:-1] + bytes([good[-1] ^ 1])
    cases = {
        "bad-signature": signature_broken,
        "not-member": request(outsider.identity),
        "unknown-epoch": request(requester.identity, epoch=1),
        "unknown-team": request(requester.identity, team_id=bytes(20)),
        "clock": request(requester.identity, at=time.time() - 120),
        "malformed": request(requester.identity, signer_is_requester=False),
    }
    for reason, data in cases.items():
        reply = handle(member, data)
        assert reply["error"] == reason, (reason, reply)
    assert handle(member, request(requester.identity, epoch=1))["epoch"] == 0  # says which epoch it holds
    assert handle(member, request(requester.identity, at=time.time() + 120))["error"] == "clock"
    # Over the network too, and the genuine request is still answered after all that.
    ok, reply = await outsider.protocol.call_team_share(address_of(member), cases["not-member"])
    assert ok and reply["error"] == "not-member"
    assert "answer" in handle(member, good)


@ON_NETWORK
async def test_malformed_and_oversized_requests_never_raise_out_of_the_handler(network) -> None:
    member = network[3]
    record = make_request(network[4], bytes(20), 0)
    junk = [None, 7, "text", b"", b"\xc1", os.urandom(200), b"x" * 5000, record.encode() + b"\x00",
            create_record(network[4].identity, "contact", b"contact", 1, b"\x90", 60).encode(),
            create_record(network[4].identity, REQUEST_KIND, REQUEST_NAME, 1, b"\x95" + b"\xc0" * 5, 60).encode(),
            create_record(network[4].identity, REQUEST_KIND, REQUEST_NAME, 1, os.urandom(40), 60).encode()]
    for data in junk:
        reply = handle(member, data)
        assert reply["error"] in {"malformed", "too-large", "wrong-kind"}, (data, reply)
    assert handle(member, b"y" * 2000)["error"] == "too-large"
    # Over UDP: junk arguments get error replies and the node keeps serving.
    for data in (b"\x00" * 3, 12, [b"a"]):
        ok, reply = await network[4].protocol._call(address_of(member), "team_share", network[4].node.id, data)
        assert ok and reply["error"] == "malformed"
    ok, reply = await network[4].protocol.ping(address_of(member), network[4].node.id)
    assert ok and reply == member.node.id
    assert member.protocol.stats["handler_error"] == 0


# ---------------------------------------------------------------------- approval
@ON_NETWORK
async def test_with_the_approve_policy_a_request_waits_then_is_answered_or_denied(network) -> None:
    requester, careful, other = network[6], network[7], network[8]
    d = await make_team(requester, [careful, other], 3, name="careful")
    library = PatternLibrary(careful)
    policy = await TEAM_OPS["team-policy"](library, {"team": d.team_id.hex(), "policy": "approve"})
    assert (policy["policy"], policy["was"]) == ("approve", "auto")
    careful.team_answerer.on_daemon = True
    try:
        task = asyncio.ensure_future(run_unlock(requester, d.team_id, timeout=20.0))
        assert await wait_for(lambda: careful.team_answerer.pending(d.team_id), BOUND)
        status = await TEAM_OPS["team-status"](library, {"team": "careful", "timeout": 2})
        assert [p["node_id"] for p in status["pending"]] == [requester.node.id.hex()]
        approved = await TEAM_OPS["team-approve"](library, {"team": "careful", "requester": requester.node.id.hex()[:8]})
        assert [p["node_id"] for p in approved["approved"]] == [requester.node.id.hex()]
        result = await task
        assert result.unlocked and states(result)[careful.node.id] == "answered"
        assert careful.team_answerer.pending(d.team_id) == []

        lock(requester, d.team_id)
        task = asyncio.ensure_future(run_unlock(requester, d.team_id, timeout=20.0))
        assert await wait_for(lambda: careful.team_answerer.pending(d.team_id), BOUND)
        denied = await TEAM_OPS["team-deny"](library, {"team": "careful"})
        assert len(denied["denied"]) == 1
        result = await task
        assert not result.unlocked and result.got == 2
        assert (states(result)[careful.node.id], reasons(result)[careful.node.id]) == ("refused", "denied")
        assert careful.team_answerer.pending(d.team_id) == []
    finally:
        careful.team_answerer.on_daemon = False


@ON_NETWORK
async def test_a_pending_request_sent_again_stays_pending_and_is_a_replay_once_decided(network) -> None:
    requester, careful = network[0], network[9]
    d = await make_team(requester, [careful], 2, name="resend")
    careful.store.set_team_policy(d.team_id, "approve")
    data = make_request(requester, d.team_id, 0).encode()
    assert "pending" in handle(careful, data) and "pending" in handle(careful, data)
    careful.team_answerer.decide(d.team_id, None, approve=True)
    assert "answer" in handle(careful, data)
    assert handle(careful, data)["error"] == "replay"
    denied = make_request(requester, d.team_id, 0).encode()
    assert "pending" in handle(careful, denied)
    careful.team_answerer.decide(d.team_id, requester.identity.public.to_string(), approve=False)
    assert handle(careful, denied)["error"] == "denied"
    assert handle(careful, denied)["error"] == "replay"
    # A pending request is forgotten after 10 minutes.
    late = make_request(requester, d.team_id, 0).encode()
    assert "pending" in handle(careful, late)
    assert careful.team_answerer.pending(d.team_id, now=time.time() + 601) == []


@ON_NETWORK
async def test_requests_waiting_for_approval_are_capped_and_the_next_is_refused_busy(network, monkeypatch) -> None:
    requester, careful = network[0], network[8]
    d = await make_team(requester, [careful], 2, name="queue")
    careful.store.set_team_policy(d.team_id, "approve")
    monkeypatch.setattr(team_unlock, "MAX_PENDING", 3)
    for _ in range(3):
        assert "pending" in handle(careful, make_request(requester, d.team_id, 0).encode())
    refused = make_request(requester, d.team_id, 0).encode()
    assert handle(careful, refused)["error"] == "busy"
    assert len(careful.team_answerer.pending(d.team_id)) == 3
    careful.team_answerer.decide(d.team_id, None, approve=False)
    # The busy request's nonce was not kept: once there is room, the same request waits.
    monkeypatch.setattr(team_unlock, "MAX_PENDING", 4)
    assert "pending" in handle(careful, refused)


@ON_NETWORK
async def test_the_replay_cache_is_capped_and_forgets_only_nonces_the_clock_check_refuses(network, monkeypatch) -> None:
    requester, member = network[1], network[5]
    d = await make_team(requester, [member], 2, name="seen")
    monkeypatch.setattr(team_unlock, "MAX_SEEN", 4)
    member.team_answerer._seen.clear()
    now = time.time()
    for _ in range(4):
        assert "answer" in handle(member, make_request(requester, d.team_id, 0, now=now).encode(), now)
    assert handle(member, make_request(requester, d.team_id, 0, now=now).encode(), now)["error"] == "busy"
    later = now + 2 * team_unlock.MAX_SKEW + 1  # the oldest nonce is now refused by its time alone
    assert "answer" in handle(member, make_request(requester, d.team_id, 0, now=later).encode(), later)
    assert len(member.team_answerer._seen) == 4


# ---------------------------------------------------------------------- hostile answers
class HostileAnswerer(Answerer):
    """Replies that are not this member's answer to the request: each must be left out, the member not named bad."""

    def __init__(self, node: AetherNode, how: str, stranger: Identity) -> None:
        super().__init__(node)
        self.how, self.stranger = how, stranger

    def handle(self, data: object, now: float | None = None) -> dict:
        reply = super().handle(data, now)
        if "answer" not in reply:
            return reply
        record = decode_record(reply["answer"])
        answer = ShareAnswer.decode(record.payload)
        if self.how == "garbage":
            return {"answer": os.urandom(300)}
        if self.how == "wrong-nonce":
            payload = dataclasses.replace(answer, nonce=os.urandom(16)).encode()
            identity = self.node.identity
        else:  # signed by someone else
            payload, identity = record.payload, self.stranger
        return {"answer": create_record(identity, ANSWER_KIND, record.name, next_seq(), payload, 120).encode()}


@ON_NETWORK
async def test_hostile_answers_are_left_out_and_nobody_is_named_for_them(network) -> None:
    requester, *hostile = network[1:5]
    d = await make_team(requester, hostile, 3, name="hostile")
    stranger = Identity.generate()
    for member, how in zip(hostile, ("garbage", "wrong-nonce", "stranger")):
        member.team_answerer = HostileAnswerer(member, how, stranger)
    try:
        result = await run_unlock(requester, d.team_id, timeout=5.0)
    finally:
        for member in hostile:
            member.team_answerer = Answerer(member)
    assert not result.unlocked and result.got == 1
    for member in hostile:
        assert (states(result)[member.node.id], reasons(result)[member.node.id]) == ("refused", "bad-answer")
    assert not result.of("bad")


@ON_NETWORK
async def test_after_a_removal_the_removed_members_requests_are_refused_and_members_unlock_the_new_epoch(network) -> None:
    maker, stays, leaves = network[6], network[7], network[8]
    d = await make_team(maker, [stays, leaves], 2, name="moving")
    old_request = make_request(leaves, d.team_id, 0)  # made while it was a member
    assert (await run_unlock(maker, d.team_id)).unlocked
    changed = await change_members(maker, maker.store.team(d.team_id), remove=[leaves.identity.public])
    assert changed.pending and changed.made.descriptor.epoch == 1
    assert (await approve_change(stays, stays.store.team(d.team_id))).followed == changed.made.descriptor
    await Inbox(maker).poll()  # the maker's daemon follows its change once approved
    assert (d.team_id, 1) in (await Inbox(stays).poll()).imported
    await Inbox(leaves).poll()  # follows epoch 1, in which it has no share
    assert stays.store.team(d.team_id).epoch == 1 and leaves.store.team(d.team_id).epoch == 1

    reply = handle(stays, old_request.encode())
    assert reply["error"] == "stale-epoch" and reply["epoch"] == 1
    assert handle(stays, make_request(leaves, d.team_id, 1).encode())["error"] == "not-member"
    with pytest.raises(TeamError, match="not a member of team moving epoch 1"):
        await run_unlock(leaves, d.team_id)
    result = await run_unlock(stays, d.team_id)
    assert result.unlocked and result.epoch == 1 and result.epochs == [1, 0]

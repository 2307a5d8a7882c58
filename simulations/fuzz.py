"""Fuzzing every decoder that reads bytes from outside the node, with hypothesis.

Each :class:`Target` is one entry point that a peer, a file or a local client
feeds: a datagram, an RPC's arguments, a signed record, a pattern manifest, an
entry page, a team record, a contact record, a control-socket request, a
scenario file, a pattern file. A case passes when the entry point returns or
raises only its documented refusal (``WireError``, ``RecordError``,
``ValueRejected``, ...); anything else escaping is a finding. Random bytes alone
rarely get past a decoder's first check, so the strategies mostly take a real,
valid encoding and damage it (flip, truncate, extend, splice), or build the
expected msgpack shape with wrong contents.

The node targets run a real :class:`~aether.node.server.AetherNode` bound to
127.0.0.1 with a real SQLite store; after the garbage, an honest peer's
FIND_NODE and FIND_VALUE over real UDP must still be answered, and the node's
per-peer tables must stay within their limits.

The tests (tests/test_fuzz.py) run a few hundred cases per target; the script
runs as many as asked::

    python -m aether.simulations.fuzz --cases 200000 --seed 1 [--target NAME]

and prints, per target, the cases run, cases per second, findings and the
process's peak RSS. docs/fuzzing.md records the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import os
import random
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncio_dgram
import msgpack
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from kademlia.node import Node

from aether.crypto.identity import Identity
from aether.crypto.records import (
    MAX_NAME_BYTES,
    MAX_RECORD_BYTES,
    RecordError,
    SignedRecord,
    create_record,
    decode_record,
    parse_and_verify,
    topic_key,
)
from aether.crypto.teams import (
    TeamCryptoError,
    combine_shares,
    commitment,
    new_team_id,
    open_sealed,
    seal,
    split_key,
)
from aether.node import protocol, wire
from aether.node.chunks import Manifest, ManifestError, split
from aether.node.config import NodeConfig, TeamSettings
from aether.node.contact import CONTACT_KIND, CONTACT_NAME, ContactError, contact_of, encode_contact
from aether.node.control import HEADER, ControlServer
from aether.node.discovery import PROTOCOL_VERSION, parse_peer
from aether.node.entries import (
    HEAD_KIND,
    INDEX_KIND,
    MANIFEST_KIND,
    PUBLIC,
    EntryError,
    ManifestEntry,
    Summary,
    decode_summary,
    manifest_blocks,
)
from aether.node.pattern import PatternError, parse_pattern
from aether.node.team_ceremony import parse_share_file, share_file
from aether.node.team_unlock import (
    ANSWER_KIND,
    MAX_PENDING,
    MAX_SEEN,
    REQUEST_KIND,
    REQUEST_NAME,
    RECORD_TTL,
    ShareAnswer,
    ShareRequest,
    UnlockError,
    read_answer,
)
from aether.node.teams import (
    APPROVAL_KIND,
    DESCRIPTOR_KIND,
    INBOX_KIND,
    Approval,
    Descriptor,
    TeamError,
    approval_of,
    descriptor_name,
    descriptor_of,
    inbox_name,
    parse_inbox_name,
    share_of,
)
from aether.node.values import ValueRejected, block_key, check_found, check_value, encode_bundle
from aether.simulations.network import QUIET, address_of, start_node, stop_all
from aether.simulations.scenario import ScenarioError, parse as parse_scenario

HERE = Path(__file__).parent
PATIENT = QUIET.replace(rpc_timeout_min=10.0, rpc_timeout_initial=10.0, rpc_timeout_max=10.0)
"""For the node that asks a hostile peer: the peer always answers, so only a stall of this busy machine
could time a request out, and that would be no finding."""


class Finding(AssertionError):
    """A case that made an entry point raise something other than its documented refusal."""


# ------------------------------------------------------------------ valid samples
@dataclass(frozen=True)
class Samples:
    """Real, valid encodings of everything a decoder reads: the seeds that the strategies damage."""

    identity: Identity
    records: tuple[SignedRecord, ...]
    manifests: tuple[bytes, ...]
    patterns: tuple[bytes, ...]
    scenarios: tuple[str, ...]
    sealed: bytes
    shares: tuple[bytes, ...]
    team_id: bytes
    blocks: tuple[bytes, ...]
    bundles: tuple[bytes, ...]
    datagrams: tuple[bytes, ...]

    def encoded(self, kind: str | None = None) -> list[bytes]:
        return [r.encode() for r in self.records if kind is None or r.kind == kind]

    def payloads(self, kind: str) -> list[bytes]:
        return [r.payload for r in self.records if r.kind == kind]


@functools.cache
def samples() -> Samples:
    """Built once per process: signing is slow next to a fuzz case."""
    identity = Identity.generate()
    other = Identity.generate()
    now = int(time.time())
    patterns = tuple(p.read_bytes() for p in sorted((HERE / "patterns").glob("*.md")))
    parsed = parse_pattern(patterns[0])
    manifest, blocks = split(patterns[0])
    summary = Summary.of(parsed, now)
    entry = ManifestEntry(manifest, summary, False)

    def signed(kind: str, name: bytes, payload: bytes) -> SignedRecord:
        return create_record(identity, kind, name, 1, payload, 3600, now=now)

    team_id, salt = new_team_id(identity.public.signing_public, "eng")
    key = bytes(range(32))
    descriptor = Descriptor(team_id, "eng", salt, 0, 2, (identity.public, other.public), commitment(key, team_id, 0))
    shares = tuple(split_key(key, 2, 2))
    sealed = seal(identity.public, shares[0], purpose="share", team_id=team_id, epoch=0)
    request = ShareRequest(team_id, 0, identity.public.signing_public, os.urandom(16), now * 1000)
    answer = ShareAnswer(team_id, 0, identity.public.signing_public, request.nonce,
                         seal(identity.public, shares[1], purpose="unlock-answer", team_id=team_id, epoch=0))
    records = (
        signed("test", b"name", b"payload"),
        signed(MANIFEST_KIND, PUBLIC.manifest_name(parsed.hash), PUBLIC.manifest_payload(entry)),
        signed(HEAD_KIND, PUBLIC.head_name(parsed.id), PUBLIC.summary_payload(summary)),
        signed(INDEX_KIND, PUBLIC.index_name("lookups", parsed.id), PUBLIC.summary_payload(summary)),
        signed(CONTACT_KIND, CONTACT_NAME, encode_contact([("127.0.0.1", 7411), ("::1", 7412)])),
        signed(DESCRIPTOR_KIND, descriptor_name(team_id, 0), descriptor.encode()),
        signed(INBOX_KIND, inbox_name(other.public.node_id, team_id, 0), sealed),
        create_record(identity, REQUEST_KIND, REQUEST_NAME, 1, request.encode(), RECORD_TTL, now=now),
        create_record(identity, ANSWER_KIND, b"team-share", 1, answer.encode(), RECORD_TTL, now=now),
    )
    entries = [r.encode() for r in records[1:4]]
    bundles = (encode_bundle(entries, None), encode_bundle(entries[:1], 7))
    node_id = identity.public.node_id
    values = [*blocks, *(r.encode() for r in records), *bundles]
    datagrams = [
        wire.encode_request(os.urandom(20), "ping", [node_id]),
        wire.encode_request(os.urandom(20), "stun", []),
        wire.encode_request(os.urandom(20), "find_node", [node_id, os.urandom(20)]),
        wire.encode_request(os.urandom(20), "find_value", [node_id, records[1].key]),
        wire.encode_request(os.urandom(20), "find_value", [node_id, topic_key(b"term:lookups"), 3]),
        wire.encode_request(os.urandom(20), "team_share", [node_id, records[7].encode()]),
        *(wire.encode_request(os.urandom(20), "store", [node_id, block_key(v), v]) for v in values[:3]),
        wire.encode_request(os.urandom(20), "store", [node_id, records[0].key, records[0].encode()]),
        wire.encode_response(os.urandom(20), [[node_id, "127.0.0.1", 7411]]),
        wire.encode_response(os.urandom(20), {"value": blocks[0]}),
    ]
    return Samples(
        identity=identity, records=records, manifests=(manifest.encode(),), patterns=patterns,
        scenarios=tuple(p.read_text() for p in sorted((HERE / "scenarios").glob("*.toml"))),
        sealed=sealed, shares=shares, team_id=team_id, blocks=tuple(blocks), bundles=bundles,
        datagrams=tuple(datagrams),
    )


# ------------------------------------------------------------------ strategies
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.sampled_from([bytes(20), b"\xff" * 20, bytes(32), bytes(64)]),
)


def nest(depth: int, innermost: Any = None) -> list:
    """``innermost`` inside ``depth`` lists: what Python's recursive code (repr, ==, copy) cannot walk."""
    value: Any = innermost
    for _ in range(depth):
        value = [value]
    return value


DEEP = st.builds(nest, st.sampled_from([33, 100, 500, 900, 990, 1000, 1010]) | st.integers(1, 1000), SCALARS)
"""Values nested almost as deep as msgpack packs (1024 levels); NESTED goes deeper, as raw bytes."""
MSGPACK = st.recursive(
    SCALARS | DEEP,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
"""Any value msgpack can carry (maps with text keys, as the decoders allow)."""


MUTATIONS = ("flip", "truncate", "extend", "insert", "delete", "set", "splice")
INTERESTING_BYTES = bytes([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xD3, 0xDB, 0xDD, 0xDF, 0xFF])


def mutate(data: bytes, seeds: list[bytes], rng: random.Random) -> bytes:
    """``data`` with one to four bytes flipped, cut, added, removed, overwritten, or spliced from another seed."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        op = rng.choice(MUTATIONS)
        if op == "flip" and at < len(out):
            out[at] ^= 1 << rng.randint(0, 7)
        elif op == "truncate":
            del out[at:]
        elif op == "extend":
            out += rng.randbytes(rng.randint(1, 32))
        elif op == "insert":
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete":
            del out[at:at + rng.randint(1, 8)]
        elif op == "set" and at < len(out):
            out[at] = rng.choice(INTERESTING_BYTES)
        elif op == "splice":
            other = rng.choice(seeds)
            out[at:] = other[rng.randint(0, len(other)):]
    return bytes(out)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A valid encoding, damaged by :func:`mutate`.

    The damage is drawn as one random seed rather than draw by draw: hypothesis
    then generates a case several times faster, and a finding still comes with
    the exact bytes.
    """
    return st.builds(lambda data, n: mutate(data, seeds, random.Random(n)),
                     st.sampled_from(seeds), st.integers(0, 2**64 - 1))


NESTED = st.builds(
    lambda depth, opener, tail: opener * depth + tail,
    st.integers(1, 8000),
    st.sampled_from([b"\x91", b"\x81\xa1k", b"\x92\xc0", b"\xdc\x00\x01"]),
    st.sampled_from([b"\xc0", b"", b"\x90"]),
)
"""Arrays or maps nested thousands deep in a few KiB."""


def garbage(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes for a decoder: mostly damaged valid encodings, then random bytes, msgpack of any shape, deep nesting."""
    return st.one_of(
        mutated(seeds),
        mutated(seeds),
        st.binary(max_size=512),
        MSGPACK.map(wire.pack),
        NESTED,
        st.sampled_from(seeds),
    )


def records_with(kind: str, name: st.SearchStrategy[bytes], payload: st.SearchStrategy[bytes]) -> st.SearchStrategy:
    """Records of ``kind`` whose name and payload are drawn: what the record layer lets through to a payload decoder.

    The signature is not checked by payload decoders (the DHT checked it on
    arrival), so any author with a garbage payload reaches them.
    """
    author = samples().identity.public.signing_public
    return st.builds(
        lambda n, p: SignedRecord(author, kind, n[:MAX_NAME_BYTES], 1, int(time.time()) + 600, p[:MAX_RECORD_BYTES],
                                  bytes(64)),
        name, payload,
    )


# ------------------------------------------------------------------ targets
@dataclass
class Target:
    """One entry point under fuzzing: cases from ``strategy``, fed to what ``open()`` yields."""

    name: str
    strategy: Callable[[], st.SearchStrategy]
    open: Callable[[], contextlib.AbstractContextManager[Callable[[Any], None]]]
    """A context that sets the entry point up and yields the function that feeds it one case."""
    about: str

    def fuzz(self, cases: int, seed: int, *, phases: tuple[Phase, ...] = (Phase.generate, Phase.shrink)) -> int:
        """Run ``cases`` cases; raise the first finding (shrunk, with its input). Returns the cases run."""
        ran = 0
        with self.open() as feed:

            @hypothesis_seed(seed)
            @settings(max_examples=cases, deadline=None, database=None, phases=phases,
                      suppress_health_check=list(HealthCheck))
            @given(self.strategy())
            def case(value: Any) -> None:
                nonlocal ran
                ran += 1
                feed(value)

            case()
        return ran


def refusing(entry: Callable[[Any], Any], *allowed: type[BaseException]) -> Callable[[Any], None]:
    """Feed one case to ``entry``: its documented refusals pass, anything else is a finding."""

    def feed(value: Any) -> None:
        try:
            entry(value)
        except allowed:
            pass
        except Exception as exc:
            raise Finding(f"{type(exc).__name__}: {exc}"[:500]) from exc

    return feed


def pure(entry: Callable[[Any], Any], *allowed: type[BaseException]):
    """An ``open`` for an entry point that needs no setup."""
    return lambda: contextlib.nullcontext(refusing(entry, *allowed))


def _value_case(case: tuple[bytes, bytes, bool]) -> None:
    key, value, found = case
    (check_found if found else check_value)(key, value)


def _value_keys(value: bytes) -> st.SearchStrategy[bytes]:
    """The key a STORE names: the value's real key (block, record or topic), a near miss, or random."""
    keys = [block_key(value), os.urandom(20)]
    with contextlib.suppress(RecordError):
        record = decode_record(value)
        keys += [record.key] + ([record.topic_key] if record.topic_key else [])
    return st.sampled_from(keys) | st.binary(min_size=19, max_size=21)


def value_cases() -> st.SearchStrategy:
    s = samples()
    seeds = [*s.blocks, *s.encoded(), *s.bundles]
    return garbage(seeds).flatmap(lambda v: st.tuples(_value_keys(v), st.just(v), st.booleans()))


def _records_case(case: tuple[bytes, bytes | None]) -> None:
    data, key = case
    parse_and_verify(data, key=key)


def _entries_case(record: SignedRecord) -> None:
    if record.kind == MANIFEST_KIND:
        PUBLIC.manifest_of(record)
        manifest_blocks(record)
    else:
        PUBLIC.summary_of(record)
    decode_summary(record.payload)
    ManifestEntry.decode(record.payload)


def entries_cases() -> st.SearchStrategy:
    s = samples()
    payloads = s.payloads(MANIFEST_KIND) + s.payloads(HEAD_KIND)
    names = st.sampled_from([r.name for r in s.records]) | st.binary(max_size=80)
    return st.one_of(*(records_with(kind, names, garbage(payloads)) for kind in (MANIFEST_KIND, HEAD_KIND, INDEX_KIND)))


def _teams_case(case: tuple[str, Any]) -> None:
    what, value = case
    s = samples()
    if what == "descriptor":
        descriptor_of(value)
    elif what == "inbox":
        share_of(value)
        parse_inbox_name(value.name)
    elif what == "approval":
        approval_of(value)
    elif what == "sealed":
        open_sealed(s.identity, value, purpose="share", team_id=s.team_id, epoch=0)
    elif what == "shares":
        combine_shares(value)
    elif what == "request":
        ShareRequest.decode(value)
    else:
        ShareAnswer.decode(value)


def teams_cases() -> st.SearchStrategy:
    s = samples()
    inbox_names = st.sampled_from([r.name for r in s.records if r.kind == INBOX_KIND]).flatmap(
        lambda n: mutated([n]) | st.just(n))
    approval = Approval(s.team_id, 1, hashlib.sha256(b"a proposed epoch").digest(), s.identity.public.signing_public)
    approval_names = st.just(approval.name()).flatmap(lambda n: mutated([n]) | st.just(n))
    return st.one_of(
        st.tuples(st.just("descriptor"), records_with(
            DESCRIPTOR_KIND, st.sampled_from([r.name for r in s.records]), garbage(s.payloads(DESCRIPTOR_KIND)))),
        st.tuples(st.just("approval"), records_with(APPROVAL_KIND, approval_names, garbage([approval.encode()]))),
        st.tuples(st.just("inbox"), records_with(INBOX_KIND, inbox_names, garbage([s.sealed]))),
        st.tuples(st.just("sealed"), garbage([s.sealed])),
        st.tuples(st.just("shares"), st.lists(garbage(list(s.shares)) | st.sampled_from(s.shares), max_size=5)),
        st.tuples(st.just("request"), garbage(s.payloads(REQUEST_KIND))),
        st.tuples(st.just("answer"), garbage(s.payloads(ANSWER_KIND))),
    )


def _answer_case(data: bytes) -> None:
    s = samples()
    request = ShareRequest.decode(s.payloads(REQUEST_KIND)[0])
    read_answer(data, s.identity.public, request)


def _contact_case(record: SignedRecord) -> None:
    contact_of(record)


def _share_file_case(data: bytes) -> None:
    parse_share_file(data)


def share_file_cases() -> st.SearchStrategy[bytes]:
    s = samples()
    records = {r.kind: r for r in s.records}
    return garbage([share_file([records[DESCRIPTOR_KIND]], records[INBOX_KIND])])


def _announcement_case(case: tuple[Any, Any, Any]) -> None:
    properties, addresses, port = case
    parse_peer(properties, addresses, port, own_id=bytes(20), listen_host="0.0.0.0")


def announcement_cases() -> st.SearchStrategy[tuple[Any, Any, Any]]:
    """An mDNS announcement's TXT properties, addresses and port: right, wrong and of any type.

    The addresses are always a list, as zeroconf's ``parsed_addresses`` gives them; what is in it is not.
    """
    node_id = samples().identity.public.node_id.hex().encode()
    values = st.sampled_from([node_id, PROTOCOL_VERSION.encode(), node_id.upper(), b"1"]) | st.binary(max_size=48)
    properties = st.dictionaries(st.sampled_from([b"id", b"v"]) | st.binary(max_size=4), values | MSGPACK, max_size=4)
    addresses = st.lists(st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0", "224.0.0.251", "0.0.0.0", "10.1.2.3"])
                         | st.text(max_size=40) | SCALARS, max_size=12)
    return st.tuples(properties | MSGPACK, addresses, st.integers(-1, 70000) | SCALARS)


def _pattern_case(data: bytes) -> None:
    parse_pattern(data)


def _scenario_case(text: str) -> None:
    parse_scenario(text)


def scenario_cases() -> st.SearchStrategy[str]:
    texts = [t.encode() for t in samples().scenarios]
    return st.one_of(
        mutated(texts).map(lambda b: b.decode("utf-8", "replace")),
        st.text(max_size=300),
        st.builds(lambda t, at, x: t[:at] + x + t[at:], st.sampled_from(samples().scenarios), st.integers(0, 2000),
                  st.text(max_size=40)),
    )


# ------------------------------------------------------------------ the node on loopback
RPC_NAMES = sorted(protocol.RPC_ARITY)


def rpc_arguments() -> st.SearchStrategy[list]:
    """Arguments as an RPC expects them (node IDs, keys, values, offsets), some wrong, of any arity."""
    s = samples()
    node_id = s.identity.public.node_id
    values = [*s.blocks, *s.encoded(), *s.bundles]
    argument = st.one_of(
        st.just(node_id),
        st.binary(min_size=20, max_size=20),
        st.sampled_from([block_key(v) for v in values] + [r.key for r in s.records]),
        st.sampled_from(values),
        mutated(values),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        MSGPACK,
    )
    return st.lists(argument, max_size=5)


@st.composite
def datagrams(draw: st.DrawFn) -> tuple[bytes, int]:
    """A datagram for the node, and which of its outstanding requests a response should answer (if any)."""
    s = samples()
    msg_id = draw(st.binary(min_size=20, max_size=20))
    kind = draw(st.sampled_from(("request", "request", "mutated", "response", "random", "nested")))
    if kind == "request":
        name = draw(st.sampled_from(RPC_NAMES) | st.text(max_size=12))
        data = wire.REQUEST.to_bytes() + msg_id + wire.pack([name, draw(rpc_arguments())])
    elif kind == "mutated":
        data = draw(mutated(list(s.datagrams)))
    elif kind == "response":
        data = wire.RESPONSE.to_bytes() + msg_id + wire.pack(draw(MSGPACK))
    elif kind == "random":
        data = draw(st.binary(max_size=9000))
    else:
        data = draw(st.sampled_from((wire.REQUEST, wire.RESPONSE))).to_bytes() + msg_id + draw(NESTED)
    return data, draw(st.integers(0, 1 << 16))


class LoopbackNode:
    """A real node (and an honest peer) on 127.0.0.1, each with a real SQLite home, driven from synchronous code."""

    def __init__(self, config: NodeConfig = QUIET) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="aether-fuzz-")
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict] = []
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        home = Path(self.folder.name)
        self.node = self.run(start_node(home / "target", config))
        self.honest = self.run(start_node(home / "honest", QUIET))
        self.peer = self.run(asyncio_dgram.bind(("127.0.0.1", 0)))
        """A socket of the fuzzer's, the sender of every fuzzed datagram; it reads nothing."""
        self.peer_address = self.peer.sockname[:2]

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def deliver(self, data: bytes, answer: int) -> None:
        """Hand the datagram to the node as its transport would, from the fuzzer's socket; a response may
        carry the ID of one of the node's outstanding requests (and then comes from that request's peer)."""
        proto = self.node.protocol
        address = self.peer_address
        if data[:1] == wire.RESPONSE.to_bytes() and proto._outstanding and answer % 2:
            msg_id, pending = list(proto._outstanding.items())[answer % len(proto._outstanding)]
            data, address = data[:1] + msg_id + data[wire.HEADER_BYTES:], pending[2]

        async def receive() -> None:
            proto.datagram_received(data, address)
            await asyncio.sleep(0)

        self.run(receive())
        if self.errors:
            raise Finding(f"the event loop caught: {self.errors.pop()!r}"[:500])

    def check_serving(self) -> None:
        """An honest peer's FIND_NODE and FIND_VALUE over real UDP are still answered, and tables stay bounded."""
        self.run(self._serving())
        proto = self.node.protocol
        sizes = {
            "outstanding": (len(proto._outstanding), protocol.MAX_OUTSTANDING),
            "last_seen": (len(proto._last_seen), protocol.MAX_REMEMBERED_SEEN),
            "timed_out": (len(proto._timed_out), protocol.MAX_REMEMBERED_TIMEOUTS),
            "contacts": (len(proto.contacts()), 160 * proto.router.ksize),
            "replay cache": (len(self.node.team_answerer._seen), MAX_SEEN),
            "pending approvals": (len(self.node.team_answerer._pending), MAX_PENDING),
        }
        over = {name: size for name, size in sizes.items() if size[0] > size[1]}
        if over:
            raise Finding(f"tables over their limits (size, limit): {over}")

    async def _serving(self) -> None:
        honest, address = self.honest, address_of(self.node)
        block = b"an honest block " + os.urandom(8)
        receiver = Node(self.node.node.id, *address)
        ok, reply = await honest.protocol.call_store(receiver, block_key(block), block)  # with its proof of ID
        if not (ok and isinstance(reply, dict) and reply.get("stored")):
            raise Finding(f"an honest STORE was not accepted after the fuzzing: {ok} {reply!r}")
        ok, reply = await honest.protocol.find_node(address, honest.node.id, os.urandom(20))
        if not (ok and isinstance(reply, list)):
            raise Finding(f"an honest FIND_NODE was not answered after the fuzzing: {ok} {reply!r}")
        ok, reply = await honest.protocol.find_value(address, honest.node.id, block_key(block))
        if not (ok and reply == {"value": block}):
            raise Finding(f"an honest FIND_VALUE was not answered after the fuzzing: {ok} {reply!r}")

    def close(self) -> None:
        self.peer.close()
        stop_all([self.node, self.honest])
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
        self.folder.cleanup()


@contextlib.contextmanager
def node_target() -> Iterator[Callable[[Any], None]]:
    """A node that takes the fuzzed datagrams; at the end it must still serve an honest peer."""
    harness = LoopbackNode()
    try:
        yield lambda case: harness.deliver(*case)
        harness.check_serving()
    finally:
        harness.close()


CONTACT_FIELDS = st.one_of(
    SCALARS, st.binary(min_size=20, max_size=20), st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "localhost", ""]),
    st.integers(-1, 65536),
)
"""What a FIND_NODE reply's ``[id, host, port]`` triples are made of, right and wrong."""
REPLY_RPCS = ("ping", "identify", "store", "find_node", "find_value", "team_share")


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A request the node sends, and the bytes a hostile peer answers it with (a response body, or raw bytes)."""
    s = samples()
    rpc = draw(st.sampled_from(REPLY_RPCS))
    body = draw(st.one_of(
        MSGPACK.map(wire.pack),
        st.sampled_from([{"value": v} for v in [*s.blocks, *s.encoded(), *s.bundles]]).map(wire.pack),
        st.builds(lambda v: wire.pack({"value": v}), mutated([*s.bundles, *s.encoded()])),
        st.builds(lambda a: wire.pack({"answer": a}), garbage(s.encoded(ANSWER_KIND))),
        st.builds(lambda e, m: wire.pack({"error": e, "message": m}), DEEP | MSGPACK, SCALARS),
        st.builds(lambda k, v: wire.pack({k: v}), st.sampled_from(["error", "message", "value", "answer", "pending"]),
                  DEEP),
        st.lists(st.lists(CONTACT_FIELDS, max_size=4), max_size=25).map(wire.pack),
        NESTED,
        st.binary(max_size=600),
    ))
    return rpc, body


class HostilePeer(LoopbackNode):
    """The node asks a peer of the fuzzer's; the peer answers with garbage; the node reads the reply as it would."""

    def answer(self, case: tuple[str, bytes]) -> None:
        self.run(self._exchange(*case))
        if self.errors:
            raise Finding(f"the event loop caught: {self.errors.pop()!r}"[:500])

    async def _exchange(self, rpc: str, body: bytes) -> None:
        s, proto, server = samples(), self.node.protocol, self.node
        peer = Node(self.peer_id, *self.peer_address)  # one contact: no full bucket, no pings of our own
        key = s.records[1].key
        if rpc == "ping":
            call = proto.call_ping(peer)
        elif rpc == "identify":  # the reply is read and checked as a STORE's first exchange reads it
            call = proto.proofs._identify(peer, (peer.id, peer.ip, peer.port))
        elif rpc == "store":  # sent as after a proof: the STORE reply's own handling
            call = proto.store(self.peer_address, proto.source_node.id, key, s.records[1].encode())
        elif rpc == "team_share":
            call = proto.call_team_share(self.peer_address, s.records[7].encode())
        else:
            call = proto.query(peer, key, rpc == "find_value")
        task = asyncio.ensure_future(call)
        request = await self._request(rpc)
        reply = wire.RESPONSE.to_bytes() + request[1:wire.HEADER_BYTES] + body
        await self.peer.send(reply, self.node_address)
        taken_body = None  # what the node reads: the hostile body, or the None sent after a malformed one
        with contextlib.suppress(wire.WireError):
            taken_body = wire.decode(reply).body
            reply = b""
        if reply:  # dropped as malformed: the request still waits, and a well-formed reply must end it
            await self.peer.send(wire.encode_response(request[1:wire.HEADER_BYTES], None), self.node_address)
        result = await asyncio.wait_for(task, 30)
        if rpc == "identify":
            return  # a hostile reply leaves the peer unproven (None); nothing raised is what counts
        taken = result[0] if isinstance(result, tuple) else result.ok
        if rpc == "ping":  # a PING reply counts only if it names the ID asked (node/protocol.py)
            if taken != (taken_body == peer.id):
                raise Finding(f"the node {'took' if taken else 'refused'} the PING reply {taken_body!r:.80}")
            return
        if not taken:
            raise Finding(f"the node did not take a well-formed reply to its {rpc}")
        if rpc == "store":
            server.refusal(peer, result[1])
        elif rpc == "team_share":
            reply = result[1]
            with contextlib.suppress(UnlockError):
                read_answer(reply.get("answer") if isinstance(reply, dict) else None, s.identity.public,
                            ShareRequest.decode(s.records[7].payload))
        elif rpc == "find_value" and result.value is not None:
            with contextlib.suppress(ValueRejected):
                check_found(key, result.value)

    async def _request(self, rpc: str) -> bytes:
        """The node's request for ``rpc``, past any other datagram the node sent this socket."""
        while True:
            data, _ = await asyncio.wait_for(self.peer.recv(), 10)
            if wire.decode(data).body[0] == rpc:
                return data

    @property
    def peer_id(self) -> bytes:
        return samples().identity.public.node_id

    @property
    def node_address(self) -> tuple[str, int]:
        return address_of(self.node)


@contextlib.contextmanager
def replies_target() -> Iterator[Callable[[Any], None]]:
    """A node whose requests a hostile peer answers; its reading of the replies must refuse cleanly."""
    harness = HostilePeer(PATIENT)
    try:
        yield harness.answer
        harness.check_serving()
    finally:
        harness.close()


# ------------------------------------------------------------------ the control socket
class ControlHarness:
    """A control server on a real Unix socket in a temporary home, in front of a real node's library."""

    def __init__(self) -> None:
        from aether.node import api
        from aether.node.patterns import PatternLibrary

        self.node_harness = LoopbackNode()
        self.home = Path(self.node_harness.folder.name) / "control"
        self.home.mkdir()
        library = PatternLibrary(self.node_harness.node, TeamSettings())
        self.server = ControlServer(self.home, functools.partial(api.handle, library))
        self.node_harness.run(self.server.start())
        self.internal: list[str] = []

    def request(self, case: tuple[str, bytes]) -> None:
        how, body = case
        self.node_harness.run(self._exchange(how, body))
        if self.node_harness.errors:
            raise Finding(f"the event loop caught: {self.node_harness.errors.pop()!r}"[:500])

    async def _exchange(self, how: str, body: bytes) -> None:
        reader, writer = await asyncio.open_unix_connection(self.server.socket_path)
        try:
            header = len(body).to_bytes(HEADER, "big")
            if how == "lying header":
                header = (len(body) + 1 + len(body) % 7).to_bytes(HEADER, "big")
            writer.write(header + body)
            if how == "lying header":
                writer.write_eof()
            await writer.drain()
            length = int.from_bytes(await asyncio.wait_for(reader.read(HEADER), 10) or b"\0\0\0\0", "big")
            if how == "lying header" and not length:
                return  # the client's frame ended early: the server closes without a reply
            reply = wire.unpack(await asyncio.wait_for(reader.readexactly(length), 10), limit=1 << 24)
            if not (isinstance(reply, dict) and isinstance(reply.get("ok"), bool)):
                raise Finding(f"the control server sent no well-formed reply: {reply!r}"[:500])
            error = reply.get("error") or {}
            if error.get("reason") == "internal":
                raise Finding(f"an operation failed inside the daemon: {error.get('message')}")
        finally:
            writer.close()

    def close(self) -> None:
        self.node_harness.run(self.server.close())
        self.node_harness.close()


def control_cases() -> st.SearchStrategy[tuple[str, bytes]]:
    from aether.node.api import NODE_OPS, OPS

    ops = sorted([*OPS, *NODE_OPS])
    arg_names = st.sampled_from(["ref", "refs", "term", "terms", "paths", "files", "data", "name", "team", "author",
                                 "output", "size", "force", "id", "policy", "who", "all", "timeout", "threshold",
                                 "members", "source", "bytes", "terms", "limit"]) | st.text(max_size=8)
    requests = st.builds(
        lambda op, args: wire.pack({"op": op, "args": args}),
        st.sampled_from(ops) | st.text(max_size=10),
        st.dictionaries(arg_names, MSGPACK, max_size=4),
    )
    seeds = [wire.pack({"op": op, "args": {}}) for op in ops]
    bodies = st.one_of(requests, requests, mutated(seeds), MSGPACK.map(wire.pack), NESTED, st.binary(max_size=200))
    return st.tuples(st.sampled_from(("frame", "frame", "frame", "lying header")), bodies)


@contextlib.contextmanager
def control_target() -> Iterator[Callable[[Any], None]]:
    harness = ControlHarness()
    try:
        yield harness.request
    finally:
        harness.close()


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("wire", lambda: garbage(list(samples().datagrams)), pure(wire.decode, wire.WireError),
               "node/wire.py decode: any datagram"),
        Target("records",
               lambda: st.tuples(garbage(samples().encoded()), st.none() | st.binary(min_size=20, max_size=20)),
               pure(_records_case, RecordError), "crypto/records.py decode_record + verify_record"),
        Target("values", value_cases, pure(_value_case, ValueRejected),
               "node/values.py check_value / check_found (STORE and FIND_VALUE values, entry pages)"),
        Target("manifest", lambda: garbage(list(samples().manifests)), pure(Manifest.decode, ManifestError),
               "node/chunks.py Manifest.decode"),
        Target("entries", entries_cases, pure(_entries_case, EntryError),
               "node/entries.py manifest, head and index entries"),
        Target("contact",
               lambda: records_with(CONTACT_KIND, st.just(CONTACT_NAME), garbage(samples().payloads(CONTACT_KIND))),
               pure(_contact_case, ContactError), "node/contact.py contact_of"),
        Target("teams", teams_cases, pure(_teams_case, TeamError, TeamCryptoError),
               "node/teams.py descriptors, approvals and share deliveries, crypto/teams.py sealed shares and Shamir shares, "
               "node/team_unlock.py share requests and answers"),
        Target("answers", lambda: garbage(samples().encoded(ANSWER_KIND)), pure(_answer_case, UnlockError),
               "node/team_unlock.py read_answer"),
        Target("share-file", share_file_cases, pure(_share_file_case, TeamError),
               "node/team_ceremony.py parse_share_file (team import-share)"),
        Target("mdns", announcement_cases, pure(_announcement_case),
               "node/discovery.py parse_peer: a local network announcement"),
        Target("pattern", lambda: garbage(list(samples().patterns)), pure(_pattern_case, PatternError),
               "node/pattern.py parse_pattern"),
        Target("scenario", scenario_cases, pure(_scenario_case, ScenarioError), "simulations/scenario.py parse"),
        Target("node", datagrams, node_target,
               "datagram_received of a real node on 127.0.0.1: every RPC, any arguments, responses"),
        Target("replies", replies, replies_target,
               "a hostile peer's replies to the node's PING, STORE, FIND_NODE, FIND_VALUE and TEAM_SHARE"),
        Target("control", control_cases, control_target, "node/control.py server and node/api.py operations"),
    )
}


# ------------------------------------------------------------------ the script
@dataclass
class Outcome:
    target: str
    cases: int
    seconds: float
    finding: str | None = None
    peak_rss_kib: int = field(default_factory=lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run(name: str, cases: int, seed: int) -> Outcome:
    """Fuzz one target; a finding is reported with its shrunk input rather than raised."""
    started = time.perf_counter()
    target = TARGETS[name]
    try:
        ran = target.fuzz(cases, seed)
        finding = None
    except Exception as exc:  # the finding (hypothesis has printed the falsifying example)
        ran = cases
        finding = "".join(traceback.format_exception_only(exc)).strip()[:2000]
    return Outcome(name, ran, time.perf_counter() - started, finding)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aether.simulations.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets")
    options = parser.parse_args(argv)
    findings = 0
    print(f"{'target':<10} {'cases':>8} {'cases/s':>8} {'peak RSS MiB':>12}  findings", flush=True)
    for name in options.target or list(TARGETS):
        outcome = run(name, options.cases, options.seed)
        findings += outcome.finding is not None
        print(f"{name:<10} {outcome.cases:>8} {outcome.cases / outcome.seconds:>8.0f} "
              f"{outcome.peak_rss_kib / 1024:>12.1f}  {outcome.finding or 0}", flush=True)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

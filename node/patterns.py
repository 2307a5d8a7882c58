"""Patterns on the network: publish, fetch, search, history, pins.

A pattern travels as content blocks plus a signed manifest, both placed on the
k nodes closest to the pattern's key (derived from its hash), so that a fetch
is one lookup for that key followed by block reads from the nodes that
answered, in parallel, with no lookup per block. Each author's newest version
of a pattern ID is a signed head under the ID's shared key, and the words a
pattern can be found by are signed index entries under shared term keys (see
:mod:`aether.node.entries`).

Every block is checked against its key and the whole file against its hash
before anything is returned: a holder that alters a byte is caught, left out,
and the block is read from another holder.

Team patterns take the same path through a team epoch's space
(:class:`aether.node.entries.TeamSpace`): keyed locators for topics, encrypted
summaries, and the encrypted blob split into blocks (docs/teams.md "Team
patterns"). Reads try the public space, then every unlocked team epoch.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field, replace

from kademlia.node import Node

from aether.crypto.identity import IdentityError, PublicIdentity, node_id_for
from aether.crypto.records import SignedRecord, create_record
from aether.node import entries as E
from aether.node.chunks import Manifest, ManifestError, assemble, split
from aether.node.config import TeamSettings
from aether.node.pattern import PATTERN_ID, Pattern, parse_pattern
from aether.node.server import REFUSED_ELSEWHERE, AetherNode, Spares, charge_of, next_seq
from aether.node.team_keys import unlocked_key, unlocked_keys
from aether.node.values import Entry, ValueRejected, check_value
from aether.storage.store import BLOCK, StoredEntry, TeamRow, value_charge

HASH = re.compile(r"[0-9a-f]{64}")
MAX_PARALLEL_STORES = 24
"""Block STOREs in flight while placing a pattern: a 1 MiB pattern is 171 blocks × k nodes,
more than a receiver's socket buffer takes at once."""
STORE_ATTEMPTS = 3
#: What a head record's history (up to MAX_HISTORY earlier hashes and times) adds to it.
HEAD_HISTORY_BYTES = E.MAX_HISTORY * 48
MAX_PARALLEL_PULLS = 16


class PatternNotFound(LookupError):
    """Nobody reachable holds what was asked for."""


class AmbiguousPattern(LookupError):
    """Several authors publish the pattern ID; the caller must choose one."""


class TeamLocked(LookupError):
    """What was asked for could only be in a team whose key is not unlocked on this node."""

    def __init__(self, refs: list[str], what: str = ""):
        super().__init__(what + "; ".join(f"team locked: run aether-node team unlock {ref}" for ref in refs))
        self.refs = refs
        """How ``team unlock`` takes each locked team: its name, or its ID where the name is shared."""


@dataclass(frozen=True)
class Authored:
    """A summary with the key that signed it."""

    summary: E.Summary
    author: bytes
    """The signer's Ed25519 public key."""
    space: E.Space = E.PUBLIC
    """Where it was found: the public space or a team's."""

    @property
    def author_id(self) -> str:
        return node_id_for(self.author).hex()


@dataclass
class Published:
    pattern: Pattern
    unchanged: bool
    replicas: int = 0
    """Nodes that acknowledged the manifest and every block (besides this one)."""
    index_terms: int = 0
    placed_after: float = 0.0
    """Seconds until the pattern itself (manifest and blocks) was on its k nodes."""
    seconds: float = 0.0
    """Seconds until everything (pattern, head, search entries) was placed."""
    team: E.TeamMark | None = None
    """The team (and epoch) it was published to, None for a public pattern."""


@dataclass
class Fetched:
    data: bytes
    hash: str
    summary: E.Summary
    authors: list[str]
    """Node IDs (hex) of the publishers whose signed manifests name these bytes."""
    mirrors: list[str] = field(default_factory=list)
    """Node IDs of nodes that signed a kept copy (a pin) of them."""
    signature_ok: bool = True
    local: bool = False
    tampered: int = 0
    """Holders caught returning altered blocks, and left out."""
    space: E.Space = E.PUBLIC
    blob: bytes = b""
    """The bytes the blocks make up: ``data`` itself for a public pattern, its "ATP1" blob for a team's."""


@dataclass(frozen=True)
class Held:
    """A pattern held on this node, for ``ls``."""

    summary: E.Summary | None
    """None for a team pattern this node holds for others and cannot read."""
    role: str
    pinned: bool
    complete: bool
    team: E.TeamMark | None = None
    key: str = ""
    """The pattern's DHT key (hex)."""


def _charge(record: SignedRecord) -> int:
    """What holding one of our entries costs against the quota."""
    key = record.topic_key
    assert key is not None
    return charge_of(Entry(key, record.encode(), record))


def is_hash(ref: str) -> bool:
    return HASH.fullmatch(ref) is not None


def author_matches(author: bytes, wanted: str) -> bool:
    """``--author`` takes an identity string, a node ID, or a prefix of at least 8 hex digits of one."""
    wanted = wanted.strip()
    if wanted.startswith("aether1"):
        try:
            return PublicIdentity.from_string(wanted).signing_public == author
        except IdentityError:
            return False
    return len(wanted) >= 8 and node_id_for(author).hex().startswith(wanted.lower())


class PatternLibrary:
    """The pattern operations of one node, shared by the daemon and the one-shot CLI."""

    def __init__(self, node: AetherNode, teams: TeamSettings | None = None):
        self.node = node
        self.teams = teams or TeamSettings()  # [teams] in config.toml: how long an unlock lasts
        self.store = node.store
        self.max_pattern_bytes = node.config.max_pattern_bytes
        self._stores = asyncio.Semaphore(MAX_PARALLEL_STORES)

    @property
    def me(self) -> bytes:
        return self.node.identity.public.signing_public

    # ------------------------------------------------------------------ publish
    async def publish(self, data: bytes, source: str = "<pattern>", team: TeamRow | None = None) -> Published:
        """Validate, sign and place a pattern; the same bytes published again change nothing.

        With ``team``, the pattern is validated in clear, then encrypted with the team's
        current epoch key and placed exactly like a public one under keyed locators
        (docs/teams.md "Team patterns"); a locked team is refused before anything is stored.
        """
        pattern = parse_pattern(data, source=source, max_bytes=self.max_pattern_bytes)
        space = E.PUBLIC if team is None else self._publishing_space(team)
        key = space.pattern_key(pattern.hash)
        head = self.store.entry(space.id_key(pattern.id), self.me, space.head_name(pattern.id))
        if head is not None and self.store.entry(key, self.me, space.manifest_name(pattern.hash)) is not None:
            if space.summary_of(_record(head)).hash == pattern.hash:
                return Published(pattern, unchanged=True, team=space.team)

        manifest, blocks = split(space.seal_pattern(data))
        summary = E.Summary.of(pattern, int(time.time()))
        ttl = int(self.node.config.record_ttl)
        manifest_record = self._manifest_record(space, manifest, summary, mirror=False, ttl=ttl)
        terms = E.index_terms(pattern)
        index_records = [
            create_record(self.node.identity, E.INDEX_KIND, space.index_name(term, pattern.id),
                          next_seq(self._held_seq(space.term_key(term), space.index_name(term, pattern.id))),
                          space.summary_payload(summary), ttl)
            for term in terms
        ]
        # Room for all of it first, so a publish past the quota stores nothing. The
        # head is signed later (it carries the history): it is charged as the
        # manifest with a full history.
        needed = sum(value_charge(len(k), len(b)) for k, b in zip(manifest.blocks, blocks) if not self._kept(k))
        needed += sum(_charge(r) for r in [manifest_record, *index_records]) + _charge(manifest_record) + HEAD_HISTORY_BYTES
        self.node.reserve_own(f"publishing {pattern.id} ({len(data):,} bytes)", needed)
        # Held here first, pinned: the pattern is safe on this node before the network sees it.
        for block_key, block in zip(manifest.blocks, blocks):
            self.store.put(block_key, block, kind=BLOCK, role="own", pinned=True)
        started = time.perf_counter()
        # The pattern first, on its own: once it is on k nodes it survives us; the
        # head and the search entries, which point at it, follow together.
        replicas, placed_after = await self._place(manifest_record, manifest, blocks, started)
        headed, *indexed = await asyncio.gather(
            self._publish_head(space, pattern, summary, head, ttl),
            *(self.node.put_entry(r) for r in index_records),
            return_exceptions=True,
        )
        # The head must be out; a search term that could not be placed is not fatal.
        if isinstance(headed, BaseException):
            raise headed
        terms_placed = sum(not isinstance(r, BaseException) for r in indexed)
        return Published(pattern, unchanged=False, replicas=replicas, index_terms=terms_placed,
                         placed_after=placed_after, seconds=time.perf_counter() - started, team=space.team)

    def _publishing_space(self, team: TeamRow) -> E.TeamSpace:
        """The team's current epoch, whose key must be unlocked here to publish."""
        key = unlocked_key(self.node, team.team_id, team.epoch)
        if key is None:
            raise TeamLocked(self._refs([team]))
        return E.TeamSpace(team.name, team.team_id, team.epoch, key)

    def spaces(self) -> list[E.Space]:
        """Where fetch and search look: the public space, then every unlocked epoch of this node's teams."""
        found: list[E.Space] = [E.PUBLIC]
        for row in self.store.teams():
            for epoch, key in sorted(unlocked_keys(self.node, row.team_id).items(), reverse=True):
                found.append(E.TeamSpace(row.name, row.team_id, epoch, key))
        return found

    def locked_teams(self) -> list[TeamRow]:
        """This node's teams whose current epoch is not unlocked: what they hold cannot be found."""
        return [row for row in self.store.teams() if row.epoch not in unlocked_keys(self.node, row.team_id)]

    def _refs(self, rows: list[TeamRow]) -> list[str]:
        """How a command names each team: its name, or its ID where another team of this node shares the name."""
        names = [row.name for row in self.store.teams()]
        return [row.name if names.count(row.name) == 1 else row.team_id.hex() for row in rows]

    def _not_found(self, message: str) -> LookupError:
        """PatternNotFound, or TeamLocked naming the locked teams that might have held it."""
        locked = self.locked_teams()
        return TeamLocked(self._refs(locked), message + "; ") if locked else PatternNotFound(message)

    async def _publish_head(
        self, space: E.Space, pattern: Pattern, summary: E.Summary, head: StoredEntry | None, ttl: int
    ) -> None:
        """The author's newest version of the pattern ID, with the versions before it."""
        head_key = space.id_key(pattern.id)
        placement = None
        previous = _record(head) if head is not None else None
        if previous is None:
            # First publication from this node's store: an earlier one may still be on the network.
            found = await self.node.get_entries(head_key)
            placement = found
            previous = next((e.record for e in found.entries if e.record.author == self.me
                             and e.record.kind == E.HEAD_KIND), None)
        history: tuple[tuple[str, int], ...] = ()
        if previous is not None:
            try:
                last = space.summary_of(previous)
            except E.EntryError:
                last = None
            if last is not None and last.hash != pattern.hash:
                history = ((last.hash, last.time), *last.history)[: E.MAX_HISTORY]
            elif last is not None:
                history = last.history
        record = create_record(
            self.node.identity, E.HEAD_KIND, space.head_name(pattern.id),
            next_seq(previous.seq if previous is not None else 0),
            space.summary_payload(replace(summary, history=history)), ttl,
        )
        await self.node.put_entry(record, placement=placement)

    def _held_seq(self, key: bytes, name: bytes) -> int:
        held = self.store.entry(key, self.me, name)
        return held.seq if held is not None else 0

    def _manifest_record(
        self, space: E.Space, manifest: Manifest, summary: E.Summary, *, mirror: bool, ttl: int
    ) -> SignedRecord:
        name = space.manifest_name(summary.hash)
        payload = space.manifest_payload(E.ManifestEntry(manifest, replace(summary, history=()), mirror))
        return create_record(self.node.identity, E.MANIFEST_KIND, name,
                             next_seq(self._held_seq(space.pattern_key(summary.hash), name)), payload, ttl)

    async def _place(
        self, record: SignedRecord, manifest: Manifest, blocks: list[bytes], started: float | None = None
    ) -> tuple[int, float]:
        """Manifest and blocks on the k nodes closest to the pattern's key: one lookup for all of them.

        Returns how many nodes acknowledged the manifest and every block, and
        the seconds since ``started`` (default: now) when the last of them did. A
        block STORE that goes unanswered is sent again (datagrams are lost when a
        receiver's socket buffer fills during a burst).
        """
        started = time.perf_counter() if started is None else started
        key = record.topic_key
        assert key is not None
        checked = check_value(key, record.encode())
        assert isinstance(checked, Entry)
        self.node.keep_entry(checked, role="own", pinned=True)
        found = await self.node.lookup(key)
        targets, rest = self.node.replica_targets(key, found.closest, found.beyond)
        spares = Spares(self.node, key, targets, rest)

        async def put(node: Node, block_key: bytes, block: bytes) -> str | None:
            """None once stored, else why not."""
            for _ in range(STORE_ATTEMPTS):
                async with self._stores:
                    ok, body = await self.node.protocol.call_store(node, block_key, block)
                if ok:
                    return self.node.refusal(node, body)
            return "unreachable"

        async def put_all(node: Node | None) -> bool:
            # Manifest and blocks together: a holder links blocks to the pattern
            # whichever arrives first (the links table), so no round is spent waiting.
            # A node with no room passes its copy to the next closest node.
            while node is not None:
                outcomes = await asyncio.gather(
                    put(node, key, checked.data), *(put(node, k, b) for k, b in zip(manifest.blocks, blocks))
                )
                if all(o is None for o in outcomes):
                    return True
                node = await spares.next() if REFUSED_ELSEWHERE.intersection(outcomes) else None
            return False

        complete = await asyncio.gather(*(put_all(n) for n in targets))
        return sum(complete), time.perf_counter() - started

    # ------------------------------------------------------------------ fetch
    async def resolve(self, ref: str, author: str | None = None) -> Authored:
        """The newest version of a pattern ID (by one author), or the summary of a hash."""
        if is_hash(ref):
            for space in self.spaces():
                found = await self._manifests(space, ref)
                if found:
                    return found[0]
            raise self._not_found(f"no reachable node holds pattern {ref}")
        if PATTERN_ID.fullmatch(ref) is None:
            raise ValueError(f"{ref!r} is neither a 64-hex pattern hash nor a pattern ID like Pattern-DHT-001")
        heads = await self.heads(ref)
        if author is not None:
            heads = [h for h in heads if author_matches(h.author, author)]
            if not heads:
                raise PatternNotFound(f"no version of {ref} by {author} was found")
        if not heads:
            raise self._not_found(f"no reachable node knows pattern {ref}")
        authors = {h.author for h in heads}
        if len(authors) > 1 and len({h.summary.hash for h in heads}) > 1:
            mine = [h for h in heads if h.author == self.me]
            if mine:
                return mine[0]
            listing = ", ".join(f"{h.author_id[:16]} ({h.summary.hash[:12]})" for h in heads)
            raise AmbiguousPattern(f"{len(authors)} authors publish {ref}: {listing}; choose one with --author")
        return heads[0]

    async def heads(self, pattern_id: str) -> list[Authored]:
        """Each author's newest head for a pattern ID in every space this node reads, newest first."""
        spaces = self.spaces()
        found = await asyncio.gather(*(self.node.get_entries(space.id_key(pattern_id)) for space in spaces))
        heads = []
        for space, result in zip(spaces, found):
            for entry in result.entries:
                if entry.record.kind != E.HEAD_KIND:
                    continue
                try:
                    summary = space.summary_of(entry.record)
                except E.EntryError:
                    continue
                if summary.id.lower() == pattern_id.lower():
                    heads.append(Authored(summary, entry.record.author, space))
        heads.sort(key=lambda h: -h.summary.time)
        return heads

    async def fetch(self, ref: str, author: str | None = None) -> Fetched:
        """The exact bytes of a pattern by hash or ID, every block and the whole checked.

        A hash is looked for in the public space first, then in each unlocked team
        epoch; an ID in the space its newest head was found in. A team pattern is
        decrypted and checked against its plaintext hash before it is returned.
        """
        if not is_hash(ref):
            found = await self.resolve(ref, author)
            fetched = await self._fetch_in(found.space, found.summary.hash)
            if fetched is None:
                raise PatternNotFound(f"no reachable node holds pattern {found.summary.hash}")
            return fetched
        for space in self.spaces():
            fetched = await self._fetch_in(space, ref)
            if fetched is not None:
                return fetched
        raise self._not_found(f"no reachable node holds pattern {ref}")

    async def _fetch_in(self, space: E.Space, pattern_hash: str) -> Fetched | None:
        """The pattern from one space, or None when nobody reachable holds a manifest of it there."""
        local = self._local_copy(space, pattern_hash)
        if local is not None:
            return local
        key = space.pattern_key(pattern_hash)
        result = await self.node.get_entries(key, first=True)
        manifests = _manifests_in(space, result.entries, pattern_hash)
        if not manifests:
            return None
        manifest = manifests[0][1].manifest
        blob, tampered = await self._pull(manifest, key, _unique(result.holders), _unique(result.candidates))
        fetched = _fetched(space, blob, manifests, tampered=tampered)
        self.node.background(self._cache(key, manifests, manifest, blob))
        return fetched

    def _local_copy(self, space: E.Space, pattern_hash: str) -> Fetched | None:
        key = space.pattern_key(pattern_hash)
        manifests = _manifests_in(space, _held_entries(self.store.entries(key)), pattern_hash)
        if not manifests:
            return None
        manifest = manifests[0][1].manifest
        blocks = [self.store.read(k) for k in manifest.blocks]
        if any(b is None for b in blocks):
            return None
        try:
            fetched = _fetched(space, assemble(manifest, blocks), manifests, tampered=0)  # type: ignore[arg-type]
        except (ManifestError, PatternNotFound):
            return None
        fetched.local = True
        return fetched

    async def _pull(
        self, manifest: Manifest, key: bytes, holders: list[Node], nearby: list[Node]
    ) -> tuple[bytes, int]:
        """Every block from the holders, in parallel; a holder that lies is not asked again.

        ``holders`` answered with the manifest: the blocks are spread over them.
        A block none of them returns is asked of ``nearby`` (the closest nodes
        the lookup knew, which hold the blocks too unless the lookup met them
        before they did), then of the k closest nodes found by a full lookup of
        the pattern key (done once, for all such blocks), then, last, looked up
        by its own key.
        """
        held_by = {n.id for n in holders}
        nearby = [n for n in nearby if n.id not in held_by]
        liars: set[bytes] = set()
        pulls = asyncio.Semaphore(MAX_PARALLEL_PULLS)
        wider: asyncio.Future | None = None

        async def from_nodes(index: int, block_key: bytes, nodes: list[Node], *, spread: bool = False) -> bytes | None:
            honest = [n for n in nodes if n.id not in liars]
            if spread and honest:  # the blocks over the holders, rather than the first one for all
                start = index % len(honest)
                honest = honest[start:] + honest[:start]
            data, caught = await self.node.pull_block(block_key, honest)
            liars.update(n.id for n in caught)
            return data

        async def one(index: int, block_key: bytes) -> bytes:
            nonlocal wider
            held = self.store.read(block_key)
            if held is not None:
                return held
            async with pulls:
                data = await from_nodes(index, block_key, holders, spread=True)
                if data is None:
                    data = await from_nodes(index, block_key, nearby)
                if data is None:
                    if wider is None:
                        wider = asyncio.ensure_future(self.node.lookup(key))
                    closest = (await asyncio.shield(wider)).closest
                    asked = held_by | {n.id for n in nearby}
                    data = await from_nodes(index, block_key, [n for n in closest if n.id not in asked])
                if data is None:
                    data = await self.node.get_block(block_key)
                if data is None:
                    raise PatternNotFound(
                        f"block {index + 1} of {len(manifest.blocks)} of pattern {manifest.pattern_hash.hex()} "
                        "is held by no reachable node"
                    )
                return data

        try:
            blocks = await asyncio.gather(*(one(i, k) for i, k in enumerate(manifest.blocks)))
        finally:
            if wider is not None and not wider.done():
                wider.cancel()
        return assemble(manifest, list(blocks)), len(liars)

    async def _cache(self, key: bytes, manifests: list, manifest: Manifest, data: bytes) -> None:
        """A fetched pattern is kept for a while and served to others, as Kademlia's caching asks."""
        expires = time.time() + self.node.config.cache_ttl
        blocks = [(k, b) for k, b in zip(manifest.blocks, _split_blocks(data)) if not self.store.contains(k)]
        needed = sum(charge_of(entry) for entry, _ in manifests) + sum(value_charge(len(k), len(b)) for k, b in blocks)
        if not self.node.make_room(needed, role="cache"):
            return  # a cache never pushes out replicas or our own data
        for entry, _ in manifests:
            self.node.keep_entry(entry, role="cache")
        for block_key, block in blocks:
            self.store.put(block_key, block, kind=BLOCK, role="cache", expires=expires)

    async def _manifests(self, space: E.Space, pattern_hash: str) -> list[Authored]:
        key = space.pattern_key(pattern_hash)
        local = _manifests_in(space, _held_entries(self.store.entries(key)), pattern_hash)
        if not local:
            found = await self.node.get_entries(key, first=True)
            local = _manifests_in(space, found.entries, pattern_hash)
        return [Authored(m.summary, e.record.author, space) for e, m in local]

    # ------------------------------------------------------------------ search and history
    async def search(self, terms: list[str]) -> list[Authored]:
        """Patterns matching every term, newest first: one shared-key lookup per distinct term and space.

        The public space and every unlocked team epoch are searched at once; when
        nothing is found and a team of this node is locked, the error names it.
        """
        queries = [parse_query(t) for t in terms]
        if not queries:
            raise ValueError("give at least one search term")
        found = await asyncio.gather(*(self._search_in(space, queries) for space in self.spaces()))
        results = [hit for hits in found for hit in hits]
        results.sort(key=lambda a: (-a.summary.time, a.summary.id, a.author, a.space.team is not None))
        if not results:
            locked = self.locked_teams()
            if locked:
                raise TeamLocked(self._refs(locked), "no pattern found; ")
        return results

    async def _search_in(self, space: E.Space, queries: list[Query]) -> list[Authored]:
        keys = list(dict.fromkeys(q.key_in(space) for q in queries))
        found = await asyncio.gather(*(self.node.get_entries(k) for k in keys))
        by_key: dict[bytes, dict[tuple[bytes, str], Authored]] = {}
        for key, result in zip(keys, found):
            hits: dict[tuple[bytes, str], Authored] = {}
            for entry in result.entries:
                if entry.record.kind not in (E.HEAD_KIND, E.INDEX_KIND):
                    continue
                try:
                    summary = space.summary_of(entry.record)
                except E.EntryError:
                    continue
                ident = (entry.record.author, summary.id.lower())
                if ident not in hits or summary.time > hits[ident].summary.time:
                    hits[ident] = Authored(replace(summary, history=()), entry.record.author, space)
            by_key[key] = hits
        common = set.intersection(*(set(h) for h in by_key.values()))
        results = []
        for ident in common:
            newest = max((by_key[k][ident] for k in keys), key=lambda a: a.summary.time)
            if all(q.matches(newest.summary) for q in queries):
                results.append(newest)
        return results

    async def history(self, pattern_id: str, author: str | None = None) -> list[tuple[Authored, list[tuple[str, int]]]]:
        """For each author of a pattern ID: the newest version and the earlier ones, newest first."""
        if PATTERN_ID.fullmatch(pattern_id) is None:
            raise ValueError(f"{pattern_id!r} is not a pattern ID like Pattern-DHT-001")
        heads = await self.heads(pattern_id)
        if author is not None:
            heads = [h for h in heads if author_matches(h.author, author)]
        if not heads:
            raise self._not_found(f"no reachable node knows pattern {pattern_id}")
        return [(h, [(h.summary.hash, h.summary.time), *h.summary.history]) for h in heads]

    # ------------------------------------------------------------------ local: ls, pin, unpin
    def held(self) -> list[Held]:
        """Patterns with a manifest on this node, one line per pattern.

        A team manifest is shown with its summary when one of this node's unlocked
        team epochs opens it, else as the opaque key it is held under.
        """
        by_key: dict[bytes, Held] = {}
        rank = {"cache": 0, "replica": 1, "own": 2}
        for prefix, spaces in ((b"pattern:", [E.PUBLIC]), (E.TEAM_TOPICS[0], self.spaces()[1:])):
            for stored in self.store.iter_entries(kind_prefix=prefix):
                try:
                    record = _entry(stored).record
                    blocks = E.manifest_blocks(record).blocks
                except (ValueRejected, E.EntryError):
                    continue
                summary, team = _readable(record, spaces)
                if summary is None and prefix == b"pattern:":
                    continue  # a public manifest whose summary does not check out
                complete = all(self.store.contains(k) for k in blocks)
                role, pinned = stored.role, stored.pinned
                previous = by_key.get(stored.key)
                if previous is not None:
                    role = max(role, previous.role, key=rank.__getitem__)
                    pinned = pinned or previous.pinned
                by_key[stored.key] = Held(summary, role, pinned, complete, team, stored.key.hex())
        return sorted(by_key.values(),
                      key=lambda h: (h.summary is None, h.summary.id if h.summary else h.key,
                                     -h.summary.time if h.summary else 0))

    async def pin(self, ref: str, author: str | None = None) -> Fetched:
        """Keep a pattern here for good and keep it findable: a copy signed as a mirror by this node."""
        fetched = await self.fetch(ref, author)
        space = fetched.space
        manifest, blocks = split(fetched.blob)
        key = space.pattern_key(fetched.hash)
        mirror = None
        if self.store.entry(key, self.me, space.manifest_name(fetched.hash)) is None:
            mirror = self._manifest_record(space, manifest, fetched.summary, mirror=True,
                                           ttl=int(self.node.config.record_ttl))
        # Blocks held only as replicas or cached copies count too: making room may evict them.
        needed = sum(value_charge(len(k), len(b)) for k, b in zip(manifest.blocks, blocks) if not self._kept(k))
        needed += _charge(mirror) if mirror is not None else 0
        self.node.reserve_own(f"pinning {fetched.summary.id} ({len(fetched.data):,} bytes)", needed)
        for block_key, block in zip(manifest.blocks, blocks):
            self.store.put(block_key, block, kind=BLOCK, role="cache")
            self.store.set_pinned(block_key, True, expires=None)
        if mirror is not None:
            await self._place(mirror, manifest, blocks)
        else:
            self.store.set_entry_pinned(key, self.me, space.manifest_name(fetched.hash), True)
        return fetched

    def _kept(self, key: bytes) -> bool:
        """Whether a block is held for good here (own or pinned), beyond the reach of eviction."""
        held = self.store.get(key, touch=False)
        return held is not None and (held.pinned or held.role == "own")

    async def unpin(self, ref: str, author: str | None = None) -> str:
        """Stop keeping and announcing a pattern here; copies on other nodes expire on their own."""
        pattern_hash = ref if is_hash(ref) else (await self.resolve(ref, author)).summary.hash
        for space in self.spaces():
            key = space.pattern_key(pattern_hash)
            manifests = _manifests_in(space, _held_entries(self.store.entries(key)), pattern_hash)
            if manifests:
                break
        else:
            raise PatternNotFound(f"pattern {pattern_hash} is not held on this node")
        expires = time.time() + self.node.config.value_ttl
        for block_key in manifests[0][1].manifest.blocks:
            self.store.set_pinned(block_key, False, expires=expires, role="cache")
        self.store.delete_entry(key, self.me, space.manifest_name(pattern_hash))
        for stored in self.store.entries(key):
            self.store.set_entry_pinned(key, stored.author, stored.name, False)
        return pattern_hash


# ---------------------------------------------------------------------- queries
_FIELDS = ("id", "type", "category", "status")


@dataclass(frozen=True)
class Query:
    field: str | None
    value: str
    term: str
    """The pattern ID (field "id") or the word whose key is looked up."""

    def key_in(self, space: E.Space) -> bytes:
        """The DHT key this query reads in a space."""
        return space.id_key(self.term) if self.field == "id" else space.term_key(self.term)

    def matches(self, summary: E.Summary) -> bool:
        if self.field is None or self.field == "id":
            return True
        if self.field == "type":
            return summary.type.lower() == self.value.lower()
        if self.field == "status":
            return summary.status.lower() == self.value.lower()
        return all(w in E.words(summary.category) for w in E.words(self.value))


def parse_query(term: str) -> Query:
    """``kademlia``, ``Pattern-DHT-001``, ``type:DHT``, ``category:networking``, ``status:active``."""
    term = term.strip()
    field_name, sep, value = term.partition(":")
    if sep and field_name.lower() in _FIELDS and value.strip():
        field_name, value = field_name.lower(), value.strip()
    else:
        field_name, value = None, term
    if (field_name in (None, "id")) and PATTERN_ID.fullmatch(value):
        return Query("id", value, value)
    if field_name == "id":
        raise ValueError(f"{value!r} is not a pattern ID like Pattern-DHT-001")
    words = E.words(value)
    if not words:
        raise ValueError(f"{term!r} has no searchable word (words of two or more letters, not 'the', 'and', ...)")
    return Query(field_name, value, words[0])


# ---------------------------------------------------------------------- helpers
def _record(stored: StoredEntry) -> SignedRecord:
    return _entry(stored).record


def _entry(stored: StoredEntry) -> Entry:
    checked = check_value(stored.key, stored.value)
    if not isinstance(checked, Entry):
        raise ValueRejected("wrong-key", "not an entry")
    return checked


def _held_entries(stored: list[StoredEntry]) -> list[Entry]:
    held = []
    for item in stored:
        try:
            held.append(_entry(item))
        except ValueRejected:
            continue
    return held


def _readable(record: SignedRecord, spaces: list[E.Space]) -> tuple[E.Summary | None, E.TeamMark | None]:
    """The summary of a manifest and its team, from the first space that opens it; (None, None) if none does."""
    for space in spaces:
        try:
            return space.manifest_of(record).summary, space.team
        except E.EntryError:
            continue
    return None, None


def _manifests_in(space: E.Space, entries: list[Entry], pattern_hash: str) -> list[tuple[Entry, E.ManifestEntry]]:
    """The valid manifests for a hash among entries: publishers first, then mirrors, oldest first."""
    found = []
    for entry in entries:
        if entry.record.kind != E.MANIFEST_KIND:
            continue
        try:
            parsed = space.manifest_of(entry.record)
        except E.EntryError:
            continue
        if parsed.summary.hash == pattern_hash:
            found.append((entry, parsed))
    found.sort(key=lambda em: (em[1].mirror, em[1].summary.time))
    return found


def _fetched(space: E.Space, blob: bytes, manifests: list[tuple[Entry, E.ManifestEntry]], *, tampered: int) -> Fetched:
    """The pattern the blob (already checked against the manifest) holds, checked against its hash."""
    summary = manifests[0][1].summary
    try:
        data = space.open_pattern(blob, summary.hash)
    except E.EntryError as exc:
        raise PatternNotFound(f"pattern {summary.hash} could not be read: {exc}") from None
    publishers = [node_id_for(e.record.author).hex() for e, m in manifests if not m.mirror]
    mirrors = [node_id_for(e.record.author).hex() for e, m in manifests if m.mirror]
    return Fetched(
        data=data, hash=summary.hash, summary=summary,
        authors=list(dict.fromkeys(publishers)), mirrors=list(dict.fromkeys(mirrors)), tampered=tampered,
        space=space, blob=blob,
    )


def _unique(nodes: list[Node]) -> list[Node]:
    """Nodes in order, each ID once."""
    seen: dict[bytes, Node] = {}
    for node in nodes:
        seen.setdefault(node.id, node)
    return list(seen.values())


def _split_blocks(data: bytes) -> list[bytes]:
    return split(data)[1]


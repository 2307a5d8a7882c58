"""What a published pattern leaves in the DHT besides its blocks: signed entries.

Every entry is a signed record named ``topic#item`` and stored under the
topic's shared key (:func:`aether.crypto.records.topic_key`), so that many
authors can publish side by side under one key:

* the **manifest** of a pattern, under the topic ``pattern:<hash>``: the block
  list plus a summary, one per author who published (or pinned) those bytes.
  Fetching by hash costs one lookup of this key; the nodes that answer hold
  the blocks too, since blocks are placed next to their pattern's key;
* the **head** of a pattern ID, under ``id:<pattern-id>``: each author's newest
  version of that ID, with a rising sequence number and the history of hashes;
* **index entries** under ``term:<word>``: one per pattern and author for each
  word a search may use (type, category, status, words of the title).

The payload of each is a :class:`Summary` (plus the manifest for manifests),
encoded as canonical msgpack lists and decoded strictly: a peer's bytes
either give a well-formed value or raise :class:`EntryError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from collections.abc import Callable

import msgpack

from aether.crypto.records import SignedRecord, topic_key, topic_of
from aether.crypto.teams import (
    TeamCryptoError,
    decrypt_pattern,
    decrypt_summary,
    encrypt_pattern,
    encrypt_summary,
    locator,
)
from aether.node.chunks import Manifest, ManifestError
from aether.node.pattern import PATTERN_ID, Pattern

MANIFEST_KIND = "manifest"
HEAD_KIND = "head"
INDEX_KIND = "index"
MAX_TITLE_CHARS = 160
MAX_FIELD_CHARS = 80
MAX_HISTORY = 32
"""Earlier versions listed in a head: 32 × ~45 bytes keeps the head far below a record's limit."""
MAX_TERMS = 12
"""Index terms per pattern: each costs a lookup and k stores when publishing."""
MIN_WORD_CHARS = 2
STOPWORDS = frozenset(
    "a an and are as at be but by for from how in into is it of on or over the this to under via with".split()
)
WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)


class EntryError(ValueError):
    """An entry payload that is not what its kind says."""


@dataclass(frozen=True)
class Summary:
    """What search results, heads and ``ls`` show about one version of a pattern."""

    id: str
    title: str
    hash: str
    """SHA-256 of the pattern's bytes, 64 lowercase hex."""
    time: int
    """When this version was published (Unix seconds)."""
    size: int
    category: str = ""
    status: str = ""
    history: tuple[tuple[str, int], ...] = field(default=())
    """Earlier versions (hash, time), newest first; only heads carry it."""

    @property
    def type(self) -> str:
        match = PATTERN_ID.fullmatch(self.id)
        return match.group("type") if match else ""

    @classmethod
    def of(cls, pattern: Pattern, time: int) -> Summary:
        return cls(
            id=pattern.id, title=pattern.title[:MAX_TITLE_CHARS], hash=pattern.hash, time=int(time),
            size=len(pattern.data), category=(pattern.category or "")[:MAX_FIELD_CHARS],
            status=(pattern.status or "")[:MAX_FIELD_CHARS],
        )

    def as_list(self) -> list:
        return [
            self.id, self.title, bytes.fromhex(self.hash), self.time, self.size, self.category, self.status,
            [[bytes.fromhex(h), t] for h, t in self.history],
        ]

    @classmethod
    def from_list(cls, fields: object) -> Summary:
        if not (isinstance(fields, list) and len(fields) == 8):
            raise EntryError("a summary is a list of 8 fields")
        pattern_id, title, digest, time, size, category, status, history = fields
        if not (isinstance(pattern_id, str) and PATTERN_ID.fullmatch(pattern_id)):
            raise EntryError("summary has no valid pattern ID")
        for text, limit in ((title, MAX_TITLE_CHARS), (category, MAX_FIELD_CHARS), (status, MAX_FIELD_CHARS)):
            if not isinstance(text, str) or len(text) > limit:
                raise EntryError("summary text field of the wrong type or too long")
        if not (isinstance(digest, bytes) and len(digest) == 32):
            raise EntryError("summary hash must be 32 bytes")
        if type(time) is not int or type(size) is not int or time < 0 or size <= 0:
            raise EntryError("summary time and size must be positive whole numbers")
        if not isinstance(history, list) or len(history) > MAX_HISTORY:
            raise EntryError("summary history must be a short list")
        versions = []
        for item in history:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes) and len(item[0]) == 32
                    and type(item[1]) is int):
                raise EntryError("summary history items are [hash, time]")
            versions.append((item[0].hex(), item[1]))
        return cls(pattern_id, title, digest.hex(), time, size, category, status, tuple(versions))


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> object:
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, max_str_len=4096, max_bin_len=8192,
            max_array_len=512, max_map_len=0, max_ext_len=0,
        )
    except Exception:
        raise EntryError("payload is not valid msgpack") from None
    if _pack(value) != data:
        raise EntryError("payload is not in canonical form")
    return value


# ------------------------------------------------------------------ topics
def pattern_topic(pattern_hash: str) -> bytes:
    return b"pattern:" + pattern_hash.encode()


def id_topic(pattern_id: str) -> bytes:
    return b"id:" + pattern_id.lower().encode()


def term_topic(term: str) -> bytes:
    return b"term:" + term.lower().encode()


def pattern_key(pattern_hash: str) -> bytes:
    """The DHT key of a pattern: where its manifests and blocks live."""
    return topic_key(pattern_topic(pattern_hash))


def id_key(pattern_id: str) -> bytes:
    return topic_key(id_topic(pattern_id))


def term_key(term: str) -> bytes:
    return topic_key(term_topic(term))


def words(text: str) -> list[str]:
    """Search words of a text: lowercase, in order, without duplicates, stopwords or single letters."""
    found: dict[str, None] = {}
    for match in WORD.finditer(text.lower()):
        word = match.group(0)
        if len(word) >= MIN_WORD_CHARS and word not in STOPWORDS:
            found.setdefault(word, None)
    return list(found)


def index_terms(pattern: Pattern) -> list[str]:
    """The words a pattern can be found by, most specific first, at most MAX_TERMS."""
    terms: dict[str, None] = {pattern.type.lower(): None}
    if pattern.status:
        terms[pattern.status.lower()] = None
    for word in words(pattern.category or "") + words(pattern.name):
        terms.setdefault(word, None)
    return list(terms)[:MAX_TERMS]


# ------------------------------------------------------------------ payloads
@dataclass(frozen=True)
class ManifestEntry:
    manifest: Manifest
    summary: Summary
    mirror: bool
    """True when the signer keeps a copy (a pin) rather than being the pattern's publisher."""

    def encode(self, seal: Callable[[bytes], bytes] | None = None) -> bytes:
        """The payload; with ``seal`` (a team's), the summary travels encrypted and the block list in clear."""
        summary = self.summary.as_list() if seal is None else seal(encode_summary(self.summary))
        return _pack([self.manifest.encode(), summary, self.mirror])

    @classmethod
    def decode(cls, payload: bytes, unseal: Callable[[bytes], bytes] | None = None) -> ManifestEntry:
        """Parse a public manifest, or with ``unseal`` a team manifest whose summary is encrypted.

        A team manifest lists the blocks of the encrypted blob, so its summary (the
        plaintext's hash and size) is checked against the decrypted bytes, not the blocks.
        """
        manifest, fields = _manifest_fields(payload)
        if unseal is None:
            summary = Summary.from_list(fields[1])
            if summary.hash != manifest.pattern_hash.hex() or summary.size != manifest.size:
                raise EntryError("the summary does not describe the manifest's file")
        elif isinstance(fields[1], bytes):
            summary = decode_summary(unseal(fields[1]))
        else:
            raise EntryError("a team manifest carries its summary encrypted")
        return cls(manifest, summary, fields[2])


def _manifest_fields(payload: bytes) -> tuple[Manifest, list]:
    fields = _unpack(payload)
    if not (isinstance(fields, list) and len(fields) == 3 and isinstance(fields[0], bytes)
            and isinstance(fields[2], bool)):
        raise EntryError("a manifest entry is [manifest, summary, mirror]")
    try:
        return Manifest.decode(fields[0]), fields
    except ManifestError as exc:
        raise EntryError(str(exc)) from None


def manifest_blocks(record: SignedRecord) -> Manifest:
    """The block list of any manifest, public or team: what a holder links to the pattern's key.

    A holder of a team manifest cannot read its summary, yet keeps, evicts and
    re-replicates its blocks with it exactly as for a public one.
    """
    if record.kind != MANIFEST_KIND:
        raise EntryError(f"a {record.kind!r} record is not a manifest")
    topic = topic_of(record.name) or b""
    if not TEAM_PATTERN_TOPIC.fullmatch(topic):
        return manifest_of(record).manifest
    manifest, fields = _manifest_fields(record.payload)
    if not isinstance(fields[1], bytes):
        raise EntryError("a team manifest carries its summary encrypted")
    return manifest  # only members can check its summary


def encode_summary(summary: Summary) -> bytes:
    return _pack(summary.as_list())


def decode_summary(payload: bytes) -> Summary:
    return Summary.from_list(_unpack(payload))


# ------------------------------------------------------------------ spaces
@dataclass(frozen=True)
class TeamMark:
    """Which team (and epoch key) a team pattern was found or published with."""

    name: str
    id: str
    """The team ID, 40 hex digits."""
    epoch: int


class Space:
    """Where a pattern's entries live and how their summaries travel: the public space.

    Publishing, fetching and searching run one code path for public and team
    patterns; a space maps the plaintext facts (hash, pattern ID, term) to DHT
    topics and seals or opens what the entries and blocks carry. In the public
    space the facts are the topics and nothing is sealed.
    """

    team: TeamMark | None = None

    def pattern_topic(self, pattern_hash: str) -> bytes:
        return pattern_topic(pattern_hash)

    def id_topic(self, pattern_id: str) -> bytes:
        return id_topic(pattern_id)

    def term_topic(self, term: str) -> bytes:
        return term_topic(term)

    def index_item(self, pattern_id: str) -> bytes:
        return pattern_id.lower().encode()

    def seal(self, data: bytes) -> bytes:
        """A summary as entries carry it."""
        return data

    def open(self, data: bytes) -> bytes:
        return data

    def seal_pattern(self, data: bytes) -> bytes:
        """The bytes split into blocks."""
        return data

    def open_pattern(self, blob: bytes, pattern_hash: str) -> bytes:
        """The pattern's bytes from the blob its blocks make up (checked against its manifest already)."""
        return blob

    # Derived: the same for every space.
    def pattern_key(self, pattern_hash: str) -> bytes:
        return topic_key(self.pattern_topic(pattern_hash))

    def id_key(self, pattern_id: str) -> bytes:
        return topic_key(self.id_topic(pattern_id))

    def term_key(self, term: str) -> bytes:
        return topic_key(self.term_topic(term))

    def manifest_name(self, pattern_hash: str) -> bytes:
        return self.pattern_topic(pattern_hash) + b"#"

    def head_name(self, pattern_id: str) -> bytes:
        return self.id_topic(pattern_id) + b"#"

    def index_name(self, term: str, pattern_id: str) -> bytes:
        return self.term_topic(term) + b"#" + self.index_item(pattern_id)

    def summary_payload(self, summary: Summary) -> bytes:
        return self.seal(encode_summary(summary))

    def manifest_payload(self, entry: ManifestEntry) -> bytes:
        return entry.encode(None if self.team is None else self.seal)

    def manifest_of(self, record: SignedRecord) -> ManifestEntry:
        """The manifest a record carries, checked to belong under the topic it names."""
        if record.kind != MANIFEST_KIND:
            raise EntryError(f"a {record.kind!r} record is not a manifest")
        entry = ManifestEntry.decode(record.payload, None if self.team is None else self.open)
        if topic_of(record.name) != self.pattern_topic(entry.summary.hash):
            raise EntryError("the manifest is named for another pattern")
        return entry

    def summary_of(self, record: SignedRecord) -> Summary:
        """The summary a head or index record carries, checked against its name."""
        if record.kind not in (HEAD_KIND, INDEX_KIND):
            raise EntryError(f"a {record.kind!r} record has no summary")
        summary = decode_summary(self.open(record.payload))
        if record.kind == HEAD_KIND and topic_of(record.name) != self.id_topic(summary.id):
            raise EntryError("the head is named for another pattern ID")
        return summary


PUBLIC = Space()
manifest_of = PUBLIC.manifest_of
summary_of = PUBLIC.summary_of
manifest_name = PUBLIC.manifest_name
head_name = PUBLIC.head_name
index_name = PUBLIC.index_name

TEAM_TOPICS = (b"team-pattern:", b"team-id:", b"team-term:")
"""Topic prefixes of team entries; what follows is a keyed locator in hex (docs/teams.md)."""
TEAM_PATTERN_TOPIC = re.compile(rb"team-pattern:[0-9a-f]{40}")


class TeamSpace(Space):
    """One team epoch's space: topics are keyed locators, summaries and blobs are encrypted.

    Nothing a non-member can read links an entry to its pattern's title, words, ID or
    hash: a topic is ``HMAC(epoch key, label || fact)`` in hex, a summary is AES-GCM
    under the epoch key, and the blocks are those of the "ATP1" blob.
    """

    def __init__(self, name: str, team_id: bytes, epoch: int, key: bytes):
        self.team = TeamMark(name, team_id.hex(), epoch)
        self._team_id = team_id
        self._key = key

    def _topic(self, prefix: bytes, label: str, value: bytes | str) -> bytes:
        return prefix + locator(self._key, label, value).hex().encode()

    def pattern_topic(self, pattern_hash: str) -> bytes:
        return self._topic(TEAM_TOPICS[0], "pattern", pattern_hash)

    def id_topic(self, pattern_id: str) -> bytes:
        return self._topic(TEAM_TOPICS[1], "id", pattern_id.lower())

    def term_topic(self, term: str) -> bytes:
        return self._topic(TEAM_TOPICS[2], "term", term.lower())

    def index_item(self, pattern_id: str) -> bytes:
        return locator(self._key, "id", pattern_id.lower()).hex().encode()

    def seal(self, data: bytes) -> bytes:
        return encrypt_summary(self._key, self._team_id, self.team.epoch, data)

    def open(self, data: bytes) -> bytes:
        try:
            return decrypt_summary(self._key, self._team_id, self.team.epoch, data)
        except TeamCryptoError as exc:
            raise EntryError(str(exc)) from None

    def seal_pattern(self, data: bytes) -> bytes:
        return encrypt_pattern(self._key, self._team_id, self.team.epoch, data)

    def open_pattern(self, blob: bytes, pattern_hash: str) -> bytes:
        """The plaintext, authenticated (team, epoch and hash in the AD) and checked against the hash."""
        try:
            team_id, epoch, data = decrypt_pattern(self._key, blob, pattern_hash)
        except TeamCryptoError as exc:
            raise EntryError(f"team {self.team.name}: {exc}") from None
        if (team_id, epoch) != (self._team_id, self.team.epoch):
            raise EntryError(f"team {self.team.name}: the blob is of another team or epoch")
        return data

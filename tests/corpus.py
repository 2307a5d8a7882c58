"""The test corpus: pattern documents as exact bytes, built the same way every time.

Round-trip tests publish these through the network and compare what comes back
byte for byte, so the corpus covers what a real file may contain and a careless
transport may change: CRLF and mixed line ends, trailing spaces and tabs, a BOM,
no final newline, text in many scripts, unknown header fields, many references,
and sizes around the block boundary up to the 1 MiB pattern limit.

Nothing here is random: generated text comes from fixed word lists walked by a
fixed integer sequence, so every run, machine and Python version gets the same
bytes.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from aether.node.chunks import BLOCK_BYTES
from aether.node.pattern import MAX_PATTERN_BYTES

__all__ = ["REFERENCE_IDS", "corpus", "invalid_corpus", "write_corpus"]

CREATED = "2025-11-05T09:30:00Z"
UPDATED = "2025-11-06T17:45:00+01:00"

_TYPES = ("DHT", "STORAGE", "TRUST", "MESH", "NET", "XXX", "CLI", "META")
REFERENCE_IDS: tuple[str, ...] = tuple(f"Pattern-{_TYPES[i % len(_TYPES)]}-{i + 1:03d}" for i in range(200))
"""The IDs the ``many_references`` case mentions, in first-mention order."""

_WORDS = (
    "node", "peer", "block", "manifest", "record", "lookup", "bucket", "contact", "replica",
    "quota", "sequence", "signature", "timeout", "distance", "holder", "author", "pattern",
    "hash", "key", "value", "store", "fetch", "expiry", "republish", "churn", "datagram",
    "socket", "share", "team", "index", "topic", "entry", "closest", "answer", "request",
    "the", "a", "of", "to", "and", "is", "every", "each", "no", "more", "than", "once",
    "checked", "signed", "kept", "dropped", "refused", "sent", "held", "found", "late",
)


def _typical_lines(pattern_id: str, name: str) -> list[str]:
    """A document in the library's usual shape, one string per line, no line ends."""
    return [
        f"# {pattern_id}: {name}",
        "",
        f"**CREATED:** {CREATED}",
        "**STATUS:** Active",
        "**CATEGORY:** Distributed Hash Table",
        "",
        "## Problem",
        "A lookup that waits for the slowest of three peers stalls for a full",
        "timeout whenever one of them is gone.",
        "",
        "## Solution",
        "**DESIGN DECISION:** Keep up to three requests in flight at all times.",
        "**WHY:** A dead peer then costs one slot for one timeout, not a round.",
        "",
        "**REASONING CHAIN:**",
        "1. Candidates are ordered by XOR distance to the target.",
        "2. Each reply frees a slot for the closest peer not yet asked.",
        "3. The lookup ends when the k closest have all answered.",
        "",
        "## When to Use",
        "- FIND_NODE before a STORE",
        "- FIND_VALUE for blocks and records",
        "",
        "## Implementation",
        "```python",
        "for entry in closest_live[:k]:",
        "    if in_flight < alpha and entry.state == NEW:",
        "        ask(entry)",
        "```",
        "",
        "## Alternatives Considered",
        "- Strict rounds: latency is the sum of the slowest replies.",
        "",
        "## Edge Cases",
        "- Empty routing table: the lookup ends at once with nothing found.",
        "",
        "## Related Patterns",
        "- Pattern-NET-001: the timeout that frees a slot",
        "- Pattern-MESH-002: what a failed request does to the routing table",
        "",
        "## Examples in Codebase",
        "- node/lookup.py: the lookup and its termination rule",
        "",
        "## Future Improvements",
        "- Adapt alpha to the measured loss rate.",
        "",
        f"**LAST UPDATED:** {UPDATED}",
    ]


def _typical(pattern_id: str, name: str) -> str:
    return "\n".join(_typical_lines(pattern_id, name)) + "\n"


def _words(count: int, seed: int) -> list[str]:
    """``count`` words from the word list, in an order fixed by ``seed`` (a plain LCG)."""
    state = seed
    out = []
    for _ in range(count):
        state = (state * 1103515245 + 12345) % 2**31
        out.append(_WORDS[(state >> 8) % len(_WORDS)])
    return out


def _filler(size: int, seed: int) -> str:
    """Exactly ``size`` bytes of ASCII prose, lines of at most 72 characters, ending in a newline."""
    if size <= 0:
        if size < 0:
            raise ValueError(f"cannot pad to a negative size ({size})")
        return ""
    lines: list[str] = []
    total = 0
    state = seed
    while total < size:
        words = _words(12, state)
        state += 1
        line = " ".join(words).capitalize() + "."
        lines.append(line[:72].rstrip())
        total += len(lines[-1]) + 1
    text = "\n".join(lines) + "\n"
    return text[: size - 1] + "\n"


def _padded(pattern_id: str, name: str, size: int) -> bytes:
    """A valid pattern of exactly ``size`` bytes: a fixed head and tail around ASCII filler."""
    head = (
        f"# {pattern_id}: {name}\n\n"
        f"**CREATED:** {CREATED}\n**STATUS:** Active\n**CATEGORY:** Test Corpus\n\n"
        f"## Problem\nThis document is exactly {size} bytes long; blocks are {BLOCK_BYTES} bytes.\n\n"
        "## Body\n"
    ).encode()
    tail = (
        "\n## Related Patterns\n- Pattern-STORAGE-002: content-addressed blocks\n\n"
        f"**LAST UPDATED:** {UPDATED}\n"
    ).encode()
    data = head + _filler(size - len(head) - len(tail), seed=size).encode("ascii") + tail
    assert len(data) == size, (len(data), size)
    return data


_PARAGRAPHS = (
    "Node {n} asked peer {p} for key {h}; the reply came after {ms} ms and the slot was refilled.",
    "Block {h} arrived from holder {p}, was checked against its key, and was cached for one hour.",
    "Record {h} by author {p} carried sequence number {n}; holders with {old} were repaired.",
    "The quota charged {n} bytes plus 64 for the row: key, value, index entry, cell headers.",
    "Réplica {h} expirée → republiée par le nœud {p} ✓ après {ms} ms.",
    "節点 {p} が鍵 {h} を {n} 回目に再配布した。",
    "Peer {p} timed out {n} times in a row and was dropped; its saved address returns on restart.",
    "Manifest {h} lists {n} blocks; a holder that alters one byte is named on reassembly.",
)


def _large(pattern_id: str, name: str, size: int) -> bytes:
    """Varied paragraphs (sections every 64 of them) up to near ``size``, then ASCII padding to it exactly."""
    head = (
        f"# {pattern_id}: {name}\n\n**CREATED:** {CREATED}\n**STATUS:** Active\n"
        "**CATEGORY:** Test Corpus\n\n## Problem\nThe largest pattern the default limit allows.\n"
    ).encode()
    tail = f"\n## Related Patterns\n- Pattern-STORAGE-001: what holding it costs\n\n**LAST UPDATED:** {UPDATED}\n".encode()
    budget = size - len(head) - len(tail)
    parts: list[bytes] = []
    used = 0
    for i in range(10**6):
        digest = hashlib.sha256(f"paragraph {i}".encode()).hexdigest()
        paragraph = _PARAGRAPHS[i % len(_PARAGRAPHS)].format(
            n=i, p=digest[:8], h=digest[8:48], ms=int(digest[48:52], 16) % 900 + 3, old=i // 2,
        )
        chunk = (f"\n## Part {i // 64 + 1}\n" if i % 64 == 0 else "\n") + paragraph + "\n"
        encoded = chunk.encode()
        if used + len(encoded) > budget - 200:
            break
        parts.append(encoded)
        used += len(encoded)
    data = head + b"".join(parts) + b"\n" + _filler(budget - used - 1, seed=size).encode("ascii") + tail
    assert len(data) == size, (len(data), size)
    return data


def _many_references() -> bytes:
    lines = [
        "# Pattern-REFS-001: A pattern that references two hundred others",
        "",
        f"**CREATED:** {CREATED}",
        "**STATUS:** Superseded",
        "**CATEGORY:** Test Corpus",
        "",
        "## Problem",
        "An index page links every pattern in the library; this one (Pattern-REFS-001)",
        "must not count itself, and repeats must count once.",
        "",
        "## Related Patterns",
    ]
    lines += [f"- {ref}: related, entry {i + 1}" for i, ref in enumerate(REFERENCE_IDS)]
    lines += [
        "",
        "## Repeated and near-miss mentions",
        " ".join(REFERENCE_IDS[:10]) + " again, and " + ", ".join(REFERENCE_IDS[-3:]) + ".",
        "Not references: Pattern-dht-001, Pattern-DHT-01, xPattern-DHT-999, Pattern-DHT-999x, Pattern-XXX-YYY,",
        "Pattern-DHT-998-and, a-Pattern-DHT-997, Pattern-HYBRID-search-001, Pattern-HYBRID--SEARCH-001.",
        "```",
        "Pattern-DHT-996: a fenced example is no reference either",
        "```",
        "",
        f"**LAST UPDATED:** {UPDATED}",
    ]
    return ("\n".join(lines) + "\n").encode()


UNICODE_NAME = "Café naïve — 分散ハッシュ表 🚀 שיתוף דפוסים مشاركة"


def _unicode() -> bytes:
    text = f"""# Pattern-I18N-001: {UNICODE_NAME}

**CREATED:** {CREATED}
**STATUS:** Deprecated
**CATEGORY:** Internationalisation — 国際化 — בינאום

## Problem
Ein Muster darf in jeder Schrift geschrieben sein: Grüße aus Köln, ½ € für die Straße.
Combining marks stay as written: e\u0301 is not \u00e9, and \u212b (U+212B) is not \u00c5 (U+00C5).
中文：内容寻址的数据块。日本語：署名付きレコード。한국어: 서명된 레코드.

## Solution
עברית: כל בלוק נבדק מול המפתח שלו לפני השימוש.
العربية: يتم التحقق من كل كتلة مقابل مفتاحها قبل استخدامها.
Mixed direction: key \u200fa1b2\u200f מאת peer 42 → ✓.
Emoji: 🧩📦🔑 and sequences 👩‍💻 🇫🇷 👍🏽; outside the BMP: 𝔸𝔼𝕋ℍ𝔼ℝ, 𐍈.

## Related Patterns
- Pattern-TRUST-002: signed records — 署名付き

**LAST UPDATED:** {UPDATED}
"""
    return text.encode()


def _trailing_whitespace() -> bytes:
    lines = _typical_lines("Pattern-WS-001", "Trailing spaces and tabs")
    ends = (" ", "\t", "  ", " \t", "\t\t ", "")
    text = "".join(line + ends[i % len(ends)] + "\n" for i, line in enumerate(lines))
    return text.encode()


def _mixed_newlines() -> bytes:
    lines = _typical_lines("Pattern-EOL-002", "Mixed LF and CRLF line ends")
    return "".join(line + ("\r\n" if i % 3 else "\n") for i, line in enumerate(lines)).encode()


def _unusual_line_breaks() -> bytes:
    # Python's str.splitlines() also breaks at these, grep and editors do not: lines end at
    # "\n" only, so the Solution heading is on line 8. The bytes must come back unchanged.
    return (
        "# Pattern-EOL-003: Unusual line breaks\n\n**STATUS:** Active\n\n## Problem\n"
        "A lone carriage return\rin the middle, a form feed\x0c, a vertical tab\x0b,\n"
        "a next-line mark\u0085, a line separator\u2028and a paragraph separator\u2029here.\n"
        "## Solution\nCount lines at line feeds only, as grep -n does.\n\n"
        f"**LAST UPDATED:** {UPDATED}\n"
    ).encode()


def _hyphenated_type() -> bytes:
    # The library's own IDs: a TYPE of several hyphen-joined words, and a STATUS that says more.
    lines = _typical_lines("Pattern-HYBRID-SEARCH-001", "Keyword and vector search in one ranking")
    lines[3] = "**STATUS:** Superseded by Pattern-AUDIT-LOGGING-001"
    related = lines.index("## Related Patterns") + 1
    lines[related:related] = [
        "- Pattern-AUDIT-LOGGING-001: what replaced it",
        "- Pattern-PERFORMANCE-AGGREGATION-001 (and Pattern-AUTH-DUAL-SYNC-001).",
        "- Not references: Pattern-HYBRID-search-001, Pattern-HYBRID--SEARCH-001, Pattern-DHT-998-and.",
    ]
    return "\n".join(lines).encode() + b"\n"


# The seed README's own template, shown in a code fence: its "**CREATED:** [ISO 8601
# timestamp]" is no header field, its "## Problem" no section, its IDs no references.
TEMPLATE = """# Pattern-{TYPE}-{NNN}: [Pattern Name]

**CREATED:** [ISO 8601 timestamp]
**STATUS:** Active | Deprecated | Superseded
**CATEGORY:** [Category name]

## Problem
[Clear problem statement]

## Solution
**DESIGN DECISION:** [What approach was chosen]
**WHY:** [Reasoning for this approach]

## Related Patterns
- Pattern-YYY: [Relationship]
- Pattern-XXX-YYY, Pattern-DHT-001: examples, not references

**LAST UPDATED:** [ISO 8601 timestamp]"""


def _template_in_fence() -> bytes:
    return f"""# Pattern-META-008: Pattern template shown in a code fence

**CREATED:** {CREATED}
**STATUS:** Active
**CATEGORY:** Test Corpus

~~~text
**CREATED:** 1999-12-31 (a fenced example before the first section)
~~~

## Template
Every pattern document follows this structure:

```markdown
{TEMPLATE}
```

## Related Patterns
- Pattern-META-007: unknown header fields are kept

**LAST UPDATED:** {UPDATED}
""".encode()


def _extra_fields() -> bytes:
    return f"""# Pattern-META-007: Unknown header fields are kept

**CREATED:** 2025-11-05
**STATUS:** Active
**CATEGORY:** Test Corpus
**OWNER:** platform team <platform@example.org>
**TAGS:** dht, storage, round-trip
**Reviewed-By:** Ada, Grace

## Problem
Fields the format does not name must be kept, not refused.

**LAST UPDATED:** {UPDATED}
""".encode()


@lru_cache(maxsize=1)
def _build() -> tuple[tuple[str, bytes], ...]:
    typical = _typical("Pattern-DHT-102", "α-parallel lookups without rounds")
    cases = {
        "minimal": b"# Pattern-MIN-001: Minimal\n\n## Problem\nOnly a title line and one section.\n",
        "typical": typical.encode(),
        "unicode": _unicode(),
        "crlf": _typical("Pattern-EOL-001", "CRLF line ends throughout").replace("\n", "\r\n").encode(),
        "trailing_whitespace": _trailing_whitespace(),
        "bom": b"\xef\xbb\xbf" + _typical("Pattern-BOM-001", "Starts with a UTF-8 BOM").encode(),
        "mixed_newlines": _mixed_newlines(),
        "no_final_newline": _typical("Pattern-EOL-004", "No final newline").rstrip("\n").encode(),
        "leading_blank_lines": b"\n\n  \n" + _typical("Pattern-DHT-103", "Title after blank lines").encode(),
        "unusual_line_breaks": _unusual_line_breaks(),
        "hyphenated_type": _hyphenated_type(),
        "template_in_fence": _template_in_fence(),
        "many_references": _many_references(),
        "extra_fields": _extra_fields(),
        "block_6143": _padded("Pattern-SIZE-6143", "One byte under a block", BLOCK_BYTES - 1),
        "block_6144": _padded("Pattern-SIZE-6144", "Exactly one block", BLOCK_BYTES),
        "block_6145": _padded("Pattern-SIZE-6145", "One byte over a block", BLOCK_BYTES + 1),
        "block_12288": _padded("Pattern-SIZE-12288", "Exactly two blocks", 2 * BLOCK_BYTES),
        "size_20k": _padded("Pattern-SIZE-020", "Twenty kibibytes", 20 * 1024),
        "max_1mib": _large("Pattern-SIZE-1024", "Exactly the 1 MiB limit", MAX_PATTERN_BYTES),
    }
    return tuple(cases.items())


def corpus() -> dict[str, bytes]:
    """Valid pattern documents: case name -> exact file bytes. Every case has its own pattern ID."""
    return dict(_build())


def invalid_corpus() -> dict[str, tuple[bytes, str]]:
    """Documents the parser must refuse: case name -> (bytes, text the PatternError message contains)."""
    over = corpus()["max_1mib"] + b"\n"
    return {
        "empty": (b"", "the file is empty"),
        "whitespace_only": (b" \t\r\n\n   \n\t", "the file is empty"),
        "no_title": (b"Some notes about lookups.\n\n## Problem\nNo title line at all.\n", "no title line"),
        "malformed_id": (b"# Pattern-dht-1: x\n\n## Problem\nLower-case type, one digit.\n", "malformed pattern ID 'Pattern-dht-1'"),
        "no_name": (b"# Pattern-DHT-001:   \n\n## Problem\nA title without a name.\n", "Pattern-DHT-001 has no name"),
        "created_not_iso": (
            b"# Pattern-DHT-001: Bad date\n\n**CREATED:** last Tuesday\n**STATUS:** Active\n",
            "CREATED is 'last Tuesday', not an ISO 8601 time",
        ),
        "created_with_a_space": (
            b"# Pattern-DHT-001: Bad date\n\n**CREATED:** 2025-01-15 10:30\n",
            "CREATED is '2025-01-15 10:30', not an ISO 8601 time",
        ),
        "bad_status": (
            b"# Pattern-DHT-001: Bad status\n\n**CREATED:** 2025-11-05\n**STATUS:** Draft\n",
            "STATUS is 'Draft'; use one of Active, Deprecated, Superseded",
        ),
        "status_word_prefix": (
            b"# Pattern-DHT-001: Bad status\n\n**STATUS:** Activated\n",
            "STATUS is 'Activated'; use one of Active, Deprecated, Superseded",
        ),
        "duplicate_field": (
            b"# Pattern-DHT-001: Twice\n\n**STATUS:** Active\n**CATEGORY:** DHT\n**STATUS:** Deprecated\n",
            "STATUS given twice, on lines 3 and 5; keep one STATUS line and delete the other",
        ),
        "id_then_text": (
            b"# Pattern-DHT-001 x: y\n\n## Problem\nText between the ID and the colon.\n",
            "malformed pattern ID 'Pattern-DHT-001 x'",
        ),
        "not_utf8": (
            b"# Pattern-DHT-001: Latin-1\n\n## Problem\nPlain ASCII here\x0c, a form feed.\n"
            + "Grüße aus Köln\n".encode("latin-1"),
            "not UTF-8 text (byte 0xfc",
        ),
        "over_limit": (over, f"{MAX_PATTERN_BYTES + 1} bytes, more than the {MAX_PATTERN_BYTES}-byte limit"),
    }


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every valid case to ``folder/<case>.md``; returns case name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in corpus().items():
        path = folder / f"{name}.md"
        path.write_bytes(data)
        paths[name] = path
    return paths

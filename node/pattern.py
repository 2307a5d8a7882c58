"""Pattern documents: parsed, checked and hashed exactly as the user wrote them.

A pattern is a Markdown file in the pattern library's format: a title line
``# Pattern-{TYPE}-{NNN}: Name``, header fields written ``**FIELD:** value``,
``## Section`` headings, and references to other patterns by ID. Parsing
never changes the bytes: the pattern hash is the SHA-256 of the file exactly as
read (``sha256sum`` agrees), CRLF line ends, trailing spaces and all, and that
is what the network stores and ``fetch`` writes back.

Validation reports the first problem with the file, the line, what is wrong
and how to fix it. Fields the format does not name are kept, not refused.

Lines are split at ``\n`` only (a ``\r`` before it is dropped), so line numbers
are the ones ``grep -n`` and editors show; form feeds, U+2028 and the like are
text inside a line. Fenced code blocks (```` ``` ```` or ``~~~``, CommonMark
rules) are section text: a heading, header field or pattern ID inside one is
shown, not meant, so it starts no section, sets no field and is no reference.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

MAX_PATTERN_BYTES = 1 << 20
"""Default size limit of one pattern document (1 MiB)."""

PATTERN_ID = re.compile(r"Pattern-(?P<type>[A-Z][A-Z0-9]*(?:-[A-Z][A-Z0-9]*)*)-(?P<number>[0-9]{3,})")
"""``Pattern-{TYPE}-{NNN}``: TYPE is one or more hyphen-joined segments, each a capital
letter then capitals or digits (``DHT``, ``HYBRID-SEARCH``); NNN is three or more digits."""
TITLE_START = re.compile(r"#[ \t]")
TITLE_LINE = re.compile(r"^#[ \t]+(?P<id>[^:]*?)\s*:\s*(?P<name>.*?)\s*$")
FIELD_LINE = re.compile(r"^\*\*(?P<name>[A-Za-z][A-Za-z0-9 _-]*?):\*\*\s*(?P<value>.*?)\s*$")
SECTION_LINE = re.compile(r"^##\s+(?P<title>.+?)\s*$")
FENCE_LINE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# Not part of a longer word or ID: no letter or digit right before (nor one joined by a
# hyphen), none right after (nor one joined by a hyphen). "Pattern-DHT-001-and",
# "xPattern-DHT-001" and "Pattern-DHT-001x" are no references; "Pattern-DHT-001." is.
REFERENCE = re.compile(r"(?<![A-Za-z0-9])(?<![A-Za-z0-9]-)" + PATTERN_ID.pattern + r"(?!-?[A-Za-z0-9])")
ISO_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
"""A date, or a date and time joined by ``T`` with an optional ``Z`` or ``+HH:MM`` offset."""

TIME_FIELDS = ("CREATED", "LAST UPDATED")
STATUSES = ("Active", "Deprecated", "Superseded")


class PatternError(ValueError):
    """A pattern file that cannot be published as it is."""

    def __init__(self, source: str, line: int | None, problem: str, fix: str):
        self.source = source
        self.line = line
        self.problem = problem
        self.fix = fix
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}; {fix}")


@dataclass(frozen=True)
class Section:
    title: str
    line: int
    body: str


@dataclass(frozen=True)
class Pattern:
    id: str
    type: str
    number: str
    name: str
    fields: dict[str, str]
    """Header fields in file order (``CREATED``, ``STATUS``, ``CATEGORY``, and any other)."""
    sections: tuple[Section, ...]
    references: tuple[str, ...]
    """IDs of other patterns the document mentions, in first-mention order."""
    data: bytes = field(repr=False)

    @property
    def hash(self) -> str:
        """SHA-256 of the exact bytes, 64 lowercase hex digits."""
        return pattern_hash(self.data)

    @property
    def title(self) -> str:
        return f"{self.id}: {self.name}"

    @property
    def status(self) -> str | None:
        """The status word (``Superseded``); ``fields["STATUS"]`` keeps the whole value."""
        value = self.fields.get("STATUS")
        return None if value is None else (_status_word(value) or value)

    @property
    def category(self) -> str | None:
        return self.fields.get("CATEGORY")

    @property
    def created(self) -> datetime | None:
        value = self.fields.get("CREATED")
        return _parse_time(value) if value is not None else None


def pattern_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_pattern(path: Path | str, *, max_bytes: int = MAX_PATTERN_BYTES) -> Pattern:
    """Read and parse a pattern file, refusing an oversized one before reading it whole."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _too_large(source, size, max_bytes)
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except IsADirectoryError:
        raise PatternError(source, None, "is a folder, not a pattern file", "name a .md file") from None
    except FileNotFoundError:
        raise PatternError(source, None, "no such file", "check the path") from None
    except PermissionError:
        raise PatternError(source, None, "cannot be read (permission denied)", "check the file's permissions") from None
    return parse_pattern(data, source=source, max_bytes=max_bytes)


def parse_pattern(data: bytes, *, source: str = "<pattern>", max_bytes: int = MAX_PATTERN_BYTES) -> Pattern:
    """Parse and check a pattern document given as its exact bytes."""
    if len(data) > max_bytes:
        raise _too_large(source, len(data), max_bytes)
    if not data.strip():
        raise PatternError(source, None, "the file is empty", "start it with a title line such as '# Pattern-DHT-001: Name'")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PatternError(
            source, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "save the file as UTF-8",
        ) from None
    lines = [line.removesuffix("\r") for line in text.removeprefix("\ufeff").split("\n")]
    title_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if title_index is None:
        raise PatternError(source, None, "the file is empty", "start it with a title line such as '# Pattern-DHT-001: Name'")
    pattern_id, kind, number, name = _title(source, title_index + 1, lines[title_index])

    fields: dict[str, str] = {}
    field_lines: dict[str, int] = {}
    sections: list[Section] = []
    references = dict.fromkeys(m.group(0) for m in REFERENCE.finditer(lines[title_index]))
    current: tuple[str, int, list[str]] | None = None
    fence: str | None = None
    for index in range(title_index + 1, len(lines)):
        line, number_1 = lines[index], index + 1
        if fence is not None:
            if _closes(fence, line):
                fence = None
        elif opened := _opens(line):
            fence = opened
        else:
            for match in REFERENCE.finditer(line):
                references.setdefault(match.group(0), None)
            heading = SECTION_LINE.match(line)
            if heading:
                if current is not None:
                    sections.append(Section(current[0], current[1], "\n".join(current[2]).strip("\n")))
                current = (heading.group("title"), number_1, [])
                continue
            found = FIELD_LINE.match(line)
            field_name = found.group("name").upper() if found else ""
            # Header fields come before the first section; LAST UPDATED closes the document.
            if found and (current is None or field_name in TIME_FIELDS):
                if field_name in field_lines:
                    first = field_lines[field_name]
                    raise PatternError(
                        source, number_1, f"{field_name} given twice, on lines {first} and {number_1}",
                        f"keep one {field_name} line and delete the other",
                    )
                field_lines[field_name] = number_1
                fields[field_name] = _check_field(source, number_1, field_name, found.group("value"))
                continue
        if current is not None:
            current[2].append(line)
    if current is not None:
        sections.append(Section(current[0], current[1], "\n".join(current[2]).strip("\n")))

    references.pop(pattern_id, None)
    return Pattern(pattern_id, kind, number, name, fields, tuple(sections), tuple(references), data)


def _opens(line: str) -> str | None:
    """The fence a line opens (its run of backticks or tildes), or None."""
    match = FENCE_LINE.match(line)
    if match is None or (match.group("fence")[0] == "`" and "`" in match.group("info")):
        return None
    return match.group("fence")


def _closes(fence: str, line: str) -> bool:
    """Whether a line closes ``fence``: the same character, at least as many, nothing after but spaces."""
    match = FENCE_LINE.match(line)
    return (
        match is not None and match.group("fence")[0] == fence[0]
        and len(match.group("fence")) >= len(fence) and not match.group("info").strip(" \t")
    )


def _title(source: str, line_number: int, line: str) -> tuple[str, str, str, str]:
    example = "'# Pattern-DHT-001: Kademlia DHT for pattern discovery'"
    if not TITLE_START.match(line):
        raise PatternError(source, line_number, "no title line", f"the first line must be a title such as {example}")
    match = TITLE_LINE.match(line)
    if match is None:  # a heading with no colon: a title missing one, or just a heading
        words = line[1:].split()
        if words and PATTERN_ID.fullmatch(words[0]):
            raise PatternError(
                source, line_number, f"no colon after {words[0]} in the title",
                f"put a colon between the ID and the name, as in '# {words[0]}: Name'",
            )
        raise PatternError(source, line_number, "no title line", f"the first line must be a title such as {example}")
    candidate = match.group("id")
    id_match = PATTERN_ID.fullmatch(candidate)
    if id_match is None:
        words = candidate.split()
        if len(words) > 1 and PATTERN_ID.fullmatch(words[0]):
            fix = f"the colon must follow the ID directly, as in '# {words[0]}: Name'"
        else:
            fix = (
                "write it as Pattern-TYPE-NNN: TYPE in capital letters or digits, "
                "its parts joined by hyphens, NNN three or more digits (Pattern-DHT-001, Pattern-HYBRID-SEARCH-001)"
            )
        raise PatternError(source, line_number, f"malformed pattern ID {candidate!r}", fix)
    if not match.group("name"):
        raise PatternError(source, line_number, f"{candidate} has no name", f"name it after the colon, as in {example}")
    return candidate, id_match.group("type"), id_match.group("number"), match.group("name")


def _check_field(source: str, line: int, name: str, value: str) -> str:
    if name in TIME_FIELDS and _parse_time(value) is None:
        raise PatternError(
            source, line, f"{name} is {value!r}, not an ISO 8601 time",
            "write it like 2025-01-15T10:30:00Z or 2025-01-15",
        )
    if name == "STATUS" and _status_word(value) is None:
        raise PatternError(
            source, line, f"STATUS is {value!r}",
            f"use one of {', '.join(STATUSES)}, alone or followed by more, as in 'Superseded by Pattern-CLI-001'",
        )
    return value


def _status_word(value: str) -> str | None:
    """The status a STATUS value starts with as a whole word ('Superseded by ...' -> 'Superseded'), or None."""
    for word in STATUSES:
        if value.startswith(word):
            rest = value[len(word):]
            # End, space or punctuation, but not "_" (connector punctuation, part of a word).
            if not rest or rest[0].isspace() or unicodedata.category(rest[0]) in ("Pd", "Ps", "Pe", "Pi", "Pf", "Po"):
                return word
    return None


def _parse_time(value: str) -> datetime | None:
    value = value.strip()
    if not ISO_TIME.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _too_large(source: str, size: int, limit: int) -> PatternError:
    return PatternError(
        source, None, f"{size} bytes, more than the {limit}-byte limit for one pattern",
        "split it into several patterns, or raise the limit in the config",
    )

"""Pattern documents are parsed without touching their bytes, and refused precisely."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.node.pattern import MAX_PATTERN_BYTES, PATTERN_ID, PatternError, load_pattern, parse_pattern

FULL = """# Pattern-DHT-001: Kademlia DHT for pattern discovery

**CREATED:** 2025-01-15T10:30:00Z
**STATUS:** Active
**CATEGORY:** Networking
**OWNER:** platform team

## Problem
Finding a pattern among millions without a server.

## Solution
**DESIGN DECISION:** Kademlia with k = 20.
**WHY:** Lookups in O(log n) hops.

## Related Patterns
- Pattern-STORAGE-001: quotas for what each node holds
- Pattern-TRUST-001: private patterns
- Pattern-STORAGE-001 again, and not-Pattern-X-1 or Pattern-DHT-001 itself

**LAST UPDATED:** 2025-02-01
"""


def test_a_full_pattern_is_parsed():
    pattern = parse_pattern(FULL.encode())
    assert (pattern.id, pattern.type, pattern.number) == ("Pattern-DHT-001", "DHT", "001")
    assert pattern.name == "Kademlia DHT for pattern discovery"
    assert pattern.fields == {
        "CREATED": "2025-01-15T10:30:00Z", "STATUS": "Active", "CATEGORY": "Networking",
        "OWNER": "platform team", "LAST UPDATED": "2025-02-01",
    }
    assert [s.title for s in pattern.sections] == ["Problem", "Solution", "Related Patterns"]
    assert "**DESIGN DECISION:** Kademlia with k = 20." in pattern.sections[1].body
    assert pattern.sections[0].line == 8
    assert pattern.references == ("Pattern-STORAGE-001", "Pattern-TRUST-001")
    assert pattern.created.year == 2025 and pattern.status == "Active" and pattern.category == "Networking"


def test_the_hash_is_sha256_of_the_exact_bytes_as_sha256sum_says(tmp_path):
    data = ("# Pattern-MESH-001: Neural mesh  \r\n\r\n**STATUS:** Active\r\n\r\n## Problem\r\nÜnïcødé ✓  \r\n").encode()
    path = tmp_path / "Pattern-MESH-001.md"
    path.write_bytes(data)
    pattern = load_pattern(path)
    assert pattern.data == data
    assert pattern.hash == hashlib.sha256(data).hexdigest()
    assert pattern.hash == subprocess.run(["sha256sum", str(path)], capture_output=True, text=True).stdout.split()[0]
    assert pattern.name == "Neural mesh"
    assert pattern.fields == {"STATUS": "Active"}


def test_optional_fields_may_be_missing():
    pattern = parse_pattern(b"# Pattern-X1-0042: Minimal\n")
    assert (pattern.type, pattern.number, pattern.fields, pattern.sections) == ("X1", "0042", {}, ())
    assert pattern.created is None


def error_of(data: bytes, **kwargs) -> PatternError:
    with pytest.raises(PatternError) as caught:
        parse_pattern(data, source="p.md", **kwargs)
    return caught.value


@pytest.mark.parametrize(
    "data, line, words",
    [
        (b"", None, "empty"),
        (b"  \n\n", None, "empty"),
        (b"Just some notes\n", 1, "no title line"),
        (b"\n\n## Problem\n", 3, "no title line"),
        (b"# Pattern-dht-001: lower case\n", 1, "malformed pattern ID"),
        (b"# Pattern-DHT-1: too short\n", 1, "malformed pattern ID"),
        (b"# DHT-001: no prefix\n", 1, "malformed pattern ID"),
        (b"# Pattern-DHT-001:\n", 1, "no name"),
        (b"# Pattern-DHT-001: X\n\n**CREATED:** last Tuesday\n", 3, "not an ISO 8601 time"),
        (b"# Pattern-DHT-001: X\n\n## Notes\n\n**LAST UPDATED:** soon\n", 5, "not an ISO 8601 time"),
        (b"# Pattern-DHT-001: X\n**STATUS:** Maybe\n", 2, "STATUS is 'Maybe'"),
        (b"# Pattern-DHT-001: X\n\xff\xfe broken\n", 2, "not UTF-8"),
        (b"# Pattern-DHT-001 x: y\n", 1, "malformed pattern ID 'Pattern-DHT-001 x'"),
        (b"# Pattern-DHT-001 Name without a colon\n", 1, "no colon after Pattern-DHT-001"),
        (b"# Pattern-HYBRID-search-001: x\n", 1, "malformed pattern ID"),
        (b"# Pattern-HYBRID--SEARCH-001: x\n", 1, "malformed pattern ID"),
        (b"# Pattern-HYBRID-2SEARCH-001: x\n", 1, "malformed pattern ID"),
        (b"#Pattern-DHT-001: no space\n", 1, "no title line"),
    ],
)
def test_invalid_patterns_are_refused_with_file_line_and_fix(data, line, words):
    error = error_of(data)
    assert error.line == line
    assert words in error.problem
    assert error.fix
    assert str(error).startswith("p.md:" if line is None else f"p.md:{line}:")


def test_the_size_limit_is_checked_and_configurable(tmp_path):
    big = b"# Pattern-DHT-001: Big\n" + b"x" * MAX_PATTERN_BYTES
    assert "limit" in error_of(big).problem
    small_limit = error_of(b"# Pattern-DHT-001: Fine\n" + b"y" * 100, max_bytes=50)
    assert "50-byte limit" in small_limit.problem
    path = tmp_path / "big.md"
    path.write_bytes(big)
    with pytest.raises(PatternError, match="limit"):
        load_pattern(path)
    assert parse_pattern(big, max_bytes=2 * MAX_PATTERN_BYTES).data == big


def test_unreadable_paths_are_clear_errors(tmp_path):
    with pytest.raises(PatternError, match="no such file"):
        load_pattern(tmp_path / "missing.md")
    with pytest.raises(PatternError, match="folder"):
        load_pattern(tmp_path)


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_a_pattern_error(data):
    try:
        pattern = parse_pattern(data)
    except PatternError:
        return
    assert pattern.data == data


@given(st.text(max_size=300))
def test_a_valid_title_survives_any_body(body):
    data = ("# Pattern-TEST-123: Anything\n" + body).encode()
    try:
        pattern = parse_pattern(data)
    except PatternError as error:  # only a header value in the body may be refused
        assert "ISO 8601" in error.problem or "STATUS" in error.problem or "given twice" in error.problem
        return
    assert pattern.id == "Pattern-TEST-123" and pattern.data == data


# ----------------------------------------------------------------- pattern IDs
@pytest.mark.parametrize(
    "pattern_id, kind",
    [
        ("Pattern-HYBRID-SEARCH-001", "HYBRID-SEARCH"),
        ("Pattern-AUDIT-LOGGING-001", "AUDIT-LOGGING"),
        ("Pattern-PERFORMANCE-AGGREGATION-001", "PERFORMANCE-AGGREGATION"),
        ("Pattern-AUTH-DUAL-SYNC-001", "AUTH-DUAL-SYNC"),
        ("Pattern-X1-Y2-0042", "X1-Y2"),
    ],
)
def test_hyphenated_types_are_titles_and_references(pattern_id, kind):
    pattern = parse_pattern(f"# {pattern_id}: Name\n\n## Related Patterns\n- {pattern_id} itself\n".encode())
    assert (pattern.id, pattern.type) == (pattern_id, kind)
    assert PATTERN_ID.fullmatch(pattern_id).group("type", "number") == (kind, pattern_id.rsplit("-", 1)[1])
    other = parse_pattern(f"# Pattern-DHT-001: Other\n\nSee {pattern_id}, and ({pattern_id}).\n".encode())
    assert other.references == (pattern_id,)


@pytest.mark.parametrize(
    "text, references",
    [
        ("Pattern-DHT-001-and Pattern-DHT-001-SEARCH-002", ()),
        ("Pattern-DHT-0012", ("Pattern-DHT-0012",)),
        ("xPattern-DHT-001 1Pattern-DHT-002 a-Pattern-DHT-003 Pattern-DHT-004x Pattern-DHT-0051", ("Pattern-DHT-0051",)),
        ("Pattern-HYBRID-SEARCH-001.", ("Pattern-HYBRID-SEARCH-001",)),
        ("(Pattern-AUDIT-LOGGING-001), `Pattern-CLI-001`", ("Pattern-AUDIT-LOGGING-001", "Pattern-CLI-001")),
        (
            "**Pattern-DHT-002** and _Pattern-DHT-003_ in Pattern-DHT-004.md",
            ("Pattern-DHT-002", "Pattern-DHT-003", "Pattern-DHT-004"),
        ),
        ("see Pattern-DHT-002--it explains--Pattern-DHT-003 too", ("Pattern-DHT-002", "Pattern-DHT-003")),
        ("Pattern-FAILURE-* and Pattern-XXX-YYY and Pattern-HYBRID-SEARCH", ()),
        ("Pattern-HYBRID-search-001 Pattern-HYBRID--SEARCH-001 Pattern-HYBRID-2X-001", ()),
    ],
)
def test_references_do_not_swallow_their_neighbours(text, references):
    pattern = parse_pattern(f"# Pattern-DHT-001: Refs\n\n## Related Patterns\n{text}\n".encode())
    assert pattern.references == references


# ----------------------------------------------------------------- STATUS
@pytest.mark.parametrize(
    "value, word",
    [
        ("Active", "Active"),
        ("Superseded by Pattern-CLI-001", "Superseded"),
        ("Superseded by Pattern-CLI-001 (automated OTEL)", "Superseded"),
        ("Deprecated: use Pattern-CLI-001", "Deprecated"),
        ("Deprecated, see Pattern-CLI-001", "Deprecated"),
        ("Deprecated\t(2025-11)", "Deprecated"),
        ("Active.", "Active"),
    ],
)
def test_status_may_say_more_after_the_status_word(value, word):
    pattern = parse_pattern(f"# Pattern-DHT-001: X\n**STATUS:** {value}\n".encode())
    assert pattern.status == word
    assert pattern.fields["STATUS"] == value
    if "Pattern-CLI-001" in value:
        assert pattern.references == ("Pattern-CLI-001",)


@pytest.mark.parametrize(
    "value", ["Activated", "bogus", "active", "ACTIVE", "Active2", "Active_2", "SupersededBy X", "by Superseded"]
)
def test_values_that_only_look_like_a_status_are_refused(value):
    error = error_of(f"# Pattern-DHT-001: X\n\n**STATUS:** {value}\n".encode())
    assert (error.line, error.problem) == (3, f"STATUS is {value!r}")
    assert "use one of Active, Deprecated, Superseded" in error.fix


# ----------------------------------------------------------------- code fences
TEMPLATE_IN_FENCE = """# Pattern-META-003: How to write a pattern

**CREATED:** 2025-03-01T08:00:00Z
**STATUS:** Active

## Template
Every pattern document follows this structure:

```markdown
# Pattern-{TYPE}-{NNN}: [Pattern Name]

**CREATED:** [ISO 8601 timestamp]
**STATUS:** Active | Deprecated | Superseded

## Problem
[Clear problem statement]

## Related Patterns
- Pattern-XXX-YYY: [Relationship]
- Pattern-DHT-001: an example, not a reference

**LAST UPDATED:** [ISO 8601 timestamp]
```

## Related Patterns
- Pattern-META-001: the library's conventions

**LAST UPDATED:** 2025-03-02
"""


def test_a_template_inside_a_code_fence_is_body_text():
    pattern = parse_pattern(TEMPLATE_IN_FENCE.encode())
    assert pattern.fields == {"CREATED": "2025-03-01T08:00:00Z", "STATUS": "Active", "LAST UPDATED": "2025-03-02"}
    assert [(s.title, s.line) for s in pattern.sections] == [("Template", 6), ("Related Patterns", 25)]
    body = pattern.sections[0].body
    assert body.startswith("Every pattern document") and body.endswith("**LAST UPDATED:** [ISO 8601 timestamp]\n```")
    assert "## Problem\n[Clear problem statement]" in body
    assert pattern.references == ("Pattern-META-001",)


def test_a_date_inside_a_fence_does_not_override_the_real_one():
    data = b"# Pattern-DHT-001: X\n\n**CREATED:** 2025-01-15\n\n~~~\n**CREATED:** 1999-12-31\n**STATUS:** bogus\n~~~\n"
    pattern = parse_pattern(data)
    assert pattern.fields == {"CREATED": "2025-01-15"} and pattern.created.year == 2025


@pytest.mark.parametrize(
    "fenced, sections",
    [
        # a longer fence is closed only by a fence of the same character at least as long
        ("````\n```\n## Hidden\n~~~~\n````\n## Shown\n", ["Shown"]),
        ("~~~python\n```\n## Hidden\n~~~\n## Shown\n", ["Shown"]),
        # up to three spaces of indentation; four is not a fence
        ("   ```\n## Hidden\n   ```\n## Shown\n", ["Shown"]),
        ("    ```\n## Shown\n", ["Shown"]),
        # a closing fence takes nothing after it but spaces; an info string does not close
        ("```\n```python\n## Hidden\n```  \n## Shown\n", ["Shown"]),
        # backticks in a backtick fence's info string: an inline code span, not a fence
        ("``` x ```\n## Shown\n", ["Shown"]),
        # an unclosed fence runs to the end of the document
        ("```\n## Hidden\n**LAST UPDATED:** not a date\nPattern-DHT-009\n", []),
        # two backticks are no fence
        ("``\n## Shown\n", ["Shown"]),
    ],
)
def test_code_fences_follow_commonmark(fenced, sections):
    pattern = parse_pattern(f"# Pattern-DHT-001: X\n\n## Intro\n{fenced}".encode())
    assert [s.title for s in pattern.sections] == ["Intro", *sections]
    assert pattern.references == ()
    assert fenced.rstrip("\n").split("\n")[0] in pattern.sections[0].body


def test_a_fence_in_crlf_text_closes_like_in_lf_text():
    lf = "# Pattern-DHT-001: X\n\n## Intro\n```\n## Hidden\n```\n## Shown\nPattern-DHT-002\n"
    crlf = parse_pattern(lf.replace("\n", "\r\n").encode())
    assert [(s.title, s.line, s.body) for s in crlf.sections] == [
        (s.title, s.line, s.body) for s in parse_pattern(lf.encode()).sections
    ]
    assert [s.title for s in crlf.sections] == ["Intro", "Shown"] and crlf.references == ("Pattern-DHT-002",)


# ----------------------------------------------------------------- lines
ODD_BREAKS = (
    "# Pattern-DHT-001: Odd\u2028breaks\n"
    "a form feed\x0c, a vertical tab\x0b, a lone CR\r, U+0085\u0085, U+2028\u2028, U+2029\u2029 end\n"
    "\n"
    "**STATUS:** Active\u2028\n"
    "\x0c\n"
    "## Problem\n"
    "body\u2029line\n"
    "## Solution\r\n"
    "**LAST UPDATED:** 2025-01-15\n"
)


def test_lines_are_split_at_newlines_only_as_grep_counts_them(tmp_path):
    pattern = parse_pattern(ODD_BREAKS.encode())
    assert [(s.title, s.line) for s in pattern.sections] == [("Problem", 6), ("Solution", 8)]
    assert pattern.sections[0].body == "body\u2029line"
    assert pattern.fields == {"STATUS": "Active", "LAST UPDATED": "2025-01-15"}
    path = tmp_path / "odd.md"
    path.write_bytes(ODD_BREAKS.encode())
    grep = subprocess.run(["grep", "-n", "^## ", str(path)], capture_output=True, text=True).stdout
    assert [int(line.split(":")[0]) for line in grep.splitlines()] == [s.line for s in pattern.sections]


def test_a_line_separator_in_the_title_is_kept():
    pattern = parse_pattern(ODD_BREAKS.encode())
    assert pattern.name == "Odd\u2028breaks"
    assert pattern.title == "Pattern-DHT-001: Odd\u2028breaks"


def test_errors_name_the_line_grep_would_show():
    head = "# Pattern-DHT-001: X\na\x0cb\x0bc\rd\u0085e\u2028f\u2029g\n".encode()
    assert error_of(head + b"**STATUS:** bogus\n").line == 3
    assert error_of(head + b"ok\n\xff\n").line == 4
    assert error_of(b"\x0c\n\r\n\xe2\x80\xa8\n## Problem\n").line == 4


def test_a_tab_after_the_hash_starts_a_title():
    pattern = parse_pattern(b"#\tPattern-DHT-001:\tTabbed name\t\n")
    assert (pattern.id, pattern.name) == ("Pattern-DHT-001", "Tabbed name")


# ----------------------------------------------------------------- duplicate fields
@pytest.mark.parametrize(
    "data, problem",
    [
        (
            b"# Pattern-DHT-001: X\n\n**STATUS:** Active\n**CATEGORY:** A\n**STATUS:** Active\n",
            "STATUS given twice, on lines 3 and 5",
        ),
        (b"# Pattern-DHT-001: X\n**Category:** A\n**CATEGORY:** B\n", "CATEGORY given twice, on lines 2 and 3"),
        (
            b"# Pattern-DHT-001: X\n**CREATED:** 2025-01-15\n\n## P\n**CREATED:** 2025-01-16\n",
            "CREATED given twice, on lines 2 and 5",
        ),
        (
            b"# Pattern-DHT-001: X\n**LAST UPDATED:** 2025-01-15\n\n## P\nx\n\n**LAST UPDATED:** 2025-01-16\n",
            "LAST UPDATED given twice, on lines 2 and 7",
        ),
    ],
)
def test_a_header_field_given_twice_is_refused_naming_both_lines(data, problem):
    error = error_of(data)
    assert error.problem == problem
    assert error.line == int(problem.rsplit(" ", 1)[1])
    assert "one" in error.fix and problem.split(" given")[0] in error.fix


def test_body_lines_that_look_like_fields_are_not_duplicates():
    inside = FULL.replace("## Solution\n", "## Solution\n**STATUS:** inside a section\n**OWNER:** x\n")
    pattern = parse_pattern(inside.encode())
    assert pattern.fields["STATUS"] == "Active" and pattern.fields["OWNER"] == "platform team"


# ----------------------------------------------------------------- times
@pytest.mark.parametrize(
    "value",
    [
        "2025-01-15", "2025-01-15T10:30", "2025-01-15T10:30:00", "2025-01-15T10:30:00Z",
        "2025-01-15T10:30:00.5Z", "2025-01-15T10:30:00.123456+01:00", "2025-01-15T10:30-05:30",
    ],
)
def test_iso_8601_times_are_accepted(value):
    pattern = parse_pattern(f"# Pattern-DHT-001: X\n**CREATED:** {value}\n**LAST UPDATED:** {value}\n".encode())
    assert pattern.created is not None and pattern.created.year == 2025


@pytest.mark.parametrize(
    "value",
    [
        "2025-01-15 10:30", "2025-01-15 10:30:00Z", "20250115", "2025-W03-1", "2025-01-15T10",
        "2025-01-15T10:30:00+0100", "2025-01-15t10:30z", "2025-1-5", "2025-02-30", "2025-01-15T25:00",
        "٢٠٢٥-٠١-١٥", "2025-01-15T10:30:00.Z", "[ISO 8601 timestamp]",
    ],
)
def test_times_that_are_not_strict_iso_8601_are_refused(value):
    error = error_of(f"# Pattern-DHT-001: X\n\n**CREATED:** {value}\n".encode())
    assert (error.line, error.problem) == (3, f"CREATED is {value!r}, not an ISO 8601 time")
    assert error.fix == "write it like 2025-01-15T10:30:00Z or 2025-01-15"


def test_a_pattern_named_in_the_title_is_a_reference():
    pattern = parse_pattern(b"# Pattern-CLI-001: Replaces Pattern-TRACKING-002\n\n**STATUS:** Active\n")
    assert pattern.references == ("Pattern-TRACKING-002",)

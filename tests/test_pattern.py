"""Pattern documents are parsed without touching their bytes, and refused precisely."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aether.node.pattern import MAX_PATTERN_BYTES, PatternError, load_pattern, parse_pattern

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
        assert "ISO 8601" in error.problem or "STATUS" in error.problem
        return
    assert pattern.id == "Pattern-TEST-123" and pattern.data == data

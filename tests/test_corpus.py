"""The test corpus and the example patterns are what they claim to be."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aether.node.chunks import BLOCK_BYTES
from aether.node.pattern import MAX_PATTERN_BYTES, PATTERN_ID, STATUSES, PatternError, load_pattern, parse_pattern

from .corpus import REFERENCE_IDS, corpus, invalid_corpus, write_corpus

EXAMPLES = Path(__file__).resolve().parent.parent / "simulations" / "patterns"

EXACT_SIZES = {
    "block_6143": 6143,
    "block_6144": 6144,
    "block_6145": 6145,
    "block_12288": 12288,
    "size_20k": 20480,
    "max_1mib": 1_048_576,
}

# Where the parser reports each invalid case (None: a whole-file problem).
INVALID_LINES = {
    "empty": None,
    "whitespace_only": None,
    "no_title": 1,
    "malformed_id": 1,
    "no_name": 1,
    "created_not_iso": 3,
    "created_with_a_space": 3,
    "bad_status": 4,
    "status_word_prefix": 3,
    "duplicate_field": 5,
    "id_then_text": 1,
    "not_utf8": 5,
    "over_limit": None,
}

REQUIRED_CASES = {
    "minimal", "typical", "unicode", "crlf", "trailing_whitespace", "bom", "mixed_newlines",
    "no_final_newline", "unusual_line_breaks", "many_references", "extra_fields", "hyphenated_type",
    "template_in_fence", *EXACT_SIZES,
}


@pytest.fixture(scope="module")
def cases() -> dict[str, bytes]:
    return corpus()


@pytest.fixture(scope="module")
def parsed(cases) -> dict:
    return {name: parse_pattern(data, source=f"{name}.md") for name, data in cases.items()}


# ----------------------------------------------------------------- valid corpus
def test_the_corpus_has_every_required_case_and_is_deterministic(cases):
    assert REQUIRED_CASES <= set(cases)
    again = corpus()
    assert again == cases and again is not cases


def test_every_case_parses_and_hashes_its_exact_bytes(cases, parsed):
    for name, data in cases.items():
        pattern = parsed[name]
        assert pattern.data == data, name
        assert pattern.hash == hashlib.sha256(data).hexdigest(), name
        assert PATTERN_ID.fullmatch(pattern.id), name
    ids = [p.id for p in parsed.values()]
    assert len(ids) == len(set(ids)), "each case needs its own pattern ID, or round trips overwrite each other"


def test_written_files_load_back_and_sha256sum_agrees(tmp_path, cases):
    paths = write_corpus(tmp_path / "corpus")
    assert set(paths) == set(cases)
    for name, path in paths.items():
        assert path.name == f"{name}.md"
        assert path.read_bytes() == cases[name]
        assert load_pattern(path).hash == hashlib.sha256(cases[name]).hexdigest()
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum is not installed")
    ordered = sorted(paths)
    out = subprocess.run(
        ["sha256sum", "--", *(str(paths[n]) for n in ordered)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(out) == len(ordered)
    for name, line in zip(ordered, out):
        digest, _, filename = line.partition("  ")
        assert filename == str(paths[name])
        assert digest == load_pattern(paths[name]).hash, name


def test_sizes_around_the_block_boundary_are_exact(cases):
    assert BLOCK_BYTES == 6144
    for name, size in EXACT_SIZES.items():
        assert len(cases[name]) == size, name
    assert -(-len(cases["block_6144"]) // BLOCK_BYTES) == 1
    assert -(-len(cases["block_6145"]) // BLOCK_BYTES) == 2


def test_the_largest_case_is_exactly_the_limit_and_parses(cases, parsed, tmp_path):
    data = cases["max_1mib"]
    assert len(data) == MAX_PATTERN_BYTES == 1 << 20
    assert parsed["max_1mib"].status == "Active"
    assert len(parsed["max_1mib"].sections) > 100  # varied paragraphs, not one padded blob
    path = tmp_path / "max.md"
    path.write_bytes(data)
    assert load_pattern(path).data == data
    with pytest.raises(PatternError, match="limit"):
        parse_pattern(data, max_bytes=len(data) - 1)


def test_crlf_case_uses_crlf_everywhere_and_parses_like_lf(cases, parsed):
    data = cases["crlf"]
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    crlf, lf = parsed["crlf"], parsed["typical"]
    assert crlf.fields == lf.fields
    assert [(s.title, s.line, s.body) for s in crlf.sections] == [(s.title, s.line, s.body) for s in lf.sections]
    assert crlf.references == lf.references


def test_line_end_and_whitespace_cases_contain_what_they_claim(cases, parsed):
    mixed = cases["mixed_newlines"]
    assert b"\r\n" in mixed and re.search(rb"[^\r]\n", mixed)
    assert not cases["no_final_newline"].endswith((b"\n", b"\r"))
    assert parsed["no_final_newline"].fields["LAST UPDATED"] == "2025-11-06T17:45:00+01:00"
    ws = cases["trailing_whitespace"]
    assert b" \n" in ws and b"\t\n" in ws
    assert parsed["trailing_whitespace"].name == "Trailing spaces and tabs"
    assert parsed["trailing_whitespace"].status == "Active"
    assert cases["unusual_line_breaks"].count(b"\r") == 1 and "\u2028".encode() in cases["unusual_line_breaks"]


def test_unusual_line_breaks_are_text_inside_a_line_as_grep_counts_lines(cases, parsed):
    data = cases["unusual_line_breaks"]
    for mark in (b"\r", b"\x0c", b"\x0b", "\u0085".encode(), "\u2028".encode(), "\u2029".encode()):
        assert mark in data, mark
    lines = data.split(b"\n")
    pattern = parsed["unusual_line_breaks"]
    assert [(s.title, s.line) for s in pattern.sections] == [("Problem", 5), ("Solution", 8)]
    for section in pattern.sections:
        assert lines[section.line - 1] == f"## {section.title}".encode()
    problem = pattern.sections[0].body
    assert problem.count("\n") == 1 and "\r" in problem and "\u2028" in problem and "\u2029" in problem
    assert pattern.fields == {"STATUS": "Active", "LAST UPDATED": "2025-11-06T17:45:00+01:00"}
    if shutil.which("grep") is None:
        pytest.skip("grep is not installed")
    found = subprocess.run(["grep", "-n", "^## ", "-"], input=data, capture_output=True, check=True).stdout
    assert [int(line.split(b":")[0]) for line in found.splitlines()] == [5, 8]


def test_hyphenated_type_case_uses_the_libraries_own_ids(parsed):
    pattern = parsed["hyphenated_type"]
    assert (pattern.id, pattern.type, pattern.number) == ("Pattern-HYBRID-SEARCH-001", "HYBRID-SEARCH", "001")
    assert pattern.status == "Superseded"
    assert pattern.fields["STATUS"] == "Superseded by Pattern-AUDIT-LOGGING-001"
    assert pattern.references == (
        "Pattern-AUDIT-LOGGING-001", "Pattern-PERFORMANCE-AGGREGATION-001", "Pattern-AUTH-DUAL-SYNC-001",
        "Pattern-NET-001", "Pattern-MESH-002",
    )


def test_template_in_a_code_fence_is_section_text_only(cases, parsed):
    pattern = parsed["template_in_fence"]
    assert pattern.fields == {
        "CREATED": "2025-11-05T09:30:00Z", "STATUS": "Active", "CATEGORY": "Test Corpus",
        "LAST UPDATED": "2025-11-06T17:45:00+01:00",
    }
    assert pattern.created.year == 2025
    assert [s.title for s in pattern.sections] == ["Template", "Related Patterns"]
    template = pattern.sections[0].body
    assert "```markdown\n# Pattern-{TYPE}-{NNN}: [Pattern Name]\n\n**CREATED:** [ISO 8601 timestamp]" in template
    assert "## Problem\n[Clear problem statement]" in template and template.endswith("[ISO 8601 timestamp]\n```")
    assert pattern.references == ("Pattern-META-007",)
    assert b"Pattern-DHT-001" in cases["template_in_fence"]


def test_bom_is_part_of_the_bytes_but_not_of_the_title(cases, parsed):
    data = cases["bom"]
    assert data.startswith(b"\xef\xbb\xbf")
    assert parsed["bom"].id == "Pattern-BOM-001"
    assert parsed["bom"].hash != hashlib.sha256(data[3:]).hexdigest()


def test_unicode_case_spans_scripts_in_title_and_body(cases, parsed):
    pattern = parsed["unicode"]
    assert pattern.name == "Café naïve — 分散ハッシュ表 🚀 שיתוף דפוסים مشاركة"
    text = cases["unicode"].decode("utf-8")
    for sample in ("Grüße", "内容寻址", "서명된", "עברית", "العربية", "👩\u200d💻", "e\u0301", "\u200f", "𐍈"):
        assert sample in text, sample
    assert pattern.status == "Deprecated"


def test_references_case_reports_all_two_hundred_once_and_not_itself(parsed):
    pattern = parsed["many_references"]
    assert len(REFERENCE_IDS) == len(set(REFERENCE_IDS)) == 200
    assert pattern.references == REFERENCE_IDS
    assert pattern.id not in pattern.references
    for near_miss in ("Pattern-DHT-998", "Pattern-DHT-997", "Pattern-HYBRID-SEARCH-001", "Pattern-DHT-996"):
        assert near_miss not in pattern.references


def test_unknown_header_fields_are_kept(parsed):
    fields = parsed["extra_fields"].fields
    assert fields["OWNER"] == "platform team <platform@example.org>"
    assert fields["TAGS"] == "dht, storage, round-trip"
    assert list(fields)[:3] == ["CREATED", "STATUS", "CATEGORY"]


def test_minimal_case_has_only_a_title_and_one_section(parsed):
    pattern = parsed["minimal"]
    assert pattern.fields == {} and pattern.status is None and pattern.created is None
    assert [s.title for s in pattern.sections] == ["Problem"]


# ----------------------------------------------------------------- invalid corpus
def test_invalid_cases_cover_every_expected_refusal():
    assert set(invalid_corpus()) == set(INVALID_LINES)


@pytest.mark.parametrize("name", sorted(INVALID_LINES))
def test_invalid_cases_are_refused_with_the_expected_message_and_line(name):
    data, expected = invalid_corpus()[name]
    with pytest.raises(PatternError) as caught:
        parse_pattern(data, source=f"{name}.md")
    error = caught.value
    assert expected in str(error)
    assert error.line == INVALID_LINES[name]
    assert str(error).startswith(f"{name}.md:" if error.line is None else f"{name}.md:{error.line}: ")


def test_the_oversized_case_is_one_byte_over_the_limit():
    data, _ = invalid_corpus()["over_limit"]
    assert len(data) == MAX_PATTERN_BYTES + 1
    assert parse_pattern(data, max_bytes=len(data)).data == data  # refused for its size alone


# ----------------------------------------------------------------- example patterns
def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.md"))


def test_examples_are_a_small_self_contained_library():
    files = example_files()
    assert 8 <= len(files) <= 10, [f.name for f in files]
    patterns = {}
    for path in files:
        pattern = load_pattern(path)
        assert path.name == f"{pattern.id}.md"
        assert pattern.id not in patterns
        patterns[pattern.id] = pattern
    for pattern in patterns.values():
        missing = set(pattern.references) - set(patterns)
        assert not missing, f"{pattern.id} references patterns not among the examples: {sorted(missing)}"
        assert pattern.references, f"{pattern.id} references no other pattern"
    assert len({p.type for p in patterns.values()}) >= 3


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_each_example_follows_the_library_format(path):
    data = path.read_bytes()
    assert 1024 <= len(data) <= 4096, len(data)
    pattern = parse_pattern(data, source=path.name)
    assert data.startswith(f"# {pattern.id}: ".encode())
    assert {"CREATED", "STATUS", "CATEGORY", "LAST UPDATED"} <= set(pattern.fields)
    assert pattern.status in STATUSES and pattern.created is not None
    titles = [s.title for s in pattern.sections]
    for wanted in ("Problem", "Solution", "Related Patterns"):
        assert wanted in titles, (wanted, titles)
    assert all(s.body.strip() for s in pattern.sections), "empty section"
    assert data.endswith(b"\n") and b"\r" not in data

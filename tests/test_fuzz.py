"""A bounded slice of the fuzzing harness (simulations/fuzz.py): a few hundred cases per target.

Each target feeds one entry point that reads outside bytes (datagrams, RPC
arguments, records, manifests, entries, team records, contact records, control
requests, scenario and pattern files) and fails on any exception other than its
documented refusal; the node targets also require that an honest peer is still
served over UDP afterwards. docs/fuzzing.md records the long runs.
"""

from __future__ import annotations

import contextlib

import pytest

from aether.node import wire
from aether.simulations import fuzz

CASES = {"node": 200, "replies": 80, "control": 120}
"""Cases per target here; the others run DEFAULT_CASES. The script runs hundreds of thousands."""
DEFAULT_CASES = 150
SEED = 20261126


@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
def test_nothing_but_the_documented_refusal_escapes(name: str) -> None:
    cases = CASES.get(name, DEFAULT_CASES)
    assert fuzz.TARGETS[name].fuzz(cases, SEED) == cases


def test_the_harness_reports_an_exception_other_than_the_refusal() -> None:
    # A decoder that lets an IndexError out on short input: the harness must say so.
    def careless(data: bytes) -> int:
        if len(data) < 8:
            raise wire.WireError("too short")
        return data[29]

    target = fuzz.Target("careless", lambda: fuzz.garbage([b"\x00" * 30]), fuzz.pure(careless, wire.WireError), "")
    with pytest.raises(fuzz.Finding, match="IndexError"):
        target.fuzz(200, SEED)


def test_mutations_damage_valid_encodings() -> None:
    samples = fuzz.samples()
    seeds = samples.encoded()
    seen: set[bytes] = set()
    for n in range(200):
        seen.add(fuzz.mutate(seeds[0], seeds, fuzz.random.Random(n)))
    assert len(seen) > 150  # damage of many kinds
    assert any(len(m) < len(seeds[0]) for m in seen) and any(len(m) > len(seeds[0]) for m in seen)


def test_the_node_harness_notices_a_node_that_stops_answering() -> None:
    harness = fuzz.LoopbackNode()
    try:
        harness.node.transport.close()
        with pytest.raises(fuzz.Finding, match="not"):
            harness.check_serving()
    finally:
        with contextlib.suppress(Exception):
            harness.close()

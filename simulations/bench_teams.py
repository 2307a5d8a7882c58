"""Benchmark: the cryptography of a team, on one machine, without a network.

    python -m aether.simulations.bench_teams [--runs 200] [--members 5] [--threshold 3] [--json]

Each operation runs ``--runs`` times on fresh keys and reports nearest-rank
p50/p99 wall-clock latency in ms (:func:`aether.simulations.stats.percentiles`):

* **split + seal**: a new team key split K-of-N and each share sealed to its
  member (the creator's side of a key ceremony);
* **open + combine**: K sealed shares opened by their members, combined, and
  the result checked against the commitment (the requester's side of an
  unlock, without the round trips);
* **find_bad_shares**: N shares of which one is tampered, the key rebuilt and
  the bad member named (when N > K);
* **encrypt / decrypt / both** a 1 MiB pattern blob;
* **unlock on loopback** (``--unlocks``, 50 by default; 0 skips it): a whole
  ``team unlock`` between in-process nodes over real UDP on 127.0.0.1: the
  members' contact records looked up and pinged, share requests and answers
  signed, sealed and checked, K shares combined and the key kept sealed at rest.
  The key is forgotten between runs.

The issue's targets: share collection under 2 s and decryption of a 1 MiB
pattern under 150 ms (the seed's), aiming for under 50 ms and under 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import hashlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aether.crypto.identity import Identity
from aether.crypto.teams import (
    check_commitment,
    combine_shares,
    commitment,
    decrypt_pattern,
    encrypt_pattern,
    find_bad_shares,
    new_team_id,
    new_team_key,
    open_sealed,
    seal,
    split_key,
)
from aether.simulations.stats import percentiles

PATTERN_BYTES = 1024 * 1024


def measure(runs: int, prepare: Callable[[], object], operation: Callable[[object], object]) -> list[float]:
    """Milliseconds per run of `operation(prepared)`; `prepare` is not timed."""
    samples = []
    for _ in range(runs):
        prepared = prepare()
        start = time.perf_counter()
        operation(prepared)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def run(runs: int, n: int, k: int) -> dict[str, dict[str, float]]:
    members = [Identity.generate() for _ in range(n)]
    team_id, _ = new_team_id(members[0].public.signing_public, "bench")
    results: dict[str, list[float]] = {}

    def split_and_seal(key: object) -> list[bytes]:
        return [
            seal(m.public, share, purpose="share", team_id=team_id, epoch=0)
            for m, share in zip(members, split_key(key, k, n))  # type: ignore[arg-type]
        ]

    results[f"split {k}-of-{n} + seal {n}"] = measure(runs, new_team_key, split_and_seal)

    def ceremony() -> tuple[bytes, list[bytes]]:
        key = new_team_key()
        return key, split_and_seal(key)

    def open_and_combine(prepared: object) -> None:
        key, boxes = prepared  # type: ignore[misc]
        opened = [
            open_sealed(m, box, purpose="share", team_id=team_id, epoch=0)
            for m, box in zip(members[:k], boxes[:k])
        ]
        if not check_commitment(combine_shares(opened), team_id, 0, commitment(key, team_id, 0)):
            raise AssertionError("combined key fails its commitment")

    results[f"open {k} + combine + check"] = measure(runs, ceremony, open_and_combine)

    def one_bad() -> tuple[bytes, dict[int, bytes]]:
        key = new_team_key()
        shares = dict(enumerate(split_key(key, k, n)))
        shares[0] = shares[0][:1] + bytes(b ^ 0x5A for b in shares[0][1:])
        return key, shares

    def name_bad(prepared: object) -> None:
        key, shares = prepared  # type: ignore[misc]
        found = find_bad_shares(shares, k, team_id, 0, commitment(key, team_id, 0))
        if found != (key, {0}):
            raise AssertionError(f"find_bad_shares returned {found}")

    if n > k:  # with K = N a bad share leaves no key to find
        results[f"find_bad_shares, 1 bad of {n}"] = measure(runs, one_bad, name_bad)

    pattern = os.urandom(PATTERN_BYTES)
    key = new_team_key()
    blob = encrypt_pattern(key, team_id, 0, pattern)
    digest = hashlib.sha256(pattern).digest()
    results["encrypt 1 MiB pattern"] = measure(runs, lambda: pattern, lambda p: encrypt_pattern(key, team_id, 0, p))  # type: ignore[arg-type]
    results["decrypt 1 MiB pattern"] = measure(runs, lambda: blob, lambda b: decrypt_pattern(key, b, digest))  # type: ignore[arg-type]
    results["encrypt + decrypt 1 MiB"] = measure(
        runs, lambda: pattern, lambda p: decrypt_pattern(key, encrypt_pattern(key, team_id, 0, p), hashlib.sha256(p).digest())  # type: ignore[arg-type]
    )
    return {name: percentiles(samples, (50, 99)) for name, samples in results.items()}


async def _unlocks(runs: int, n: int, k: int) -> list[float]:
    """Milliseconds per whole unlock of a K-of-N team by one member, the others answering over loopback UDP."""
    from aether.node.contact import publish_contact
    from aether.node.team_ceremony import create_team
    from aether.node.team_inbox import Inbox
    from aether.node.team_keys import lock
    from aether.node.team_unlock import unlock
    from aether.simulations.network import QUIET, address_of, local_network

    quiet = QUIET.replace(ksize=8)
    with tempfile.TemporaryDirectory() as tmp:
        async with local_network(Path(tmp), max(n, 8), quiet) as nodes:
            for node in nodes:
                await publish_contact(node, [address_of(node)])
            creator, *others = nodes[:n]
            created = await create_team(creator, "bench", k, [m.identity.public for m in others])
            for member in others:
                await Inbox(member).poll()
            team_id = created.descriptor.team_id
            samples = []
            for _ in range(runs):
                start = time.perf_counter()
                result = await unlock(creator, creator.store.team(team_id), 10.0, ttl=60.0)
                samples.append((time.perf_counter() - start) * 1000)
                if not result.unlocked:
                    raise AssertionError(f"unlock failed: {result}")
                lock(creator, team_id)
            return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aether.simulations.bench_teams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per operation (default 200)")
    parser.add_argument("--members", type=int, default=5, help="N, members of the team (default 5)")
    parser.add_argument("--threshold", type=int, default=3, help="K, shares needed (default 3)")
    parser.add_argument("--unlocks", type=int, default=50, help="whole unlocks on loopback (default 50; 0: none)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.unlocks < 0 or not 1 <= args.threshold <= args.members <= 255:
        parser.error("need --runs >= 1, --unlocks >= 0 and 1 <= --threshold <= --members <= 255")
    table = run(args.runs, args.members, args.threshold)
    if args.unlocks:
        samples = asyncio.run(_unlocks(args.unlocks, args.members, args.threshold))
        table[f"unlock {args.threshold}-of-{args.members} on loopback ({args.unlocks} runs)"] = percentiles(
            samples, (50, 99))
    if args.json:
        print(json.dumps({"runs": args.runs, "machine": platform.platform(), "results": table}, indent=2))
        return 0
    width = max(map(len, table))
    print(f"{'operation':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}   ({args.runs} runs, {platform.python_implementation()} {platform.python_version()})")
    for name, values in table.items():
        print(f"{name:<{width}}  {values['p50']:>8.3f}  {values['p99']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

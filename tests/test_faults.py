"""Faults a device meets: kill -9 while publishing, a full disk, the wall clock jumping, the network gone.

Each test runs real daemons (subprocesses on loopback) on real SQLite homes and
checks three things: a clear error or a recovery, no corruption
(``PRAGMA integrity_check``), nothing acknowledged lost. Faults already covered
elsewhere: a publish past the quota (tests/test_storage_daemon.py), a home that
cannot be written and a port already taken (tests/test_daemon.py).
Waits poll for a state, with a bound; no assert is about elapsed time.
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import time
from pathlib import Path

import pytest

from aether.node.control import ControlClient
from aether.simulations.crash_loop import crash_loop, free_port
from aether.storage.store import BLOCK, RECORD, Store

from .test_cli_patterns import (
    TIMEOUT, Daemon, assert_clean_error, configure, init_homes, ok, pattern, publish_ok, run, sha, write,
)
from .test_daemon import as_owner_only, read_only, run_restricted  # noqa: F401 (as_owner_only is a fixture)

DAY = 24 * 3600.0


def integrity(db: Path) -> str:
    with sqlite3.connect(db, timeout=TIMEOUT) as conn:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    return result


def fetch_bytes(home: Path, ref: str) -> bytes:
    return ok(home, "fetch", ref, binary=True).stdout


def poll(check, what: str, timeout: float = TIMEOUT, step: float = 0.2):
    """Until ``check()`` is truthy (its value), or fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what}: still {value!r} after {timeout} s"
            return value
        time.sleep(step)


# ---------------------------------------------------------------- kill -9 while publishing
def test_kill_9_of_a_publishing_daemon_or_its_publisher_loses_no_acknowledged_pattern(tmp_path: Path) -> None:
    """Four rounds of simulations/crash_loop.py (docs/faults.md has the long runs).

    Each round SIGKILLs the daemon (or, in the fourth, the ``aether-node publish``
    feeding it) at a moment drawn from the seed; the loop itself checks the
    database's integrity after each kill and that every acknowledged publish is
    held and fetches as its exact bytes, and raises at the first violation.
    """
    report = crash_loop(tmp_path, 4, seed=7, files=24)
    assert report.rounds == 4 and not report.lost and not report.damaged
    assert (report.daemon_kills, report.publisher_kills) == (3, 1), report
    # The kills landed mid-run: some publishes were acknowledged, and not all of them.
    assert 0 < report.acknowledged < report.attempted, report
    assert report.fetched_cli + report.fetched_control >= report.acknowledged


# ---------------------------------------------------------------- the disk fills up
def test_a_full_disk_fails_a_publish_clearly_loses_nothing_and_publishing_resumes_when_room_returns(
    tmp_path: Path,
) -> None:
    """The daemon runs under RLIMIT_FSIZE: past the limit every write to a file fails (EFBIG), as on a full disk.

    CPython ignores SIGXFSZ, so the writes fail rather than kill the process; the
    soft limit is raised again on the running daemon (prlimit) when room returns.
    A peer publishing meanwhile is told "full" and keeps the daemon as a contact.
    """
    home, peer_home, src = tmp_path / "home", tmp_path / "peer", tmp_path / "src"
    init_homes(home, peer_home)
    configure(home)
    configure(peer_home)
    small = write(src, "small.md", pattern("Pattern-FULL-001", "Published while there is room"))
    large = write(src, "large.md", pattern("Pattern-FULL-002", "Larger than the room left",
                                           body="A line of the problem the full disk has no room for.\n" * 2000))
    daemon = Daemon(home)
    daemon.wait_ready()
    publish_ok(home, small)
    assert daemon.stop() == 0, daemon.stderr()

    # Every file of the daemon may grow by 16 KiB at most; the large pattern is ~105 KB, the peer's ~50 KB.
    limit = (home / "node.db").stat().st_size + 16 * 1024
    daemon = Daemon(home, prefix=["prlimit", f"--fsize={limit}:unlimited", "--"])
    peer = None
    try:
        daemon.wait_ready()
        peer = Daemon(peer_home, "--bootstrap", daemon.address)
        peer.wait_ready()
        poll(lambda: _contacts(home) >= 1 and _contacts(peer_home) >= 1, "the peer and the daemon to meet")
        # The peer's copies for the daemon are refused as "full", not left unanswered.
        publish_ok(peer_home, write(src, "peer.md", pattern("Pattern-FULL-003", "A peer's pattern",
                                                            body="A line the full disk cannot hold.\n" * 1500)))
        assert _contacts(peer_home) >= 1, "the peer dropped the full daemon as unresponsive"

        refused = run(home, "publish", str(large))
        assert refused.returncode == 1 and refused.stdout == ""
        assert f"{home / 'node.db'}: cannot write the database: is the disk full" in refused.stderr, refused.stderr
        assert "Nothing was written" in refused.stderr
        assert daemon.proc.poll() is None, "the daemon must survive a full disk"
        # What was stored before is intact and still served.
        assert fetch_bytes(home, sha(small.read_bytes())) == small.read_bytes()

        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert publish_ok(home, large) == {str(large): sha(large.read_bytes())}
        assert fetch_bytes(home, "Pattern-FULL-002") == large.read_bytes()
    finally:
        code = daemon.stop()
        if peer is not None:
            peer.stop()
    assert code == 0 and "Traceback" not in daemon.stderr(), daemon.stderr()
    assert "a peer's STORE not kept" in daemon.stderr()
    assert integrity(home / "node.db") == "ok"
    daemon = Daemon(home)
    try:
        daemon.wait_ready()
        for path in (small, large):
            assert fetch_bytes(home, sha(path.read_bytes())) == path.read_bytes()
    finally:
        assert daemon.stop() == 0


# ---------------------------------------------------------------- the wall clock jumps
def _fill(store: Store, now: float) -> dict[str, bytes]:
    """One row of each kind a node holds, stored at ``now`` with the lifetimes the node gives them."""
    keys = {name: bytes([i]) * 20 for i, name in enumerate(
        ("own block", "own record", "pinned block", "replica block", "cache block", "replica record"), 1)}
    store.put(keys["own block"], b"own block", kind=BLOCK, role="own", pinned=True, now=now)
    store.put(keys["own record"], b"own record", kind=RECORD, seq=1, role="own", pinned=True,
              expires=now + 7 * DAY, now=now)
    store.put(keys["pinned block"], b"pinned block", kind=BLOCK, role="cache", pinned=True, now=now)
    store.put(keys["replica block"], b"replica block", kind=BLOCK, role="replica", expires=now + 2 * DAY, now=now)
    store.put(keys["cache block"], b"cache block", kind=BLOCK, role="cache", expires=now + 3600, now=now)
    store.put(keys["replica record"], b"replica record", kind=RECORD, seq=1, role="replica",
              expires=now + 7 * DAY, now=now)
    store.put_entry(b"\x10" * 20, b"me", b"head", b"own entry", seq=1, expires=now + 7 * DAY, role="own",
                    pinned=True, now=now)
    store.put_entry(b"\x10" * 20, b"peer", b"head", b"replica entry", seq=1, expires=now + 7 * DAY,
                    role="replica", now=now)
    return keys


@pytest.mark.parametrize("jump_days", [-3, 10, 400], ids=["back-3-days", "forward-10-days", "forward-400-days"])
def test_a_clock_jump_never_expires_own_or_pinned_data(tmp_path: Path, jump_days: int) -> None:
    """Expiry runs on the wall clock; after a jump, replicas and cached copies may go, own and pinned data never.

    Own records and entries carry an expiry (their signature's lifetime), yet
    they are the only copy of what this node published: the node re-signs them
    (tests below), so the store must not drop them however far the clock moves.
    """
    t0 = 1_800_000_000.0
    with Store(tmp_path / "node.db") as store:
        keys = _fill(store, t0)
        later = t0 + jump_days * DAY
        store.drop_expired(now=later)
        store.make_room(10**9, 10**9, near=b"\0" * 20, now=later)  # evicts nothing but the expired
        store.put_entry(b"\x10" * 20, b"other", b"head", b"a newcomer", seq=1, expires=later + DAY, role="replica",
                        now=later)
        held = {name: store.get(key, touch=False) for name, key in keys.items()}
        for name in ("own block", "own record", "pinned block"):
            assert held[name] is not None, f"{name} lost after a jump of {jump_days} days"
        assert store.entry(b"\x10" * 20, b"me", b"head") is not None, "own entry lost"
        expired = jump_days * DAY >= 2 * DAY
        assert (held["replica block"] is None) == expired
        assert (held["cache block"] is None) == (jump_days * DAY >= 3600)
        assert (held["replica record"] is None) == (jump_days * DAY >= 7 * DAY)
        assert (store.entry(b"\x10" * 20, b"peer", b"head") is None) == (jump_days * DAY >= 7 * DAY)
    assert integrity(tmp_path / "node.db") == "ok"


def test_own_patterns_outlive_their_records_expiry_and_are_re_signed(tmp_path: Path) -> None:
    """A daemon whose clock has passed its own records' expiry, as after a week off or a jump forward.

    The record lifetime is set to 2 s so that the real clock passes it within
    the test; the expiry job runs every 0.5 s. The daemon must keep the pattern
    and re-sign its records with a later expiry, so that it still fetches.
    """
    home, src = tmp_path / "home", tmp_path / "src"
    init_homes(home)
    configure(home, node={"record_ttl": 2, "expire_interval": 0.5})
    path = write(src, "own.md", pattern("Pattern-CLOCK-001", "Kept past its records' expiry"))
    daemon = Daemon(home)
    try:
        daemon.wait_ready()
        published = publish_ok(home, path)
        first = _own_entries(home)
        assert first, "the publish stored no own entry"
        first_expiry = max(expires for _, expires in first.values())
        poll(lambda: time.time() > first_expiry + 0.1, "the wall clock to pass the own records' expiry")
        renewed = poll(lambda: (rows := _own_entries(home)) and min(e for _, e in rows.values()) > first_expiry
                       and rows, "own entries re-signed past their first expiry")
        assert set(renewed) == set(first), "an own entry was dropped"
        assert all(renewed[k][0] > first[k][0] for k in first), "re-signed entries carry a higher seq"
        assert fetch_bytes(home, published[str(path)]) == path.read_bytes()
        assert fetch_bytes(home, "Pattern-CLOCK-001") == path.read_bytes()
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    assert integrity(home / "node.db") == "ok"


def _own_entries(home: Path) -> dict[tuple[bytes, bytes, bytes], tuple[int, float]]:
    """(key, author, name) -> (seq, expires) of the home's own entries, read beside the running daemon."""
    with sqlite3.connect(f"file:{home / 'node.db'}?mode=ro", uri=True, timeout=TIMEOUT) as conn:
        rows = conn.execute("SELECT key, author, name, seq, expires FROM entries WHERE role = 'own'").fetchall()
    conn.close()
    return {(k, a, n): (s, e) for k, a, n, s, e in rows}


# ---------------------------------------------------------------- the network goes and comes back
def _contacts(home: Path) -> int:
    async def whoami() -> int:
        async with await ControlClient.connect(home, timeout=TIMEOUT, request_timeout=TIMEOUT) as client:
            return (await client.request("whoami", {}))["contacts"]
    return asyncio.run(whoami())


@pytest.mark.parametrize("back", ["same-nodes", "new-nodes"])
def test_a_daemon_whose_peers_all_vanish_recovers_when_the_network_returns(tmp_path: Path, back: str) -> None:
    """Every peer of D is killed, then the network returns on the same addresses, D running throughout.

    ``same-nodes``: the peers restart on their homes (same IDs, same ports).
    ``new-nodes``: other nodes take the peers' ports, joining through the
    bootstrap address D was configured with. D must refill its routing table
    and fetch what the returned network publishes, without a restart.
    """
    homes = {name: tmp_path / name for name in ("d", "p1", "p2", "n1", "n2")}
    init_homes(*homes.values())
    ports = [free_port(), free_port()]
    entry = f"127.0.0.1:{ports[0]}"
    quick = {"contacts_save_interval": 0.5}
    for name in ("d", "p2", "n2"):
        configure(homes[name], bootstrap=[entry], node=quick)
    for name in ("p1", "n1"):
        configure(homes[name], node=quick)
    first = ("p1", "p2")
    second = first if back == "same-nodes" else ("n1", "n2")
    peers: list[Daemon] = []
    d = Daemon(homes["d"])
    try:
        peers.append(Daemon(homes["p1"], "--listen", entry))
        peers[0].wait_ready()
        d.wait_ready()
        peers.append(Daemon(homes["p2"], "--listen", f"127.0.0.1:{ports[1]}"))
        peers[1].wait_ready()
        poll(lambda: _contacts(homes["d"]) >= 2, "D to know both peers")
        before = write(tmp_path / "src", "before.md", pattern("Pattern-GONE-001", "Published before the outage"))
        publish_ok(homes["p2"], before)

        for peer in peers:  # the network goes: no goodbye, no saved state
            peer.proc.kill()
            peer.proc.wait(timeout=TIMEOUT)
        gone = run(homes["d"], "fetch", "Pattern-GONE-404", "--timeout", "10")
        assert_clean_error(gone, "no reachable node knows pattern Pattern-GONE-404")
        assert gone.stdout == ""
        assert d.proc.poll() is None

        peers += [Daemon(homes[second[0]], "--listen", entry)]
        peers[-1].wait_ready()
        peers += [Daemon(homes[second[1]], "--listen", f"127.0.0.1:{ports[1]}")]
        peers[-1].wait_ready()
        after = write(tmp_path / "src", "after.md", pattern("Pattern-GONE-002", "Published once the network is back"))
        publish_ok(homes[second[1]], after)

        fetched = poll(lambda: (r := run(homes["d"], "fetch", sha(after.read_bytes()), binary=True)).returncode == 0
                       and r.stdout, "D to fetch from the returned network", step=1.0)
        assert fetched == after.read_bytes()
        assert _contacts(homes["d"]) >= 2
        assert fetch_bytes(homes["d"], "Pattern-GONE-001") == before.read_bytes()
    finally:
        codes = [p.stop() for p in [d, *peers]]
    assert codes[0] == 0 and "Traceback" not in d.stderr(), d.stderr()
    assert integrity(homes["d"] / "node.db") == "ok"


# ---------------------------------------------------------------- a read-only home
def test_publish_into_a_home_that_cannot_be_written_is_a_clear_error(tmp_path: Path, as_owner_only: list[str]) -> None:
    """``daemon``, ``ls`` and ``status`` are covered in tests/test_daemon.py; ``publish`` has a file to read too."""
    home = tmp_path / "home"
    init_homes(home)
    configure(home)
    assert ok(home, "ls").returncode == 0  # a run left its database and lock file behind
    path = write(tmp_path / "src", "p.md", pattern("Pattern-RO-001", "Nowhere to keep it"))
    with read_only(home):
        result = run_restricted(as_owner_only, "--home", str(home), "publish", str(path))
    assert_clean_error(result, str(home / "node.db"), "readonly database")
    assert result.stdout == ""
    assert integrity(home / "node.db") == "ok"

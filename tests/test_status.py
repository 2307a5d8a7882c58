"""``status`` and ``peers`` against real daemons on loopback, and a publisher that survives ``kill -9``.

Every daemon is a subprocess listening on 127.0.0.1 and every command is
``aether-node`` run with a timeout; waits poll for a state with a bound, and
no assert is about elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import msgpack
import pytest

from aether.node.control import SOCKET_NAME
from aether.node.home import Home

from .test_cli_patterns import (
    TIMEOUT, Daemon, assert_clean_error, configure, init_homes, ok, ok_json, pattern, run, sha, wait_joined, write,
)
from .test_control import raw_exchange

QUOTA = 2 * 10**9

STATUS_KEYS = {
    "running", "node_id", "identity", "version", "storage", "patterns", "last_republish", "last_replicate",
    "pid", "address", "started_at", "uptime", "peers", "network", "role",
}
"""One shape whether or not a daemon runs: what only a daemon knows is null without one."""


def status_json(home: Path, expect: int = 0) -> dict:
    result = run(home, "status", as_json=True)
    assert result.returncode == expect, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert set(data) == STATUS_KEYS
    return data


def wait_network_state(home: Path, state: str, timeout: float = TIMEOUT) -> dict:
    """Poll ``status`` until the daemon's join loop reports ``state`` (a readiness wait, not a timing assert)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        data = status_json(home)
        seen = data["network"]
        if seen["state"] == state and (state != "retrying" or seen["next_retry_at"] is not None):
            return data
        time.sleep(0.2)
    raise AssertionError(f"the daemon never reported {state!r}; last seen {seen}")


def start(home: Path, daemons: list[Daemon], *args: str) -> Daemon:
    """A ready daemon on ``home``, added to ``daemons`` so that the caller stops it whatever happens."""
    daemon = Daemon(home, *args)
    daemons.append(daemon)
    daemon.wait_ready()
    return daemon


def start_joined(first: Path, second: Path, daemons: list[Daemon]) -> tuple[Daemon, Daemon]:
    """A daemon on ``first``, and one on ``second`` joined through it."""
    one = start(first, daemons)
    two = start(second, daemons, "--bootstrap", one.address)
    wait_joined([first, second], at_least=1)
    return one, two


@dataclass
class Pair:
    a: Path
    b: Path
    da: Daemon
    db: Daemon


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    """Two daemons, B joined through A."""
    root = tmp_path_factory.mktemp("status")
    a, b = root / "a", root / "b"
    init_homes(a, b)
    configure(a)
    configure(b)
    for home in (a, b):
        Home(home).update_config("storage", {"quota": QUOTA})
    daemons: list[Daemon] = []
    try:
        yield Pair(a, b, *start_joined(a, b, daemons))
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.stderr() for d in daemons]
    assert not any("Traceback" in d.stderr() for d in daemons)


def test_status_of_two_joined_daemons(pair: Pair) -> None:
    for home, daemon in ((pair.a, pair.da), (pair.b, pair.db)):
        s = status_json(home)
        assert s["running"] is True
        assert s["node_id"] == daemon.node_id and s["identity"].startswith("aether1")
        assert s["address"] == daemon.address
        assert s["pid"] == daemon.proc.pid
        assert s["version"] == version("aether-node")
        assert s["uptime"] >= 0 and s["started_at"] <= time.time()
        assert s["network"]["state"] == "joined" and s["network"]["last_error"] is None
        assert s["peers"]["contacts"] >= 1
        assert 1 <= s["peers"]["buckets_in_use"] <= s["peers"]["buckets"]
        storage = s["storage"]
        assert storage["used_bytes"] == sum(storage["by_role"].values())
        assert storage["quota_bytes"] == QUOTA
        assert storage["pinned_bytes"] + storage["evictable_bytes"] == storage["used_bytes"]
        assert s["role"] == "full"
        assert set(s["patterns"]) == {"held", "own", "pinned", "replica", "cached"}
        assert set(s["network"]) == {"state", "attempts", "backoff", "next_retry_at", "last_error"}

    text = ok(pair.b, "status").stdout
    for fragment in ("node id:", pair.db.node_id, f"listening on:        {pair.db.address}", "network:",
                     "joined", "used of", "role:", "last republish:", "last re-replication:"):
        assert fragment in text, (fragment, text)


def test_status_counts_patterns_as_ls_lists_them(pair: Pair, tmp_path: Path) -> None:
    data = pattern("Pattern-STATUS-001", "Counted by status")
    ok(pair.a, "publish", str(write(tmp_path, "counted.md", data)))
    listed = ok_json(pair.a, "ls")["patterns"]
    counts = status_json(pair.a)["patterns"]
    assert counts["held"] == len(listed) >= 1
    assert counts["own"] == sum(p["role"] == "own" for p in listed) >= 1
    assert counts["pinned"] == sum(p["pinned"] for p in listed)
    assert status_json(pair.a)["storage"]["used_bytes"] > len(data)


def test_peers_lists_the_other_daemon(pair: Pair) -> None:
    on_a = {p["node_id"]: p for p in ok_json(pair.a, "peers")["peers"]}
    on_b = {p["node_id"]: p for p in ok_json(pair.b, "peers")["peers"]}
    b_seen_by_a, a_seen_by_b = on_a[pair.db.node_id], on_b[pair.da.node_id]
    assert b_seen_by_a["address"] == pair.db.address and a_seen_by_b["address"] == pair.da.address
    for peer in (b_seen_by_a, a_seen_by_b):
        assert set(peer) == {"node_id", "address", "rtt", "timeout", "last_seen", "failures"}
        assert peer["failures"] == 0
        assert peer["last_seen"] is not None and peer["timeout"] > 0
    # B pinged A to join, so B has measured its round trip to A.
    assert isinstance(a_seen_by_b["rtt"], float) and a_seen_by_b["rtt"] > 0

    text = ok(pair.b, "peers").stdout
    assert text.splitlines()[0].split() == ["NODE", "ID", "ADDRESS", "RTT", "LAST", "SEEN", "FAILURES"]
    assert f"{pair.da.node_id[:16]}  {pair.da.address}" in text and " ms " in text, text


def test_uptime_grows(pair: Pair) -> None:
    first = status_json(pair.a)["uptime"]
    assert status_json(pair.a)["uptime"] > first


async def _exchange_all(home: Path, bodies: list[bytes]) -> list[dict]:
    reader, writer = await asyncio.open_unix_connection(str(home / SOCKET_NAME))
    try:
        return [await raw_exchange(reader, writer, body) for body in bodies]
    finally:
        writer.close()


@pytest.mark.parametrize("op", ["status", "peers"])
async def test_malformed_requests_to_status_and_peers_get_error_replies(pair: Pair, op: str) -> None:
    def pack(obj) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    bad = [
        pack({"op": op, "args": [1, 2]}),  # args not a map
        pack({"op": op, "args": {"verbose": True}}),  # an argument it does not take
        pack({"op": op, "args": "everything"}),
        b"\xc1" + op.encode(),  # not msgpack at all
    ]
    replies = await _exchange_all(pair.a, [*bad, pack({"op": op, "args": {}})])
    for reply in replies[:-1]:
        assert reply["ok"] is False and reply["error"]["reason"] == "bad-request", reply
    assert replies[-1]["ok"] is True, "the same connection still answers"
    assert pair.da.proc.poll() is None
    assert status_json(pair.a)["running"] is True


def test_status_of_a_daemon_whose_bootstrap_never_answers_says_it_is_retrying(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_homes(home)
    configure(home, node={"rpc_timeout_initial": 0.2})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        daemons: list[Daemon] = []
        try:
            start(home, daemons, "--bootstrap", where)
            s = wait_network_state(home, "retrying")
            network = s["network"]
            assert network["attempts"] >= 1 and network["backoff"] > 0
            assert where in network["last_error"] and "answered" in network["last_error"]
            assert s["peers"]["contacts"] == 0

            text = ok(home, "status").stdout
            assert "retrying" in text and where in text, text
            assert ok_json(home, "peers") == {"peers": []}
            assert ok(home, "peers").stdout.strip() == "no peers in the routing table"
        finally:
            assert [d.stop() for d in daemons] == [0], [d.stderr() for d in daemons]


def test_status_and_peers_without_a_daemon(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_homes(home)
    configure(home)
    Home(home).update_config("storage", {"quota": QUOTA})
    node_id = ok_json(home, "id")["node_id"]

    text = run(home, "status")
    assert text.returncode == 3, (text.stdout, text.stderr)
    assert "no daemon is running" in text.stdout and node_id in text.stdout and "storage:" in text.stdout

    s = status_json(home, expect=3)
    assert s["running"] is False and s["node_id"] == node_id
    assert s["storage"]["used_bytes"] == 0
    assert s["storage"]["quota_bytes"] == QUOTA
    assert all(s[key] is None for key in ("pid", "address", "started_at", "uptime", "peers", "network", "role"))

    for as_json in (False, True):
        result = run(home, "peers", as_json=as_json)
        assert_clean_error(result, "no daemon is running")
        assert result.stdout == ""


def test_publisher_killed_and_restarted_without_bootstrap_rejoins_and_keeps_its_pattern(tmp_path: Path) -> None:
    """Publish on one daemon and fetch on another with the CLI; kill -9 the publisher; restart it with no address."""
    q, p, r = tmp_path / "q", tmp_path / "p", tmp_path / "r"
    init_homes(q, p, r)
    configure(q)
    configure(p)  # no bootstrap in the config: after the restart only the saved contacts remain
    daemons: list[Daemon] = []
    try:
        dq, dp = start_joined(q, p, daemons)

        data = pattern("Pattern-KILL-001", "Kept through kill nine")
        digest = sha(data)
        assert ok(p, "publish", str(write(tmp_path / "src", "kill.md", data))).stdout.startswith(digest)
        assert ok(q, "fetch", digest, binary=True).stdout == data

        dp.proc.kill()
        assert dp.proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
        dp.stop()

        again = start(p, daemons)  # no --bootstrap
        assert again.node_id == dp.node_id
        s = wait_network_state(p, "joined")
        assert s["pid"] == again.proc.pid and s["peers"]["contacts"] >= 1
        assert s["patterns"]["own"] == 1 and s["storage"]["by_role"]["own"] > len(data)

        held = {h["hash"]: h for h in ok_json(p, "ls")["patterns"]}
        assert held[digest]["role"] == "own" and held[digest]["pinned"] and held[digest]["complete"]
        assert ok(p, "fetch", digest, binary=True).stdout == data
        # A node that knows only the restarted publisher's new address finds it over the network.
        configure(r, bootstrap=[again.address])
        assert ok(r, "fetch", "Pattern-KILL-001", binary=True).stdout == data
    finally:
        codes = [d.stop() for d in daemons]
    assert codes[0] == 0 and codes[-1] == 0, [d.stderr() for d in daemons]
    assert not any("Traceback" in d.stderr() for d in daemons)


def test_a_daemon_retries_its_configured_peer_with_growing_back_off_and_joins_once_it_answers(tmp_path: Path) -> None:
    """The peer comes from config.toml alone; it is silent at first, and a daemon takes its address later."""
    late, waiting = tmp_path / "late", tmp_path / "waiting"
    init_homes(late, waiting)
    configure(late)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    where = f"127.0.0.1:{silent.getsockname()[1]}"
    configure(waiting, bootstrap=[where], node={"rpc_timeout_initial": 0.2})
    daemons: list[Daemon] = []
    try:
        start(waiting, daemons)  # no --bootstrap
        backoffs: list[float] = []
        deadline = time.monotonic() + TIMEOUT
        while not backoffs or backoffs[-1] < 4:
            assert time.monotonic() < deadline, f"the back-off never reached 4 s: {backoffs}"
            s = status_json(waiting)
            network = s["network"]
            assert network["state"] in ("joining", "retrying") and s["peers"]["contacts"] == 0, network
            if network["backoff"] is not None:
                backoffs.append(network["backoff"])
            time.sleep(0.1)
        # Doubling after each unanswered try: 1 s, 2 s, 4 s, ...
        assert backoffs == sorted(backoffs) and set(backoffs) <= {1, 2, 4}, backoffs
        assert network["attempts"] >= 3 and where in network["last_error"], network

        silent.close()
        peer = start(late, daemons, "--listen", where)
        assert peer.address == where
        s = wait_network_state(waiting, "joined")
        assert s["network"]["last_error"] is None and s["peers"]["contacts"] >= 1
        assert {p["node_id"]: p["address"] for p in ok_json(waiting, "peers")["peers"]} == {peer.node_id: where}
    finally:
        silent.close()
        codes = [d.stop() for d in daemons]
    assert codes == [0] * len(daemons), [d.stderr() for d in daemons]


def saved_contacts(home: Path) -> dict[str, str]:
    """Node ID -> address of the contacts saved in the home's database, read beside a running daemon."""
    with closing(sqlite3.connect(f"file:{home / 'node.db'}?mode=ro", uri=True, timeout=5)) as db:
        return {bytes(n).hex(): f"{h}:{p}" for n, h, p in db.execute("SELECT node_id, host, port FROM contacts")}


def test_sigterm_saves_the_contacts_and_closes_the_database_and_the_restart_rejoins_through_them(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    init_homes(first, second)
    hour = {"contacts_save_interval": 3600}
    configure(first, node=hour)  # no peer of its own: it only learns of the second when contacted
    configure(second, node=hour)
    daemons: list[Daemon] = []
    try:
        one, two = start_joined(first, second, daemons)
        # The save interval is an hour and the first daemon never joined through anyone: nothing saved yet.
        assert saved_contacts(first) == {}

        assert one.stop() == 0, one.stderr()
        assert "Traceback" not in one.stderr()
        # Looked at before the database is read again: a reader opens the log anew.
        assert not (first / "node.db-wal").exists(), "the database was closed (its log checkpointed away)"
        assert saved_contacts(first) == {two.node_id: two.address}

        again = start(first, daemons)  # no --bootstrap, none in config.toml: the saved contacts only
        s = wait_network_state(first, "joined")
        assert s["pid"] == again.proc.pid and s["network"]["attempts"] >= 1
        assert two.node_id in {p["node_id"] for p in ok_json(first, "peers")["peers"]}
    finally:
        codes = [d.stop() for d in daemons]
    assert codes[1:] == [0] * (len(daemons) - 1), [d.stderr() for d in daemons]


def test_republish_and_re_replication_run_on_the_intervals_config_toml_sets(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    init_homes(fast, slow)
    configure(fast, node={"republish_interval": 0.5, "replicate_interval": 0.5}, role="full")
    configure(slow, role="full")  # the defaults: a day and an hour
    daemons: list[Daemon] = []
    try:
        start(fast, daemons)
        start(slow, daemons)
        runs: dict[str, list[float]] = {"last_republish": [], "last_replicate": []}
        deadline = time.monotonic() + TIMEOUT
        # Each job has run at least twice: a schedule, not a one-off at start.
        while not all(len(set(times)) >= 2 for times in runs.values()):
            assert time.monotonic() < deadline, runs
            s = status_json(fast)
            for name, times in runs.items():
                if s[name] is not None:
                    times.append(s[name])
            time.sleep(0.2)
        assert all(times == sorted(times) for times in runs.values()), runs
        s = status_json(slow)
        assert s["last_republish"] is None and s["last_replicate"] is None
        assert "last republish:      never" in ok(slow, "status").stdout
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0] * len(daemons), [d.stderr() for d in daemons]

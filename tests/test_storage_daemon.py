"""The quota of running daemons, through the CLI: a publish past it, ``storage set`` lowering it, a restart.

Four daemons on loopback with k = 2 (A publishes; B, C and D hold what lands
near them), shared by the module, and a light home with a tiny quota. The
patterns are chosen by their keys so that each of B and D holds some as
replicas and fetches another, held by the two others, as a cached copy.
Every command is ``aether-node`` run with a timeout; waits poll for a state,
with a bound, and no assert is about elapsed time.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aether.crypto.identity import Identity
from aether.node import entries as E
from aether.node.contact import contact_key
from aether.node.home import Home
from aether.storage.store import RESERVED_BYTES, Store

from .test_cli_patterns import (
    TIMEOUT, Daemon, configure, in_parallel, init_homes, ok, ok_json, pattern, publish_ok, run, sha, wait_joined,
    write,
)
from .test_status import start, status_json
from .test_store import assert_accounting

KSIZE = 2
QUOTA = 2 * 10**9
EVICTED = re.compile(r"it evicted (\S+ \S+) \((\d+) cached copies, (\d+) replicas\)")


@dataclass
class Net:
    homes: dict[str, Path]
    daemons: dict[str, Daemon]
    started: list[Daemon]
    patterns: dict[str, bytes]
    """``b+d``: held by B and D; ``c+d``: by C and D, cached by B; ``b+c``: by B and C, cached by D."""


def held_by(daemons: dict[str, Daemon], holders: str, number: int) -> bytes:
    """A pattern whose KSIZE closest nodes among B, C and D are ``holders`` (e.g. ``"b+d"``)."""
    wanted = set(holders.split("+"))
    for variant in range(2000):
        data = pattern(f"Pattern-QCLI-{number:03d}", f"Quota held by {holders}",
                       body=f"Variant {variant} of the problem.")
        key = int.from_bytes(E.pattern_key(sha(data)), "big")
        ranked = sorted("bcd", key=lambda n: int(daemons[n].node_id, 16) ^ key)
        if set(ranked[:KSIZE]) == wanted:
            return data
    raise AssertionError(f"no variant lands on {holders}")


def listing(home: Path) -> dict[str, dict]:
    """``ls``: hash -> what the home holds of it."""
    return {p["hash"]: p for p in ok_json(home, "ls")["patterns"]}


def wait_held(home: Path, data: bytes, role: str, timeout: float = TIMEOUT) -> None:
    """Until ``ls`` shows the whole pattern held in ``role`` (cached copies are written after a fetch returns)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = listing(home).get(sha(data))
        if seen is not None and seen["role"] == role and seen["complete"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{home.name} never held {sha(data)[:12]} as a complete {role}: {seen}")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("quotacli")
    homes = {name: root / name for name in "abcd"}
    init_homes(*homes.values())
    for home in homes.values():
        Home(home).update_config("storage", {"quota": QUOTA})
    configure(homes["a"], node={"ksize": KSIZE}, role="full")
    started: list[Daemon] = []
    daemons: dict[str, Daemon] = {}
    try:
        daemons["a"] = start(homes["a"], started)
        for name in "bcd":
            configure(homes[name], [daemons["a"].address], node={"ksize": KSIZE}, role="full")
            daemons[name] = Daemon(homes[name])
            started.append(daemons[name])
        for name in "bcd":
            daemons[name].wait_ready()
        # With k = 2 a routing table need not keep every contact; A, which every other daemon
        # joined through, keeps all three, so its placements go to the two closest of B, C, D.
        wait_joined([homes["a"]], at_least=3)
        wait_joined([homes[name] for name in "bcd"], at_least=2)
        patterns = {holders: held_by(daemons, holders, n) for n, holders in enumerate(("b+d", "c+d", "b+c"), 1)}
        src = root / "src"
        publish_ok(homes["a"], *(write(src, f"{h}.md", data) for h, data in patterns.items()))
        # B and D each fetch the pattern the two others hold: a cached copy.
        in_parallel((ok, homes["b"], "fetch", sha(patterns["c+d"])), (ok, homes["d"], "fetch", sha(patterns["b+c"])))
        yield Net(homes, daemons, started, patterns)
    finally:
        codes = [d.stop() for d in started]
    assert codes == [0] * len(started), [d.stderr() for d in started]
    assert not any("Traceback" in d.stderr() for d in started)


def storage_of(home: Path) -> dict:
    return status_json(home)["storage"]


# ---------------------------------------------------------------- a publish past the quota
def test_a_publish_past_the_quota_is_a_clear_error_and_stores_nothing(net: Net, tmp_path: Path) -> None:
    """A light home (no replicas come to it) whose quota leaves 20 kB for data, without and with its daemon."""
    home = tmp_path / "phone"
    init_homes(home)
    configure(home, [net.daemons["a"].address], role="light")
    Home(home).update_config("storage", {"quota": RESERVED_BYTES + 20_000})
    path = write(tmp_path / "src", "large.md", pattern("Pattern-QCLI-900", "Larger than the quota",
                                                       body="A line the quota has no room for.\n" * 1000))

    def own_contact_charge() -> int:
        with Store(home / "node.db") as store:
            held = store.get(contact_key(Identity.load(home).public.signing_public), touch=False)
        return -1 if held is None else held.size

    def refused(running: bool) -> None:
        result = run(home, "publish", str(path))
        assert result.returncode == 1 and result.stdout == ""
        message = re.search(r"publishing Pattern-QCLI-900 \([\d,]+ bytes\) needs ([\d,]+) bytes", result.stderr)
        assert message, result.stderr
        assert int(message[1].replace(",", "")) > len(path.read_bytes()) > 20_000
        assert f"quota of {RESERVED_BYTES + 20_000:,} bytes" in result.stderr
        assert "aether-node storage set" in result.stderr
        as_json = run(home, "publish", str(path), as_json=True)
        assert as_json.returncode == 1
        assert "needs" in json.loads(as_json.stdout)["errors"][0]["error"]
        held = status_json(home, expect=0 if running else 3)
        assert held["patterns"]["held"] == 0, held
        # Nothing of the pattern: at most the daemon's own contact record (its address, for its teams).
        assert held["storage"]["used_bytes"] in (0, own_contact_charge()), held
        assert listing(home) == {}

    refused(running=False)  # a temporary node of its own, joined through A
    daemon = Daemon(home)
    try:
        daemon.wait_ready()
        refused(running=True)
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    with Store(home / "node.db") as store:
        assert store.keys() in ([], [contact_key(Identity.load(home).public.signing_public)])
        assert store.iter_entries() == []
        assert_accounting(store)


# ---------------------------------------------------------------- storage set on a running daemon
def test_storage_set_lowers_a_running_daemons_quota_and_evicts_at_once(net: Net) -> None:
    b = net.homes["b"]
    wait_held(b, net.patterns["c+d"], "cache")
    wait_held(b, net.patterns["b+d"], "replica")
    before = storage_of(b)
    assert before["by_role"]["cache"] > 0 and before["by_role"]["replica"] > 0
    quota = RESERVED_BYTES + before["pinned_bytes"] + before["by_role"]["replica"] // 2

    result = ok(b, "storage", "set", str(quota), "--force")

    assert f"({quota} bytes) written to {b / 'config.toml'}" in result.stdout
    evicted = EVICTED.search(result.stdout)
    assert evicted and "the running daemon now uses it" in result.stdout, result.stdout
    assert int(evicted[2]) >= 1 and int(evicted[3]) >= 1, result.stdout
    after = storage_of(b)
    assert after["quota_bytes"] == quota == Home(b).settings().storage.quota
    assert after["used_bytes"] <= quota - RESERVED_BYTES
    assert after["by_role"]["cache"] == 0
    assert sha(net.patterns["c+d"]) not in listing(b)
    try:
        # Own data over the quota stays, and the command says so.
        ok(b, "storage", "set", str(QUOTA), "--force")
        src = net.homes["b"].parent / "src-b"
        publish_ok(b, write(src, "own.md", pattern("Pattern-QCLI-901", "Own data of B", body="Mine.\n" * 2000)))
        own = storage_of(b)["pinned_bytes"]
        assert own > 0
        below = RESERVED_BYTES + own // 2
        result = ok(b, "storage", "set", str(below), "--force")
        assert "own and pinned data are" in result.stdout and "never evicted" in result.stdout, result.stdout
        after = storage_of(b)
        assert after["quota_bytes"] == below and after["pinned_bytes"] == own
        assert listing(b)[sha((src / "own.md").read_bytes())]["role"] == "own"
    finally:
        ok(b, "storage", "set", str(QUOTA), "--force")
    assert storage_of(b)["quota_bytes"] == QUOTA


# ---------------------------------------------------------------- restart
def test_a_restarted_daemon_keeps_its_accounting(net: Net) -> None:
    d = net.homes["d"]
    src = d.parent / "src-d"
    publish_ok(d, write(src, "own.md", pattern("Pattern-QCLI-902", "Own data of D", body="Kept.\n" * 1500)))
    # A cached copy made now: the fixture's may have become a replica since. Any STORE of it
    # to D makes it one, from a holder that does not see B or C among its k = 2 closest.
    cached = held_by(net.daemons, "b+c", 4)
    publish_ok(net.homes["a"], write(src, "cached.md", cached))
    ok(d, "fetch", sha(cached))
    wait_held(d, cached, "cache")
    wait_held(d, net.patterns["b+d"], "replica")
    running = storage_of(d)

    assert net.daemons["d"].stop() == 0
    with Store(d / "node.db") as store:
        assert_accounting(store)
        by_role = store.used_bytes_by_role()
    assert by_role == running["by_role"] and all(by_role.values()), by_role

    again = start(d, net.started, "--bootstrap", net.daemons["a"].address)
    net.daemons["d"] = again
    restarted = storage_of(d)
    assert restarted["by_role"] == by_role and restarted["used_bytes"] == sum(by_role.values())
    assert restarted["pinned_bytes"] == running["pinned_bytes"]

    assert again.stop() == 0
    with Store(d / "node.db") as store:
        assert_accounting(store)
        assert store.used_bytes_by_role() == by_role
    net.daemons["d"] = start(d, net.started, "--bootstrap", net.daemons["a"].address)

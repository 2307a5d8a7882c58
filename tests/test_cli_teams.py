"""The team commands (create, import-share, list, status) end to end, as real processes.

Daemons on loopback read their inbox every second (``[teams] inbox_interval``): a member
online at creation and one that starts later both end up holding their share, and
hostile entries in an inbox leave the daemon serving. The offline ceremony runs with
no daemon and no peer at all. Every call has a timeout; no assert is about time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aether.crypto.identity import Identity
from aether.crypto.records import create_record
from aether.node.server import next_seq
from aether.node.teams import INBOX_KIND, inbox_name
from aether.simulations.network import start_node, stop_all

from .conftest import QUIET
from .test_cli_patterns import EXE, Daemon, assert_clean_error, configure, init_homes, ok, ok_json, run, wait_joined

WAIT = 60.0
"""Upper bound on waiting for a daemon to take in a share or publish its contact record."""


def inbox_every_second(home: Path) -> None:
    path = home / "config.toml"
    path.write_text(path.read_text(encoding="utf-8").replace("[teams]\n", "[teams]\ninbox_interval = 1\n"),
                    encoding="utf-8")


def identity_of(home: Path) -> str:
    return ok_json(home, "id")["identity"]


def teams_of(home: Path) -> list[dict]:
    return ok_json(home, "team", "list")["teams"]


def until(predicate, what: str, timeout: float = WAIT):
    """Poll ``predicate`` (a CLI call) until it gives something true; bounded, not a timing assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.3)


def holding(home: Path, team_id: str):
    return lambda: next((t for t in teams_of(home) if t["id"] == team_id and t["holds_share"]), None)


async def _hostile_entries(bootstrap: str, victim_id: str, team_id: str, tmp: Path) -> None:
    """From a node outside every team, fill the victim's inbox with junk and a forged share."""
    node = await start_node(tmp / "mallory", QUIET)
    try:
        host, port = bootstrap.split(":")
        assert await node.bootstrap([(host, int(port))])
        member, team = bytes.fromhex(victim_id), bytes.fromhex(team_id)
        for kind, name, payload in [
            (INBOX_KIND, inbox_name(member, team, 0), b"\x00" * 93),
            (INBOX_KIND, inbox_name(member, bytes(20), 0), b"\x00" * 93),
            ("manifest", b"inbox:" + victim_id.encode() + b"#junk", b"\xc1\xc1"),
        ]:
            report = await node.put_entry(create_record(node.identity, kind, name, next_seq(), payload, 3600))
            assert report.stored > 0
    finally:
        stop_all([node])


@contextlib.contextmanager
def team_daemons(root: Path, names: str, online: str) -> Iterator[tuple[dict[str, Path], dict[str, Daemon]]]:
    """Homes ``names`` under ``root`` reading their inbox every second; daemons for ``online``, joined to the first.

    The daemons a test adds to the dict it gets are stopped too; all must stop cleanly.
    """
    homes = {name: root / name for name in names}
    init_homes(*homes.values())
    for home in homes.values():
        configure(home)
        inbox_every_second(home)
    daemons: dict[str, Daemon] = {}
    try:
        first, *rest = online
        daemons[first] = Daemon(homes[first])
        daemons[first].wait_ready()
        for name in rest:
            daemons[name] = Daemon(homes[name], "--bootstrap", daemons[first].address)
            daemons[name].wait_ready()
        wait_joined([homes[name] for name in online], at_least=1)
        yield homes, daemons
    finally:
        codes = {name: d.stop() for name, d in daemons.items()}
    problems = {name: (codes[name], d.stderr()) for name, d in daemons.items()
                if codes[name] != 0 or "Traceback" in d.stderr()}
    assert not problems, f"daemons did not stop cleanly after SIGTERM: {problems}"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    """A and B run daemons; C is initialised but offline until a test starts it."""
    root = tmp_path_factory.mktemp("cliteams")
    with team_daemons(root, "abc", "ab") as (homes, daemons):
        yield homes, daemons, root


def test_a_team_reaches_members_online_and_those_who_come_online_later(net) -> None:
    homes, daemons, root = net
    a, b, c = homes["a"], homes["b"], homes["c"]
    created = ok_json(a, "team", "create", "eng", "--threshold", "2", "--member", identity_of(b),
                      "--member", identity_of(c))
    team_id = created["id"]
    assert (created["name"], created["k"], created["n"], created["epoch"]) == ("eng", 2, 3, 0)
    assert [m["self"] for m in created["members"]] == [True, False, False]
    assert created["replicas"] >= 1 and all(m["replicas"] >= 1 for m in created["members"][1:])
    assert teams_of(a) == [{"name": "eng", "id": team_id, "epoch": 0, "k": 2, "n": 3, "holds_share": True,
                            "unlocked": False, "policy": "auto"}]
    assert until(holding(b, team_id), "B takes in its share from its inbox")["k"] == 2

    # C was offline at creation; junk and a forged share wait in its inbox too.
    c_id = ok_json(c, "id")["node_id"]
    asyncio.run(_hostile_entries(daemons["a"].address, c_id, team_id, root))
    daemons["c"] = Daemon(c, "--bootstrap", daemons["a"].address)
    daemons["c"].wait_ready()
    assert until(holding(c, team_id), "C takes in its share once it is online")["n"] == 3
    assert ok_json(c, "status")["running"] is True  # the hostile entries left the daemon serving
    assert "left out an entry" in daemons["c"].stderr()

    # Every member's daemon has published its contact record: status finds them all.
    def all_reachable():
        members = ok_json(a, "team", "status", "eng")["members"]
        return members if all(m["reachable"] for m in members) else None

    members = until(all_reachable, "A reaches B and C through their contact records")
    assert [m["node_id"] for m in members] == [ok_json(h, "id")["node_id"] for h in (a, b, c)]
    assert [m["address"] for m in members[1:]] == [daemons["b"].address, daemons["c"].address]
    text = ok(a, "team", "status", "eng").stdout
    assert f"team:      eng {team_id}" in text and "threshold: 2 of 3 members unlock it" in text
    assert "held here (member 1)" in text and "locked (not unlocked here)" in text
    assert f"reachable at {daemons['b'].address}" in text and "this node" in text
    status_c = ok_json(c, "team", "status", team_id)
    assert status_c["holds_share"] is True and status_c["index"] == 3 and status_c["unlocked"] is False


def test_team_list_and_status_text_and_names_shared_by_two_teams(net) -> None:
    homes, _, _ = net
    a, b = homes["a"], homes["b"]
    first = ok_json(a, "team", "create", "ops", "-k", "1", "--member", identity_of(b))["id"]
    second = ok_json(a, "team", "create", "ops", "-k", "2", "--member", identity_of(b))["id"]
    listing = ok(a, "team", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "ID", "EPOCH", "K", "OF", "N", "SHARE"]
    rows = {line.split()[1]: line.split() for line in listing[1:]}
    assert rows[first][0] == "ops" and rows[first][3:] == ["1", "of", "2", "held"]
    assert rows[second][3:] == ["2", "of", "2", "held"]
    ambiguous = run(a, "team", "status", "ops")
    assert_clean_error(ambiguous, "2 teams match 'ops'", first, second, "give the team ID")
    assert ok_json(a, "team", "status", second)["k"] == 2
    assert ok_json(a, "team", "status", first[:10])["id"] == first
    assert_clean_error(run(a, "team", "status", "nobody"), "no team named 'nobody'", "team list")
    assert_clean_error(run(a, "--json", "team", "status", "nobody"), "no team named")


INVALID = [
    (["-k", "0"], "threshold must be at least 1"),
    (["-k", "5"], "threshold 5 is more than the 3 members"),
    (["-k", "2", "--member", "aether1nope"], "member 3 (aether1nope…): invalid identity"),
    (["-k", "2", "--member", "B"], "member 4"),
    (["--member", "B"], "Missing option"),
]


def test_invalid_team_requests_fail_cleanly_and_write_nothing(net, tmp_path: Path) -> None:
    homes, _, _ = net
    a, b, c = homes["a"], homes["b"], homes["c"]
    before = teams_of(a)
    b_identity = identity_of(b)
    members = ["--member", b_identity, "--member", identity_of(c)]
    out = tmp_path / "shares"
    for args, message in INVALID:
        args = [b_identity if x == "B" else x for x in args]
        result = run(a, "team", "create", "bad", *members, *args, "--shares-out", str(out))
        assert result.returncode != 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert message.lower() in result.stderr.lower(), (args, result.stderr)
    assert teams_of(a) == before
    assert not out.exists()


def test_the_offline_ceremony_by_files(tmp_path: Path) -> None:
    """No daemon and no peer anywhere: the shares travel as files."""
    x, y, z = tmp_path / "x", tmp_path / "y", tmp_path / "z"
    init_homes(x, y, z)
    out = tmp_path / "handover"
    (y_id, y_identity), (z_id, z_identity) = [(i["node_id"], i["identity"]) for i in (ok_json(h, "id") for h in (y, z))]
    created = ok_json(x, "team", "create", "field", "--threshold", "2", "--member", y_identity,
                      "--member", z_identity, "--shares-out", str(out))
    files = {m["node_id"]: Path(m["file"]) for m in created["members"] if not m["self"]}
    assert created["replicas"] == 0 and all(m["replicas"] == 0 for m in created["members"])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.share" for n in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())

    text = ok(y, "team", "import-share", str(files[y_id])).stdout
    assert text.strip() == (f"took in this node's share (member 2) of team field {created['id']}, epoch 0: "
                            "2 of 3 members unlock it")
    again = ok_json(y, "team", "import-share", str(files[y_id]))
    assert again["new"] is False and again["index"] == 2
    assert_clean_error(run(y, "team", "import-share", str(files[z_id])), f"this share is for node {z_id}")
    junk = tmp_path / "junk.share"
    junk.write_bytes(b"not a share")
    assert_clean_error(run(z, "team", "import-share", str(junk)), "not a share file")
    assert ok(z, "team", "list").stdout.strip() == "this node is in no team"
    ok(z, "team", "import-share", str(files[z_id]))
    for home in (y, z):
        (team,) = teams_of(home)
        assert team["id"] == created["id"] and team["holds_share"] is True

    status = ok_json(y, "team", "status", "field")
    assert status["connected"] is False and status["index"] == 2
    assert [m["reachable"] for m in status["members"]] == [None, None, None]
    assert "reachability unknown" in ok(y, "team", "status", "field").stdout
    # Creating a team that needs the network, with none, says so and writes nothing.
    assert_clean_error(run(x, "team", "create", "online", "-k", "1"), "no peers are known")
    assert [t["name"] for t in teams_of(x)] == ["field"]


def test_team_commands_need_an_initialised_home(tmp_path: Path) -> None:
    someone = Identity.generate().public.to_string()
    assert_clean_error(run(tmp_path / "none", "team", "create", "eng", "-k", "1", "--member", someone), "init")


def test_the_inbox_interval_is_read_from_the_teams_section(tmp_path: Path) -> None:
    from aether.node.home import CONFIG_TEMPLATE, Home, HomeError

    home = Home(tmp_path)
    assert "# inbox_interval = 300 " in CONFIG_TEMPLATE
    home.config_path.write_text(CONFIG_TEMPLATE.replace("# inbox_interval = 300 ", "inbox_interval = 2.5 "))
    assert home.settings().teams.inbox_interval == 2.5
    for bad, message in (("0", "greater than 0"), ('"soon"', "greater than 0"), ("true", "greater than 0")):
        home.config_path.write_text(f"[teams]\ninbox_interval = {bad}\n")
        with pytest.raises(HomeError, match=message):
            home.settings()
    home.config_path.write_text("[teams]\nunlock_after = 1\n")
    with pytest.raises(HomeError, match="unknown teams setting"):
        home.settings()


def test_unlock_status_lock_and_approval_through_the_daemons(net, tmp_path: Path) -> None:
    homes, daemons, _ = net
    a, b = homes["a"], homes["b"]
    team_id = ok_json(a, "team", "create", "vault", "-k", "2", "--member", identity_of(b))["id"]
    until(holding(b, team_id), "B takes in its share of vault")
    until(lambda: all(m["reachable"] for m in ok_json(a, "team", "status", "vault")["members"]),
          "A reaches B through its contact record")
    b_id = ok_json(b, "id")["node_id"]

    text = ok(a, "team", "unlock", "vault").stdout
    assert f"unlocked team vault {team_id} epoch 0 with 2 of 2 shares" in text and "you" in text and b_id[:16] in text
    status = ok_json(a, "team", "status", "vault")
    assert status["unlocked"] is True and status["expires"] is not None and status["pending"] == []
    assert "unlocked here until" in ok(a, "team", "status", "vault").stdout
    assert ok_json(a, "team", "lock", "vault")["forgotten"] == 1
    assert ok_json(a, "team", "status", "vault")["unlocked"] is False

    # B asks its owner first: A's unlock waits, B's status lists it, B approves, A's unlock completes.
    assert ok_json(b, "team", "policy", "vault", "approve")["policy"] == "approve"
    waiting = subprocess.Popen([str(EXE), "--home", str(a), "--json", "team", "unlock", "vault", "--timeout", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = until(lambda: ok_json(b, "team", "status", "vault")["pending"], "B lists A's waiting request")
        assert [p["node_id"] for p in pending] == [ok_json(a, "id")["node_id"]]
        assert "approved 1 share request(s)" in ok(b, "team", "approve", "vault", "--all").stdout
        out, err = waiting.communicate(timeout=WAIT + 60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and "Traceback" not in err, err
    assert json.loads(out)["unlocked"] is True

    # A partial unlock exits non-zero and says who it waited for.
    ok(a, "team", "lock", "vault")
    partial = run(a, "team", "unlock", "vault", "--timeout", "5")
    assert partial.returncode != 0 and "Traceback" not in partial.stderr
    assert "got 1 of 2 shares needed (from you)" in partial.stdout
    assert f"waiting for approval from: {b_id[:16]}" in partial.stdout
    ok(b, "team", "deny", "vault", "--all")
    ok(b, "team", "policy", "vault", "auto")


def test_approving_needs_the_daemon(tmp_path: Path) -> None:
    home = tmp_path / "alone"
    init_homes(home)
    assert_clean_error(run(home, "team", "approve", "vault", "--all"), "no daemon is running")
    assert_clean_error(run(home, "team", "approve", "vault"), "--all")


def test_unlock_works_on_a_temporary_node(net, tmp_path: Path) -> None:
    """No daemon on D's home: the command's own node joins, asks A's daemon, and is answered on its port."""
    homes, daemons, _ = net
    a, d = homes["a"], tmp_path / "d"
    init_homes(d)
    configure(d, bootstrap=[daemons["a"].address])
    team_id = ok_json(d, "team", "create", "field", "-k", "2", "--member", identity_of(a))["id"]
    until(holding(a, team_id), "A takes in its share from its inbox")
    result = ok_json(d, "team", "unlock", team_id)
    assert result["unlocked"] is True and result["got"] == 2
    assert ok_json(d, "team", "status", team_id)["pending"] is None  # no daemon: nothing waits for approval here
    assert ok_json(d, "team", "list")["teams"][0]["unlocked"] is True

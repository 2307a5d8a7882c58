"""A team's whole life among six daemons on loopback, as real processes, through the CLI.

Five members (A to E, K = 3) and an outsider (X), each a daemon with its own home:
the ceremony; a team pattern that every node may store but only members read; a
partial unlock while only K - 1 members are online; the removal of E, after which
the new epoch's patterns are closed to E while the others still read the old ones.
Every call is bounded; no assert is about time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_cli_patterns import Daemon, ok, ok_json, pattern, run, sha, write
from .test_cli_teams import holding, identity_of, team_daemons, teams_of, until

MEMBERS = "abcde"
TITLE = "Quiet Harbour Protocol"
BODY = "Only the team may read this paragraph."


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("teamflow")
    with team_daemons(root, MEMBERS + "x", online=MEMBERS + "x") as (homes, daemons):
        yield homes, daemons, root


def unlock(home: Path, team: str = "core", timeout: float = 20) -> dict:
    return ok_json(home, "team", "unlock", team, "--timeout", str(timeout))


def fetched(home: Path, ref: str) -> bytes:
    return ok(home, "fetch", ref, binary=True).stdout


def refused(result, *fragments: str) -> None:
    """A command that failed cleanly, saying each fragment (publish reports per file on stdout)."""
    said = (result.stdout + result.stderr).lower()
    assert result.returncode != 0 and "traceback" not in said, said
    for fragment in fragments:
        assert fragment.lower() in said, (fragment, said)


def test_five_members_three_unlock_and_the_outsider_reads_nothing(flow) -> None:
    homes, daemons, root = flow
    a, b, x = homes["a"], homes["b"], homes["x"]
    created = ok_json(a, "team", "create", "core", "--threshold", "3",
                      *[arg for m in MEMBERS[1:] for arg in ("--member", identity_of(homes[m]))])
    team_id = created["id"]
    assert (created["k"], created["n"], created["epoch"]) == (3, 5, 0)
    for m in MEMBERS[1:]:
        until(holding(homes[m], team_id), f"{m} takes in its share")

    doc = pattern("Pattern-TEAM-001", TITLE, body=BODY)
    path = write(root / "docs", "Pattern-TEAM-001.md", doc)
    refused(run(a, "publish", "--team", "core", str(path)), "team locked: run aether-node team unlock core")
    unlocked = unlock(a)
    assert unlocked["unlocked"] is True and unlocked["epoch"] == 0 and unlocked["got"] >= 3
    assert json.loads(ok(a, "publish", "--team", "core", str(path), as_json=True).stdout)

    # The outsider finds nothing by hash, ID or word; no home but the publisher's says anything in clear.
    assert run(x, "fetch", sha(doc)).returncode != 0
    assert run(x, "fetch", "Pattern-TEAM-001").returncode != 0
    assert ok_json(x, "search", "harbour")["results"] == []
    secrets = [TITLE.encode(), BODY.encode(), b"Pattern-TEAM-001", sha(doc).encode(), bytes.fromhex(sha(doc))]
    for name, home in homes.items():
        files = [f for f in home.rglob("*") if f.is_file()]
        if name != "a":
            files.append(daemons[name].stderr_path)
        for file in files:
            data = file.read_bytes()
            assert not [s for s in secrets if s in data], (name, file)

    # A member whose node is locked is told how to unlock; unlocked, it reads the exact bytes.
    refused(run(b, "fetch", "Pattern-TEAM-001"), "team locked: run aether-node team unlock core")
    unlock(b)
    assert fetched(b, "Pattern-TEAM-001") == doc and fetched(b, sha(doc)) == doc
    assert [r["hash"] for r in ok_json(b, "search", "harbour")["results"]] == [sha(doc)]


def test_k_minus_one_online_is_a_clear_partial_then_a_removed_member_reads_nothing_new(flow) -> None:
    homes, daemons, root = flow
    a, b, c, e = homes["a"], homes["b"], homes["c"], homes["e"]
    team_id = next(t["id"] for t in teams_of(a) if t["name"] == "core")

    # Only A and B online: two of the three shares needed, and who did not answer.
    for name in "cde":
        assert daemons.pop(name).stop() == 0
    ok(a, "team", "lock", "core")
    partial = run(a, "team", "unlock", "core", "--timeout", "5")
    assert partial.returncode != 0 and "Traceback" not in partial.stderr
    assert "got 2 of 3 shares needed" in partial.stdout, partial.stdout
    silent = [ok_json(homes[n], "id")["node_id"][:16] for n in "cde"]
    assert "no answer from" in partial.stdout and all(s in partial.stdout for s in silent), partial.stdout

    for name in "cde":
        daemons[name] = Daemon(homes[name], "--bootstrap", daemons["a"].address)
    for name in "cde":
        daemons[name].wait_ready()
    unlock(a, timeout=30)

    # E is removed: epoch 1, with a new key that only A to D get shares of.
    changed = ok_json(a, "team", "remove-member", "core", identity_of(e))
    assert changed["epoch"] == 1 and changed["n"] == 4 and changed["pending"]
    # K = 3 members of epoch 0 must sign it: A made it, B and C approve it on their nodes.
    assert not ok_json(b, "team", "approve-change", "core")["complete"]
    assert ok_json(c, "team", "approve-change", "core")["complete"]
    for m in "bcd":
        until(lambda m=m: next((t for t in teams_of(homes[m]) if t["id"] == team_id and t["epoch"] == 1
                                and t["holds_share"]), None), f"{m} takes in its epoch-1 share")
    until(lambda: next((t for t in teams_of(e) if t["id"] == team_id and t["epoch"] == 1), None),
          "E's node follows the new epoch")
    assert not next(t for t in teams_of(e) if t["id"] == team_id)["holds_share"]

    later = pattern("Pattern-TEAM-002", "Harbour After Dave", body="Written for epoch one.")
    path = write(root / "docs", "Pattern-TEAM-002.md", later)
    refused(run(a, "publish", "--team", "core", str(path)), "team locked")  # the maker keeps no key of epoch 1
    assert unlock(a, timeout=30)["epochs"] == [1, 0]
    ok(a, "publish", "--team", "core", str(path))

    # E's requests are refused by every member now; it cannot read the new pattern.
    refused(run(e, "team", "unlock", "core", "--timeout", "10"), "not a member of team core epoch 1")
    refused(run(e, "fetch", "Pattern-TEAM-002"))
    assert run(e, "fetch", sha(later)).returncode != 0

    # B unlocks epoch 1 and reads both epochs' patterns: the old key is chained to the new one.
    unlock(b, timeout=30)
    assert fetched(b, "Pattern-TEAM-002") == later
    assert fetched(b, "Pattern-TEAM-001") == pattern("Pattern-TEAM-001", TITLE, body=BODY)

"""``publish --team`` and reading team patterns end to end, through two daemons on loopback.

Daemons A and B (test_cli_teams' network, started afresh for this module). A creates
team "eng" with B (threshold 1). The key is put in place on A as an unlock
leaves it (A's own share opened and kept with ``team_keys.keep_unlocked`` in A's
store, which the daemon shares); B takes its share in from its inbox and stays
locked. Every call has a timeout; no assert is about time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

from aether.crypto.identity import Identity
from aether.crypto.teams import combine_shares, open_sealed
from aether.node.home import DB_NAME
from aether.node.team_keys import keep_unlocked
from aether.storage.store import Store

from .test_cli_patterns import assert_clean_error, ok, ok_json, pattern, run, write
from .test_cli_teams import (  # noqa: F401  (net: daemons A and B, reading their inbox every second)
    holding,
    identity_of,
    net,
    until,
)

LOCKED = "team locked: run aether-node team unlock eng"


def unlock_in_store(home: Path, team_id: str) -> None:
    """What ``team unlock`` leaves in a home: the key (here, K = 1, the home's own share) sealed at rest."""
    identity = Identity.load(home)
    team = bytes.fromhex(team_id)
    with Store(home / DB_NAME) as store:
        share = open_sealed(identity, store.team_share(team, 0), purpose="share", team_id=team, epoch=0)
        assert keep_unlocked(SimpleNamespace(store=store, identity=identity), team, 0,  # type: ignore[arg-type]
                             combine_shares([share]), 3600) == [0]


def test_publish_team_then_fetch_search_and_ls_show_the_team(net) -> None:
    homes, _, root = net
    a, b = homes["a"], homes["b"]
    team_id = ok_json(a, "team", "create", "eng", "--threshold", "1", "--member", identity_of(b))["id"]
    until(holding(b, team_id), "B takes in its share from its inbox")
    data = pattern("Pattern-CLITEAM-001", "Wombat Burrow Protocol", body="Wombats dig in private.")
    path = write(root / "files", "secret.md", data)
    digest = hashlib.sha256(data).hexdigest()

    # Locked: refused before anything is sent, with the command that fixes it (publish names each
    # file it could not publish, as for an invalid file).
    for team_ref, why in (("eng", LOCKED), ("nosuchteam", "this node is in no team named 'nosuchteam'")):
        refused = run(a, "publish", "--team", team_ref, str(path))
        assert refused.returncode == 1 and refused.stderr.startswith(f"error: {why}"), refused.stderr

    unlock_in_store(a, team_id)
    printed = ok(a, "publish", "--team", "eng", str(path)).stdout.strip()
    assert printed == f"{digest} Pattern-CLITEAM-001 {path}  [team eng {team_id[:8]} epoch 0]"
    published = ok_json(a, "publish", "--team", team_id[:8], str(path))["published"]
    team = {"name": "eng", "id": team_id, "epoch": 0}
    assert [(p["hash"], p["unchanged"], p["team"]) for p in published] == [(digest, True, team)]

    fetched = ok(a, "fetch", "Pattern-CLITEAM-001", binary=True)
    assert fetched.stdout == data
    assert f"[team eng {team_id[:8]} epoch 0]" in fetched.stderr.decode()
    as_json = ok_json(a, "fetch", digest)
    assert as_json["text"].encode() == data and as_json["team"] == team
    found = ok_json(a, "search", "wombat", "burrow")["results"]
    assert [(r["id"], r["hash"], r["team"]) for r in found] == [("Pattern-CLITEAM-001", digest, team)]
    assert "[team eng" in ok(a, "search", "wombat").stdout
    mine = [p for p in ok_json(a, "ls")["patterns"] if p["hash"] == digest]
    assert [(p["role"], p["team"], p["readable"]) for p in mine] == [("own", team, True)]

    # B holds the replica but cannot read it, and is told how to.
    theirs = [p for p in ok_json(b, "ls")["patterns"] if not p["readable"]]
    assert len(theirs) == 1 and theirs[0]["id"] is None and theirs[0]["role"] == "replica"
    assert "encrypted for a team this node cannot read" in ok(b, "ls").stdout
    for ref in ("Pattern-CLITEAM-001", digest):
        assert_clean_error(run(b, "fetch", ref), LOCKED)
    assert_clean_error(run(b, "search", "wombat"), LOCKED)
    for home in (a, b):
        files = [home / DB_NAME, home / f"{DB_NAME}-wal"]
        assert not any(b"wombat" in f.read_bytes().lower() for f in files if f.exists()), home

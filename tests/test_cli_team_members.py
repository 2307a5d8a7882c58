"""`team add-member` and `team remove-member` end to end, through real daemons and the CLI.

Daemons on loopback read their inbox every second. Unlocking is not part of these
commands: where an epoch must be unlocked, the test opens the members' sealed shares
from their stores, combines K of them and keeps the key in the changing node's store
(``team_keys.keep_unlocked``), as `team unlock` will. Every wait is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from aether.crypto.identity import Identity
from aether.crypto.teams import check_commitment, combine_shares, open_sealed
from aether.node.team_api import held_descriptor
from aether.node.team_keys import keep_unlocked
from aether.storage.store import Store

from .test_cli_patterns import assert_clean_error, ok, ok_json, run
from .test_cli_teams import identity_of, team_daemons, teams_of, until


@dataclass
class Home:
    """What keep_unlocked needs of a node: its identity and its store (the daemon's, opened alongside)."""

    identity: Identity
    store: Store


def opened(home: Path) -> Home:
    return Home(Identity.load(home), Store(home / "node.db"))


def unlock(target: Path, holders: list[Path], team_id: str, epoch: int) -> None:
    """Combine the holders' shares of ``epoch`` and keep the key, checked, in ``target``'s store."""
    team = bytes.fromhex(team_id)
    shares = []
    descriptor = None
    for home in holders:
        node = opened(home)
        try:
            shares.append(open_sealed(node.identity, node.store.team_share(team, epoch), purpose="share",
                                      team_id=team, epoch=epoch))
            descriptor = held_descriptor(node.store.team(team))
        finally:
            node.store.close()
    key = combine_shares(shares)
    assert descriptor is not None and descriptor.epoch == epoch
    assert check_commitment(key, team, epoch, descriptor.commitment)
    node = opened(target)
    try:
        assert keep_unlocked(node, team, epoch, key, 3600)[0] == epoch
    finally:
        node.store.close()


def at_epoch(home: Path, team_id: str, epoch: int, holds_share: bool = True):
    return lambda: next((t for t in teams_of(home) if t["id"] == team_id and t["epoch"] == epoch
                         and t["holds_share"] == holds_share), None)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    with team_daemons(tmp_path_factory.mktemp("climembers"), "abcd", "abcd") as (homes, _):
        yield homes


def test_members_are_added_and_removed_through_the_daemons(net) -> None:
    a, b, c, d = net["a"], net["b"], net["c"], net["d"]
    node_id = {h: ok_json(h, "id")["node_id"] for h in (a, b, c, d)}
    team_id = ok_json(a, "team", "create", "eng", "--threshold", "2", "--member", identity_of(b),
                      "--member", identity_of(c))["id"]
    for home in (b, c):
        until(at_epoch(home, team_id, 0), "B and C take in their shares of epoch 0")

    locked = run(a, "team", "add-member", "eng", identity_of(d))
    assert_clean_error(locked, "team locked: run aether-node team unlock eng")
    unlock(a, [a, b], team_id, 0)
    assert_clean_error(run(a, "team", "add-member", "eng", identity_of(b)), "already a member")
    assert_clean_error(run(a, "team", "add-member", "eng", "aether1nope"), "member 1 (aether1nope…): invalid identity")
    assert_clean_error(run(a, "team", "remove-member", "eng", identity_of(d)), "is not a member")
    assert [t["epoch"] for t in teams_of(a)] == [0]

    added = ok_json(a, "team", "add-member", "eng", identity_of(d))
    assert (added["epoch"], added["previous_epoch"], added["k"], added["n"]) == (1, 0, 2, 4)
    assert (added["pending"], added["won"], added["approvals"], added["needed"]) == (True, False, 1, 2)
    assert added["added"] == [node_id[d]] and added["removed"] == []
    assert [m["node_id"] for m in added["members"]] == [node_id[h] for h in (a, b, c, d)]
    assert added["members"][0]["self"] and all(m["replicas"] >= 1 for m in added["members"][1:])
    assert teams_of(a)[0]["epoch"] == 0  # a proposal: K = 2 members of epoch 0 must sign it

    # Bob sees the pending change and approves it; the maker cannot approve its own.
    shown = ok_json(b, "team", "status", "eng", "--timeout", "2")["changes"]
    assert [(c_["epoch"], c_["added"], c_["approvals"], c_["needed"], c_["maker"]) for c_ in shown] == [
        (1, [node_id[d]], 1, 2, node_id[a])]
    assert "pending changes:\n  epoch 1: 1 of 2 approvals (`team approve-change` to approve)" in ok(
        b, "team", "status", "eng", "--timeout", "2").stdout
    assert_clean_error(run(a, "team", "approve-change", "eng"), "this node made that change of team eng")
    approved = ok_json(b, "team", "approve-change", "eng")
    assert (approved["complete"], approved["approvals"], approved["followed_epoch"]) == (True, 2, 1)
    assert_clean_error(run(b, "team", "approve-change", "eng"), "no change of team eng")
    for home in (a, b, c, d):
        until(at_epoch(home, team_id, 1), "every member follows epoch 1 and holds its share of it")
    assert teams_of(a)[0]["unlocked"] is False  # the new key is not kept

    # Bob unlocks epoch 1 (with dave's share) and removes carol, lowering K to 1 at once.
    unlock(b, [b, d], team_id, 1)
    text = ok(b, "team", "remove-member", team_id, identity_of(c), "--threshold", "1").stdout
    assert text.splitlines()[0] == (f"team eng {team_id}: epoch 2 (was 1), 1 of 3 members unlock it; "
                                    f"removed {node_id[c]}")
    assert "this node: keeps its own share" in text and node_id[c] not in text.split("\n", 1)[1]
    assert ("change proposed: needs 1 more approval(s) from members of epoch 1: "
            "run `aether-node team approve-change eng` on their nodes") in text
    text = ok(d, "team", "approve-change", "eng").stdout
    assert text.startswith(f"approved the change of team eng {team_id} to epoch 2 (2 of 2 approvals): complete")
    assert f"  - {node_id[c]}" in text and "2 -> 1 of 3 members" in text
    for home in (a, d):
        until(at_epoch(home, team_id, 2), "the remaining members take in their shares of epoch 2")
    until(at_epoch(c, team_id, 2, holds_share=False), "carol's node follows epoch 2, with no share of it")
    status = ok_json(c, "team", "status", "eng", "--timeout", "2")
    assert status["index"] is None and status["holds_share"] is False and status["n"] == 3
    assert "none: this node is not a member of epoch 2" in ok(c, "team", "status", "eng", "--timeout", "2").stdout
    listing = ok(a, "team", "list").stdout.splitlines()[1].split()
    assert listing[2:6] == ["2", "1", "of", "3"]

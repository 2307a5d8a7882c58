"""Disjoint-path lookups (S/Kademlia): colluders near a key cannot hide its value, and no peer is asked twice."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kademlia.node import Node

from aether.crypto.records import create_record
from aether.node.config import ConfigError, NodeConfig
from aether.node.lookup import Lookup, deal_seeds, seeds_for
from aether.node.protocol import AetherProtocol
from aether.node.values import Block, block_key
from aether.simulations.model import MemoryNetwork, _run, fetch_block, run_value_lookups, targeted_network
from aether.simulations.network import local_network
from aether.storage.store import BLOCK, RECORD

from .conftest import QUIET

CONFIG = NodeConfig(ksize=20)


def test_seeds_are_dealt_nearest_first_each_to_one_path() -> None:
    rng = random.Random(5)
    target = rng.randbytes(20)
    seeds = [Node(rng.randbytes(20), "127.0.0.1", 4000 + i) for i in range(20)]
    dealt = deal_seeds(seeds + seeds[:3], target, 3)  # a repeated contact is still dealt once
    assert [len(path) for path in dealt] == [7, 7, 6]
    ids = [node.id for path in dealt for node in path]
    assert sorted(ids) == sorted(node.id for node in seeds)
    by_distance = sorted(seeds, key=lambda node: node.long_id ^ int.from_bytes(target, "big"))
    assert [node.id for node in dealt[1]] == [node.id for node in by_distance[1::3]]
    assert deal_seeds(seeds, target, 1)[0] == by_distance


def test_lookup_paths_is_a_whole_number_of_at_least_one() -> None:
    assert NodeConfig().lookup_paths == 3
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError):
            NodeConfig(lookup_paths=bad)


def test_no_peer_is_asked_by_two_paths() -> None:
    """Every request of a 3-path lookup goes to a different peer, and every path asks its own."""
    network = MemoryNetwork(1500, config=CONFIG, seed=7, malicious=0.2, kind="eclipse")
    asker = next(i for i in range(1500) if i not in network.malicious)
    protocol = network.protocol(asker)
    asked: list[bytes] = []
    request_find = protocol.request_find

    def counting(node: Node, target: bytes, want_value: bool):
        asked.append(node.id)
        return request_find(node, target, want_value)

    protocol.request_find = counting  # type: ignore[method-assign]
    key = random.Random(7).randbytes(20)
    lookup = Lookup(protocol, key, seeds_for(protocol, key, 20, 3), k=20, alpha=3, want_value=False, paths=3)
    result = _run(lookup.run())
    assert len(asked) == result.messages == len(set(asked)) > 3 * 20
    by_path = {entry.node.id: entry.path for entry in lookup.entries.values() if entry.path >= 0}
    assert set(by_path) == set(asked) and set(by_path.values()) == {0, 1, 2}


def test_colluders_nearest_a_key_hide_it_from_one_path_but_not_from_disjoint_paths() -> None:
    """k colluders with IDs ground next to a key answer for each other; the honest holders sit just past them.

    One path ends at the colluders in most networks; three disjoint paths, each
    barred from the colluders another path asked, find the value in every one.
    """
    single, disjoint = [], []
    for trial in range(8):
        for paths, found in ((1, single), (3, disjoint)):
            network, key, data, asker = targeted_network(1000, 20, seed=trial, config=CONFIG)
            result = _run(fetch_block(network, asker, key, paths))
            found.append(isinstance(result.value, Block) and result.value.data == data)
    assert sum(single) <= 5, single
    assert all(disjoint), disjoint


def test_with_nobody_malicious_a_block_lookup_costs_what_one_path_costs() -> None:
    """The d paths are taken only when one path found nothing: with honest peers, never."""
    one = run_value_lookups(1000, 30, paths=1, seed=3, config=CONFIG)
    three = run_value_lookups(1000, 30, paths=3, seed=3, config=CONFIG)
    assert one.found == three.found == 1.0
    assert three.retried == 0 and three.messages == one.messages


class Colluder(AetherProtocol):
    """A real node's protocol that answers every find with its fellow colluders nearest the key, and an old record."""

    colluders: list[Node] = []
    replay: dict[bytes, bytes] = {}

    def rpc_find_node(self, sender: tuple, nodeid: Any, key: Any) -> Any:
        return self._fellows(key)

    def rpc_find_value(self, sender: tuple, nodeid: Any, key: Any, offset: Any = 0) -> Any:
        if key in self.replay:
            return {"value": self.replay[key]}
        return self._fellows(key)

    def _fellows(self, key: bytes) -> list[list]:
        target = int.from_bytes(key, "big")
        near = sorted(self.colluders, key=lambda node: node.long_id ^ target)
        return [[n.id, n.ip, n.port] for n in near if n.id != self.source_node.id][: self.router.ksize]


async def test_on_real_nodes_colluders_at_a_key_hide_neither_a_block_nor_the_newest_record(tmp_path) -> None:
    """30 nodes on loopback; the 2k nearest a key collude, deny the block and replay an older record.

    The block is held and the newest record stored by the k honest nodes past
    them. A record found (an old one) does not look like a miss, which is why
    record lookups always take the disjoint paths.
    """
    config = QUIET.replace(ksize=4)
    async with local_network(tmp_path, 30, config, seed=11) as nodes:
        reader, author = nodes[0], nodes[1]
        data = b"a pattern's block that colluders would hide"
        old = create_record(author.identity, "pattern", b"Pattern-X", 1, b"version 1", 3600)
        new = create_record(author.identity, "pattern", b"Pattern-X", 2, b"version 2", 3600)
        assert old.key == new.key
        for key in (block_key(data), new.key):
            target = int.from_bytes(key, "big")
            others = sorted(nodes[2:], key=lambda n: n.node.long_id ^ target)
            colluders, holders = others[: 2 * config.ksize], others[2 * config.ksize: 3 * config.ksize]
            Colluder.colluders = [n.node for n in colluders]
            Colluder.replay = {new.key: old.encode()}
            for node in colluders:
                node.protocol.__class__ = Colluder
            for node in holders:
                if key == new.key:
                    node.store.put(key, new.encode(), kind=RECORD, role="replica", seq=2, expires=new.expires)
                else:
                    node.store.put(key, data, kind=BLOCK, role="replica")
            if key == new.key:
                found = await reader.get_record(key)
                assert found is not None and found.seq == 2
            else:
                assert await reader.get_block(key) == data
            for node in colluders:
                node.protocol.__class__ = AetherProtocol


def test_the_adversarial_model_command_reports_each_kind_one_path_against_d_paths(tmp_path) -> None:
    import json

    from .test_cli_patterns import assert_clean_error, ok, run

    report = json.loads(ok(None, "simulate", "--model", "--adversarial", "--nodes", "400", "--lookups", "4",
                           "--out", str(tmp_path), as_json=True).stdout)
    assert report["mode"] == "adversarial" and report["nodes"] == 400 and report["paths"] == 3
    labels = [(row["kind"], row["share"], row.get("targeted")) for row in report["rows"]]
    assert labels[0] == ("none", 0.0, None) and len(labels) == 1 + 4 * 3 + 3
    assert {kind for kind, _, _ in labels[1:13]} == {"silent", "eclipse", "fabricate", "tamper"}
    assert [targeted for _, _, targeted in labels[13:]] == [10, 20, 40]
    for row in report["rows"]:
        assert 0 <= row["single"]["found"] <= 1 and row["paths"]["messages"]["mean"] > 0
    assert report["collect_messages"]["paths"]["p50"] > report["collect_messages"]["single"]["p50"]
    assert json.loads((tmp_path / "adversarial.json").read_text(encoding="utf-8")) == report
    assert_clean_error(run(None, "simulate", "--adversarial"), "--model")

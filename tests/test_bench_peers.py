"""bench_peers end to end with tiny numbers: every field of its JSON is there and sane.

OpenDHT is skipped (it is an optional extra, not in the test extra). No timing
thresholds: the machine is shared, so only counts, ranges and structure are checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgpack

from aether.simulations import bench_peers


def test_bench_peers_small_run(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    argv = ["--nodes", "12", "--ops", "5", "--joins", "2", "--rps-seconds", "0.5",
            "--fetch-timeout", "3", "--phase-budget", "20", "--skip-opendht", "--out", str(out)]
    assert bench_peers.main(argv) == 0
    report = json.loads(out.read_text())

    assert set(report["sides"]) == {"ours", "stock"}
    assert any("OpenDHT" in note for note in report["notes"])  # why it is missing
    for impl, side in report["sides"].items():
        assert "error" not in side, side.get("error")
        assert side["n"] == 12 and side["killed"] == 6
        assert 0 <= side["store_success"] <= 1
        assert side["mem_per_node_bytes"] > 0
        for phase in ("fetch", "fetch_after_kill"):
            fetch = side[phase]
            assert fetch["attempted"] + fetch["not_attempted"] == 5
            assert fetch["attempted"] >= 1 and 0 <= fetch["ok"] <= fetch["attempted"]
            assert 0 <= fetch["success"] <= 1
            assert fetch["ms"]["p50"] <= fetch["ms"]["p99"]
        assert side["fetch"]["success"] == 1.0, impl  # no churn, 12 nodes: every value is found
        assert side["rps"]["answered"] > 0 and side["rps"]["answers_per_s"] > 0
        assert side["rps"]["answered"] <= side["rps"]["sent"]
        joins = side["join_new_node"]
        assert joins["count"] == 2 and 0 <= joins["ok"] <= 2
        if joins["ok"]:
            assert 0 < joins["ms"]["p50"] <= joins["ms"]["p99"]

    table = report["table"]
    assert {key for _, key, _ in bench_peers.METRICS} == set(table)
    for row in table.values():
        assert {"ours", "stock", "ours/stock", "ours/opendht"} <= set(row)
        assert row["ours/opendht"] is None
        assert row["ours/stock"] is None or (math.isfinite(row["ours/stock"]) and row["ours/stock"] >= 0)
    assert set(report["targets"]) == {"churn_success", "churn_p99", "rps_ratio"}
    for target in report["targets"].values():
        assert target["met"] in (True, False) and target["at_target_n"] is False
    assert report["machine"]["nproc"] >= 1


def test_kill_plan_is_half_and_fetches_from_survivors() -> None:
    killed, fetchers = bench_peers.survivors_plan(seed=3, n=40, ops=25)
    assert len(killed) == 20 and len(set(killed)) == 20
    assert len(fetchers) == 25 and not set(fetchers) & set(killed)
    assert bench_peers.survivors_plan(seed=3, n=40, ops=25) == (killed, fetchers)


def test_the_opendht_load_generator_speaks_its_find_query_and_matches_replies_by_transaction() -> None:
    datagram, tid = bench_peers._opendht_find(b"\x01" * 20)
    query = msgpack.unpackb(datagram)
    assert query["y"] == "q" and query["q"] == "find" and int.from_bytes(query["t"], "big") == tid
    assert query["a"]["id"] == b"\x01" * 20 and len(query["a"]["target"]) == 20
    # An OpenDHT node answers with the transaction ID as a big-endian integer (seen from opendht 4.4.2).
    reply = msgpack.packb({"y": "r", "t": tid, "r": {"id": b"\x02" * 20}, "v": "o2"})
    assert bench_peers._opendht_answer(reply) == tid
    assert bench_peers._opendht_answer(msgpack.packb({"y": "q", "t": tid})) is None  # a query, not an answer
    assert bench_peers._opendht_answer(b"\xc1 not msgpack") is None

"""Simulations of real nodes in worker processes (simulations/cluster.py, simulate.py, faults.py).

A 20-node scenario runs end to end in two worker processes, with kills, a partition
that heals and a lossy transport, and its report is checked for its fields and for
values that hold whatever the machine's speed. The transport faults are checked on
real UDP sockets on loopback.
"""

from __future__ import annotations

import asyncio
import re
import json
import random

import pytest

from aether.simulations.faults import Faults, FaultyTransport
from aether.simulations.scenario import parse
from aether.simulations.simulate import render, run_scenario

SMALL = """
name = "small"
description = "Twenty nodes, every kind of event."
nodes = 20
seed = 3

[population]
desktop = 0.5
phone = 0.5

[[events]]
at = 0
action = "publish"
count = 6

[[events]]
at = 1
action = "fetch"
count = 12

[[events]]
at = 1
action = "search"
count = 6

[[events]]
at = 3
action = "kill"
fraction = 0.25

[[events]]
at = 3.5
action = "partition"
groups = 2
duration = 1

[[events]]
at = 5
action = "transport"
loss = 0.05
latency_ms = 2

[[events]]
at = 5.5
action = "join"
count = 3

[[events]]
at = 6
action = "fetch"
count = 12
"""


def test_a_small_scenario_runs_on_real_nodes_and_reports_every_measure(tmp_path) -> None:
    scenario = parse(SMALL)
    statuses: list[str] = []
    report = asyncio.run(asyncio.wait_for(run_scenario(scenario, workers=2, root=tmp_path, status=statuses.append), 300))
    ops = report["operations"]
    assert {"publish", "fetch", "lookup", "search"} <= set(ops)
    # The live status shows the run's time and, once they are done, the operations' successes.
    assert statuses and all(re.match(r"t= *\d+\.\d/\d+ s  \d+ nodes alive", s) for s in statuses)
    assert any("publish 6/6 ok" in s for s in statuses)
    assert ops["publish"]["count"] == 6 and ops["publish"]["success"] == 1.0
    assert ops["publish"]["replicas"]["p50"] >= 1
    assert ops["fetch"]["count"] + ops["fetch"].get("interrupted", 0) == 24
    assert ops["search"]["count"] == 6
    for op in ops.values():
        if op["count"]:
            assert 0 <= op["success"] <= 1
            ms = op["ms"]
            assert 0 < ms["p50"] <= ms["p90"] <= ms["p99"]
            assert op["datagrams_per_op"] > 0 and op["bytes_per_op"] > 0
    assert ops["lookup"]["hops"]["p50"] >= 1 and ops["lookup"]["messages"]["p50"] >= 1
    # Before anything was killed every fetch succeeds: the network of 20 holds every pattern.
    first = report["success_over_time"][0]
    assert first["t"] == 1 and first["alive"] == 20 and first["fetch_success"] == 1.0
    assert report["success_over_time"][-1]["alive"] == 20 - 5 + 3
    replicas = report["replicas_over_time"]
    assert replicas and replicas[-1]["alive"] == 18 and replicas[-1]["mean"] >= 1
    assert set(report["storage_fill_percent"]) == {"desktop", "phone"}
    assert all(0 <= f["p50"] <= f["p100"] for f in report["storage_fill_percent"].values())
    text = render(report)
    assert "simulate small: 20 nodes in 2 processes" in text and "fetch" in text and "storage fill, phone" in text
    assert not list(tmp_path.iterdir())  # the nodes' homes are removed after the run


async def _pair(faults: Faults):
    """Two UDP endpoints on loopback; the first sends through ``faults``."""
    loop = asyncio.get_running_loop()
    received: list[bytes] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:
            received.append(data)

    sender, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    return FaultyTransport(sender, faults), sink, received


async def _settle(received: list, expected: int, bound: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while len(received) < expected and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def test_loss_drops_the_share_asked_and_counts_what_it_dropped() -> None:
    faults = Faults(rng=random.Random(5))
    faults.set_transport(loss=0.3)
    wrapped, sink, received = await _pair(faults)
    try:
        target = sink.get_extra_info("sockname")
        for i in range(1000):
            wrapped.sendto(i.to_bytes(2, "big"), target)
            if i % 20 == 19:  # in small bursts: the receiving socket's buffer must not overflow
                await _settle(received, i + 1 - wrapped.dropped)
        assert wrapped.sent == 1000 and len(received) == 1000 - wrapped.dropped
        assert 230 <= wrapped.dropped <= 370  # 0.3 of 1000, far outside a binomial's spread otherwise
    finally:
        wrapped.close()
        sink.close()


async def test_a_partition_drops_everything_across_it_until_it_heals() -> None:
    faults = Faults()
    wrapped, sink, received = await _pair(faults)
    try:
        source, target = wrapped.get_extra_info("sockname")[:2], sink.get_extra_info("sockname")[:2]
        faults.partition([[source], [target]])
        for _ in range(50):
            wrapped.sendto(b"x", target)
        await _settle(received, 1, bound=0.2)
        assert received == [] and wrapped.dropped == 50
        faults.partition([[source, target]])  # one side: nothing is across
        wrapped.sendto(b"same side", target)
        faults.heal()
        wrapped.sendto(b"healed", target)
        await _settle(received, 2)
        assert received == [b"same side", b"healed"]
    finally:
        wrapped.close()
        sink.close()


async def test_latency_holds_each_datagram_back_and_keeps_it() -> None:
    faults = Faults()
    faults.set_transport(latency_ms=200)
    wrapped, sink, received = await _pair(faults)
    try:
        wrapped.sendto(b"late", sink.get_extra_info("sockname"))
        await asyncio.sleep(0.02)
        assert received == []  # it cannot be here before its delay has passed
        await _settle(received, 1)
        assert received == [b"late"] and wrapped.dropped == 0
    finally:
        wrapped.close()
        sink.close()


@pytest.mark.parametrize("loss", [-0.1, 1.0])
def test_the_scenario_refuses_a_loss_that_would_stop_every_datagram(loss: float) -> None:
    with pytest.raises(ValueError, match="transport.loss"):
        parse(f"nodes = 3\n[transport]\nloss = {loss}\n")


def test_the_simulate_command_writes_the_report_and_plots_and_refuses_a_bad_scenario(tmp_path) -> None:
    from .test_cli_patterns import assert_clean_error, ok, run

    scenario = tmp_path / "tiny.toml"
    scenario.write_text('name = "tiny"\nnodes = 8\n[[events]]\naction = "publish"\ncount = 2\n'
                        '[[events]]\nat = 1\naction = "fetch"\ncount = 4\n', encoding="utf-8")
    out = tmp_path / "out"
    result = ok(None, "simulate", str(scenario), "--workers", "2", "--seed", "4", "--out", str(out), as_json=True)
    report = json.loads(result.stdout)
    assert (report["scenario"], report["nodes"], report["seed"], report["workers"]) == ("tiny", 8, 4, 2)
    assert report["operations"]["fetch"]["success"] == 1.0
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == report
    for name in ("latency.png", "over_time.png", "storage_fill.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scenario.write_text("nodes = 8\n[[events]]\naction = \"fly\"\n", encoding="utf-8")
    assert_clean_error(run(None, "simulate", str(scenario)), "events[0].action: must be one of")
    assert_clean_error(run(None, "simulate", "no-such"), "no scenario 'no-such'", "demo")


def test_the_team_step_runs_a_ceremony_and_outsiders_read_nothing(tmp_path) -> None:
    scenario = parse('name = "teamwork"\nnodes = 12\nseed = 2\n[[events]]\naction = "team"\nmembers = 4\nk = 3\n'
                     'patterns = 2\n')
    report = asyncio.run(asyncio.wait_for(run_scenario(scenario, workers=2, root=tmp_path), 300))
    team, ops = report["team"], report["operations"]
    assert (team["members"], team["k"], team["shares_delivered"]) == (4, 3, 4)
    assert ops["unlock"]["count"] == 3 and ops["unlock"]["success"] == 1.0
    assert ops["team publish"]["count"] == 2 and ops["team publish"]["success"] == 1.0
    assert ops["team fetch"]["count"] == 6 and ops["team fetch"]["success"] == 1.0  # 3 unlocked members x 2
    assert team["outsider_fetches"] == {"tries": 2, "read": 0}
    assert "outsiders read 0 of 2 team patterns" in render(report)

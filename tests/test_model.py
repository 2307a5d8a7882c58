"""The large-scale model (simulations/model.py): simulated time, and agreement with real nodes on lookups."""

from __future__ import annotations

import asyncio
import random

from kademlia.node import Node

from aether.simulations.model import MemoryNetwork, VirtualClockLoop, run_lookups
from aether.simulations.network import local_network
from aether.simulations.stats import percentile

from .conftest import QUIET

CONFIG = QUIET.replace(ksize=8)


def test_simulated_time_jumps_to_the_next_timer_and_keeps_the_order_of_events() -> None:
    loop = VirtualClockLoop()
    seen = []
    try:
        async def main() -> None:
            loop.call_later(3600, seen.append, "an hour")
            loop.call_later(0.5, seen.append, "half a second")
            await asyncio.sleep(7200)
            seen.append(loop.time())

        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen == ["half a second", "an hour", 7200.0]


def test_a_modelled_table_holds_up_to_k_nodes_of_each_distance_range() -> None:
    network = MemoryNetwork(2000, config=CONFIG, seed=2)
    own = network.ids[17]
    table = network._table(17)
    assert 17 not in table and len(table) == len(set(table))
    by_range: dict[int, int] = {}
    for j in table:
        by_range[(own ^ network.ids[j]).bit_length()] = by_range.get((own ^ network.ids[j]).bit_length(), 0) + 1
    assert max(by_range.values()) == 8 and by_range[160] == 8  # the far half of the space: k of about 1,000
    nearest = min((j for j in range(2000) if j != 17), key=lambda j: own ^ network.ids[j])
    assert nearest in table  # a node's closest neighbour is always in its table (its range holds few)


def test_dead_nodes_cost_timeouts_in_simulated_time_not_in_lookups_found() -> None:
    alive = run_lookups(3000, 60, seed=4, config=CONFIG)
    half_dead = run_lookups(3000, 60, seed=4, dead=0.5, config=CONFIG)
    assert alive.found >= 0.95 and half_dead.found >= 0.9
    assert half_dead.seconds["p50"] > alive.seconds["p50"]  # the asker waited for peers that never answer
    assert half_dead.messages["p50"] > alive.messages["p50"]


async def test_the_model_agrees_with_real_nodes_on_lookup_rounds(tmp_path) -> None:
    """The same code over real UDP sockets and over the model: the rounds of a lookup match."""
    size, count = 120, 60
    rng = random.Random(9)
    async with local_network(tmp_path, size, CONFIG, seed=9) as nodes:
        real = []
        for _ in range(count):
            result = await rng.choice(nodes).lookup(rng.randbytes(20))
            real.append(result.hops)
    model = await asyncio.to_thread(run_lookups, size, count, seed=9, config=CONFIG, latency_ms=1.0)
    assert abs(percentile(real, 50) - model.hops["p50"]) <= 1, (sorted(real), model.hops)
    assert abs(percentile(real, 90) - model.hops["p90"]) <= 1, (sorted(real), model.hops)


def test_availability_under_churn_is_reported_per_sample_and_repeats_with_its_seed() -> None:
    from aether.simulations.model import run_availability

    first = run_availability(600, 20, median_session_s=600, hours=2, step_s=600, seed=3, config=CONFIG)
    assert first.samples == run_availability(600, 20, median_session_s=600, hours=2, step_s=600, seed=3,
                                             config=CONFIG).samples
    assert len(first.samples) == 12 and first.samples[-1]["hour"] == 2.0
    for sample in first.samples:
        assert 0.3 < sample["online"] < 0.7  # sessions and absences alike: about half the nodes are online
        assert 0 <= sample["findable"] <= 1 and 0 <= sample["unheld"] <= 1


def test_the_model_command_reports_rounds_beside_log2_n(tmp_path) -> None:
    import json

    from .test_cli_patterns import assert_clean_error, ok, run

    report = json.loads(ok(None, "simulate", "--model", "--nodes", "2000", "--lookups", "20", "--out",
                           str(tmp_path), as_json=True).stdout)
    assert report["nodes"] == 2000 and report["lookups"] == 20 and report["log2_n"] == 10.97
    assert 1 <= report["rounds"]["p50"] <= report["rounds"]["p99"] and report["messages"]["p50"] > 0
    assert [a["median_session_s"] for a in report["availability"]] == [600.0, 3600.0, 14400.0]
    assert json.loads((tmp_path / "model.json").read_text(encoding="utf-8")) == report
    assert_clean_error(run(None, "simulate", "--nodes", "9000"), "at most 5000", "--model")

"""Scenario files (simulations/scenario.py): shipped ones load, bad ones fail naming the field, timelines repeat."""

from __future__ import annotations

import pytest

from aether.simulations.scenario import DEVICE_CLASSES, ScenarioError, load, parse, shipped

BASE = 'nodes = 20\n'


def test_every_shipped_scenario_loads_and_names_itself() -> None:
    names = set(shipped())
    assert {"demo", "churn", "devices", "team"} <= names
    for name in names:
        scenario = load(name)
        assert scenario.name == name and scenario.events and scenario.description
    assert load("churn").nodes == 1000 and 40 <= load("demo").nodes <= 60


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    churn = load("churn")
    assert churn.timeline(7) == churn.timeline(7)
    assert churn.timeline(7) != churn.timeline(8)
    assert churn.devices(3) == churn.devices(3)


def test_a_kill_of_half_the_network_kills_half_and_never_the_same_node_twice() -> None:
    steps = load("churn").timeline(1)
    killed = [n for s in steps if s.action in ("kill", "leave") for n in s.args["nodes"]]
    first = next(s for s in steps if s.action == "kill")
    assert len(first.args["nodes"]) == 500
    assert len(killed) == len(set(killed))
    joined = [n for s in steps if s.action == "join" for n in s.args["nodes"]]
    assert joined and min(joined) == 1000 and len(joined) == len(set(joined))
    assert [s.at for s in steps] == sorted(s.at for s in steps)


def test_the_population_is_split_by_its_shares() -> None:
    classes = load("devices").devices()
    assert len(classes) == 200
    assert {c: classes.count(c) for c in DEVICE_CLASSES} == {"desktop": 50, "laptop": 70, "tablet": 30, "phone": 50}
    odd = parse(BASE.replace("20", "7") + "[population]\ndesktop = 0.5\nphone = 0.5\n")
    assert sorted(odd.devices()) == ["desktop"] * 4 + ["phone"] * 3  # an equal remainder goes by class name


def test_a_partition_splits_the_living_nodes_and_heals_after_its_duration() -> None:
    scenario = parse(BASE + '[[events]]\nat = 3\naction = "partition"\ngroups = 3\nduration = 4\n')
    partition, heal = scenario.timeline()
    assert partition.action == "partition" and heal.action == "heal" and heal.at == 7
    groups = partition.args["groups"]
    assert len(groups) == 3 and sorted(n for g in groups for n in g) == list(range(20))


@pytest.mark.parametrize("text, fragment", [
    ("nodes = [", "not valid TOML"),
    ("", "nodes: must be a whole number from 2"),
    ("nodes = 1", "nodes: must be a whole number from 2"),
    ("nodes = 1e3", "nodes: must be a whole number"),
    ("nodes = true", "nodes: must be a whole number"),
    ("nodes = 999999", "to 5000"),
    (BASE + "speed = 3", "speed: unknown field"),
    (BASE + "[population]\ndesktop = 0.5", "must add up to 1"),
    (BASE + "[population]\nfridge = 1.0", "population.fridge: unknown device class"),
    (BASE + "[transport]\nloss = 2", "transport.loss: must be a number from 0 to 0.9"),
    (BASE + "[transport]\ndelay = 2", "transport.delay: unknown field"),
    (BASE + "[[events]]\naction = \"explode\"", "events[0].action: must be one of"),
    (BASE + "[[events]]\naction = \"fetch\"", "events[0]: fetch needs count"),
    (BASE + "[[events]]\naction = \"fetch\"\ncount = -1", "events[0].count: must be a whole number from 1"),
    (BASE + "[[events]]\naction = \"fetch\"\ncount = 3\nat = -1", "events[0].at: must be a number"),
    (BASE + "[[events]]\naction = \"fetch\"\ncount = 3\nfraction = 0.1", "events[0].fraction: fetch takes count"),
    (BASE + "[[events]]\naction = \"kill\"", "kill takes either fraction or count"),
    (BASE + "[[events]]\naction = \"kill\"\ncount = 1\nfraction = 0.1", "exactly one"),
    (BASE + "[[events]]\naction = \"kill\"\nfraction = 1.5", "events[0].fraction: must be a number from 0 to 1"),
    (BASE + "[[events]]\naction = \"churn\"\nduration = 5\nleave = \"slowly\"", "must be abrupt or graceful"),
    (BASE + "[[events]]\naction = \"partition\"\nduration = 5\ngroups = 50", "groups: must be from 2"),
    (BASE + "[[events]]\naction = \"team\"\nmembers = 30\nk = 3", "members: at most 20"),
    (BASE + "[[events]]\naction = \"team\"\nmembers = 5\nk = 6", "k: must be at most members"),
    (BASE + "events = 3", "events: must be a list of tables"),
    (BASE + "[[events]]\naction = \"fetch\"\ncount = 1\n" * 1001, "events: at most 1000 events"),
    (BASE + "[[events]]\naction = \"fetch\"\ncount = 100001", "events[0].count: must be a whole number from 1"),
])
def test_a_bad_scenario_fails_naming_the_field_and_the_fix(text: str, fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse(text, source="mine.toml")
    message = str(caught.value)
    assert message.startswith("mine.toml: ") and fragment in message, message


def test_an_unknown_scenario_lists_the_shipped_ones(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="churn"):
        load("no-such-scenario")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ScenarioError, match="cannot read it"):
        load(bad)


def test_every_step_names_only_nodes_alive_at_its_time() -> None:
    for name in ("churn", "team"):
        scenario = load(name)
        alive = set(range(scenario.nodes))
        for step in scenario.timeline(5):
            if step.action in ("kill", "leave"):
                assert set(step.args["nodes"]) <= alive, (name, step)
                alive -= set(step.args["nodes"])
            elif step.action == "join":
                assert not set(step.args["nodes"]) & alive
                alive |= set(step.args["nodes"])
            elif step.action in ("publish", "fetch", "search"):
                assert set(step.args["nodes"]) <= alive, (name, step)
            elif step.action == "team":
                assert set(step.args["members"]) <= alive
        assert alive

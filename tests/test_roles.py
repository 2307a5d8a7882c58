"""Device roles: who serves fully and who runs light, and the daemon following the battery."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kademlia.node import Node

from aether.node import daemon, server
from aether.node.home import DaemonSettings, Home
from aether.simulations.network import start_node, stop_all
from aether.storage import device
from aether.storage.device import Battery, Facts, StorageSettings

from .conftest import QUIET, wait_for


def battery(percent: float | None, plugged: bool | None) -> Battery:
    return Battery(percent, plugged, "test")


@pytest.mark.parametrize("device_class, reading, role, light", [
    ("desktop", None, "auto", False),
    ("desktop", battery(10, False), "auto", False),  # a UPS or a desktop with a battery still serves
    ("laptop", battery(49, False), "auto", True),  # on battery below 50 %
    ("laptop", battery(50, False), "auto", False),
    ("laptop", battery(10, True), "auto", False),  # plugged in
    ("laptop", None, "auto", False),
    ("phone", battery(100, False), "auto", True),  # on battery: light however full
    ("phone", battery(69, True), "auto", True),  # plugged in but below 70 %
    ("phone", battery(70, True), "auto", False),  # plugged in and charged: serves
    ("tablet", None, "auto", True),  # nothing known: light, as phones and tablets are by default
    ("tablet", battery(90, True), "auto", False),
    ("phone", battery(90, True), "light", True),  # the config's role is kept as set
    ("laptop", battery(5, False), "full", False),
])
def test_light_role(device_class: str, reading: Battery | None, role: str, light: bool) -> None:
    got, why = device.light_role(device_class, reading, role)
    assert got is light and why


async def test_the_daemon_follows_the_battery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"battery": battery(80, False)}

    def facts(**_: object) -> Facts:
        return Facts(system="linux", chassis_type="9", battery=now["battery"], battery_probe="test")

    monkeypatch.setattr(daemon, "POWER_CHECK", 0.01)
    monkeypatch.setattr(daemon.device, "read_facts", facts)
    node = await start_node(tmp_path / "n", QUIET)
    stop = asyncio.Event()
    settings = DaemonSettings(storage=StorageSettings("laptop"), role="auto")
    follow = asyncio.ensure_future(daemon._follow_power(node, Home(tmp_path / "n"), settings, stop))
    try:
        assert not node.light
        now["battery"] = battery(30, False)  # unplugged and draining
        assert await wait_for(lambda: node.light, timeout=5)
        now["battery"] = battery(31, True)  # plugged in again
        assert await wait_for(lambda: not node.light, timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(follow, 5)
        stop_all([node])


async def test_a_fixed_role_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "POWER_CHECK", 0.01)
    node = await start_node(tmp_path / "n", QUIET)
    try:
        settings = DaemonSettings(storage=StorageSettings("phone"), role="full")
        await asyncio.wait_for(daemon._follow_power(node, Home(tmp_path / "n"), settings, asyncio.Event()), 1)
        assert not node.light
    finally:
        stop_all([node])


async def test_peers_remembered_as_light_are_capped_the_oldest_forgotten_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(server, "MAX_LIGHT_PEERS", 3)
    node = await start_node(tmp_path / "storer", QUIET)
    try:
        peers = [Node(bytes([i]) * 20, "127.0.0.1", 1000 + i) for i in range(1, 6)]
        for peer in peers:
            assert node.refusal(peer, {"error": server.LIGHT, "message": "light"}) == server.LIGHT
        assert list(node._light_peers) == [p.id for p in peers[-3:]]
        # A forgotten peer is offered replicas again; a remembered one is not.
        assert node.replica_targets(bytes(20), peers, [])[0] == peers[:2]
    finally:
        stop_all([node])

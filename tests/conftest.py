"""Shared fixtures: real nodes on 127.0.0.1, each with a real SQLite home."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest

from aether.node.config import NodeConfig

# The daemons the tests start must neither advertise themselves on this machine's
# network nor join other runs' nodes found there: every one inherits this switch
# (the --mdns/--no-mdns option overrides it), and tests/test_discovery.py lifts it
# inside a network namespace of its own.
os.environ["AETHER_MDNS"] = "0"

# Maintenance intervals long enough not to interfere with a test unless it asks.
QUIET = NodeConfig(
    refresh_interval=3600,
    republish_interval=3600,
    replicate_interval=3600,
    expire_interval=3600,
    contacts_save_interval=3600,
)


@pytest.fixture
def quiet_config() -> NodeConfig:
    return QUIET


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()

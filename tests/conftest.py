"""Shared fixtures: real nodes on 127.0.0.1, each with a real SQLite home."""

from __future__ import annotations

import pytest

from aether.node.config import NodeConfig

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

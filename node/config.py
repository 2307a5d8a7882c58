"""Node settings: defaults fitted to a real network, every interval overridable.

Tests and simulations shorten the intervals to seconds; a device's config file
(``config.toml`` in the node's home, section ``[node]``) can change any of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

HOUR = 3600
DAY = 24 * HOUR


class ConfigError(ValueError):
    """A config value of the wrong type or out of range."""


@dataclass(frozen=True)
class NodeConfig:
    ksize: int = 20
    """Replication factor and bucket size (Kademlia's k)."""
    alpha: int = 3
    """Lookup parallelism (Kademlia's α)."""
    lookup_paths: int = 3
    """Disjoint paths a value lookup takes when one path may have been misled (S/Kademlia's d).

    A block lookup that found nothing is tried again on this many paths, and
    record and index lookups always take them: colluders near a key then need
    to answer for about this many times k peers, not k, to hide a value. 1
    turns the defence off."""
    republish_interval: float = DAY
    """How often a publisher stores its own values on the k closest nodes again."""
    replicate_interval: float = HOUR
    """How often a holder hands its replicas to the nodes now closest to each key."""
    refresh_interval: float = HOUR
    """Buckets with no lookup for this long are refreshed with a random lookup."""
    expire_interval: float = 300.0
    """How often expired values are dropped."""
    contacts_save_interval: float = 60.0
    """How often the routing table is saved to the home, for rejoining after a restart."""
    value_ttl: float = 2 * DAY
    """How long a replica of a block lives without a STORE refreshing it."""
    cache_ttl: float = HOUR
    """How long a fetched copy is kept and served."""
    record_ttl: float = 7 * DAY
    """Lifetime given to records this node signs."""
    stale_after_failures: int = 3
    """Consecutive unanswered requests before a contact is dropped from the routing table."""
    rpc_timeout_initial: float = 1.0
    rpc_timeout_min: float = 0.2
    rpc_timeout_max: float = 5.0
    quota_bytes: int = 10**9
    """Disk the node's store may take, everything counted (the device profile sets it).

    Past it, replicas and cached copies are evicted for new data; when nothing
    more can go, a peer's STORE is answered "full" and a local publish refused."""
    handoff_delay: float = 0.5
    """Seconds new contacts are gathered before one pass hands them the values they should hold."""
    max_entries_per_key: int = 64
    """Entries one shared key (an index term, a pattern hash) holds; the newest are kept."""
    max_pattern_bytes: int = 1 << 20
    """Largest pattern document this node publishes (at most 1.5 MiB, 256 blocks)."""
    requests_per_second: float = 50.0
    """Requests (all but STORE) one source may make per second, sustained; past it they are dropped."""
    requests_burst: int = 500
    """Requests one source may make at once: a joining node's bucket refreshes ask one peer a few hundred times."""
    store_bytes_per_second: int = 256 * 1024
    """STORE bytes one source may send per second, sustained: a holder re-replicating 1 GB an hour needs ~280 kB/s."""
    store_burst_bytes: int = 16 * 1024 * 1024
    """STORE bytes one source may send at once: a hand-off gives a new neighbour its share in one pass."""
    rate_limited_sources: int = 4096
    """Sources whose rate state is kept (least recently heard from forgotten first): bounds the memory."""
    contacts_per_subnet_bucket: int = 2
    """Routing-table contacts from one /24 (IPv4) or /48 (IPv6) in one bucket, replacements included."""
    contacts_per_subnet: int = 8
    """Routing-table contacts from one /24 or /48 in the whole table, replacements included."""
    restrict_loopback: bool = False
    """Treat loopback addresses like any other: one rate limit per IP (not per IP and port), subnet limits applied.

    Off by default so that many nodes on one machine (simulations, benchmarks)
    work; tests of the defences turn it on."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f"{f.name} must be true or false, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{f.name} must be a number, not {value!r}")
            if value <= 0:
                raise ConfigError(f"{f.name} must be greater than 0, not {value!r}")
        if self.max_pattern_bytes > 256 * 6 * 1024:
            raise ConfigError("max_pattern_bytes must be at most 1572864 (256 blocks of 6 KiB)")
        if not self.rpc_timeout_min <= self.rpc_timeout_initial <= self.rpc_timeout_max:
            raise ConfigError("need rpc_timeout_min <= rpc_timeout_initial <= rpc_timeout_max")
        for name in ("ksize", "alpha", "lookup_paths", "stale_after_failures", "quota_bytes", "max_entries_per_key",
                     "max_pattern_bytes", "requests_burst", "store_bytes_per_second", "store_burst_bytes",
                     "rate_limited_sources", "contacts_per_subnet_bucket", "contacts_per_subnet"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{name} must be a whole number")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> NodeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown node setting(s): {', '.join(unknown)}")
        return cls(**values)

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TeamSettings:
    """The ``[teams]`` section of config.toml: how the daemon looks after this node's teams."""

    inbox_interval: float = 300.0
    """Seconds between reads of this node's inbox, where shares of new teams are delivered."""
    unlock_ttl: float = 8 * 3600.0
    """Seconds an unlocked team key is kept (sealed at rest) before this node forgets it."""

    def __post_init__(self) -> None:
        for name in ("inbox_interval", "unlock_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds greater than 0, not {value!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TeamSettings:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown teams setting(s): {', '.join(unknown)}")
        return cls(**values)

"""A node's home: its identity, its config file and its database, in one folder.

Many nodes can run side by side on one machine, each with its own home,
selected with ``--home DIR`` or ``AETHER_HOME``; without either, the home is
the platform's user data directory (``platformdirs``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from aether.crypto.identity import Identity, IdentityError
from aether.node.config import ConfigError, NodeConfig
from aether.storage.store import Store

HOME_ENV = "AETHER_HOME"
DEFAULT_PORT = 7411
CONFIG_NAME = "config.toml"
DB_NAME = "node.db"

CONFIG_TEMPLATE = f"""\
# aether-node configuration. Every setting is optional; the defaults are shown.

[daemon]
# Address and UDP port the node listens on.
listen = "0.0.0.0:{DEFAULT_PORT}"
# Peers to join through, besides the contacts saved at the last run.
bootstrap = []
# Advertise this node on the local network (mDNS) and join the aether nodes found there.
mdns = true

[node]
# ksize = 20                    # replication factor and bucket size
# alpha = 3                     # lookup parallelism
# republish_interval = 86400    # seconds between republishing our own values
# replicate_interval = 3600     # seconds between handing replicas to the closest nodes
# refresh_interval = 3600
# expire_interval = 300
# contacts_save_interval = 60
# max_replica_bytes = 1073741824
# max_entries_per_key = 64      # index entries one shared key holds (newest kept)
# max_pattern_bytes = 1048576   # largest pattern document published (at most 1572864)
"""


class HomeError(Exception):
    """A home that cannot be used: missing identity, unreadable config, and so on."""


@dataclass(frozen=True)
class DaemonSettings:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    node: NodeConfig = field(default_factory=NodeConfig)
    mdns: bool = True


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into a (host, port) pair, with a clear error."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def resolve_home(option: str | os.PathLike | None = None) -> Path:
    if option:
        return Path(option).expanduser()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    return platformdirs.user_data_path("aether-node")


class Home:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def is_initialised(self) -> bool:
        return Identity.exists(self.path)

    def init(self) -> tuple[Identity, bool]:
        """Create identity and config if missing; returns the identity and whether it is new."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise HomeError(f"cannot create home {self.path}: {exc.strerror}") from None
        created = False
        if not self.is_initialised():
            identity = Identity.generate()
            try:
                identity.save(self.path)
            except OSError as exc:
                raise HomeError(f"cannot write keys in {self.path}: {exc.strerror}") from None
            created = True
        if not self.config_path.exists():
            self.config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
        return self.identity(), created

    def identity(self) -> Identity:
        if not self.is_initialised():
            raise HomeError(f"no node identity in {self.path}: run `aether-node --home {self.path} init` first")
        try:
            return Identity.load(self.path)
        except IdentityError as exc:
            raise HomeError(str(exc)) from None

    def settings(self) -> DaemonSettings:
        if not self.config_path.exists():
            return DaemonSettings()
        try:
            data = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise HomeError(f"cannot read {self.config_path}: {exc}") from None
        daemon = data.get("daemon", {})
        try:
            listen = parse_address(daemon.get("listen", f"0.0.0.0:{DEFAULT_PORT}"))
            bootstrap = [parse_address(a) for a in daemon.get("bootstrap", [])]
            node = NodeConfig.from_mapping(data.get("node", {}))
            mdns = daemon.get("mdns", True)
            if not isinstance(mdns, bool):
                raise ValueError(f"mdns must be true or false, not {mdns!r}")
        except (ValueError, TypeError, AttributeError, ConfigError) as exc:
            raise HomeError(f"{self.config_path}: {exc}") from None
        return DaemonSettings(listen, bootstrap, node, mdns)

    def open_store(self) -> Store:
        return Store(self.db_path)

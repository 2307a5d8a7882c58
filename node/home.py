"""A node's home: its identity, its config file and its database, in one folder.

Many nodes can run side by side on one machine, each with its own home,
selected with ``--home DIR`` or ``AETHER_HOME``; without either, the home is
the platform's user data directory (``platformdirs``).
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs
import tomlkit

from aether.crypto.identity import Identity, IdentityError
from aether.node.config import ConfigError, NodeConfig, TeamSettings
from aether.storage.device import StorageSettings
from aether.storage.store import Store

HOME_ENV = "AETHER_HOME"
DEFAULT_PORT = 7411
CONFIG_NAME = "config.toml"
ROLES = ("auto", "full", "light")
DB_NAME = "node.db"

CONFIG_TEMPLATE = f"""\
# aether-node configuration. Every setting is optional; the defaults are shown.

[daemon]
# Address and UDP port the node listens on.
listen = "0.0.0.0:{DEFAULT_PORT}"
# Peers to join through, besides the contacts saved at the last run.
bootstrap = []
# "full" holds replicas for the network; "light" only looks up, fetches and publishes.
# role = "auto"
# Advertise this node on the local network (mDNS) and join the aether nodes found there.
mdns = true

[node]
# ksize = 20                    # replication factor and bucket size
# alpha = 3                     # lookup parallelism
# lookup_paths = 3              # disjoint paths of a value lookup that one path may not be trusted with
# Periodic work, in seconds between runs:
# republish_interval = 86400    # republishing our own and pinned values
# replicate_interval = 3600     # handing replicas to the closest nodes
# refresh_interval = 3600       # a lookup in each bucket that had none for this long
# expire_interval = 300         # dropping expired values
# contacts_save_interval = 60   # saving the routing table, for rejoining after a restart
# max_entries_per_key = 64      # index entries one shared key holds (newest kept)
# max_pattern_bytes = 1048576   # largest pattern document published (at most 1572864)
# Abuse limits, per source address (docs/design.md "Abuse resistance"):
# requests_per_second = 50      # requests one address may make, sustained; past it they are dropped
# requests_burst = 500          # requests one address may make at once
# store_bytes_per_second = 262144     # STORE bytes one address may send, sustained; past it "busy"
# store_burst_bytes = 16777216  # STORE bytes one address may send at once (a hand-off to a new neighbour)
# rate_limited_sources = 4096   # addresses whose rate state is kept (least recently heard forgotten first)
# contacts_per_subnet_bucket = 2      # routing-table contacts from one /24 (IPv6: /48) per bucket
# contacts_per_subnet = 8       # ... and in the whole table
# restrict_loopback = false     # true: limit 127.0.0.0/8 like other addresses (one machine, many nodes: keep false)

[teams]
# inbox_interval = 300          # seconds between reads of this node's inbox (shares of new teams)
# unlock_ttl = 28800            # seconds an unlocked team key is kept before it is forgotten (8 h)

[storage]
# device_class = "auto"         # auto (detected), desktop, laptop, tablet or phone
# quota = "auto"                # bytes, or a size ("5GB", "2GiB"); auto: fitted to the device
"""


class HomeError(Exception):
    """A home that cannot be used: missing identity, unreadable config, and so on."""


@dataclass(frozen=True)
class DaemonSettings:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT)
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    node: NodeConfig = field(default_factory=NodeConfig)
    storage: StorageSettings = field(default_factory=StorageSettings)
    role: str = "auto"
    """full, light, or auto (from the device)."""
    mdns: bool = True
    teams: TeamSettings = field(default_factory=TeamSettings)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into a (host, port) pair, with a clear error."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:{DEFAULT_PORT})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets: what :func:`parse_address` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
            except IdentityError as exc:
                raise HomeError(str(exc)) from None
            except OSError as exc:
                raise HomeError(f"cannot write keys in {self.path}: {exc.strerror}") from None
            created = True
        if not self.config_path.exists():
            try:
                self.config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
            except OSError as exc:
                raise HomeError(f"cannot write {self.config_path}: {exc.strerror}") from None
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
            if "quota_bytes" in data.get("node", {}):
                raise ValueError('the quota is set under [storage] as quota = "5GB" (or `aether-node storage set`)')
            node = NodeConfig.from_mapping(data.get("node", {}))
            storage = StorageSettings.from_mapping(data.get("storage", {}))
            teams = TeamSettings.from_mapping(data.get("teams", {}))
            mdns = daemon.get("mdns", True)
            if not isinstance(mdns, bool):
                raise ValueError(f"mdns must be true or false, not {mdns!r}")
            role = daemon.get("role", "auto")
            if role not in ROLES:
                raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        except (ValueError, TypeError, AttributeError, ConfigError) as exc:
            raise HomeError(f"{self.config_path}: {exc}") from None
        return DaemonSettings(listen, bootstrap, node, storage, role, mdns, teams)

    def update_config(self, section: str, values: dict[str, str | int]) -> None:
        """Set ``values`` in one ``[section]`` of config.toml, keeping the rest of the file as written.

        tomlkit edits the document in place, so the user's comments and layout
        survive; the new file replaces the old one atomically (written beside
        it, then renamed), so a crash never leaves half a config.
        """
        path = self.config_path
        try:
            doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HomeError(f"no {CONFIG_NAME} in {self.path}: run `aether-node --home {self.path} init` first") from None
        except (OSError, UnicodeDecodeError, tomlkit.exceptions.ParseError) as exc:
            raise HomeError(f"cannot read {path}: {exc}") from None
        table = doc.get(section)
        if table is None:
            table = tomlkit.table()
            doc.add(section, table)
        elif not isinstance(table, dict):
            raise HomeError(f"{path}: {section} is not a [{section}] table")
        for name, value in values.items():
            table[name] = value
            table.item(name).trivia.comment = ""
            table.item(name).trivia.comment_ws = ""
        try:
            handle, temp = tempfile.mkstemp(prefix=f".{CONFIG_NAME}.", suffix=".part", dir=self.path)
        except OSError as exc:
            raise HomeError(f"cannot write in {self.path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(tomlkit.dumps(doc))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, path.stat().st_mode & 0o777)
            os.replace(temp, path)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise HomeError(f"cannot write {path}: {exc.strerror or exc}") from None

    def open_store(self) -> Store:
        return Store(self.db_path)

"""The node's persistent store: one SQLite database file per node home.

What lives here: DHT values (content-addressed blocks and signed, sequenced records),
the byte accounting the quota is enforced against, the contacts used to rejoin the
network after a restart, and a few small facts (``meta``).

Durability model. The database runs in WAL mode and every public write method is one
``BEGIN IMMEDIATE ... COMMIT`` transaction that has committed before the method returns.
With ``synchronous=NORMAL`` a committed transaction is in the WAL file (in the OS page
cache), so it survives ``kill -9`` of the process; ``synchronous=FULL`` also fsyncs each
commit, so it survives power loss too, at a cost per write.

Concurrency. A ``Store`` object is meant for one thread (one asyncio loop per node).
Several ``Store`` objects on the same file, in one or several processes, are safe:
writers take the write lock up front (``BEGIN IMMEDIATE``) and wait for each other up to
``busy_timeout``; readers never block in WAL mode.

This module imports nothing from ``aether``: signature and hash checks belong to the
node; the store only keeps what it is given, with the seq / role rules below.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BLOCK",
    "Eviction",
    "KEY_LEN",
    "MIGRATIONS",
    "RECORD",
    "RESERVED_BYTES",
    "ROLES",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "Placement",
    "PutResult",
    "Store",
    "StoreError",
    "StoredEntry",
    "StoredValue",
    "TEAM_POLICIES",
    "TeamRow",
    "Usage",
    "entry_charge",
    "value_charge",
]

#: Value kinds. A block is immutable content addressed by its hash; a record is mutable,
#: signed, and ordered by its ``seq``.
BLOCK = 1
RECORD = 2
KINDS = (BLOCK, RECORD)

#: Why a value is held. Precedence own > replica > cache: a value never loses a stronger
#: role because a weaker copy of it arrives.
ROLES = ("own", "replica", "cache")
_ROLE_RANK = {"cache": 0, "replica": 1, "own": 2}

#: DHT keys are 160-bit Kademlia IDs.
KEY_LEN = 20

#: What a row costs on disk besides its blobs: the fixed columns and the record header.
#: Measured, with the index constants below, so that a row's charge matches the pages
#: SQLite really fills (tests/test_store.py checks the sum against the file).
_VALUE_COLUMNS = 45
_ENTRY_COLUMNS = 50
#: Index cells cost their indexed bytes plus rowid and header, at a b-tree fill below 1.
_INDEX_CELL = 12
_INDEX_FILL = 1.15


def _table_charge(payload: int, page_size: int) -> int:
    """Bytes a table row of ``payload`` bytes takes in a rowid b-tree of ``page_size`` pages.

    SQLite keeps up to ``page_size - 35`` bytes of a row in its leaf cell and the
    rest in whole overflow pages (file format, "Cell Payload Overflow Pages"); a
    leaf page holds as many whole cells as fit, so a 2.1 KiB cell takes a 4 KiB
    leaf page of its own. Rows are appended in rowid order, so leaves are full.
    """
    usable = page_size
    max_local = usable - 35
    min_local = (usable - 12) * 32 // 255 - 23
    if payload <= max_local:
        local, overflow = payload, 0
    else:
        spill = min_local + (payload - min_local) % (usable - 4)
        local = spill if spill <= max_local else min_local
        overflow = -(-(payload - local) // (usable - 4))
    cell = local + 6 + (4 if overflow else 0)
    per_leaf = max(1, (usable - 8) // (cell + 2))
    return -(-usable // per_leaf) + overflow * usable


def _index_charge(*indexed: int) -> int:
    return sum(round((n + _INDEX_CELL) * _INDEX_FILL) for n in indexed)


def value_charge(key_len: int, value_len: int, page_size: int = 4096) -> int:
    """Bytes a block or record of these sizes is charged against the quota: its real disk use.

    The row plus its three index entries (key, expiry, republish time); the expiry
    index entry is charged even for values that never expire, so that pinning does
    not change a charge.
    """
    return _table_charge(key_len + value_len + _VALUE_COLUMNS, page_size) + _index_charge(key_len, 8, 8)


def entry_charge(key_len: int, author_len: int, name_len: int, value_len: int, page_size: int = 4096) -> int:
    """Bytes an entry is charged: the row and its four index entries (as ``value_charge``)."""
    ident = key_len + author_len + name_len
    return _table_charge(ident + value_len + _ENTRY_COLUMNS, page_size) + _index_charge(ident, key_len + 8, 8, 8)


ACCESS_GRANULARITY = 60.0
"""Seconds within which repeated reads of a value update its last access time once."""

#: The schema version this program writes; see MIGRATIONS.
SCHEMA_VERSION = 5

#: Truncate the WAL file back to this size after a checkpoint, so a burst of writes
#: does not leave a large file behind (1,000 nodes share one disk in simulations).
_JOURNAL_SIZE_LIMIT = 1024 * 1024
#: Pages written to the WAL before it is copied back into the database: 1 MiB of 4 KiB
#: pages, so the log stays within the reserve below even on a phone's small quota.
_WAL_PAGES = 256

#: Disk the store takes beyond its rows' charges, reserved out of any quota: the
#: write-ahead log (up to its size limit, and a checkpoint's worth more while it is
#: being copied back) and the fixed pages (schema, meta, saved contacts).
RESERVED_BYTES = 2 * _JOURNAL_SIZE_LIMIT + 256 * 1024

_INCREMENTAL = 2  # PRAGMA auto_vacuum: free pages are returned on request

_USED_PREFIX = "used_bytes."
_RESERVED_META = frozenset({"schema_version", *(_USED_PREFIX + r for r in ROLES)})

#: Version 1 of the schema, exactly as first shipped. A new database is created at
#: version 1 and then migrated, so the migration path is the path every database takes.
#: (Separate statements, not a script: ``executescript`` would commit the open
#: transaction first.)
SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE values_ (
        key            BLOB PRIMARY KEY CHECK (length(key) = 20),
        kind           INTEGER NOT NULL CHECK (kind IN (1, 2)),
        value          BLOB NOT NULL,
        size           INTEGER NOT NULL CHECK (size >= 0),
        seq            INTEGER,
        expires        REAL,
        stored_at      REAL NOT NULL,
        republished_at REAL NOT NULL,
        role           TEXT NOT NULL CHECK (role IN ('own', 'replica', 'cache')),
        pinned         INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1))
    )""",
    # Partial: own values usually never expire and need no index entry. SQLite uses a
    # partial "IS NOT NULL" index for any comparison on the column (expires <= ?).
    "CREATE INDEX values_expires ON values_(expires) WHERE expires IS NOT NULL",
    """CREATE TABLE contacts (
        node_id   BLOB PRIMARY KEY CHECK (length(node_id) = 20),
        host      TEXT NOT NULL,
        port      INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
        last_seen REAL NOT NULL
    )""",
    "INSERT INTO meta(name, value) VALUES ('schema_version', '1')",
)


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """v2: LRU time for eviction, contact failure counts, O(1) byte accounting.

    The running byte totals are kept by triggers, so every statement that changes
    ``values_`` (including a bulk expiry DELETE) keeps them exact in its own
    transaction. They start from the rows a v1 database already holds.
    """
    conn.execute("ALTER TABLE values_ ADD COLUMN last_access REAL")
    conn.execute("UPDATE values_ SET last_access = stored_at")
    conn.execute("ALTER TABLE contacts ADD COLUMN failures INTEGER NOT NULL DEFAULT 0")
    conn.execute("CREATE INDEX values_republished ON values_(republished_at)")
    for role in ROLES:
        conn.execute(
            "INSERT OR REPLACE INTO meta(name, value) VALUES "
            "(?, (SELECT CAST(COALESCE(SUM(size), 0) AS TEXT) FROM values_ WHERE role = ?))",
            (_USED_PREFIX + role, role),
        )
    add = "UPDATE meta SET value = CAST(value AS INTEGER) + NEW.size WHERE name = 'used_bytes.' || NEW.role;"
    sub = "UPDATE meta SET value = CAST(value AS INTEGER) - OLD.size WHERE name = 'used_bytes.' || OLD.role;"
    conn.execute(f"CREATE TRIGGER values_acct_insert AFTER INSERT ON values_ BEGIN {add} END")
    conn.execute(f"CREATE TRIGGER values_acct_delete AFTER DELETE ON values_ BEGIN {sub} END")
    conn.execute(
        "CREATE TRIGGER values_acct_update AFTER UPDATE OF size, role ON values_ "
        "WHEN OLD.size IS NOT NEW.size OR OLD.role IS NOT NEW.role "
        f"BEGIN {sub} {add} END"
    )


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """v3: entries (many authors' records under one shared key) and block links.

    An entry is identified by (key, author, name); the same key holds entries of
    many authors, each with its own sequence number. ``links`` ties a block to the
    pattern key whose manifest lists it, so a block is kept and re-replicated
    near its pattern rather than near its own hash.
    """
    conn.execute(
        """CREATE TABLE entries (
            key            BLOB NOT NULL CHECK (length(key) = 20),
            author         BLOB NOT NULL,
            name           BLOB NOT NULL,
            value          BLOB NOT NULL,
            size           INTEGER NOT NULL CHECK (size >= 0),
            seq            INTEGER NOT NULL,
            expires        REAL NOT NULL,
            stored_at      REAL NOT NULL,
            republished_at REAL NOT NULL,
            role           TEXT NOT NULL CHECK (role IN ('own', 'replica', 'cache')),
            pinned         INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
            last_access    REAL,
            PRIMARY KEY (key, author, name)
        )"""
    )
    conn.execute("CREATE INDEX entries_newest ON entries(key, expires)")
    conn.execute("CREATE INDEX entries_expires ON entries(expires)")
    conn.execute("CREATE INDEX entries_republished ON entries(republished_at)")
    add = "UPDATE meta SET value = CAST(value AS INTEGER) + NEW.size WHERE name = 'used_bytes.' || NEW.role;"
    sub = "UPDATE meta SET value = CAST(value AS INTEGER) - OLD.size WHERE name = 'used_bytes.' || OLD.role;"
    conn.execute(f"CREATE TRIGGER entries_acct_insert AFTER INSERT ON entries BEGIN {add} END")
    conn.execute(f"CREATE TRIGGER entries_acct_delete AFTER DELETE ON entries BEGIN {sub} END")
    conn.execute(
        "CREATE TRIGGER entries_acct_update AFTER UPDATE OF size, role ON entries "
        "WHEN OLD.size IS NOT NEW.size OR OLD.role IS NOT NEW.role "
        f"BEGIN {sub} {add} END"
    )
    conn.execute(
        """CREATE TABLE links (
            block BLOB NOT NULL CHECK (length(block) = 20),
            grp   BLOB NOT NULL CHECK (length(grp) = 20),
            PRIMARY KEY (block, grp)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX links_grp ON links(grp)")


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    """v4: each row is charged what it really takes on disk (``value_charge``, ``entry_charge``).

    The accounting triggers move the per-role totals along with each new size.
    """
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    rows = conn.execute("SELECT rowid, length(key), length(value) FROM values_").fetchall()
    conn.executemany(
        "UPDATE values_ SET size = ? WHERE rowid = ?",
        [(value_charge(k, v, page), rowid) for rowid, k, v in rows],
    )
    rows = conn.execute(
        "SELECT rowid, length(key), length(author), length(name), length(value) FROM entries"
    ).fetchall()
    conn.executemany(
        "UPDATE entries SET size = ? WHERE rowid = ?",
        [(entry_charge(k, a, n, v, page), rowid) for rowid, k, a, n, v in rows],
    )


def _migrate_4_to_5(conn: sqlite3.Connection) -> None:
    """v5: teams this node belongs to, its sealed shares, and unlocked keys (sealed at rest).

    Small and few, these rows fall in the store's reserve, not under the quota.
    """
    conn.execute(
        """CREATE TABLE teams (
            team_id    BLOB PRIMARY KEY CHECK (length(team_id) = 20),
            name       TEXT NOT NULL,
            epoch      INTEGER NOT NULL CHECK (epoch >= 0),
            descriptor BLOB NOT NULL,
            policy     TEXT NOT NULL DEFAULT 'auto' CHECK (policy IN ('auto', 'approve')),
            updated_at REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX teams_name ON teams(name)")
    conn.execute(
        """CREATE TABLE team_shares (
            team_id BLOB NOT NULL CHECK (length(team_id) = 20),
            epoch   INTEGER NOT NULL CHECK (epoch >= 0),
            sealed  BLOB NOT NULL,
            PRIMARY KEY (team_id, epoch)
        ) WITHOUT ROWID"""
    )
    conn.execute(
        """CREATE TABLE team_keys (
            team_id BLOB NOT NULL CHECK (length(team_id) = 20),
            epoch   INTEGER NOT NULL CHECK (epoch >= 0),
            sealed  BLOB NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (team_id, epoch)
        ) WITHOUT ROWID"""
    )


#: MIGRATIONS[i] takes a database from version i + 1 to version i + 2. All pending
#: migrations run in one transaction at open: a crash leaves the old version intact.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4, _migrate_4_to_5,
)
assert len(MIGRATIONS) == SCHEMA_VERSION - 1


class StoreError(Exception):
    """The database cannot be used: cannot open, corrupt, not ours, too new, or failing."""


class PutResult(enum.Enum):
    """What ``Store.put`` did, so the node can answer a STORE request truthfully."""

    STORED = "stored"  # new key, or a newer record replaced the held one
    UNCHANGED = "unchanged"  # the same bytes were already held (role/pin/expiry may merge)
    REFUSED_OLDER = "refused_older"  # a record with a lower seq than the held one
    REFUSED_CONFLICT = "refused_conflict"  # same seq (or a block) with different bytes
    REFUSED_FULL = "refused_full"  # a shared key holds its limit of newer entries


@dataclass(frozen=True)
class StoredValue:
    """One held value with its bookkeeping; times are wall-clock ``time.time()``."""

    key: bytes
    kind: int
    value: bytes
    seq: int | None
    expires: float | None
    stored_at: float
    republished_at: float
    role: str
    pinned: bool
    last_access: float | None
    size: int = 0
    """Bytes this row is charged against the quota (``value_charge``)."""


@dataclass(frozen=True)
class Placement:
    """Where one held value or entry lives: ``place`` is the key whose k closest nodes should hold it."""

    place: bytes
    key: bytes
    author: bytes | None = None
    """With ``name``: the entry of this author under ``key``; both None for a value."""
    name: bytes | None = None


@dataclass(frozen=True)
class StoredEntry:
    """One author's record held under a shared key, with its bookkeeping."""

    key: bytes
    author: bytes
    name: bytes
    value: bytes
    seq: int
    expires: float
    stored_at: float
    republished_at: float
    role: str
    pinned: bool
    last_access: float | None
    size: int = 0
    """Bytes this row is charged against the quota (``entry_charge``)."""

    @property
    def ident(self) -> tuple[bytes, bytes, bytes]:
        """What names the entry: the shared key, the author and the record name."""
        return (self.key, self.author, self.name)


#: How a member's daemon answers share requests: at once, or after ``team approve``.
TEAM_POLICIES = ("auto", "approve")


@dataclass(frozen=True)
class TeamRow:
    """A team this node is in, as the store keeps it."""

    team_id: bytes
    name: str
    epoch: int
    descriptor: bytes
    policy: str


@dataclass(frozen=True)
class Usage:
    """Where the store's charged bytes go."""

    by_role: dict[str, int]
    pinned: int
    """Own and pinned data: never evicted."""
    evictable: int
    """Unpinned replicas and cached copies."""
    file_bytes: int
    """The database files on disk, write-ahead log included."""

    @property
    def used(self) -> int:
        return sum(self.by_role.values())


@dataclass(frozen=True)
class Eviction:
    """What ``Store.make_room`` did."""

    freed: int
    expired: int
    cached: int
    replicas: int
    fits: bool


_COLS = "key, kind, value, seq, expires, stored_at, republished_at, role, pinned, last_access"
_ENTRY_COLS = "key, author, name, value, seq, expires, stored_at, republished_at, role, pinned, last_access"
#: What reads select: the written columns and the charge.
_READ_COLS = _COLS + ", size"
_READ_ENTRY_COLS = _ENTRY_COLS + ", size"


def _row_to_entry(row: tuple) -> StoredEntry:
    key, author, name, value, seq, expires, stored_at, republished_at, role, pinned, last_access, size = row
    return StoredEntry(
        bytes(key), bytes(author), bytes(name), bytes(value), seq, expires, stored_at,
        republished_at, role, bool(pinned), last_access, size,
    )


def _row_to_value(row: tuple) -> StoredValue:
    key, kind, value, seq, expires, stored_at, republished_at, role, pinned, last_access, size = row
    return StoredValue(
        key=bytes(key),
        kind=kind,
        value=bytes(value),
        seq=seq,
        expires=expires,
        stored_at=stored_at,
        republished_at=republished_at,
        role=role,
        pinned=bool(pinned),
        last_access=last_access,
        size=size,
    )


def _check_key(key: object, what: str = "key") -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ValueError(f"{what} must be {KEY_LEN} bytes, got {key!r:.60}")
    return key


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    return epoch


def _check_role(role: object) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role  # type: ignore[return-value]


def _check_time(t: object, what: str) -> float | None:
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"{what} must be a finite number or None, got {t!r}")
    return float(t)


def _insert_links(c: sqlite3.Connection, group: bytes, blocks: Sequence[bytes]) -> None:
    c.executemany("INSERT OR IGNORE INTO links (block, grp) VALUES (?, ?)", [(b, group) for b in blocks])


def _later_expiry(a: float | None, b: float | None) -> float | None:
    """A re-store never shortens a value's life: None (never expires) beats any time."""
    if a is None or b is None:
        return None
    return max(a, b)


class Store:
    """A node's SQLite store. Open one per node home; use as a context manager."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "NORMAL",
        cache_kib: int = 512,
        busy_timeout: float = 5.0,
    ) -> None:
        """Open (creating or migrating as needed) the database at ``path``.

        ``synchronous``: NORMAL survives kill -9, FULL also survives power loss.
        ``cache_kib``: page cache per connection; kept small since a simulation runs
        a thousand nodes in one process. ``busy_timeout``: seconds a writer waits for
        another connection's write transaction before failing with StoreError.
        """
        sync = str(synchronous).upper()
        if sync not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        if isinstance(cache_kib, bool) or not isinstance(cache_kib, int) or cache_kib <= 0:
            raise ValueError(f"cache_kib must be a positive int, got {cache_kib!r}")
        if not busy_timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(os.fspath(self.path), isolation_level=None, timeout=busy_timeout)
        except sqlite3.Error as e:
            raise self._error(e) from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            # Takes effect only on a database with no table yet (a new one); must come first.
            conn.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {sync}")
            conn.execute(f"PRAGMA cache_size = {-cache_kib}")
            conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._conn = conn
            self._open_schema()
            self.page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
                # Databases made before v4: free pages can only go back to the
                # file system once incremental vacuum is on, which takes a VACUUM.
                conn.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")
                conn.execute("VACUUM")
        except BaseException as e:
            self._conn = None
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise self._error(e) from e
            raise

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent). The last closer checkpoints the WAL."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<Store {str(self.path)!r} {state}>"

    # -- internals -----------------------------------------------------------------------

    def _error(self, e: sqlite3.Error) -> StoreError:
        """Turn an sqlite3 error into a StoreError that names the file and the cause."""
        name = getattr(e, "sqlite_errorname", "")
        text = str(e)
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or (
            "not a database" in text or "malformed" in text
        ):
            return StoreError(f"{self.path}: not an aether database or corrupt ({e})")
        if name == "SQLITE_CANTOPEN" or "unable to open" in text:
            return StoreError(f"{self.path}: cannot open database ({e})")
        # A full disk is SQLITE_FULL; a file-size limit (EFBIG) or a failing disk is
        # an I/O error. Either way the transaction was rolled back: nothing held is lost.
        if name == "SQLITE_FULL" or "disk is full" in text:
            return StoreError(f"{self.path}: the disk is full; nothing was written ({e})")
        if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
            return StoreError(f"{self.path}: cannot write the database: is the disk full or failing? "
                              f"Nothing was written ({e})")
        return StoreError(f"{self.path}: database error ({e})")

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: takes the write lock first, commits before returning."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._error(e) from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.Error):
                raise self._error(e) from e
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Autocommit reads, with sqlite3 errors turned into StoreError."""
        conn = self._db()
        try:
            yield conn
        except sqlite3.Error as e:
            raise self._error(e) from e

    def _open_schema(self) -> None:
        """Create or migrate under the write lock, so concurrent openers agree."""
        with self._tx() as c:
            has_meta = c.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            if has_meta is None:
                others = c.execute(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 3"
                ).fetchall()
                if others:
                    names = ", ".join(r[0] for r in others)
                    raise StoreError(
                        f"{self.path}: not an aether database or corrupt (unknown tables: {names})"
                    )
                for stmt in SCHEMA_V1:
                    c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            try:
                version = int(row[0]) if row is not None else None
            except (TypeError, ValueError):
                version = None
            if version is None or version < 1:
                raise StoreError(
                    f"{self.path}: not an aether database or corrupt (schema_version {row!r})"
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this program's "
                    f"version {SCHEMA_VERSION}; upgrade aether-node to open it"
                )
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v - 1](c)
                c.execute(
                    "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(v + 1),)
                )

    # -- values --------------------------------------------------------------------------

    def put(
        self,
        key: bytes,
        value: bytes,
        *,
        kind: int,
        role: str,
        seq: int | None = None,
        expires: float | None = None,
        pinned: bool = False,
        now: float | None = None,
    ) -> PutResult:
        """Store a value, atomically checked against what is held under ``key``.

        Records: a lower seq is refused, the same seq with other bytes is refused (the
        held one is kept, first-come), a higher seq replaces bytes, seq and expiry.
        Blocks: other bytes under a held key are refused. A key held with the other
        kind is a conflict. Whatever is stored or unchanged keeps the stronger role
        (own > replica > cache) and the pin; when the bytes are unchanged, the expiry
        becomes the later of the two (None = never). Refusals change nothing.
        """
        _check_key(key)
        if kind not in KINDS:
            raise ValueError(f"kind must be BLOCK (1) or RECORD (2), got {kind!r}")
        _check_role(role)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"value must be bytes, got {type(value).__name__}")
        value = bytes(value)
        if kind == RECORD:
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
                raise ValueError(f"a record needs a seq (int >= 0), got {seq!r}")
        elif seq is not None:
            raise ValueError("a block has no seq")
        expires = _check_time(expires, "expires")
        now = time.time() if now is None else _check_time(now, "now")
        size = value_charge(len(key), len(value), self.page_size)
        pin = 1 if pinned else 0

        with self._tx() as c:
            held = c.execute(
                "SELECT kind, value, seq, expires, role, pinned FROM values_ WHERE key = ?",
                (key,),
            ).fetchone()
            if held is None:
                c.execute(
                    f"INSERT INTO values_ ({_COLS}, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, kind, value, seq, expires, now, now, role, pin, now, size),
                )
                return PutResult.STORED
            h_kind, h_value, h_seq, h_expires, h_role, h_pinned = held
            if h_kind != kind:
                return PutResult.REFUSED_CONFLICT
            new_role = role if _ROLE_RANK[role] > _ROLE_RANK[h_role] else h_role
            new_pin = 1 if (h_pinned or pinned) else 0
            if kind == RECORD and seq < h_seq:
                return PutResult.REFUSED_OLDER
            if kind == RECORD and seq > h_seq:
                # The expiry is part of the new record; the role and pin are the holder's.
                c.execute(
                    "UPDATE values_ SET value = ?, seq = ?, size = ?, expires = ?, "
                    "stored_at = ?, role = ?, pinned = ? WHERE key = ?",
                    (value, seq, size, expires, now, new_role, new_pin, key),
                )
                return PutResult.STORED
            if bytes(h_value) != value:
                return PutResult.REFUSED_CONFLICT
            new_expires = _later_expiry(h_expires, expires)
            if (new_role, new_pin, new_expires) != (h_role, h_pinned, h_expires):
                c.execute(
                    "UPDATE values_ SET role = ?, pinned = ?, expires = ? WHERE key = ?",
                    (new_role, new_pin, new_expires, key),
                )
            return PutResult.UNCHANGED

    def get(self, key: bytes, *, touch: bool = True, now: float | None = None) -> StoredValue | None:
        """The value held under ``key``, or None.

        ``touch`` records the read in ``last_access`` (the LRU order eviction uses);
        pass False for the node's own bookkeeping reads, so they do not count as use.
        """
        _check_key(key)
        with self._read() as c:
            row = c.execute(f"SELECT {_READ_COLS} FROM values_ WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            sv = _row_to_value(row)
            if touch:
                t = time.time() if now is None else _check_time(now, "now")
                # LRU order needs minutes, not microseconds: a hot value served many
                # times a second is written once per ACCESS_GRANULARITY, not per read.
                if sv.last_access is None or abs(t - sv.last_access) >= ACCESS_GRANULARITY:
                    # One autocommit statement: atomic on its own, no lock taken on a miss.
                    c.execute("UPDATE values_ SET last_access = ? WHERE key = ?", (t, key))
                    sv = dataclasses.replace(sv, last_access=t)
        return sv

    def read(self, key: bytes, now: float | None = None) -> bytes | None:
        """The bytes held under ``key`` if they have not expired, else None.

        The lean path for serving peers, which a node takes for every FIND_VALUE
        it answers: one indexed SELECT, and the access time written at most once
        per ACCESS_GRANULARITY, as ``get`` does.
        """
        if type(key) is not bytes or len(key) != KEY_LEN:
            _check_key(key)
        t = time.time() if now is None else now
        with self._read() as c:
            row = c.execute("SELECT value, expires, last_access FROM values_ WHERE key = ?", (key,)).fetchone()
            if row is None or (row[1] is not None and row[1] <= t):
                return None
            if row[2] is None or abs(t - row[2]) >= ACCESS_GRANULARITY:
                c.execute("UPDATE values_ SET last_access = ? WHERE key = ?", (t, key))
        return bytes(row[0])

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` is held (no touch)."""
        _check_key(key)
        with self._read() as c:
            return c.execute("SELECT 1 FROM values_ WHERE key = ?", (key,)).fetchone() is not None

    def held_size(self, key: bytes, author: bytes | None = None, name: bytes | None = None) -> int:
        """What the value under ``key`` (or the entry of ``author`` and ``name``) is charged; 0 if not held.

        Reads the charge alone, not the bytes: every STORE a node serves asks it.
        """
        _check_key(key)
        with self._read() as c:
            if author is None:
                row = c.execute("SELECT size FROM values_ WHERE key = ?", (key,)).fetchone()
            else:
                row = c.execute(
                    "SELECT size FROM entries WHERE key = ? AND author = ? AND name = ?", (key, author, name)
                ).fetchone()
        return 0 if row is None else row[0]

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; True if it was held."""
        _check_key(key)
        with self._tx() as c:
            return c.execute("DELETE FROM values_ WHERE key = ?", (key,)).rowcount > 0

    def drop_expired(self, now: float | None = None) -> int:
        """Delete every value and entry whose expiry is at or before ``now``, except own ones; return how many.

        Pins do not protect others' records against expiry: an expired record is
        invalid anyway, and pinned data that should last forever is stored with
        ``expires=None``. Own records and entries are never dropped: their expiry
        is only their signature's lifetime, and they are the one copy of what this
        node published. After a week off or a wall clock set forward they are
        past it, and the node re-signs them (``AetherNode.drop_expired``);
        dropping them would lose the node's own patterns for good. Links of
        blocks to a pattern key that holds no entry any more go too.
        """
        now = time.time() if now is None else _check_time(now, "now")
        with self._tx() as c:
            dropped = self._drop_expired(c, now)
        if dropped:
            self._release_free_pages()
        return dropped

    def earliest_own_expiry(self) -> float | None:
        """The soonest expiry of an own record or entry (None: none expires), so the node renews them in time."""
        with self._read() as c:
            row = c.execute(
                "SELECT MIN(e) FROM (SELECT MIN(expires) AS e FROM values_ WHERE role = 'own' AND expires IS NOT NULL "
                "UNION ALL SELECT MIN(expires) FROM entries WHERE role = 'own')"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def _release_free_pages(self) -> None:
        """Give the pages that deletes freed back to the file system (at the next checkpoint).

        Run outside a transaction, as a script: through ``execute`` the pragma
        frees one page per call.
        """
        try:
            self._db().executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as e:
            raise self._error(e) from e

    @staticmethod
    def _drop_expired(c: sqlite3.Connection, now: float) -> int:
        dropped = c.execute("DELETE FROM values_ WHERE expires <= ? AND role != 'own'", (now,)).rowcount
        dropped += c.execute("DELETE FROM entries WHERE expires <= ? AND role != 'own'", (now,)).rowcount
        if dropped:
            c.execute("DELETE FROM links WHERE grp NOT IN (SELECT key FROM entries)")
        c.execute("DELETE FROM team_keys WHERE expires <= ?", (now,))  # unlocked keys are forgotten on time
        return dropped

    def set_pinned(self, key: bytes, pinned: bool, *, expires: float | None = None, role: str | None = None) -> bool:
        """Pin or unpin a held value, setting its expiry (None: never) and, if given, its role.

        Unlike ``put``, this may weaken a role: unpinning what we published makes it
        an ordinary copy that expires. True if the key is held.
        """
        _check_key(key)
        expires = _check_time(expires, "expires")
        with self._tx() as c:
            row = c.execute("SELECT role FROM values_ WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            c.execute(
                "UPDATE values_ SET pinned = ?, expires = ?, role = ? WHERE key = ?",
                (1 if pinned else 0, expires, row[0] if role is None else _check_role(role), key),
            )
            return True

    def iter_values(self, *, role: str | None = None, batch: int = 256) -> Iterator[StoredValue]:
        """Stream values in key order, ``batch`` rows per query.

        No cursor or read snapshot is held between batches, so writes may happen while
        iterating (and the WAL can checkpoint); they show from the next batch on. Keys
        come in strictly increasing order, so each is yielded at most once, and a key
        held throughout the iteration is yielded exactly once.
        """
        if role is not None:
            _check_role(role)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        return self._iter_values(role, batch)

    def _iter_values(self, role: str | None, batch: int) -> Iterator[StoredValue]:
        where = "key > ?" + (" AND role = ?" if role is not None else "")
        sql = f"SELECT {_READ_COLS} FROM values_ WHERE {where} ORDER BY key LIMIT ?"
        last = b""
        while True:
            params: tuple = (last, role, batch) if role is not None else (last, batch)
            with self._read() as c:
                rows = c.execute(sql, params).fetchall()
            for row in rows:
                yield _row_to_value(row)
            if len(rows) < batch:
                return
            last = bytes(rows[-1][0])

    def placements(
        self, within: Sequence[tuple[bytes, bytes]] | None = None, *, batch: int = 1024
    ) -> Iterator[Placement]:
        """Held values and entries with the key each lives near (its place), without their bytes.

        A hand-off pass runs each time new contacts turn up; reading the bytes,
        or everything held, each time would read the whole store each time.
        ``within``: inclusive ``(low, high)`` ranges of places (20-byte keys); only
        items living near a place in one of them are reported (default: all).
        A block that held manifests list lives near each of their patterns' keys
        (once per pattern), anything else near its own key. Streamed
        ``batch`` rows per query with no snapshot held between queries: rows
        written meanwhile may or may not be seen.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        ranges = [(bytes(KEY_LEN), b"\xff" * KEY_LEN)] if within is None else list(within)
        for low, high in ranges:
            _check_key(low, "low")
            _check_key(high, "high")
            own_place = self._paged(
                "SELECT key FROM values_ WHERE key > ? AND key BETWEEN ? AND ? "
                "AND NOT (kind = ? AND EXISTS (SELECT 1 FROM links WHERE block = key)) ORDER BY key LIMIT ?",
                1, (low, high, BLOCK), batch,
            )
            for (key,) in own_place:
                yield Placement(key, key)
            listed = self._paged(
                "SELECT l.grp, l.block FROM links l JOIN values_ v ON v.key = l.block "
                "WHERE (l.grp, l.block) > (?, ?) AND l.grp BETWEEN ? AND ? AND v.kind = ? "
                "ORDER BY l.grp, l.block LIMIT ?",
                2, (low, high, BLOCK), batch,
            )
            for group, block in listed:
                yield Placement(group, block)
            entries = self._paged(
                "SELECT key, author, name FROM entries WHERE (key, author, name) > (?, ?, ?) AND key BETWEEN ? AND ? "
                "ORDER BY key, author, name LIMIT ?",
                3, (low, high), batch,
            )
            for key, author, name in entries:
                yield Placement(key, key, author, name)

    def _paged(self, sql: str, width: int, fixed: tuple, batch: int) -> Iterator[tuple[bytes, ...]]:
        """Rows of ``sql`` in its order, ``batch`` per query, each query starting after the last row seen.

        ``sql`` takes the last row's ``width`` ordering columns first (empty
        blobs, which sort before any key, for the first query), then ``fixed``,
        then the batch size.
        """
        after: tuple[bytes, ...] = (b"",) * width
        while True:
            with self._read() as c:
                rows = c.execute(sql, (*after, *fixed, batch)).fetchall()
            for row in rows:
                yield tuple(bytes(v) for v in row)
            if len(rows) < batch:
                return
            after = tuple(bytes(v) for v in rows[-1])

    def keys(self) -> list[bytes]:
        """All held keys, in key order."""
        with self._read() as c:
            return [bytes(r[0]) for r in c.execute("SELECT key FROM values_ ORDER BY key")]

    def has_values(self) -> bool:
        """Whether anything (value or entry) is held: two index probes, for checks made on every new contact."""
        with self._read() as c:
            return (
                c.execute("SELECT 1 FROM values_ LIMIT 1").fetchone() is not None
                or c.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None
            )

    def count(self, role: str | None = None) -> int:
        """Number of held values (of one role, if given)."""
        with self._read() as c:
            if role is None:
                return c.execute("SELECT COUNT(*) FROM values_").fetchone()[0]
            return c.execute(
                "SELECT COUNT(*) FROM values_ WHERE role = ?", (_check_role(role),)
            ).fetchone()[0]

    def due_for_republish(
        self,
        older_than: float,
        now: float | None = None,
        role: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[StoredValue]:
        """Unexpired values last republished at least ``older_than`` seconds before ``now``.

        Most overdue first; ``role`` narrows to own or replica values, ``limit`` bounds
        one round of republishing.
        """
        older_than = _check_time(older_than, "older_than")
        now = time.time() if now is None else _check_time(now, "now")
        sql = (
            f"SELECT {_READ_COLS} FROM values_ WHERE republished_at <= ? "
            "AND (expires IS NULL OR expires > ?)"
        )
        params: list = [now - older_than, now]
        if role is not None:
            sql += " AND role = ?"
            params.append(_check_role(role))
        sql += " ORDER BY republished_at, key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as c:
            return [_row_to_value(r) for r in c.execute(sql, params)]

    def mark_republished(self, keys: Sequence[bytes], now: float | None = None) -> int:
        """Record that ``keys`` were republished at ``now``; returns rows updated."""
        keys = [_check_key(k) for k in keys]
        now = time.time() if now is None else _check_time(now, "now")
        with self._tx() as c:
            cur = c.executemany(
                "UPDATE values_ SET republished_at = ? WHERE key = ?", [(now, k) for k in keys]
            )
            return max(cur.rowcount, 0)

    # -- entries: many authors under one shared key ------------------------------------------

    def put_entry(
        self,
        key: bytes,
        author: bytes,
        name: bytes,
        value: bytes,
        *,
        seq: int,
        expires: float,
        role: str,
        pinned: bool = False,
        limit: int = 64,
        links: Sequence[bytes] = (),
        now: float | None = None,
    ) -> PutResult:
        """Store one author's record under a shared key, with the seq rules of ``put``.

        ``links``: blocks that belong to the pattern stored under ``key`` (a
        manifest's), recorded in the same transaction when the entry is kept.

        Each (author, name) is ordered by its own seq. A key holds at most ``limit``
        entries: when it is full, the unpinned entry that expires first makes room
        for a later-expiring one, and only when every entry is pinned does the
        earliest-expiring pinned one make room, for a pinned newcomer. Anything
        else is REFUSED_FULL. Newest means latest expiry, since authors re-sign
        their entries as they republish them.
        """
        _check_key(key)
        _check_role(role)
        for label, field_ in (("author", author), ("name", name), ("value", value)):
            if not isinstance(field_, bytes):
                raise ValueError(f"{label} must be bytes, got {type(field_).__name__}")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"an entry needs a seq (int >= 0), got {seq!r}")
        expires = _check_time(expires, "expires")
        if expires is None:
            raise ValueError("an entry needs an expiry")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        now = time.time() if now is None else _check_time(now, "now")
        size = entry_charge(len(key), len(author), len(name), len(value), self.page_size)
        pin = 1 if pinned else 0
        ident = (key, author, name)
        links = [_check_key(b, "block") for b in links]
        with self._tx() as c:
            outcome = self._put_entry(c, ident, value, seq, expires, role, pin, limit, size, now)
            if outcome in (PutResult.STORED, PutResult.UNCHANGED):
                _insert_links(c, key, links)
            return outcome

    @staticmethod
    def _put_entry(
        c: sqlite3.Connection, ident: tuple[bytes, bytes, bytes], value: bytes, seq: int, expires: float,
        role: str, pin: int, limit: int, size: int, now: float,
    ) -> PutResult:
        key = ident[0]
        pinned = bool(pin)
        # Expired entries under this key go first, so they neither take a slot
        # nor come back to life past the limit when their author renews them.
        # Own ones stay, to be re-signed (``drop_expired``).
        c.execute("DELETE FROM entries WHERE key = ? AND expires <= ? AND role != 'own'", (key, now))
        held = c.execute(
            "SELECT value, seq, expires, role, pinned FROM entries WHERE key = ? AND author = ? AND name = ?",
            ident,
        ).fetchone()
        if held is not None:
            h_value, h_seq, h_expires, h_role, h_pinned = held
            new_role = role if _ROLE_RANK[role] > _ROLE_RANK[h_role] else h_role
            new_pin = 1 if (h_pinned or pinned) else 0
            if seq < h_seq:
                return PutResult.REFUSED_OLDER
            if seq > h_seq:
                c.execute(
                    "UPDATE entries SET value = ?, seq = ?, size = ?, expires = ?, stored_at = ?, "
                    "role = ?, pinned = ? WHERE key = ? AND author = ? AND name = ?",
                    (value, seq, size, expires, now, new_role, new_pin, *ident),
                )
                return PutResult.STORED
            if bytes(h_value) != value:
                return PutResult.REFUSED_CONFLICT
            if (new_role, new_pin) != (h_role, h_pinned):
                c.execute(
                    "UPDATE entries SET role = ?, pinned = ? WHERE key = ? AND author = ? AND name = ?",
                    (new_role, new_pin, *ident),
                )
            return PutResult.UNCHANGED
        count = c.execute("SELECT COUNT(*) FROM entries WHERE key = ?", (key,)).fetchone()[0]
        if count >= limit:
            # Unpinned entries make room first; a pinned one only for a pinned
            # newcomer (an author's newer entry replaces its own older one).
            oldest = c.execute(
                "SELECT author, name, expires, pinned FROM entries WHERE key = ? "
                "ORDER BY pinned, expires, seq, author, name LIMIT 1",
                (key,),
            ).fetchone()
            if oldest is None or oldest[2] >= expires or (oldest[3] and not pinned):
                return PutResult.REFUSED_FULL
            c.execute("DELETE FROM entries WHERE key = ? AND author = ? AND name = ?", (key, oldest[0], oldest[1]))
        c.execute(
            f"INSERT INTO entries ({_ENTRY_COLS}, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*ident, value, seq, expires, now, now, role, pin, now, size),
        )
        return PutResult.STORED

    def entries(
        self, key: bytes, *, offset: int = 0, limit: int | None = None, now: float | None = None
    ) -> list[StoredEntry]:
        """Unexpired entries under ``key``, newest first (latest expiry, then author and name)."""
        _check_key(key)
        t = time.time() if now is None else _check_time(now, "now")
        with self._read() as c:
            rows = c.execute(
                f"SELECT {_READ_ENTRY_COLS} FROM entries WHERE key = ? AND expires > ? "
                "ORDER BY expires DESC, author, name LIMIT ? OFFSET ?",
                (key, t, -1 if limit is None else int(limit), int(offset)),
            ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def entry(self, key: bytes, author: bytes, name: bytes) -> StoredEntry | None:
        """One author's entry under ``key`` (expired or not), or None."""
        _check_key(key)
        with self._read() as c:
            row = c.execute(
                f"SELECT {_READ_ENTRY_COLS} FROM entries WHERE key = ? AND author = ? AND name = ?", (key, author, name)
            ).fetchone()
        return None if row is None else _row_to_entry(row)

    def has_entries(self, key: bytes) -> bool:
        _check_key(key)
        with self._read() as c:
            return c.execute("SELECT 1 FROM entries WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def delete_entry(self, key: bytes, author: bytes, name: bytes) -> bool:
        _check_key(key)
        with self._tx() as c:
            return c.execute(
                "DELETE FROM entries WHERE key = ? AND author = ? AND name = ?", (key, author, name)
            ).rowcount > 0

    def set_entry_pinned(self, key: bytes, author: bytes, name: bytes, pinned: bool) -> bool:
        _check_key(key)
        with self._tx() as c:
            return c.execute(
                "UPDATE entries SET pinned = ? WHERE key = ? AND author = ? AND name = ?",
                (1 if pinned else 0, key, author, name),
            ).rowcount > 0

    def iter_entries(self, *, role: str | None = None, kind_prefix: bytes | None = None) -> list[StoredEntry]:
        """Every held entry (of one role), in key order; ``kind_prefix`` narrows to names starting with it."""
        sql = f"SELECT {_READ_ENTRY_COLS} FROM entries WHERE 1"
        params: list = []
        if role is not None:
            sql += " AND role = ?"
            params.append(_check_role(role))
        if kind_prefix is not None:
            sql += " AND substr(name, 1, ?) = ?"
            params += [len(kind_prefix), kind_prefix]
        with self._read() as c:
            return [_row_to_entry(r) for r in c.execute(sql + " ORDER BY key, author, name", params)]

    def entries_due(
        self, older_than: float, now: float | None = None, role: str | None = None, *, limit: int | None = None
    ) -> list[StoredEntry]:
        """Unexpired entries last republished at least ``older_than`` seconds ago, most overdue first."""
        older_than = _check_time(older_than, "older_than")
        now = time.time() if now is None else _check_time(now, "now")
        sql = f"SELECT {_READ_ENTRY_COLS} FROM entries WHERE republished_at <= ? AND expires > ?"
        params: list = [now - older_than, now]
        if role is not None:
            sql += " AND role = ?"
            params.append(_check_role(role))
        sql += " ORDER BY republished_at, key LIMIT ?"
        params.append(-1 if limit is None else int(limit))
        with self._read() as c:
            return [_row_to_entry(r) for r in c.execute(sql, params)]

    def mark_entries_republished(self, idents: Sequence[tuple[bytes, bytes, bytes]], now: float | None = None) -> None:
        now = time.time() if now is None else _check_time(now, "now")
        with self._tx() as c:
            c.executemany(
                "UPDATE entries SET republished_at = ? WHERE key = ? AND author = ? AND name = ?",
                [(now, *ident) for ident in idents],
            )

    # -- links: which pattern key a block belongs to ------------------------------------------

    def link(self, group: bytes, blocks: Sequence[bytes]) -> None:
        """Record that ``blocks`` belong to the pattern stored under ``group``."""
        _check_key(group, "group")
        blocks = [_check_key(b, "block") for b in blocks]
        with self._tx() as c:
            _insert_links(c, group, blocks)

    def group_of(self, block: bytes) -> bytes | None:
        """The pattern key a block is kept near, or None for a block no held manifest lists."""
        _check_key(block, "block")
        with self._read() as c:
            row = c.execute("SELECT grp FROM links WHERE block = ? LIMIT 1", (block,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- accounting ----------------------------------------------------------------------

    def usage(self) -> Usage:
        """What the quota is spent on, for display: per role, pinned, and what could be evicted."""
        with self._read() as c:
            pinned = evictable = 0
            for table in ("values_", "entries"):
                p, e = c.execute(
                    f"SELECT COALESCE(SUM(CASE WHEN pinned = 1 OR role = 'own' THEN size END), 0), "
                    f"COALESCE(SUM(CASE WHEN pinned = 0 AND role != 'own' THEN size END), 0) FROM {table}"
                ).fetchone()
                pinned, evictable = pinned + p, evictable + e
        return Usage(self.used_bytes_by_role(), pinned, evictable, self.file_bytes())

    def make_room(
        self, needed: int, budget: int, *, near: bytes, keep_closer_than: int | None = None,
        replicas: bool = True, now: float | None = None,
    ) -> Eviction:
        """Evict until ``needed`` more bytes fit in ``budget``, or evict nothing but the expired.

        The order a device's owner expects: expired data, then cached copies,
        least recently used first, then replicas of the keys farthest from
        ``near`` (this node's ID; a block counts at its pattern's key). Own and
        pinned data are never evicted. ``keep_closer_than`` spares replicas
        whose key is at least that close to ``near`` (a peer's replica must not
        push out one we are more responsible for); ``replicas=False`` evicts
        cached copies only. When the candidates cannot free enough, nothing but
        the expired goes, so a refused write costs the store nothing.
        """
        if needed < 0 or budget < 0:
            raise ValueError(f"needed and budget must be >= 0, got {needed!r}, {budget!r}")
        _check_key(near, "near")
        now = time.time() if now is None else _check_time(now, "now")
        near_int = int.from_bytes(near, "big")
        with self._tx() as c:
            expired = self._drop_expired(c, now)
            over = self._used(c) + needed - budget
            if over <= 0:
                return Eviction(0, expired, 0, 0, True)
            cached: list[tuple[float, str, tuple, int]] = []  # (last access, table, ident, size)
            for table, ident in (("values_", "key"), ("entries", "key, author, name")):
                for *names, size, last_access in c.execute(
                    f"SELECT {ident}, size, COALESCE(last_access, 0) FROM {table} WHERE role = 'cache' AND pinned = 0"
                ):
                    cached.append((last_access, table, tuple(names), size))
            cached.sort(key=lambda v: v[0])
            far: list[tuple[int, str, tuple, int]] = []  # (distance, table, ident, size)
            if replicas:
                for key, size, place in c.execute(
                    "SELECT v.key, v.size, COALESCE((SELECT grp FROM links WHERE block = v.key LIMIT 1), v.key) "
                    "FROM values_ v WHERE v.role = 'replica' AND v.pinned = 0"
                ):
                    far.append((int.from_bytes(place, "big") ^ near_int, "values_", (key,), size))
                for key, author, name, size in c.execute(
                    "SELECT key, author, name, size FROM entries WHERE role = 'replica' AND pinned = 0"
                ):
                    far.append((int.from_bytes(key, "big") ^ near_int, "entries", (key, author, name), size))
                if keep_closer_than is not None:
                    far = [v for v in far if v[0] > keep_closer_than]
                far.sort(key=lambda v: v[0], reverse=True)
            plan: list[tuple[str, tuple]] = []
            freed = n_cached = 0
            for i, (_, table, ident, size) in enumerate([*cached, *far]):
                if freed >= over:
                    break
                plan.append((table, ident))
                freed += size
                n_cached += i < len(cached)
            if freed < over:
                return Eviction(0, expired, 0, 0, False)
            for table, ident in plan:
                where = "key = ?" if table == "values_" else "key = ? AND author = ? AND name = ?"
                c.execute(f"DELETE FROM {table} WHERE {where}", ident)
            c.execute("DELETE FROM links WHERE grp NOT IN (SELECT key FROM entries)")
        self._release_free_pages()
        return Eviction(freed, expired, n_cached, len(plan) - n_cached, True)

    @staticmethod
    def _used(c: sqlite3.Connection) -> int:
        row = c.execute(
            "SELECT COALESCE(SUM(CAST(value AS INTEGER)), 0) FROM meta WHERE name LIKE 'used_bytes.%'"
        ).fetchone()
        return int(row[0])

    def used_bytes(self) -> int:
        """Bytes charged against the quota: SUM(size) over all rows, in O(1).

        The totals are maintained by triggers inside each write transaction.
        """
        return sum(self.used_bytes_by_role().values())

    def used_bytes_by_role(self) -> dict[str, int]:
        """Charged bytes per role (every role present, zero if unused)."""
        with self._read() as c:
            rows = c.execute(
                "SELECT name, value FROM meta WHERE name IN (?, ?, ?)",
                tuple(_USED_PREFIX + r for r in ROLES),
            ).fetchall()
        got = {name[len(_USED_PREFIX):]: int(v) for name, v in rows}
        return {r: got.get(r, 0) for r in ROLES}

    def file_bytes(self) -> int:
        """Bytes the database takes on disk: the file plus its -wal and -shm files."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total

    # -- contacts ------------------------------------------------------------------------

    def save_contacts(
        self, contacts: Sequence[tuple[bytes, str, int]], now: float | None = None
    ) -> None:
        """Replace the saved contacts with ``contacts``, atomically.

        Give them most recently seen first: they all get ``last_seen = now``, and ties
        load back in the order given. A duplicate node ID keeps its first entry; the
        failure count of a node ID that stays in the set is kept.
        """
        now = time.time() if now is None else _check_time(now, "now")
        rows: list[tuple[bytes, str, int]] = []
        seen: set[bytes] = set()
        for node_id, host, port in contacts:
            _check_key(node_id, "node_id")
            if not isinstance(host, str) or not host:
                raise ValueError(f"host must be a non-empty str, got {host!r}")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"port must be an int in 0..65535, got {port!r}")
            if node_id not in seen:
                seen.add(node_id)
                rows.append((node_id, host, port))
        with self._tx() as c:
            failures = dict(c.execute("SELECT node_id, failures FROM contacts").fetchall())
            c.execute("DELETE FROM contacts")
            c.executemany(
                "INSERT INTO contacts (node_id, host, port, last_seen, failures) "
                "VALUES (?, ?, ?, ?, ?)",
                [(n, h, p, now, failures.get(n, 0)) for n, h, p in rows],
            )

    def load_contacts(self, limit: int = 200) -> list[tuple[bytes, str, int]]:
        """Up to ``limit`` saved contacts, most recently seen first."""
        with self._read() as c:
            rows = c.execute(
                "SELECT node_id, host, port FROM contacts "
                "ORDER BY last_seen DESC, rowid ASC LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [(bytes(n), h, p) for n, h, p in rows]

    # -- teams ---------------------------------------------------------------------------
    # What the team code (node/teams.py) keeps: the descriptor of each team this node
    # is in, its own share (still sealed to it) and unlocked keys (sealed at rest, with
    # an expiry). The store checks shapes; signatures and seals are the node's business.

    def put_team(self, team_id: bytes, name: str, epoch: int, descriptor: bytes, *, policy: str = "auto",
                 now: float | None = None) -> bool:
        """Keep a team's descriptor; an older epoch than the one held is refused (False)."""
        _check_key(team_id, "team_id")
        if not isinstance(name, str) or not name:
            raise ValueError(f"team name must be a non-empty str, got {name!r}")
        _check_epoch(epoch)
        if policy not in TEAM_POLICIES:
            raise ValueError(f"policy must be one of {TEAM_POLICIES}, got {policy!r}")
        now = time.time() if now is None else _check_time(now, "now")
        with self._tx() as c:
            held = c.execute("SELECT epoch FROM teams WHERE team_id = ?", (team_id,)).fetchone()
            if held is not None and held[0] > epoch:
                return False
            c.execute(
                "INSERT INTO teams (team_id, name, epoch, descriptor, policy, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(team_id) DO UPDATE SET name = excluded.name, epoch = excluded.epoch, "
                "descriptor = excluded.descriptor, policy = excluded.policy, updated_at = excluded.updated_at",
                (team_id, name, epoch, bytes(descriptor), policy, now),
            )
            return True

    def teams(self, name: str | None = None) -> list[TeamRow]:
        """The teams held (by ``name`` if given), by name then ID."""
        sql = "SELECT team_id, name, epoch, descriptor, policy FROM teams"
        params: tuple = ()
        if name is not None:
            sql, params = sql + " WHERE name = ?", (name,)
        with self._read() as c:
            rows = c.execute(sql + " ORDER BY name, team_id", params).fetchall()
        return [TeamRow(bytes(t), n, e, bytes(d), p) for t, n, e, d, p in rows]

    def team(self, team_id: bytes) -> TeamRow | None:
        _check_key(team_id, "team_id")
        with self._read() as c:
            row = c.execute(
                "SELECT team_id, name, epoch, descriptor, policy FROM teams WHERE team_id = ?", (team_id,)
            ).fetchone()
        return None if row is None else TeamRow(bytes(row[0]), row[1], row[2], bytes(row[3]), row[4])

    def set_team_policy(self, team_id: bytes, policy: str) -> bool:
        """Set how this node answers a team's share requests (``auto`` or ``approve``); False for an unknown team."""
        _check_key(team_id, "team_id")
        if policy not in TEAM_POLICIES:
            raise ValueError(f"policy must be one of {TEAM_POLICIES}, got {policy!r}")
        with self._tx() as c:
            return c.execute("UPDATE teams SET policy = ? WHERE team_id = ?", (policy, team_id)).rowcount == 1

    def put_team_share(self, team_id: bytes, epoch: int, sealed: bytes) -> None:
        """Keep this node's share of a team epoch, as delivered: sealed to this node."""
        _check_key(team_id, "team_id")
        _check_epoch(epoch)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO team_shares (team_id, epoch, sealed) VALUES (?, ?, ?)",
                      (team_id, epoch, bytes(sealed)))

    def team_share(self, team_id: bytes, epoch: int) -> bytes | None:
        _check_key(team_id, "team_id")
        with self._read() as c:
            row = c.execute("SELECT sealed FROM team_shares WHERE team_id = ? AND epoch = ?",
                            (team_id, epoch)).fetchone()
        return None if row is None else bytes(row[0])

    def forget_team_share(self, team_id: bytes, epoch: int) -> bool:
        """Drop this node's share of a team epoch (an epoch it made that lost a fork); True if one was held."""
        _check_key(team_id, "team_id")
        _check_epoch(epoch)
        with self._tx() as c:
            return c.execute("DELETE FROM team_shares WHERE team_id = ? AND epoch = ?", (team_id, epoch)).rowcount > 0

    def put_team_key(self, team_id: bytes, epoch: int, sealed: bytes, *, expires: float) -> None:
        """Keep an unlocked epoch key, sealed at rest, until ``expires``."""
        _check_key(team_id, "team_id")
        _check_epoch(epoch)
        expires = _check_time(expires, "expires")
        if expires is None:
            raise ValueError("an unlocked key needs an expiry")
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO team_keys (team_id, epoch, sealed, expires) VALUES (?, ?, ?, ?)",
                      (team_id, epoch, bytes(sealed), expires))

    def team_keys(self, team_id: bytes, now: float | None = None) -> dict[int, bytes]:
        """The unexpired unlocked keys of a team, sealed, by epoch."""
        _check_key(team_id, "team_id")
        now = time.time() if now is None else _check_time(now, "now")
        with self._read() as c:
            rows = c.execute("SELECT epoch, sealed FROM team_keys WHERE team_id = ? AND expires > ?",
                             (team_id, now)).fetchall()
        return {epoch: bytes(sealed) for epoch, sealed in rows}

    def team_key_expiry(self, team_id: bytes, epoch: int, now: float | None = None) -> float | None:
        """When an epoch's unlocked key will be forgotten (Unix time), or None when it is not unlocked."""
        _check_key(team_id, "team_id")
        now = time.time() if now is None else _check_time(now, "now")
        with self._read() as c:
            row = c.execute("SELECT expires FROM team_keys WHERE team_id = ? AND epoch = ? AND expires > ?",
                            (team_id, epoch, now)).fetchone()
        return None if row is None else float(row[0])

    def forget_team_keys(self, team_id: bytes | None = None, now: float | None = None) -> int:
        """Drop a team's unlocked keys (``team lock``), or, without a team, every expired one."""
        with self._tx() as c:
            if team_id is not None:
                return c.execute("DELETE FROM team_keys WHERE team_id = ?", (_check_key(team_id, "team_id"),)).rowcount
            now = time.time() if now is None else _check_time(now, "now")
            return c.execute("DELETE FROM team_keys WHERE expires <= ?", (now,)).rowcount

    # -- meta ----------------------------------------------------------------------------

    def meta_get(self, name: str) -> str | None:
        """A small stored fact (e.g. the last republish time), or None."""
        with self._read() as c:
            row = c.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, name: str, value: str) -> None:
        """Store a small fact. The store's own entries (schema, byte totals) are refused."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"meta name must be a non-empty str, got {name!r}")
        if name in _RESERVED_META:
            raise ValueError(f"meta name {name!r} is reserved for the store")
        if not isinstance(value, str):
            raise ValueError(f"meta value must be str, got {type(value).__name__}")
        with self._tx() as c:
            c.execute(
                "INSERT INTO meta(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

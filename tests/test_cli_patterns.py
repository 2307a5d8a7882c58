"""The pattern commands (publish, fetch, search, history, ls, pin, unpin) end to end.

Everything here is a real process: three daemons on loopback, shared by the
whole module (A publishes, B holds replicas, C refuses replicas so that what it
fetches is only cached), and ``aether-node`` invoked with ``subprocess.run``,
piped, with a timeout on every call. Homes without a daemon run commands
through a temporary node of their own, or fail with a clear message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from aether.node.control import ControlClient

from .corpus import corpus, invalid_corpus

EXE = Path(sys.executable).with_name("aether-node")
TIMEOUT = 60
"""Upper bound of every subprocess call; no assert is about elapsed time."""
READY = re.compile(r"^listening on (\S+):(\d+) node ([0-9a-f]{40})$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
LINE = re.compile(r"^(?P<hash>[0-9a-f]{64}) (?P<id>Pattern-\S+) (?P<path>.+)$")


# ---------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}


def run(home: Path | None, *args: str, as_json: bool = False, binary: bool = False,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``aether-node [--home H] [--json] ARGS``, piped; a traceback is never acceptable."""
    command = [str(EXE)]
    if home is not None:
        command += ["--home", str(home)]
    if as_json:
        command.append("--json")
    result = subprocess.run(
        [*command, *args], capture_output=True, timeout=timeout, env=_env(), stdin=subprocess.DEVNULL,
        **({} if binary else {"encoding": "utf-8", "errors": "replace"}),
    )
    stderr = result.stderr if not binary else result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, (args, stderr)
    return result


def ok(home: Path | None, *args: str, as_json: bool = False, binary: bool = False) -> subprocess.CompletedProcess:
    result = run(home, *args, as_json=as_json, binary=binary)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def ok_json(home: Path, *args: str) -> dict:
    result = ok(home, *args, as_json=True)
    return json.loads(result.stdout)


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode("utf-8", "replace")
    assert result.returncode != 0, result
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("Error:") or "\nError:" in stderr, stderr
    for fragment in fragments:
        assert fragment.lower() in stderr.lower(), (fragment, stderr)


def init_homes(*homes: Path) -> None:
    """``init`` several homes at once (each CLI start costs about half a second)."""
    procs = [
        subprocess.Popen([str(EXE), "--home", str(h), "--json", "init"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env())
        for h in homes
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert json.loads(out)["created"] is True


def configure(home: Path, bootstrap: list[str] = (), node: dict[str, int] | None = None, role: str = "auto") -> None:
    """Listen on loopback, an ephemeral port; the given bootstrap peers and role; extra [node] settings."""
    path = home / "config.toml"
    text = path.read_text(encoding="utf-8")
    text, n_listen = re.subn(r'(?m)^listen = ".*"$', 'listen = "127.0.0.1:0"', text)
    peers = ", ".join(f'"{p}"' for p in bootstrap)
    text, n_boot = re.subn(r"(?m)^bootstrap = \[.*\]$", f"bootstrap = [{peers}]", text)
    assert n_listen == 1 and n_boot == 1, text
    text = text.replace('# role = "auto"', f'role = "{role}"')
    if node:
        settings = "".join(f"{k} = {v}\n" for k, v in node.items())
        text, n_node = re.subn(r"(?m)^\[node\]\n", "[node]\n" + settings, text)
        assert n_node == 1, text
    path.write_text(text, encoding="utf-8")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(pattern_id: str, name: str, body: str = "A plain problem statement.", category: str = "Cli Tests") -> bytes:
    return (
        f"# {pattern_id}: {name}\n\n**CREATED:** 2025-11-05T09:30:00Z\n**STATUS:** Active\n"
        f"**CATEGORY:** {category}\n\n## Problem\n{body}\n\n## Solution\nPublish it and fetch it back.\n\n"
        "**LAST UPDATED:** 2025-11-06T17:45:00Z\n"
    ).encode()


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def publish_ok(home: Path, *paths: Path) -> dict[str, str]:
    """Publish, check the one line per file, return path -> hash."""
    result = ok(home, "publish", *map(str, paths))
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths), result.stdout
    hashes = {}
    for path, line in zip(paths, lines):
        match = LINE.match(line)
        assert match, line
        assert match["path"] == str(path) and match["hash"] == sha(path.read_bytes()), line
        hashes[str(path)] = match["hash"]
    return hashes


def no_progress_output(text: str) -> None:
    """No ANSI escape, no carriage return, nothing like click's ``publishing  [####----]  2/4``."""
    assert "\x1b" not in text, repr(text)
    assert "\r" not in text, repr(text)
    assert not re.search(r"publishing\s+\[", text), repr(text)
    assert not re.search(r"\[[#-]{3,}\]", text), repr(text)


def in_parallel(*calls):
    """Run independent CLI calls side by side (each start costs about half a second); results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        return [f.result() for f in futures]


# ---------------------------------------------------------------- daemons
class Daemon:
    """``aether-node --home H daemon`` with its stdout read by a thread, so every wait is bounded."""

    def __init__(self, home: Path, *args: str, prefix: Sequence[str] = ()):
        """``prefix`` runs the daemon through a wrapper (another network namespace, another environment)."""
        self.home = home
        self.stderr_path = home.parent / f"{home.name}-daemon.log"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [*prefix, str(EXE), "--home", str(home), "daemon", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, text=True, env=_env(),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = 0
        self.node_id = ""

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.proc.wait(timeout=TIMEOUT)
                raise AssertionError(f"daemon exited ({self.proc.returncode}): {seen} {self.stderr()!r}")
            seen.append(line)
            match = READY.match(line)
            if match:
                assert match[1] == "127.0.0.1", line
                self.port, self.node_id = int(match[2]), match[3]
                return
        raise AssertionError(f"no ready line within {timeout} s: {seen} {self.stderr()!r}")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM and wait; kill only if it does not stop."""
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        else:
            code = self.proc.returncode
        self._stderr.close()
        return code


async def _contacts(home: Path) -> int:
    client = await ControlClient.connect(home, timeout=5, request_timeout=10)
    async with client:
        return (await client.request("whoami", {}))["contacts"]


def wait_joined(homes: list[Path], at_least: int, timeout: float = 30) -> None:
    """Until each daemon knows the others (readiness, not a timing assert)."""
    deadline = time.monotonic() + timeout
    counts: list[int] = []
    while time.monotonic() < deadline:
        counts = [asyncio.run(_contacts(h)) for h in homes]
        if all(c >= at_least for c in counts):
            return
        time.sleep(0.2)
    raise AssertionError(f"daemons did not join each other: contacts {counts}")


@dataclass
class Net:
    a: Path
    """Publishes."""
    b: Path
    """Holds replicas of what A publishes."""
    c: Path
    """A light client: refuses replicas, so what it fetches is a cached copy."""
    daemons: dict[str, Daemon]
    root: Path

    def id_of(self, name: str) -> str:
        return self.daemons[name].node_id


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("clipat")
    a, b, c = root / "a", root / "b", root / "c"
    init_homes(a, b, c)
    configure(a)
    configure(b)
    configure(c, role="light")
    daemons: dict[str, Daemon] = {}
    try:
        daemons["a"] = Daemon(a)
        daemons["a"].wait_ready()
        daemons["b"] = Daemon(b, "--bootstrap", daemons["a"].address)
        daemons["c"] = Daemon(c, "--bootstrap", daemons["a"].address)
        daemons["b"].wait_ready()
        daemons["c"].wait_ready()
        wait_joined([a, b, c], at_least=2)
        yield Net(a, b, c, daemons, root)
    finally:
        codes = {name: d.stop() for name, d in daemons.items()}
    problems = {name: (codes[name], d.stderr()) for name, d in daemons.items()
                if codes[name] != 0 or "Traceback" in d.stderr()}
    assert not problems, f"daemons did not stop cleanly after SIGTERM: {problems}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


# ---------------------------------------------------------------- publish
def test_publish_folder_reports_each_valid_file_and_names_the_invalid_one(net: Net, folder: Path) -> None:
    cases = corpus()
    bad_data, bad_problem = invalid_corpus()["bad_status"]
    bad_line = next(i for i, line in enumerate(bad_data.split(b"\n"), 1) if line.startswith(b"**STATUS:**"))
    src = folder / "pub"
    valid = [
        write(src, "a_typical.md", cases["typical"]),
        write(src, "c_extra_fields.md", cases["extra_fields"]),
        write(src, "d_block_6145.md", cases["block_6145"]),
    ]
    bad = write(src, "b_broken.md", bad_data)
    write(src, "notes.txt", b"not a pattern, not a .md file\n")

    result = run(net.a, "publish", str(src))

    assert result.returncode != 0, result
    no_progress_output(result.stdout)
    no_progress_output(result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == len(valid), result.stdout
    for path, line in zip(valid, lines):
        match = LINE.match(line)
        assert match, line
        data = path.read_bytes()
        assert match["hash"] == sha(data)
        assert match["id"] == re.match(rb"# (Pattern-\S+):", data)[1].decode()
        assert match["path"] == str(path)
    assert str(bad) not in result.stdout
    assert f"{bad}:{bad_line}: {bad_problem}" in result.stderr, result.stderr
    for path in valid:
        assert str(path) not in result.stderr

    # Every valid one is on the network: another home fetches the exact bytes.
    fetched = in_parallel(*((_fetch_bytes, net.b, sha(p.read_bytes())) for p in valid))
    assert fetched == [p.read_bytes() for p in valid]


def _fetch_bytes(home: Path, ref: str) -> bytes:
    return ok(home, "fetch", ref, binary=True).stdout


def test_publishing_the_same_file_again_changes_nothing(net: Net, folder: Path) -> None:
    path = write(folder, "again.md", pattern("Pattern-AGAIN-001", "Published twice"))
    first = ok(net.a, "publish", str(path))
    second = ok(net.a, "publish", str(path))
    assert first.stdout == second.stdout == f"{sha(path.read_bytes())} Pattern-AGAIN-001 {path}\n"
    third = ok_json(net.a, "publish", str(path))
    assert third["errors"] == []
    [entry] = third["published"]
    assert entry["unchanged"] is True
    assert entry["hash"] == sha(path.read_bytes()) and entry["id"] == "Pattern-AGAIN-001"


# ---------------------------------------------------------------- fetch
@pytest.fixture(scope="module")
def exact(net: Net, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes, Path]]:
    """The CRLF and the Unicode corpus cases, published from A: name -> (pattern ID, bytes, path)."""
    cases = corpus()
    src = tmp_path_factory.mktemp("exact")
    paths = {name: write(src, f"{name}.md", cases[name]) for name in ("crlf", "unicode")}
    publish_ok(net.a, *paths.values())
    out = {}
    for name, path in paths.items():
        data = path.read_bytes()
        assert (b"\r\n" in data) if name == "crlf" else any(byte >= 0x80 for byte in data)
        out[name] = (re.match(rb"# (Pattern-\S+):", data)[1].decode(), data, path)
    return out


@pytest.mark.parametrize("name", ["crlf", "unicode"])
def test_fetch_by_hash_and_by_id_gives_the_exact_bytes(net: Net, exact, name: str) -> None:
    pattern_id, data, _ = exact[name]
    by_hash = ok(net.b, "fetch", sha(data), binary=True)
    assert by_hash.stdout == data
    by_id = ok(net.b, "fetch", pattern_id, binary=True)
    assert by_id.stdout == data
    about = by_id.stderr.decode()
    assert pattern_id in about and sha(data) in about and "(signature valid)" in about, about


def test_fetch_to_a_file_writes_the_exact_bytes(net: Net, exact, folder: Path) -> None:
    pattern_id, data, _ = exact["crlf"]
    target = folder / "out" / "copy.md"
    target.parent.mkdir()
    result = ok(net.b, "fetch", pattern_id, "-o", str(target))
    assert target.read_bytes() == data
    assert str(target) in result.stdout and str(len(data)) in result.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.md"]


def test_fetch_json_has_metadata_and_text(net: Net, exact) -> None:
    pattern_id, data, _ = exact["unicode"]
    reply = ok_json(net.b, "fetch", pattern_id)
    assert reply["id"] == pattern_id
    assert reply["hash"] == sha(data)
    assert reply["authors"] == [net.id_of("a")]
    assert reply["signature"] == "valid"
    assert reply["text"] == data.decode("utf-8")
    assert reply["text"].encode("utf-8") == data
    assert "path" not in reply


def test_fetch_json_with_output_names_the_path(net: Net, exact, folder: Path) -> None:
    pattern_id, data, _ = exact["crlf"]
    target = folder / "crlf-copy.md"
    reply = ok_json(net.b, "fetch", sha(data), "-o", str(target))
    assert reply["path"] == str(target)
    assert reply["id"] == pattern_id and reply["hash"] == sha(data) and reply["signature"] == "valid"
    assert "text" not in reply and "data" not in reply
    assert target.read_bytes() == data


def test_failed_fetch_leaves_the_existing_file_untouched(net: Net, folder: Path) -> None:
    existing = folder / "existing.md"
    existing.write_bytes(b"keep me exactly\r\n")
    unknown = sha(b"a pattern nobody ever published " + os.urandom(16))
    result = run(net.b, "fetch", unknown, "-o", str(existing))
    assert_clean_error(result, unknown)
    assert result.stdout == ""
    assert existing.read_bytes() == b"keep me exactly\r\n"
    assert sorted(p.name for p in folder.iterdir()) == ["existing.md"]
    assert not list(folder.glob(".*.part"))


# ---------------------------------------------------------------- search, history
def test_search_text_and_json(net: Net, folder: Path) -> None:
    data = pattern("Pattern-SRCH-001", "Quokka lanterns for gossip", category="Zanzibar Gossip")
    path = write(folder, "search.md", data)
    publish_ok(net.a, path)
    author = net.id_of("a")

    text = ok(net.b, "search", "quokka")
    assert "Pattern-SRCH-001" in text.stdout and "Quokka lanterns for gossip" in text.stdout
    assert author[:16] in text.stdout and sha(data)[:16] in text.stdout

    reply = ok_json(net.b, "search", "quokka", "lanterns")
    [hit] = reply["results"]
    assert hit["id"] == "Pattern-SRCH-001"
    assert "Quokka lanterns for gossip" in hit["title"]
    assert hit["author"] == author
    assert hit["hash"] == sha(data)
    assert ISO_DATE.match(hit["date"]), hit["date"]

    by_category = ok_json(net.b, "search", "category:zanzibar")
    assert [h["hash"] for h in by_category["results"]] == [sha(data)]
    nothing = ok(net.b, "search", "quokka", "xylophonic")
    assert "no pattern found" in nothing.stdout


def test_history_lists_versions_newest_first(net: Net, folder: Path) -> None:
    v1 = write(folder / "v1", "hist.md", pattern("Pattern-HIST-001", "Versions", body="The first version."))
    v2 = write(folder / "v2", "hist.md", pattern("Pattern-HIST-001", "Versions", body="The edited second version."))
    h1 = publish_ok(net.a, v1)[str(v1)]
    h2 = publish_ok(net.a, v2)[str(v2)]
    assert h1 != h2

    reply = ok_json(net.b, "history", "Pattern-HIST-001")
    [entry] = reply["authors"]
    assert entry["author"] == net.id_of("a") and entry["id"] == "Pattern-HIST-001"
    assert [v["hash"] for v in entry["versions"]] == [h2, h1]
    for v in entry["versions"]:
        assert ISO_DATE.match(v["date"]), v
    assert entry["versions"][0]["time"] >= entry["versions"][1]["time"]

    text = ok(net.b, "history", "Pattern-HIST-001").stdout
    assert "Pattern-HIST-001" in text and net.id_of("a") in text
    assert h2 in text and h1 in text and text.index(h2) < text.index(h1)

    # The ID now fetches the newest version.
    assert ok(net.b, "fetch", "Pattern-HIST-001", binary=True).stdout == v2.read_bytes()


# ---------------------------------------------------------------- ls, pin, unpin
def _held(home: Path, pattern_hash: str) -> dict | None:
    reply = ok_json(home, "ls")
    for item in reply["patterns"]:
        assert {"id", "hash", "title", "role", "pinned", "complete"} <= set(item), item
    found = [p for p in reply["patterns"] if p["hash"] == pattern_hash]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_ls_shows_own_replica_and_cache(net: Net, folder: Path) -> None:
    data = pattern("Pattern-LS-001", "Held three ways")
    path = write(folder, "ls.md", data)
    h = publish_ok(net.a, path)[str(path)]
    assert ok(net.c, "fetch", h, binary=True).stdout == data

    homes = (net.a, net.b, net.c)
    own, replica, cache = in_parallel(*((_held, home, h) for home in homes))
    assert own is not None and own["role"] == "own" and own["pinned"] is True and own["complete"] is True
    assert own["id"] == "Pattern-LS-001"
    assert replica is not None and replica["role"] == "replica" and replica["pinned"] is False
    assert replica["complete"] is True
    assert cache is not None and cache["role"] == "cache" and cache["pinned"] is False and cache["complete"] is True

    texts = in_parallel(*((ok, home, "ls") for home in homes))
    for result, shown in zip(texts, ("own pinned", "replica", "cache")):
        text = result.stdout
        [line] = [ln for ln in text.splitlines() if ln.startswith(h[:16])]
        assert "Pattern-LS-001" in line and shown in line and "incomplete" not in line, line


def test_pin_and_unpin_from_a_home_that_did_not_publish(net: Net, folder: Path) -> None:
    data = pattern("Pattern-PIN-001", "Kept by another node")
    path = write(folder, "pin.md", data)
    h = publish_ok(net.a, path)[str(path)]

    pinned = ok(net.c, "pin", "Pattern-PIN-001")
    assert pinned.stdout.strip() == f"pinned {h} Pattern-PIN-001"
    held = _held(net.c, h)
    assert held is not None and held["pinned"] is True and held["complete"] is True

    unpinned = ok(net.c, "unpin", h)
    assert unpinned.stdout.strip() == f"unpinned {h}"
    held = _held(net.c, h)
    assert held is None or held["pinned"] is False, held
    # The publisher keeps its own copy pinned.
    own = _held(net.a, h)
    assert own is not None and own["pinned"] is True


def test_every_pattern_command_prints_json(net: Net, folder: Path) -> None:
    data = pattern("Pattern-JSON-001", "Machine readable everything", category="Marmalade Json")
    path = write(folder, "json.md", data)
    h = sha(data)

    published = ok_json(net.a, "publish", str(path))
    assert published["errors"] == []
    [entry] = published["published"]
    assert entry["hash"] == h and entry["id"] == "Pattern-JSON-001" and entry["path"] == str(path)
    assert entry["unchanged"] is False
    fetched = ok_json(net.b, "fetch", h)
    assert fetched["hash"] == h and fetched["text"].encode() == data
    searched = ok_json(net.b, "search", "marmalade")
    assert [r["hash"] for r in searched["results"]] == [h]
    history = ok_json(net.b, "history", "Pattern-JSON-001")
    assert history["authors"][0]["versions"][0]["hash"] == h
    listed = ok_json(net.b, "ls")
    assert h in [p["hash"] for p in listed["patterns"]]
    pinned = ok_json(net.c, "pin", h)
    assert pinned["hash"] == h and pinned["pinned"] is True and pinned["id"] == "Pattern-JSON-001"
    unpinned = ok_json(net.c, "unpin", "Pattern-JSON-001")
    assert unpinned == {"hash": h, "pinned": False}
    assert ok_json(net.a, "id")["node_id"] == net.id_of("a")


# ---------------------------------------------------------------- bad input
def test_fetch_of_something_neither_hash_nor_id_is_a_clear_error(net: Net) -> None:
    result = run(net.b, "fetch", "nope")
    assert_clean_error(result, "'nope'", "64-hex", "pattern ID")
    assert result.stdout == ""


def test_search_with_only_stopwords_is_a_clear_error(net: Net) -> None:
    result = run(net.b, "search", "the")
    assert_clean_error(result, "'the'", "no searchable word")
    assert result.stdout == ""


def test_publish_of_a_missing_path_fails(net: Net, folder: Path) -> None:
    missing = folder / "no-such-pattern.md"
    result = run(net.a, "publish", str(missing))
    assert result.returncode != 0
    assert str(missing) in result.stderr and "no such file" in result.stderr, result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- without a daemon
def test_home_without_daemon_uses_a_temporary_node_through_bootstrap_peers(net: Net, folder: Path) -> None:
    e = net.root / "e"
    init_homes(e)
    configure(e, bootstrap=[net.daemons["a"].address])
    data = pattern("Pattern-TEMP-001", "Published by a temporary node")
    path = write(folder, "temp.md", data)

    result = ok(e, "publish", str(path))
    assert result.stdout == f"{sha(data)} Pattern-TEMP-001 {path}\n"
    no_progress_output(result.stderr)
    assert not (e / "control.sock").exists()

    assert ok(net.b, "fetch", sha(data), binary=True).stdout == data
    assert ok(net.b, "fetch", "Pattern-TEMP-001", binary=True).stdout == data
    # What the temporary node published stays pinned in its home.
    held = _held(e, sha(data))
    assert held is not None and held["role"] == "own" and held["pinned"] is True


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with no daemon, no bootstrap peers and no saved contacts."""
    home = tmp_path_factory.mktemp("lonely") / "home"
    init_homes(home)
    configure(home)
    return home


@pytest.mark.parametrize("args", [
    ("fetch", "Pattern-DHT-001"),
    ("search", "kademlia"),
    ("publish", "PATTERN"),
], ids=["fetch", "search", "publish"])
def test_no_daemon_and_no_peers_fails_fast_with_a_clear_message(lonely: Path, folder: Path, args) -> None:
    if args[0] == "publish":
        args = ("publish", str(write(folder, "p.md", pattern("Pattern-LONE-001", "Nowhere to go"))))
    result = run(lonely, *args)
    assert_clean_error(result, "no daemon is running", str(lonely))
    assert result.stdout == ""


def test_ls_works_without_any_network(lonely: Path) -> None:
    assert ok(lonely, "ls").stdout.strip() == "no pattern held"
    assert ok_json(lonely, "ls") == {"patterns": []}


def test_unanswering_bootstrap_peer_gives_up_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path / "home"
    init_homes(home)
    configure(home, bootstrap=[f"127.0.0.1:{port}"])
    result = run(home, "fetch", "Pattern-DHT-001", timeout=TIMEOUT)
    assert_clean_error(result, "none of the 1 known peer(s) answered", f"127.0.0.1:{port}")
    assert result.stdout == ""

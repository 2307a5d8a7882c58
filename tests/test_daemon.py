"""``aether-node daemon`` as a real subprocess: ready line, signals, start-up errors, kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
from kademlia.node import Node

from aether.node.home import format_address, parse_address
from aether.node.values import block_key
from aether.simulations.network import address_of, local_network

from .test_cli_patterns import assert_clean_error

EXE = Path(sys.executable).with_name("aether-node")
TIMEOUT = 20
READY = re.compile(r"^listening on (\S+):(\d+) node ([0-9a-f]{40})$")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
    return subprocess.run(
        [str(EXE), *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, stdin=subprocess.DEVNULL
    )


class Daemon:
    """A daemon subprocess whose stdout is read by a thread, so every wait has a timeout."""

    def __init__(self, home: Path, *args: str, options: tuple[str, ...] = ()):
        """``options`` are global options, placed before the command (``--log-level info``)."""
        self.home = home
        self.stderr_path = home.parent / f"{home.name}-stderr-{time.monotonic_ns()}.log"
        self._stderr = open(self.stderr_path, "w+")
        env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
        self.proc = subprocess.Popen(
            [str(EXE), *options, "--home", str(home), "daemon", *args],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port: int | None = None
        self.node_id: str | None = None

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_ready(self, timeout: float = TIMEOUT) -> tuple[str, int, str]:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no ready line within {timeout} s; stdout {seen}; stderr {self.stderr()!r}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=TIMEOUT)
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before ready; stdout {seen}; stderr {self.stderr()!r}"
                )
            seen.append(line)
            match = READY.match(line)
            if match:
                self.port, self.node_id = int(match.group(2)), match.group(3)
                return match.group(1), self.port, self.node_id

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def stdout_rest(self, timeout: float = TIMEOUT) -> list[str]:
        """The lines printed after the ready line, once the daemon has exited."""
        rest = []
        while (line := self.lines.get(timeout=timeout)) is not None:
            rest.append(line)
        return rest

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._stderr.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(home: Path, *args: str) -> Daemon:
        d = Daemon(home, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    result = cli("--home", str(h), "--json", "init")
    assert result.returncode == 0, result.stderr
    return h


def node_id_of(home: Path) -> str:
    result = cli("--home", str(home), "--json", "id")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["node_id"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ready_line_and_clean_stop_on_signal(home: Path, daemons, sig: signal.Signals) -> None:
    d = daemons(home, "--listen", "127.0.0.1:0")
    host, port, node_id = d.wait_ready()
    assert host == "127.0.0.1" and 0 < port < 65536
    assert node_id == node_id_of(home)
    d.proc.send_signal(sig)
    assert d.wait_exit(timeout=5) == 0, d.stderr()
    assert "Traceback" not in d.stderr()
    with sqlite3.connect(home / "node.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The lock is released: the home can be served again straight away.
    again = daemons(home, "--listen", "127.0.0.1:0")
    assert again.wait_ready()[2] == node_id


def test_second_daemon_on_same_home_is_refused(home: Path, daemons) -> None:
    first = daemons(home, "--listen", "127.0.0.1:0")
    first.wait_ready()
    second = cli("--home", str(home), "daemon", "--listen", "127.0.0.1:0")
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    assert "Error:" in second.stderr and "already running" in second.stderr, second.stderr
    assert "listening on" not in second.stdout
    assert first.proc.poll() is None, "the first daemon must keep running"


def test_port_in_use_is_a_clear_error(home: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = cli("--home", str(home), "daemon", "--listen", f"127.0.0.1:{port}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Error:" in result.stderr and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert "in use" in result.stderr.lower(), result.stderr


def test_corrupt_database_is_a_clear_error(home: Path) -> None:
    (home / "node.db").write_bytes(os.urandom(64) + b"this is not sqlite" * 300)
    result = cli("--home", str(home), "daemon", "--listen", "127.0.0.1:0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Error:" in result.stderr and "node.db" in result.stderr, result.stderr
    assert "corrupt" in result.stderr or "not an aether database" in result.stderr, result.stderr


def test_daemon_without_init_is_a_clear_error(tmp_path: Path) -> None:
    h = tmp_path / "never"
    result = cli("--home", str(h), "daemon", "--listen", "127.0.0.1:0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "init" in result.stderr and "Error:" in result.stderr


async def _until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def _saved_contacts(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM contacts").fetchone()[0]
    except sqlite3.Error:
        return 0


async def test_acknowledged_block_survives_kill_9_and_daemon_rejoins_from_saved_contacts(
    tmp_path: Path, home: Path, daemons
) -> None:
    (home / "config.toml").write_text(
        '[daemon]\nlisten = "127.0.0.1:0"\n\n[node]\ncontacts_save_interval = 0.5\n', encoding="utf-8"
    )
    async with local_network(tmp_path / "net", 10) as nodes:
        entry_host, entry_port = address_of(nodes[0])
        d = daemons(home, "--listen", "127.0.0.1:0", "--bootstrap", f"{entry_host}:{entry_port}")
        _, port, d_hex = await asyncio.to_thread(d.wait_ready)
        d_id = bytes.fromhex(d_hex)

        data = b"a block acknowledged before kill -9: " + os.urandom(32)
        key = block_key(data)
        ok, reply = await nodes[3].protocol.call_store(Node(d_id, "127.0.0.1", port), key, data)
        assert ok and reply["stored"] is True, reply

        # D joined through nodes[0] and saved what it learned (interval 0.5 s).
        await _until(lambda: _saved_contacts(home / "node.db") >= 2, 10, "D to save its contacts")
        await asyncio.sleep(1.2)

        d.proc.kill()
        assert await asyncio.to_thread(d.wait_exit, 5) == -signal.SIGKILL
        with sqlite3.connect(home / "node.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # The acknowledged block is on disk, written before the reply went out.
            assert db.execute("SELECT value FROM values_ WHERE key = ?", (key,)).fetchone() == (data,)
        saved = _saved_contacts(home / "node.db")
        assert saved >= 2

        # Restart with no address given: only the contacts saved in the home.
        d2 = daemons(home, "--listen", "127.0.0.1:0")
        _, new_port, d2_hex = await asyncio.to_thread(d2.wait_ready)
        assert d2_hex == d_hex
        restarted = Node(d_id, "127.0.0.1", new_port)

        # (1) it still holds what it acknowledged.
        reply = await nodes[5].protocol.query(restarted, key, True)
        assert reply.ok and reply.value == data

        # (2) it rejoined: its routing table fills from its saved contacts alone.
        async def d_knows_peers():
            found = await nodes[7].protocol.query(restarted, os.urandom(20), False)
            return found.ok and len(found.contacts) >= 2

        await _until(d_knows_peers, 10, "the restarted daemon to know peers")

        d2.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(d2.wait_exit, 5) == 0, d2.stderr()
        assert "Traceback" not in d.stderr() + d2.stderr()


async def test_peer_learns_new_address_of_restarted_node(tmp_path: Path) -> None:
    from aether.simulations.network import start_node

    async with local_network(tmp_path / "net", 3) as nodes:
        b = await start_node(tmp_path / "b")
        try:
            assert await b.bootstrap([address_of(nodes[0])])
            old_port = address_of(b)[1]
        finally:
            b.stop()
            b.store.close()
        b = await start_node(tmp_path / "b")  # same home, same id, new port
        try:
            new_port = address_of(b)[1]
            assert new_port != old_port
            assert await b.rejoin()
            ports = {c.port for c in nodes[0].protocol.contacts() if c.id == b.node.id}
            assert ports == {new_port}
        finally:
            b.stop()
            b.store.close()


LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@pytest.mark.parametrize("level", ["debug", "info", "warning", None], ids=["debug", "info", "warning", "default"])
def test_log_level_chooses_what_goes_to_stderr_and_stdout_holds_only_the_ready_line(
    home: Path, level: str | None
) -> None:
    d = Daemon(home, "--listen", "127.0.0.1:0", options=("--log-level", level) if level else ())
    try:
        first = d.lines.get(timeout=TIMEOUT)
        assert first is not None and READY.match(first), (first, d.stderr())
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait_exit() == 0, d.stderr()
        assert d.stdout_rest() == [], "stdout carries the ready line and nothing else"
        lines = d.stderr().splitlines()
    finally:
        d.close()
    levels = {match[1] for line in lines if (match := LOG_LINE.match(line))}
    if level == "debug":
        assert {"DEBUG", "INFO"} <= levels, lines
        return
    # Every line is one record: its level, the logger, the message.
    assert all(LOG_LINE.match(line) for line in lines), lines
    if level == "info":
        assert "INFO" in levels and "DEBUG" not in levels, lines
        assert "INFO aether.node.daemon: stopping" in lines, lines
    else:  # warning, the default: a quiet start and stop logs nothing below it
        assert levels <= {"WARNING", "ERROR", "CRITICAL"}, lines


def test_log_level_must_be_a_known_level(home: Path) -> None:
    result = cli("--log-level", "chatty", "--home", str(home), "daemon", "--listen", "127.0.0.1:0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--log-level" in result.stderr and "'chatty' is not one of" in result.stderr, result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- a home that cannot be written
@pytest.fixture
def as_owner_only():
    """A command prefix under which permission bits bind this test's user, root included.

    Root passes every permission check through CAP_DAC_OVERRIDE, so a home made
    read-only with chmod would stay writable; ``setpriv`` drops that capability
    (and CAP_DAC_READ_SEARCH) from the bounding set of the command it runs.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: nothing here can make a folder unwritable to root")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


def run_restricted(prefix: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
    return subprocess.run([*prefix, str(EXE), *args], capture_output=True, text=True, timeout=TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL)


@contextmanager
def read_only(folder: Path):
    folder.chmod(0o500)
    try:
        yield
    finally:
        folder.chmod(0o700)


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert_clean_error(result, *fragments)
    assert "listening on" not in result.stdout


def test_the_prefix_really_makes_a_read_only_home_unwritable(home: Path, as_owner_only: list[str]) -> None:
    """The premise of the tests below: under the prefix, chmod 0500 keeps even root from writing."""
    with read_only(home):
        touched = subprocess.run([*as_owner_only, "touch", str(home / "probe")], capture_output=True, timeout=TIMEOUT)
    assert touched.returncode != 0 and not (home / "probe").exists()


@pytest.mark.parametrize("command", [["daemon", "--listen", "127.0.0.1:0"], ["ls"], ["status"]],
                         ids=["daemon", "ls", "status"])
def test_a_home_that_cannot_be_written_is_a_clear_error(home: Path, as_owner_only: list[str], command) -> None:
    # Initialised, never run: the lock file does not exist yet and cannot be created.
    assert not (home / "daemon.lock").exists()
    with read_only(home):
        result = run_restricted(as_owner_only, "--home", str(home), *command)
    assert_clean_failure(result, str(home))


def test_a_home_made_read_only_after_a_run_is_a_clear_error(home: Path, as_owner_only: list[str]) -> None:
    # A run leaves the lock file and the database behind; the database cannot take its write-ahead log.
    assert cli("--home", str(home), "ls").returncode == 0
    assert (home / "daemon.lock").exists() and (home / "node.db").exists()
    with read_only(home):
        result = run_restricted(as_owner_only, "--home", str(home), "daemon", "--listen", "127.0.0.1:0")
    assert_clean_failure(result, "node.db", "readonly")


@pytest.mark.parametrize("keys", [False, True], ids=["no-keys-yet", "keys-but-no-config"])
def test_init_in_a_home_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, as_owner_only: list[str], keys: bool
) -> None:
    h = tmp_path / "h"
    if keys:
        assert cli("--home", str(h), "init").returncode == 0
        (h / "config.toml").unlink()
    else:
        h.mkdir(mode=0o700)
    with read_only(h):
        result = run_restricted(as_owner_only, "--home", str(h), "init")
    assert_clean_failure(result, str(h))


def test_a_home_below_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """A home that cannot even be created, whoever runs the command: its parent is a file."""
    (tmp_path / "file").write_text("not a folder")
    h = tmp_path / "file" / "home"
    assert_clean_failure(cli("--home", str(h), "init"), f"cannot create home {h}", "Not a directory")
    assert_clean_failure(cli("--home", str(h), "daemon", "--listen", "127.0.0.1:0"), f"aether-node --home {h} init")


# ---------------------------------------------------------------- who may use the control channel
def _connect_as(uid: int, path: str) -> int:
    """Connect to the Unix socket ``path`` as the user ``uid``, in a child process: 0, 13 (refused) or 2."""
    pid = os.fork()
    if pid == 0:  # the child only makes system calls, then leaves without running any cleanup
        code = 2
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_another_user_is_refused_by_the_control_sockets_permissions(home: Path, daemons) -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root; test_control.py checks the socket's 0600 mode")
    daemons(home, "--listen", "127.0.0.1:0").wait_ready()
    # The home's 0700 alone keeps other users out. A hard link in a folder anyone may enter
    # leaves the socket's own mode as the only guard.
    lobby = Path(tempfile.mkdtemp(prefix="aether-lobby-"))
    try:
        lobby.chmod(0o711)
        if not all(stat.S_IMODE(p.stat().st_mode) & stat.S_IXOTH for p in lobby.parents):
            pytest.skip(f"other users cannot enter {lobby.parent}, so no path would lead them to the socket")
        link = lobby / "control.sock"
        try:
            os.link(home / "control.sock", link)
        except OSError as exc:
            pytest.skip(f"cannot link the socket into {lobby}: {exc.strerror}")
        other = 65534  # nobody
        assert _connect_as(0, str(link)) == 0, "the link reaches the daemon"
        assert _connect_as(other, str(link)) == 13, "another user is refused"
        # The refusal is the socket's mode: opened to everyone, the same user gets through.
        link.chmod(0o666)
        try:
            assert _connect_as(other, str(link)) == 0
        finally:
            link.chmod(0o600)
        assert stat.S_IMODE(os.stat(home / "control.sock").st_mode) == 0o600
    finally:
        shutil.rmtree(lobby)
    assert json.loads(cli("--home", str(home), "--json", "status").stdout)["running"] is True


def test_a_home_too_deep_for_a_unix_socket_is_served_over_loopback_tcp_with_a_token(tmp_path: Path, daemons) -> None:
    deep = tmp_path / ("d" * 60) / ("h" * 60)
    assert cli("--home", str(deep), "init").returncode == 0
    d = daemons(deep, "--listen", "127.0.0.1:0")
    d.wait_ready()
    config = deep / "control.json"
    assert not (deep / "control.sock").exists() and stat.S_IMODE(config.stat().st_mode) == 0o600
    channel = json.loads(config.read_text())
    assert channel["transport"] == "tcp" and len(bytes.fromhex(channel["token"])) == 32

    status = cli("--home", str(deep), "--json", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == d.proc.pid

    # Without the token, the request is refused and the daemon serves on.
    with socket.create_connection(("127.0.0.1", channel["port"]), timeout=TIMEOUT) as sock:
        body = msgpack.packb({"op": "status", "args": {}})
        sock.sendall(len(body).to_bytes(4, "big") + body)
        reader = sock.makefile("rb")
        reply = msgpack.unpackb(reader.read(int.from_bytes(reader.read(4), "big")))
    assert reply["ok"] is False and reply["error"]["reason"] == "unauthorized", reply
    assert cli("--home", str(deep), "--json", "ls").returncode == 0

    d.proc.send_signal(signal.SIGTERM)
    assert d.wait_exit() == 0, d.stderr()
    assert not config.exists(), "the token leaves with the daemon"


def test_an_ipv6_listen_address_is_written_with_brackets(home: Path, daemons) -> None:
    """The ready line and status give ``[::1]:PORT``, which --bootstrap and config.toml read back."""
    d = daemons(home, "--listen", "[::1]:0")
    host, port, _ = d.wait_ready()
    assert host == "[::1]" and 0 < port < 65536
    assert parse_address(f"{host}:{port}") == ("::1", port)
    status = cli("--home", str(home), "--json", "status")
    assert json.loads(status.stdout)["address"] == f"[::1]:{port}"
    assert format_address("127.0.0.1", 7411) == "127.0.0.1:7411"

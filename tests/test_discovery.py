"""Zero-config discovery: what a node announces over mDNS, whom it believes, and daemons that find each other.

The end-to-end tests run real daemons with no ``--bootstrap`` in a network of
their own: a network namespace the test creates (``unshare -rn``: a user and
network namespace, no privilege needed) whose loopback carries multicast, so
nothing leaves it and parallel runs cannot hear each other. Where namespaces
are not allowed, they fall back to multicast confined to this machine's
loopback interface; where that does not work either, they are skipped and the
reason is printed in pytest's summary. Every wait is bounded; no assert is
about elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ifaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import ServiceStateChange

from aether.node.discovery import (
    MAX_ADDRESSES,
    MAX_RESOLVING,
    SERVICE_TYPE,
    Discovery,
    Peer,
    PeerTracker,
    advertised_addresses,
    instance_name,
    parse_peer,
    txt_record,
)
from aether.node.home import Home, HomeError

from .test_cli_patterns import TIMEOUT, Daemon, _contacts, init_homes, ok, pattern, sha, wait_joined, write

OWN = bytes(range(20))
OTHER = bytes(range(100, 120))


def txt(node_id: bytes = OTHER, version: bytes | None = b"1") -> dict[bytes, bytes | None]:
    return {b"id": node_id.hex().encode(), b"v": version}


# ---------------------------------------------------------------- announcements
def test_a_well_formed_announcement_is_a_peer() -> None:
    peer = parse_peer(txt(), ["192.0.2.7", "192.0.2.8"], 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer == Peer(OTHER, (("192.0.2.7", 7411), ("192.0.2.8", 7411)))
    # What a node announces is what the others accept.
    announced = {k.encode(): v.encode() for k, v in txt_record(OTHER).items()}
    assert parse_peer(announced, ["127.0.0.1"], 1, own_id=OWN, listen_host="127.0.0.1") is not None
    assert instance_name(OTHER) == "aether-" + OTHER.hex()


def test_own_announcement_is_ignored() -> None:
    assert parse_peer(txt(OWN), ["192.0.2.7"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


@pytest.mark.parametrize("properties", [
    {},
    {b"id": OTHER.hex().encode()},                                   # no protocol version
    txt(version=b"2"),                                              # a version this node does not speak
    txt(version=None),
    {b"id": None, b"v": b"1"},
    {b"id": OTHER.hex()[:-2].encode(), b"v": b"1"},                 # too short
    {b"id": (OTHER.hex() + "00").encode(), b"v": b"1"},             # too long
    {b"id": b"zz" * 20, b"v": b"1"},                                # not hex
    {b"id": "é".encode() * 20, b"v": b"1"},                         # not even ASCII
    {"id": OTHER.hex(), "v": "1"},                                  # not what a TXT record decodes to
], ids=["empty", "no-version", "version-2", "version-none", "id-none", "id-short", "id-long", "id-not-hex",
        "id-not-ascii", "str-keys"])
def test_malformed_txt_is_ignored(properties: dict) -> None:
    assert parse_peer(properties, ["192.0.2.7"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


@pytest.mark.parametrize("port", [None, 0, -1, 65536, True, "7411", 7411.0])
def test_bad_port_is_ignored(port: object) -> None:
    assert parse_peer(txt(), ["192.0.2.7"], port, own_id=OWN, listen_host="0.0.0.0") is None


def test_only_addresses_this_node_can_reach_are_kept() -> None:
    hostile = ["not-an-ip", "", None, b"192.0.2.1", "224.0.0.251", "0.0.0.0", "255.255.255.255", "240.0.0.1",
               "2001:db8::1", "192.0.2.9", "192.0.2.9", "127.0.0.1"]
    peer = parse_peer(txt(), hostile, 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer is not None and peer.addresses == (("192.0.2.9", 7411), ("127.0.0.1", 7411))
    # Bound to loopback, a node can reach only loopback peers.
    peer = parse_peer(txt(), hostile, 7411, own_id=OWN, listen_host="127.0.0.1")
    assert peer is not None and peer.addresses == (("127.0.0.1", 7411),)
    # IPv6: no IPv4 peer, and no link-local address (its scope is not in the record).
    peer = parse_peer(txt(), ["fe80::1", "192.0.2.9", "2001:db8::1", "ff02::fb"], 7411, own_id=OWN, listen_host="::")
    assert peer is not None and peer.addresses == (("2001:db8::1", 7411),)
    # Nothing usable, no peer.
    assert parse_peer(txt(), ["224.0.0.251", "junk"], 7411, own_id=OWN, listen_host="0.0.0.0") is None


def test_addresses_per_announcement_are_bounded() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 200)]
    peer = parse_peer(txt(), many, 7411, own_id=OWN, listen_host="0.0.0.0")
    assert peer is not None and len(peer.addresses) == MAX_ADDRESSES


_value = st.one_of(st.none(), st.binary(max_size=60), st.text(max_size=60), st.integers())


@given(
    properties=st.one_of(
        st.dictionaries(st.one_of(st.binary(max_size=8), st.sampled_from([b"id", b"v"])), _value, max_size=6),
        st.fixed_dictionaries({b"id": _value, b"v": _value}),
        _value,
    ),
    addresses=st.lists(st.one_of(st.text(max_size=45), st.ip_addresses().map(str), _value), max_size=12),
    port=st.one_of(_value, st.integers(-(2 ** 70), 2 ** 70)),
    listen=st.sampled_from(["0.0.0.0", "127.0.0.1", "192.0.2.2", "::", "::1"]),
)
def test_hostile_announcements_never_raise(properties: object, addresses: list, port: object, listen: str) -> None:
    peer = parse_peer(properties, addresses, port, own_id=OWN, listen_host=listen)  # type: ignore[arg-type]
    if peer is not None:
        assert len(peer.node_id) == 20 and peer.node_id != OWN
        assert 0 < len(peer.addresses) <= MAX_ADDRESSES
        assert all(isinstance(h, str) and 0 < p < 65536 for h, p in peer.addresses)


# ---------------------------------------------------------------- what is remembered
def test_tracker_reports_news_only_and_stays_bounded() -> None:
    tracker = PeerTracker(OWN, "0.0.0.0", limit=3)
    first = tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7411)
    assert first == Peer(OTHER, (("192.0.2.1", 7411),))
    assert tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7411) is None          # heard again: no news
    assert tracker.heard("a", txt(OTHER), ["192.0.2.1"], 7412) is not None      # restarted on a new port
    assert tracker.heard("self", txt(OWN), ["192.0.2.2"], 7411) is None
    assert tracker.heard("junk", {b"id": b"?"}, ["192.0.2.2"], 7411) is None
    for i in range(10):
        tracker.heard(f"n{i}", txt(bytes([i]) * 20), [f"192.0.2.{10 + i}"], 7411)
    assert len(tracker) == 3
    assert tracker.addresses() == [("192.0.2.19", 7411), ("192.0.2.18", 7411), ("192.0.2.17", 7411)]
    assert tracker.gone("n9") is not None and tracker.gone("n9") is None
    assert ("192.0.2.19", 7411) not in tracker.addresses()
    # A forgotten peer heard again is news again.
    assert tracker.heard("n9", txt(bytes([9]) * 20), ["192.0.2.19"], 7411) is not None


async def test_browser_events_ignore_self_and_bound_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    found: list[Peer] = []
    discovery = Discovery(OWN, ("127.0.0.1", 7411), found.append)
    release = asyncio.Event()
    started: list[str] = []

    async def resolve(name: str) -> None:
        started.append(name)
        await release.wait()

    monkeypatch.setattr(discovery, "_resolve", resolve)
    added = discovery._on_change
    added(None, SERVICE_TYPE, discovery.name, ServiceStateChange.Added)
    for i in range(3 * MAX_RESOLVING):
        added(None, SERVICE_TYPE, f"flood-{i}.{SERVICE_TYPE}", ServiceStateChange.Added)
    await asyncio.sleep(0)
    assert discovery.name not in started
    assert len(started) == MAX_RESOLVING
    release.set()
    await discovery.close()


# ---------------------------------------------------------------- what is advertised
def _adapter(name: str, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
    return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24, name) for ip in ips], index=1)


def test_advertised_addresses_are_where_the_node_listens() -> None:
    adapters = [
        _adapter("lo", "127.0.0.1", ("::1", 0, 0)),
        _adapter("eth0", "192.0.2.2", ("2001:db8::2", 0, 0), ("fe80::2", 0, 2)),
        _adapter("wlan0", "198.51.100.4"),
    ]
    assert advertised_addresses("127.0.0.1", adapters) == ["127.0.0.1"]
    assert advertised_addresses("192.0.2.2", adapters) == ["192.0.2.2"]
    assert advertised_addresses("0.0.0.0", adapters) == ["192.0.2.2", "198.51.100.4"]
    assert advertised_addresses("::", adapters) == ["2001:db8::2"]
    # A host with nothing but loopback still advertises loopback (other nodes on it can use it).
    assert advertised_addresses("0.0.0.0", adapters[:1]) == ["127.0.0.1"]


# ---------------------------------------------------------------- the switch
def test_config_switch(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init()
    assert re.search(r"(?m)^mdns = true$", home.config_path.read_text())
    assert home.settings().mdns is True
    home.config_path.write_text(home.config_path.read_text().replace("mdns = true", "mdns = false"))
    assert home.settings().mdns is False
    home.config_path.write_text(home.config_path.read_text().replace("mdns = false", 'mdns = "no"'))
    with pytest.raises(HomeError, match="mdns must be true or false"):
        home.settings()


# ---------------------------------------------------------------- a network of the test's own
PROBE = r"""
import socket, sys
receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("", 0))
receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1"))
receiver.settimeout(5)
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
sender.sendto(b"aether-probe", ("224.0.0.251", receiver.getsockname()[1]))
data, _ = receiver.recvfrom(64)
sys.exit(0 if data == b"aether-probe" else 1)
"""
"""Whether multicast sent on loopback comes back on loopback (a random port: no mDNS responder hears it)."""


@dataclass
class Lan:
    prefix: list[str]
    """Runs a command in the test's network, with the suite's mDNS opt-out (conftest) lifted."""
    isolated: bool
    """A network namespace of the test's own, rather than this machine's loopback."""

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *command], capture_output=True, text=True, timeout=TIMEOUT,
                              stdin=subprocess.DEVNULL)


def _namespace() -> tuple[subprocess.Popen | None, str]:
    """A process holding a new user and network namespace whose loopback is up with multicast; or why not."""
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return None, f"{', '.join(missing)} not installed"
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--net", "sh", "-c",
         "ip link set lo up && ip link set lo multicast on && echo up && exec cat"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ready, _, _ = select.select([holder.stdout], [], [], TIMEOUT)
    if ready and holder.stdout.readline().strip() == "up":
        return holder, ""
    holder.kill()
    _, err = holder.communicate(timeout=TIMEOUT)
    return None, f"unshare: {err.strip() or 'no namespace'}"


@pytest.fixture
def lan() -> Iterator[Lan]:
    lifted = ["env", "-u", "AETHER_MDNS"]
    holder, why_not = _namespace()
    if holder is not None:
        enter = ["nsenter", "--target", str(holder.pid), "--user", "--net", "--preserve-credentials", "--"]
        lan = Lan([*lifted, *enter], isolated=True)
        probe = lan.run(sys.executable, "-c", PROBE)
        if probe.returncode == 0:
            yield lan
            holder.stdin.close()
            holder.wait(timeout=TIMEOUT)
            return
        why_not = f"no multicast in a network namespace: {probe.stderr.strip()[-200:]}"
        holder.kill()
        holder.wait(timeout=TIMEOUT)
    probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip(f"mDNS discovery between daemons not tested: multicast is unavailable here ({why_not}; "
                    f"and no multicast on this machine's loopback: {probe.stderr.strip()[-200:]})")
    yield Lan(lifted, isolated=False)


class Lines:
    """A subprocess whose stdout lines are read by a thread, so every wait has a bound."""

    def __init__(self, command: list[str]):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, match, timeout: float = TIMEOUT) -> dict:
        """The first JSON line for which ``match`` holds."""
        deadline = time.monotonic() + timeout
        seen = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait(timeout=TIMEOUT)}): {seen} {self.proc.stderr.read()}")
            seen.append(line)
            event = json.loads(line)
            if match(event):
                return event
        raise AssertionError(f"nothing matching within {timeout} s: {seen}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)


WATCHER = r"""
import asyncio, json, sys
from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

TYPE = "_aether._udp.local."

def say(**event):
    print(json.dumps(event), flush=True)

async def main():
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    tasks = set()

    async def resolve(name):
        info = AsyncServiceInfo(TYPE, name)
        if await info.async_request(zc.zeroconf, 3000):
            txt = {k.decode(): v.decode() for k, v in info.properties.items() if v is not None}
            say(event="added", name=name, port=info.port, addresses=info.parsed_addresses(), txt=txt)

    def changed(zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Removed:
            say(event="removed", name=name)
        elif state_change is ServiceStateChange.Added:
            task = asyncio.ensure_future(resolve(name))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(zc.zeroconf, TYPE, handlers=[changed])
    say(event="browsing")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await browser.async_cancel()
    await zc.async_close()

asyncio.run(main())
"""
"""An independent DNS-SD browser (python-zeroconf, as any other client would use it) printing what it sees."""


@pytest.fixture
def processes() -> Iterator[list]:
    started: list = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, Daemon):
            proc.stop()
        else:
            proc.close()


def _start(processes: list, lan: Lan, *homes: Path | tuple[Path, str]) -> list[Daemon]:
    """Daemons in the test's network, started side by side, each ready; a home may come with one option."""
    daemons = [Daemon(*(h if isinstance(h, tuple) else (h,)), prefix=lan.prefix) for h in homes]
    processes.extend(daemons)
    for daemon in daemons:
        daemon.wait_ready()
    return daemons


def _stopped_cleanly(daemon: Daemon) -> None:
    assert daemon.stop() == 0, daemon.stderr()
    log = daemon.stderr()
    assert "Traceback" not in log and "discovery" not in log, log


def test_a_daemon_announces_itself_and_says_goodbye(tmp_path: Path, lan: Lan, processes: list) -> None:
    home = tmp_path / "a"
    init_homes(home)
    watcher = Lines([*lan.prefix, sys.executable, "-c", WATCHER])
    processes.append(watcher)
    watcher.wait_for(lambda e: e["event"] == "browsing")
    [daemon] = _start(processes, lan, home)
    name = f"aether-{daemon.node_id}.{SERVICE_TYPE}"
    seen = watcher.wait_for(lambda e: e["event"] == "added" and e["name"] == name)
    assert seen["port"] == daemon.port
    assert seen["addresses"] == ["127.0.0.1"]
    assert seen["txt"] == {"id": daemon.node_id, "v": "1"}
    _stopped_cleanly(daemon)
    watcher.wait_for(lambda e: e["event"] == "removed" and e["name"] == name)


def test_two_daemons_find_each_other_with_no_address_given(tmp_path: Path, lan: Lan, processes: list) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    init_homes(a, b, c)
    da, db = _start(processes, lan, a, b)
    wait_joined([a, b], at_least=1)
    # They share patterns: published on one, fetched byte for byte on the other.
    data = pattern("Pattern-MDNS-001", "Found On The Local Network")
    path = write(tmp_path / "patterns", "mdns.md", data)
    ok(a, "publish", str(path))
    out = tmp_path / "fetched.md"
    ok(b, "fetch", sha(data), "-o", str(out))
    assert out.read_bytes() == data
    # A node that comes later is found and joins as well.
    _start(processes, lan, c)
    wait_joined([a, b, c], at_least=2)
    assert sha(ok(c, "fetch", "Pattern-MDNS-001", binary=True).stdout) == sha(data)
    for daemon in (da, db):
        _stopped_cleanly(daemon)


def test_switched_off_daemons_neither_announce_nor_browse(tmp_path: Path, lan: Lan, processes: list) -> None:
    off_flag, off_config, on_1, on_2 = (tmp_path / n for n in ("off-flag", "off-config", "on-1", "on-2"))
    init_homes(off_flag, off_config, on_1, on_2)
    config = off_config / "config.toml"
    config.write_text(config.read_text().replace("mdns = true", "mdns = false"))
    _start(processes, lan, (off_flag, "--no-mdns"), off_config)
    # Two daemons with discovery on, started afterwards, find each other: multicast works
    # and the switched-off ones, listening all along, had every chance to be seen and to see.
    _start(processes, lan, on_1, on_2)
    wait_joined([on_1, on_2], at_least=1)
    counts = [asyncio.run(_contacts(home)) for home in (off_flag, off_config)]
    assert counts == [0, 0]
    if lan.isolated:
        assert [asyncio.run(_contacts(home)) for home in (on_1, on_2)] == [1, 1]


def test_the_environment_switch_turns_discovery_off_and_the_flag_turns_it_back_on(
    tmp_path: Path, lan: Lan, processes: list
) -> None:
    off_env, on_flag, on_plain = (tmp_path / n for n in ("off-env", "on-flag", "on-plain"))
    init_homes(off_env, on_flag, on_plain)
    switched_off = [*lan.prefix, "env", "AETHER_MDNS=0"]
    daemons = [Daemon(off_env, prefix=switched_off), Daemon(on_flag, "--mdns", prefix=switched_off)]
    processes.extend(daemons)
    for daemon in daemons:
        daemon.wait_ready()
    _start(processes, lan, on_plain)
    # --mdns wins over AETHER_MDNS=0: that daemon and the one with discovery on meet.
    wait_joined([on_flag, on_plain], at_least=1)
    assert asyncio.run(_contacts(off_env)) == 0
    if lan.isolated:
        assert [asyncio.run(_contacts(home)) for home in (on_flag, on_plain)] == [1, 1]


ALL_INTERFACES = r"""
import asyncio, os, sys
from aether.node.discovery import Discovery

async def main():
    found = {}
    done = asyncio.Event()

    def recorder(port):
        def on_peer(peer):
            found[port] = peer
            if len(found) == 2:
                done.set()
        return on_peer

    nodes = [Discovery(os.urandom(20), ("0.0.0.0", port), recorder(port)) for port in (7411, 7412)]
    for node in nodes:
        await node.start()
    try:
        await asyncio.wait_for(done.wait(), float(sys.argv[1]))
    finally:
        for node in nodes:
            await node.close()
    print(sorted((port, peer.addresses) for port, peer in found.items()))

asyncio.run(main())
"""


def test_nodes_listening_on_every_interface_advertise_the_hosts_addresses(lan: Lan) -> None:
    if not lan.isolated:
        pytest.skip("listening on 0.0.0.0 would announce on this machine's real interfaces")
    # The namespace has loopback only, so that is the address each node announces.
    result = lan.run(sys.executable, "-c", ALL_INTERFACES, str(TIMEOUT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(7411, (('127.0.0.1', 7412),)), (7412, (('127.0.0.1', 7411),))]"


def test_daemon_serves_on_when_discovery_cannot_start(tmp_path: Path, lan: Lan, processes: list) -> None:
    if not lan.isolated:
        pytest.skip("needs a network namespace of its own, to take the mDNS port away")
    # A socket holding UDP 5353 without SO_REUSEADDR: multicast DNS cannot bind here.
    squatter = Lines([*lan.prefix, sys.executable, "-c", (
        "import json, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 5353)); "
        "print(json.dumps({'event': 'bound'}), flush=True); sys.stdin.read()")])
    processes.append(squatter)
    squatter.wait_for(lambda e: e["event"] == "bound")
    home = tmp_path / "a"
    init_homes(home)
    [daemon] = _start(processes, lan, (home, "--mdns"))
    deadline = time.monotonic() + TIMEOUT
    while "no discovery on the local network" not in daemon.stderr() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "WARNING aether.node.daemon: no discovery on the local network" in daemon.stderr(), daemon.stderr()
    assert ok(home, "--json", "ls").returncode == 0  # the control socket answers
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


def test_daemon_help_shows_the_switch() -> None:
    from .test_cli_patterns import run

    help_text = run(None, "daemon", "--help").stdout
    assert "--no-mdns" in help_text and "AETHER_MDNS" in help_text

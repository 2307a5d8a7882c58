"""kill -9 a publishing daemon, many times: what it acknowledged must survive.

    python -m aether.simulations.crash_loop [--rounds 200] [--seed 1] [--files 80] [--peers 0] [--json]

A real ``aether-node daemon`` runs on a home of its own (and ``--peers`` more
daemons it replicates to). Each round writes ``--files`` new valid pattern
files and starts one ``aether-node publish`` of all of them. After a number of
acknowledgements drawn from the seed, and a drawn part of one more publish, it
sends SIGKILL to the daemon or, every fourth round, to the publisher itself.
Then:

* the database file passes ``PRAGMA integrity_check`` (read straight after the
  kill, before anything reopens it for writing);
* the daemon is started again on the same home and port;
* every publish the CLI acknowledged (its ``<hash> <id> <path>`` line, printed
  only once the daemon answered) is held by the daemon as its own, complete
  pattern, and fetching it gives back the exact bytes. A sample of each round's
  acknowledged patterns is fetched with ``aether-node fetch HASH``, the others
  through the same daemon operation on the control socket (one CLI start per
  pattern would cost most of the run's time).

Any violation stops the run and is reported; ``docs/faults.md`` records the
results. The test suite runs a few rounds of the same loop
(tests/test_faults.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aether.node.control import ControlClient
from aether.simulations.bench_dht import machine, pattern_document

EXE = Path(sys.executable).with_name("aether-node")
READY = re.compile(r"^listening on (\S+):(\d+) node ([0-9a-f]{40})$")
ACK = re.compile(r"^(?P<hash>[0-9a-f]{64}) (?P<id>Pattern-\S+) (?P<path>.+)$")
TIMEOUT = 60.0
"""Upper bound of every wait on a process; no check is about elapsed time."""


class CrashLoopError(AssertionError):
    """An acknowledged publish was lost, the database is damaged, or a process misbehaved."""

    report: Report | None = None
    """What the run had done when it stopped."""


def _env() -> dict[str, str]:
    """The environment of every process started here: no inherited home, no mDNS, unbuffered output.

    Unbuffered, so that each acknowledgement line reaches the pipe the moment it is
    printed; a publisher killed with lines still in its buffer would hide what it saw.
    """
    env = {k: v for k, v in os.environ.items() if k != "AETHER_HOME"}
    env.update(AETHER_MDNS="0", PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    """A UDP port on 127.0.0.1 that nothing holds now (the daemon keeps it across restarts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``aether-node --home HOME ARGS``, bytes in and out, bounded."""
    return subprocess.run([str(EXE), "--home", str(home), *args], capture_output=True, timeout=TIMEOUT,
                          env=_env(), stdin=subprocess.DEVNULL)


def integrity(db: Path) -> str:
    """``PRAGMA integrity_check`` of a database no process has open: "ok" or what is wrong."""
    with sqlite3.connect(db, timeout=TIMEOUT) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    conn.close()
    return "; ".join(str(r[0]) for r in rows)


class DaemonProcess:
    """``aether-node daemon`` on a fixed loopback port, with its stderr in a file beside the home."""

    def __init__(self, home: Path, port: int, bootstrap: list[str] = ()) -> None:
        self.home, self.port = home, port
        self.log = home.parent / f"{home.name}-daemon.log"
        args = [str(EXE), "--home", str(home), "daemon", "--listen", f"127.0.0.1:{port}"]
        for peer in bootstrap:
            args += ["--bootstrap", peer]
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                         env=_env())
        self._wait_ready()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        """Until the ready line; a daemon that exits first, or says nothing in time, is an error."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(TIMEOUT):
                self.kill()
                raise CrashLoopError(f"{self.home.name}: no ready line within {TIMEOUT:.0f} s; {self.stderr()}")
        line = self.proc.stdout.readline().decode("utf-8", "replace").strip()
        if not READY.match(line):
            self.kill()
            raise CrashLoopError(f"{self.home.name}: daemon did not start ({line!r}); {self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL: no signal handler runs, no contact is saved, the database is not closed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        self.proc.stdout.close()

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=TIMEOUT)
        self.proc.stdout.close()
        return code


class Publisher:
    """One ``aether-node publish FILES...``, its acknowledgement lines gathered as they come."""

    def __init__(self, home: Path, files: list[Path]) -> None:
        self.proc = subprocess.Popen([str(EXE), "--home", str(home), "publish", *map(str, files)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=_env())
        self.lines: list[str] = []
        self.errors = b""
        self._out = threading.Thread(target=self._read, daemon=True)
        self._out.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, count: int) -> None:
        """Until ``count`` publishes are acknowledged, or the publisher has exited."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.lines) < count and self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise CrashLoopError(f"publish acknowledged {len(self.lines)} of {count} files in {TIMEOUT:.0f} s")
            time.sleep(0.005)

    def finish(self) -> dict[str, Path]:
        """Wait for the end (natural or killed); hash -> file of every acknowledged publish."""
        _, self.errors = self.proc.communicate(timeout=TIMEOUT)
        self._out.join(timeout=TIMEOUT)
        acked: dict[str, Path] = {}
        for line in self.lines:
            match = ACK.match(line)
            if match is None:
                raise CrashLoopError(f"publish printed a line that is not an acknowledgement: {line!r}")
            acked[match["hash"]] = Path(match["path"])
        return acked


@dataclass
class Report:
    """What a run did and found; ``lost`` and ``damaged`` must stay empty."""

    rounds: int = 0
    daemon_kills: int = 0
    publisher_kills: int = 0
    attempted: int = 0
    acknowledged: int = 0
    fetched_cli: int = 0
    fetched_control: int = 0
    publisher_exit_codes: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _held(home: Path) -> dict[str, dict]:
    """hash -> ``ls`` row, from the running daemon."""
    async def ls() -> dict:
        async with await ControlClient.connect(home, timeout=TIMEOUT, request_timeout=TIMEOUT) as client:
            return await client.request("ls", {})
    return {p["hash"]: p for p in asyncio.run(ls())["patterns"] if p["hash"]}


def _fetch_control(home: Path, hashes: list[str]) -> dict[str, bytes]:
    """hash -> bytes, through the daemon's ``fetch`` operation (what ``aether-node fetch`` asks)."""
    async def fetch() -> dict[str, bytes]:
        async with await ControlClient.connect(home, timeout=TIMEOUT, request_timeout=TIMEOUT) as client:
            return {h: (await client.request("fetch", {"ref": h, "author": None}))["data"] for h in hashes}
    return asyncio.run(fetch())


def verify(home: Path, acked: dict[str, Path], cli_sample: list[str], report: Report) -> None:
    """Every acknowledged publish is held complete as the node's own, and fetches as its exact bytes."""
    held = _held(home)
    for h, path in acked.items():
        row = held.get(h)
        if row is None or row["role"] != "own" or not row["pinned"] or not row["complete"]:
            report.lost.append(f"{h} ({path.name}): held as {row}")
    for h in cli_sample:
        result = cli(home, "fetch", h)
        if result.returncode != 0 or result.stdout != acked[h].read_bytes():
            report.lost.append(f"{h}: aether-node fetch exited {result.returncode}: {result.stderr[-300:]!r}")
        report.fetched_cli += 1
    rest = [h for h in acked if h not in cli_sample]
    for h, data in _fetch_control(home, rest).items():
        if data != acked[h].read_bytes() or hashlib.sha256(data).hexdigest() != h:
            report.lost.append(f"{h}: fetched bytes differ from the file")
        report.fetched_control += 1
    if report.lost:
        raise CrashLoopError("acknowledged publishes lost: " + "; ".join(report.lost[:5]))


def init_home(home: Path) -> None:
    result = cli(home, "init")
    if result.returncode != 0:
        raise CrashLoopError(f"init {home}: {result.stderr!r}")


def crash_loop(root: Path, rounds: int, *, seed: int = 1, files: int = 80, peers: int = 0,
               publisher_kill_every: int = 4, cli_fetches: int = 1, minutes: float | None = None,
               say=lambda line: None) -> Report:
    """Run ``rounds`` publish-and-kill rounds under ``root``; raises CrashLoopError at the first violation.

    ``minutes`` bounds the run on a busy machine: no round starts after it (the
    report says how many ran).

    ``cli_fetches`` of each round's acknowledged patterns are fetched with the
    CLI, the rest through the control socket; at the end every one acknowledged
    during the whole run is fetched once more.
    """
    rng = random.Random(f"crash-loop-{seed}")
    started = time.monotonic()
    report = Report()
    home = root / "node"
    init_home(home)
    peer_daemons: list[DaemonProcess] = []
    for i in range(peers):
        init_home(root / f"peer{i}")
    acked: dict[str, Path] = {}
    port = free_port()
    daemon: DaemonProcess | None = None
    try:
        if peers:
            peer_daemons.append(DaemonProcess(root / "peer0", free_port()))
        bootstrap = [peer_daemons[0].address] if peers else []
        daemon = DaemonProcess(home, port, bootstrap)
        peer_daemons += [DaemonProcess(root / f"peer{i}", free_port(), [daemon.address]) for i in range(1, peers)]
        number = 0
        for r in range(rounds):
            if minutes is not None and time.monotonic() - started > minutes * 60:
                say(f"stopping after {r} rounds: the {minutes:g}-minute budget is spent")
                break
            src = root / "src" / f"round-{r:04d}"
            src.mkdir(parents=True)
            batch = []
            for _ in range(files):
                number += 1
                path = src / f"p{number:05d}.md"
                path.write_bytes(pattern_document(rng, number, rng.randint(600, 24_000)))
                batch.append(path)
            report.attempted += len(batch)
            # The kill lands after a drawn number of acknowledgements, then a drawn
            # fraction of one publish (~20 ms): mid-run whatever the machine's speed.
            after, delay = rng.randrange(files), rng.uniform(0.0, 0.03)
            kill_publisher = r % publisher_kill_every == publisher_kill_every - 1
            publisher = Publisher(home, batch)
            publisher.wait_for(after)
            time.sleep(delay)
            if kill_publisher:
                publisher.proc.kill()
                report.publisher_kills += 1
            else:
                daemon.kill()
                report.daemon_kills += 1
            new = publisher.finish()
            code = str(publisher.proc.returncode)
            report.publisher_exit_codes[code] = report.publisher_exit_codes.get(code, 0) + 1
            if not kill_publisher:
                check = integrity(home / "node.db")
                if check != "ok":
                    report.damaged.append(f"round {r}: {check}")
                    raise CrashLoopError(f"round {r}: integrity_check says {check}")
                daemon = DaemonProcess(home, port, bootstrap)
            elif daemon.proc.poll() is not None:
                raise CrashLoopError(f"round {r}: the daemon died with its publisher: {daemon.stderr()}")
            acked.update(new)
            report.acknowledged += len(new)
            report.rounds += 1
            verify(home, new, rng.sample(sorted(new), min(cli_fetches, len(new))), report)
            # What earlier rounds acknowledged is still held (one ls, no fetch).
            held = _held(home)
            missing = [h for h in acked if h not in held or not held[h]["complete"]]
            if missing:
                report.lost += missing
                raise CrashLoopError(f"round {r}: earlier acknowledged patterns gone: {missing[:5]}")
            say(f"round {r + 1}/{rounds}: killed the {'publisher' if kill_publisher else 'daemon'} after "
                f"{after} acknowledgements + {delay * 1000:.0f} ms; {len(new)}/{len(batch)} acknowledged, "
                f"{len(acked)} in all, intact")
        verify(home, acked, [], report)
        if daemon.stop() != 0:
            raise CrashLoopError(f"the daemon did not stop cleanly: {daemon.stderr()}")
        daemon = None
        check = integrity(home / "node.db")
        if check != "ok":
            report.damaged.append(f"after the run: {check}")
            raise CrashLoopError(f"after the run: integrity_check says {check}")
    except CrashLoopError as exc:
        exc.report = report
        raise
    finally:
        for d in [daemon, *peer_daemons]:
            if d is not None and d.proc.poll() is None:
                d.kill()
        report.seconds = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aether.simulations.crash_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--files", type=int, default=80, help="pattern files per publish (default 80)")
    parser.add_argument("--peers", type=int, default=0, help="peer daemons the node replicates to (default 0)")
    parser.add_argument("--minutes", type=float, help="start no round after this many minutes")
    parser.add_argument("--dir", type=Path, help="keep the homes here (default: a temporary folder, removed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
        try:
            report = crash_loop(root, args.rounds, seed=args.seed, files=args.files, peers=args.peers,
                                minutes=args.minutes, say=say)
            failure = None
        except CrashLoopError as exc:
            report, failure = exc.report, str(exc)
    result = {"command": " ".join(["crash_loop", *(argv if argv is not None else sys.argv[1:])]),
              "date": date, "machine": machine(),
              "report": asdict(report) if report else None, "failure": failure}
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())

"""The control channel over real sockets: round trips, errors, permissions, framing abuse, TCP fallback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest

from aether.node import control
from aether.node.control import (
    CONFIG_NAME,
    MAX_FRAME,
    SOCKET_NAME,
    ControlClient,
    ControlError,
    ControlServer,
    DaemonNotRunning,
)

BOUND = 5.0  # an upper bound on waits that should end at once, never a timing assertion


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def echo_handler(op: str, args: dict[str, Any]) -> Any:
    if op == "echo":
        return args.get("value")
    if op == "missing":
        raise ControlError("not-found", f"no pattern named {args.get('name')!r}")
    if op == "crash":
        raise RuntimeError("boom")
    if op == "unserialisable":
        return {1, 2, 3}
    raise ControlError("unknown-op", f"no operation {op!r}")


@pytest.fixture(autouse=True)
def no_loop_errors(caplog):
    """Errors the event loop logs on its own (a connection task dying badly) fail the test."""
    yield
    errors = [r for r in caplog.get_records("call") + caplog.get_records("teardown")
              if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def server(tmp_path: Path):
    srv = ControlServer(tmp_path, echo_handler)
    await srv.start()
    yield srv
    await srv.close()


async def raw_connect(srv: ControlServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if srv.transport == "tcp":
        return await asyncio.open_connection("127.0.0.1", srv.port)
    return await asyncio.open_unix_connection(str(srv.socket_path))


async def read_reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(BOUND):
        length = int.from_bytes(await reader.readexactly(4), "big")
        return msgpack.unpackb(await reader.readexactly(length), raw=False)


async def raw_exchange(reader, writer, body: bytes) -> dict[str, Any]:
    writer.write(len(body).to_bytes(4, "big") + body)
    await writer.drain()
    return await read_reply(reader)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(BOUND):
        try:
            assert await reader.read(1) == b""
        except ConnectionResetError:
            pass


async def assert_serving(home: Path) -> None:
    async with await ControlClient.connect(home) as client:
        assert await client.request("echo", {"value": "still here"}) == "still here"


# --- round trips -------------------------------------------------------------


async def test_round_trip_of_values(server: ControlServer, tmp_path: Path):
    assert server.transport == "unix"
    values = [
        b"\x00\xffbytes",
        "text \u00e9\u2603",
        42,
        -(2**63),
        None,
        True,
        3.5,
        {"nested": [1, b"two", {"three": [None, "4"]}], "empty": {}},
        b"x" * (1024 * 1024),  # a 1 MiB file, as a publish carries
    ]
    async with await ControlClient.connect(tmp_path) as client:
        for value in values:
            assert await client.request("echo", {"value": value}) == value


async def test_args_default_to_empty_map(server: ControlServer, tmp_path: Path):
    async with await ControlClient.connect(tmp_path) as client:
        assert await client.request("echo") is None


async def test_handler_control_error_passes_through(server: ControlServer, tmp_path: Path):
    async with await ControlClient.connect(tmp_path) as client:
        with pytest.raises(ControlError) as info:
            await client.request("missing", {"name": "knot"})
        assert info.value.reason == "not-found"
        assert info.value.message == "no pattern named 'knot'"
        # the connection goes on after an error reply
        assert await client.request("echo", {"value": 1}) == 1


async def test_handler_crash_is_internal_and_logged(server: ControlServer, tmp_path: Path, caplog):
    caplog.set_level(logging.ERROR, logger="aether.node.control")
    async with await ControlClient.connect(tmp_path) as client:
        with pytest.raises(ControlError) as info:
            await client.request("crash")
        assert info.value.reason == "internal"
        assert "RuntimeError" in info.value.message
        with pytest.raises(ControlError) as info:
            await client.request("unserialisable")
        assert info.value.reason == "internal"
    assert any(r.exc_info and "crash" in r.getMessage() for r in caplog.records)
    await assert_serving(tmp_path)


# --- files and permissions ---------------------------------------------------


async def test_socket_is_owner_only_from_creation(tmp_path: Path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        if Path(dst).name == SOCKET_NAME:
            # at the moment it becomes reachable under its name it is already narrowed,
            # and before that it lived in a private directory
            seen.append((mode(src), mode(Path(src).parent), stat.S_ISSOCK(os.stat(src).st_mode)))
        return real_replace(src, dst)

    monkeypatch.setattr(control.os, "replace", spy)
    srv = ControlServer(tmp_path, echo_handler)
    await srv.start()
    try:
        monkeypatch.setattr(control.os, "replace", real_replace)
        assert seen == [(0o600, 0o700, True)]
        sock = tmp_path / SOCKET_NAME
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert mode(sock) == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == [SOCKET_NAME]  # staging directory gone
    finally:
        await srv.close()


async def test_stale_socket_is_replaced(tmp_path: Path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()  # a daemon killed with -9 leaves the file behind
    old_inode = os.stat(tmp_path / SOCKET_NAME).st_ino
    with pytest.raises(DaemonNotRunning):
        await ControlClient.connect(tmp_path)
    srv = ControlServer(tmp_path, echo_handler)
    await srv.start()
    try:
        assert os.stat(tmp_path / SOCKET_NAME).st_ino != old_inode
        assert mode(tmp_path / SOCKET_NAME) == 0o600
        await assert_serving(tmp_path)
    finally:
        await srv.close()


async def test_stale_control_json_removed_in_unix_mode(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"transport": "tcp", "port": 9, "token": "00"}))
    srv = ControlServer(tmp_path, echo_handler)
    await srv.start()
    try:
        assert not (tmp_path / CONFIG_NAME).exists()
        await assert_serving(tmp_path)
    finally:
        await srv.close()


async def test_close_removes_socket_and_drops_clients(tmp_path: Path):
    srv = ControlServer(tmp_path, echo_handler)
    await srv.start()
    client = await ControlClient.connect(tmp_path)
    assert await client.request("echo", {"value": 1}) == 1
    await srv.close()
    assert not (tmp_path / SOCKET_NAME).exists()
    with pytest.raises(ControlError) as info:
        await client.request("echo", {"value": 2})
    assert info.value.reason == "disconnected"
    await client.close()
    with pytest.raises(DaemonNotRunning):
        await ControlClient.connect(tmp_path)


async def test_close_leaves_a_newer_daemons_socket(tmp_path: Path):
    first = ControlServer(tmp_path, echo_handler)
    await first.start()
    second = ControlServer(tmp_path, echo_handler)  # as if the home changed hands in between
    await second.start()
    await first.close()
    try:
        await assert_serving(tmp_path)
    finally:
        await second.close()
    assert not (tmp_path / SOCKET_NAME).exists()


# --- no daemon ---------------------------------------------------------------


async def test_connect_without_daemon(tmp_path: Path):
    with pytest.raises(DaemonNotRunning) as info:
        await ControlClient.connect(tmp_path)
    assert info.value.reason == "no-daemon"
    assert str(tmp_path) in info.value.message
    with pytest.raises(DaemonNotRunning):
        await ControlClient.connect(tmp_path / "no-such-home")


async def test_stale_socket_nobody_listening(tmp_path: Path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    try:
        with pytest.raises(DaemonNotRunning):
            await ControlClient.connect(tmp_path)
    finally:
        stale.close()


async def test_stale_control_json_nobody_listening(tmp_path: Path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on, most likely
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"transport": "tcp", "port": port, "token": "ab" * 32}))
    with pytest.raises(DaemonNotRunning):
        await ControlClient.connect(tmp_path)


async def test_garbled_control_json(tmp_path: Path):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ControlError) as info:
        await ControlClient.connect(tmp_path)
    assert info.value.reason == "unavailable"


# --- framing abuse -----------------------------------------------------------


async def test_oversized_frame_refused_and_closed(server: ControlServer, tmp_path: Path):
    reader, writer = await raw_connect(server)
    writer.write((MAX_FRAME + 1).to_bytes(4, "big"))
    await writer.drain()
    reply = await read_reply(reader)
    assert reply["ok"] is False and reply["error"]["reason"] == "too-large"
    await assert_closed(reader)
    writer.close()
    await assert_serving(tmp_path)


async def test_oversized_request_refused_by_client(server: ControlServer, tmp_path: Path):
    async with await ControlClient.connect(tmp_path) as client:
        with pytest.raises(ControlError) as info:
            await client.request("echo", {"value": b"x" * (MAX_FRAME + 1)})
        assert info.value.reason == "too-large"
        assert await client.request("echo", {"value": 5}) == 5


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1\xc1\xc1",  # never valid msgpack
        b"",
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({"args": {}}),  # no op
        msgpack.packb({"op": 7, "args": {}}),  # op not a string
        msgpack.packb({"op": "echo", "args": [1]}),  # args not a map
        msgpack.packb({1: "int key"}),  # map keys must be strings
        msgpack.packb({"op": "echo"}) + b"\x00",  # trailing bytes
    ],
)
async def test_malformed_request_is_bad_request(server: ControlServer, tmp_path: Path, body: bytes):
    reader, writer = await raw_connect(server)
    try:
        reply = await raw_exchange(reader, writer, body)
        assert reply["ok"] is False and reply["error"]["reason"] == "bad-request"
        # framing was intact, so the same connection goes on
        good = msgpack.packb({"op": "echo", "args": {"value": "ok"}}, use_bin_type=True)
        assert await raw_exchange(reader, writer, good) == {"ok": True, "result": "ok"}
    finally:
        writer.close()
    await assert_serving(tmp_path)


async def test_client_leaving_mid_frame(server: ControlServer, tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING)
    for partial in (b"\x00\x00", b"\x00\x00\x00\x64" + b"x" * 10):
        reader, writer = await raw_connect(server)
        writer.write(partial)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await assert_serving(tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_idle_connection_closed(tmp_path: Path):
    srv = ControlServer(tmp_path, echo_handler, idle_timeout=0.1)
    await srv.start()
    try:
        reader, writer = await raw_connect(srv)
        await assert_closed(reader)  # closed by the server, well before BOUND
        writer.close()
    finally:
        await srv.close()


# --- concurrency and timeouts ------------------------------------------------


async def test_many_concurrent_clients(server: ControlServer, tmp_path: Path):
    async def one(n: int) -> list[Any]:
        async with await ControlClient.connect(tmp_path) as client:
            return [await client.request("echo", {"value": [n, i]}) for i in range(5)]

    results = await asyncio.gather(*(one(n) for n in range(20)))
    assert results == [[[n, i] for i in range(5)] for n in range(20)]


async def test_concurrent_requests_on_one_client(server: ControlServer, tmp_path: Path):
    async with await ControlClient.connect(tmp_path) as client:
        results = await asyncio.gather(*(client.request("echo", {"value": n}) for n in range(10)))
    assert results == list(range(10))


async def test_request_timeout(tmp_path: Path):
    release = asyncio.Event()

    async def stuck(op: str, args: dict[str, Any]) -> Any:
        if op == "hang":
            await release.wait()
        return op

    srv = ControlServer(tmp_path, stuck)
    await srv.start()
    try:
        client = await ControlClient.connect(tmp_path)
        with pytest.raises(ControlError) as info:
            await client.request("hang", timeout=0.3)
        assert info.value.reason == "timeout"
        assert "'hang'" in info.value.message and "0.3 s" in info.value.message
        # the late reply must not be taken for another request's: the connection is dropped
        with pytest.raises(ControlError) as info:
            await client.request("ping")
        assert info.value.reason == "closed"
        await client.close()
        async with await ControlClient.connect(tmp_path) as again:
            assert await again.request("ping") == "ping"
    finally:
        release.set()
        await srv.close()


# --- TCP fallback ------------------------------------------------------------


async def test_tcp_fallback_with_token(tmp_path: Path):
    srv = ControlServer(tmp_path, echo_handler, transport="tcp")
    await srv.start()
    try:
        config = tmp_path / CONFIG_NAME
        assert mode(config) == 0o600
        data = json.loads(config.read_text())
        assert data["transport"] == "tcp" and data["port"] == srv.port
        assert len(bytes.fromhex(data["token"])) == 32
        assert not (tmp_path / SOCKET_NAME).exists()
        async with await ControlClient.connect(tmp_path) as client:
            assert await client.request("echo", {"value": {"k": b"v"}}) == {"k": b"v"}
            with pytest.raises(ControlError) as info:
                await client.request("missing", {"name": "x"})
            assert info.value.reason == "not-found"
    finally:
        await srv.close()
    assert not (tmp_path / CONFIG_NAME).exists()


@pytest.mark.parametrize("token", [None, "00" * 32, 12345, "short"])
async def test_tcp_wrong_or_missing_token(tmp_path: Path, token: Any):
    srv = ControlServer(tmp_path, echo_handler, transport="tcp")
    await srv.start()
    try:
        request: dict[str, Any] = {"op": "echo", "args": {"value": 1}}
        if token is not None:
            request["token"] = token
        reader, writer = await raw_connect(srv)
        reply = await raw_exchange(reader, writer, msgpack.packb(request, use_bin_type=True))
        assert reply["ok"] is False and reply["error"]["reason"] == "unauthorized"
        await assert_closed(reader)
        writer.close()
        async with await ControlClient.connect(tmp_path) as client:  # the real token still works
            assert await client.request("echo", {"value": 2}) == 2
    finally:
        await srv.close()


async def test_tcp_garbage_is_unauthorized(tmp_path: Path):
    srv = ControlServer(tmp_path, echo_handler, transport="tcp")
    await srv.start()
    try:
        reader, writer = await raw_connect(srv)
        reply = await raw_exchange(reader, writer, b"\xc1garbage")
        assert reply["error"]["reason"] == "unauthorized"
        await assert_closed(reader)
        writer.close()
    finally:
        await srv.close()


async def test_long_home_path_falls_back_to_tcp(tmp_path: Path):
    home = tmp_path / ("h" * 60) / ("o" * 60)
    home.mkdir(parents=True)
    assert len(os.fsencode(home / SOCKET_NAME)) > 108
    stale = home / SOCKET_NAME
    srv = ControlServer(home, echo_handler)
    await srv.start()
    try:
        assert srv.transport == "tcp"
        assert not stale.exists()
        async with await ControlClient.connect(home) as client:
            assert await client.request("echo", {"value": "far"}) == "far"
    finally:
        await srv.close()
    with pytest.raises(DaemonNotRunning):
        await ControlClient.connect(home)


async def test_forcing_unix_on_a_long_path_is_a_clear_error(tmp_path: Path):
    home = tmp_path / ("h" * 120)
    home.mkdir()
    with pytest.raises(ControlError) as info:
        await ControlServer(home, echo_handler, transport="unix").start()
    assert info.value.reason == "unavailable" and "too long" in info.value.message


async def test_tcp_mode_removes_stale_socket(tmp_path: Path):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    srv = ControlServer(tmp_path, echo_handler, transport="tcp")
    await srv.start()
    try:
        assert not (tmp_path / SOCKET_NAME).exists()
        await assert_serving(tmp_path)
    finally:
        await srv.close()

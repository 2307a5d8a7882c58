"""The local control channel between the CLI and the home's running daemon.

When a daemon runs on a home, every CLI command (publish, fetch, search,
status, ...) asks it through this channel instead of starting a second node:
the command is fast, and the home's database and UDP port keep one owner.

Access control is the file system. The daemon serves a Unix domain socket at
``<home>/control.sock`` that only its owner can open (mode 0600, and it never
exists with wider rights: it is bound inside a fresh 0700 directory, narrowed,
then renamed into place), so another user of the machine is refused by the
kernel before any byte reaches us. No token is needed there.

Where that is impossible (no ``AF_UNIX``, as on Windows, or a home path longer
than the platform's socket-path limit) the daemon listens on loopback TCP on a
random port instead. Any local user can reach a loopback port, so there a
random 32-byte token is the access control: the daemon writes the port and the
token to ``<home>/control.json`` (mode 0600, written atomically) and refuses,
then disconnects, any request that does not carry the token.

Each message is a 4-byte big-endian length and one msgpack map, at most
:data:`MAX_FRAME` bytes (a publish may carry a whole file). A request is
``{"op": str, "args": map}`` (plus ``"token"`` over TCP); a reply is
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"reason", "message"}}``.
A connection carries any number of requests, one after the other.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

from aether.node import wire

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
CONFIG_NAME = "control.json"
MAX_FRAME = 4 * 1024 * 1024
"""No request or reply body is larger than this (4 MiB): room for a 1 MiB file and its metadata."""
HEADER = 4
IDLE_TIMEOUT = 300.0
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 60.0
TOKEN_BYTES = 32
LOOPBACK = "127.0.0.1"

HAVE_UNIX = hasattr(socket, "AF_UNIX")
# sun_path holds 108 bytes on Linux, 104 on macOS and the BSDs, NUL included.
UNIX_PATH_MAX = 108 if sys.platform.startswith("linux") else 104

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
Transport = Literal["auto", "unix", "tcp"]


class ControlError(Exception):
    """A control request that failed; ``reason`` is a short code, ``message`` says why for a person."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class DaemonNotRunning(ControlError):
    """No daemon serves this home: no socket, or a stale one nobody listens on."""

    def __init__(self, message: str):
        super().__init__("no-daemon", message)


def pack(obj: Any) -> bytes:
    return wire.pack(obj)


def unpack(data: bytes) -> Any:
    """Decode one msgpack value, every length bounded by the frame size; ValueError if malformed."""
    return wire.unpack(data, limit=MAX_FRAME)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body


def _error(reason: str, message: str) -> bytes:
    return pack({"ok": False, "error": {"reason": reason, "message": message}})


def socket_fits(path: Path) -> bool:
    """Whether ``path`` is short enough to bind a Unix socket to."""
    return len(os.fsencode(path)) < UNIX_PATH_MAX


class ControlServer:
    """Serves ``handler(op, args)`` to the CLI over the home's control socket (or loopback TCP).

    ``handler`` returns a msgpack-serialisable result or raises :class:`ControlError`;
    any other exception is logged and answered with reason ``"internal"``, and the
    server keeps serving. The caller must hold the home's daemon lock: ``start``
    replaces whatever control files a previous daemon left behind.
    """

    def __init__(
        self,
        home_path: Path,
        handler: Handler,
        *,
        transport: Transport = "auto",
        idle_timeout: float = IDLE_TIMEOUT,
    ):
        if transport not in ("auto", "unix", "tcp"):
            raise ValueError(f"transport must be 'auto', 'unix' or 'tcp', not {transport!r}")
        self.home_path = Path(home_path)
        self.handler = handler
        self.idle_timeout = idle_timeout
        self._requested = transport
        self.transport: Literal["unix", "tcp"] | None = None
        self.port: int | None = None
        self._token: bytes | None = None
        self._server: asyncio.AbstractServer | None = None
        self._created: tuple[Path, int] | None = None  # the file we put in the home, and its inode
        self._connections: set[asyncio.Task] = set()

    @property
    def socket_path(self) -> Path:
        return self.home_path / SOCKET_NAME

    @property
    def config_path(self) -> Path:
        return self.home_path / CONFIG_NAME

    def _choose(self) -> Literal["unix", "tcp"]:
        if self._requested == "tcp":
            return "tcp"
        fits = HAVE_UNIX and socket_fits(self.socket_path)
        if self._requested == "unix" and not fits:
            reason = "this platform has no Unix sockets" if not HAVE_UNIX else "the path is too long for a Unix socket"
            raise ControlError("unavailable", f"cannot serve {self.socket_path}: {reason}")
        return "unix" if fits else "tcp"

    async def start(self) -> None:
        """Listen; raises ControlError("unavailable", ...) if the home cannot host the channel."""
        if self._server is not None:
            raise RuntimeError("control server already started")
        self.transport = self._choose()
        try:
            if self.transport == "unix":
                await self._start_unix()
            else:
                await self._start_tcp()
        except OSError as exc:
            await self.close()
            where = self.socket_path if self.transport == "unix" else f"{LOOPBACK} ({self.config_path})"
            raise ControlError("unavailable", f"cannot serve the control channel on {where}: {exc.strerror or exc}") from None
        log.debug("control channel on %s", self.socket_path if self.transport == "unix" else f"{LOOPBACK}:{self.port}")

    async def _start_unix(self) -> None:
        # A control.json left by a TCP-mode daemon would send clients to a dead port.
        self.config_path.unlink(missing_ok=True)
        sock = _bind_private_socket(self.socket_path)
        try:
            self._created = (self.socket_path, os.stat(self.socket_path).st_ino)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _start_tcp(self) -> None:
        with suppress(IsADirectoryError, PermissionError):
            self.socket_path.unlink(missing_ok=True)
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        token = secrets.token_hex(TOKEN_BYTES)
        self._token = token.encode("ascii")
        _write_private_json(self.config_path, {"transport": "tcp", "port": self.port, "token": token})
        self._created = (self.config_path, os.stat(self.config_path).st_ino)

    async def close(self) -> None:
        """Stop listening, drop every connection and remove the file ``start`` created."""
        if self._created is not None:
            path, inode = self._created
            self._created = None
            # Only our own file: a later daemon on this home may already have replaced it.
            with suppress(OSError):
                if os.stat(path).st_ino == inode:
                    path.unlink()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client left, mid-frame or not, or went idle: nothing to answer
        except asyncio.CancelledError:
            # close() or loop shutdown. Nothing awaits this task, and ending it normally
            # matters: Python 3.11.7's stream callback logs a cancelled one as an error.
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection must end."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                header = await reader.readexactly(HEADER)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                log.debug("control client left mid-header")
            return False
        length = int.from_bytes(header, "big")
        if length > MAX_FRAME:
            # Not read: the body may be anything, and the framing cannot be trusted past it.
            await _send(writer, _error("too-large", f"request of {length} bytes exceeds the {MAX_FRAME}-byte limit"))
            return False
        async with asyncio.timeout(self.idle_timeout):
            body = await reader.readexactly(length)
        reply, keep = await self._answer(body)
        await _send(writer, reply)
        return keep

    async def _answer(self, body: bytes) -> tuple[bytes, bool]:
        """The packed reply to one request body, and whether the connection may go on."""
        try:
            request = unpack(body)
        except ValueError as exc:
            request, malformed = None, str(exc)
        else:
            malformed = None
        if self._token is not None and not self._authorised(request):
            log.warning("control request without a valid token refused")
            return _error("unauthorized", "missing or wrong control token"), False
        if malformed is not None:
            return _error("bad-request", f"request is {malformed}"), True
        if not isinstance(request, dict):
            return _error("bad-request", "request is not a map"), True
        op, args = request.get("op"), request.get("args", {})
        if not isinstance(op, str) or not op:
            return _error("bad-request", "request has no 'op' string"), True
        if not isinstance(args, dict):
            return _error("bad-request", f"'args' of {op!r} must be a map"), True
        try:
            result = await self.handler(op, args)
            reply = pack({"ok": True, "result": result})
        except ControlError as exc:
            return _error(str(exc.reason), str(exc.message)), True
        except Exception as exc:
            log.exception("control operation %r failed", op)
            return _error("internal", f"{op} failed in the daemon: {exc.__class__.__name__}: {exc}"[:1000]), True
        if len(reply) > MAX_FRAME:
            return _error("too-large", f"result of {op!r} is {len(reply)} bytes, over the {MAX_FRAME}-byte limit"), True
        return reply, True

    def _authorised(self, request: Any) -> bool:
        token = request.get("token") if isinstance(request, dict) else None
        if not isinstance(token, str) or self._token is None:
            return False
        return hmac.compare_digest(token.encode("utf-8", "replace"), self._token)


async def _send(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(frame(body))
    await writer.drain()


def _bind_private_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` that never exists with rights wider than 0600.

    It is bound inside a fresh 0700 directory next to ``path`` (whose name is no
    longer than ``path``'s, so it fits the same limit), narrowed to 0600, then
    renamed over ``path``; the rename also replaces a stale socket atomically.
    A umask would do the same but is process-wide, racing other threads.
    """
    staging = Path(tempfile.mkdtemp(prefix=".c", dir=path.parent))
    temporary = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fsdecode(temporary))
        os.chmod(temporary, 0o600)
        sock.listen(100)  # listening before it appears, so no client is refused in between
        sock.setblocking(False)
        os.replace(temporary, path)
    except BaseException:
        sock.close()
        raise
    finally:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        with suppress(OSError):
            staging.rmdir()
    return sock


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, readable by the owner only, all at once or not at all."""
    fd, temporary = tempfile.mkstemp(prefix=".control-", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


class ControlClient:
    """One connection to the home's daemon; requests on it run one at a time.

    A request that times out or is cancelled leaves the connection closed (its
    reply could otherwise be taken for the next one's); later requests raise
    ControlError("closed", ...), and the caller connects again if it wants.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        token: str | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ):
        self._reader = reader
        self._writer: asyncio.StreamWriter | None = writer
        self._token = token
        self.request_timeout = request_timeout
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        home_path: Path,
        timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> ControlClient:
        """Connect to the daemon of ``home_path``; raises DaemonNotRunning if there is none."""
        home_path = Path(home_path)
        config = home_path / CONFIG_NAME
        sock = home_path / SOCKET_NAME
        token: str | None = None
        where = str(config)
        try:
            async with asyncio.timeout(timeout):
                if config.exists():
                    port, token = _read_config(config)
                    where = f"{LOOPBACK}:{port}"
                    reader, writer = await asyncio.open_connection(LOOPBACK, port)
                elif HAVE_UNIX and socket_fits(sock):
                    where = str(sock)
                    reader, writer = await asyncio.open_unix_connection(os.fsdecode(sock))
                else:
                    raise DaemonNotRunning(f"no daemon is running on {home_path}")
        except TimeoutError:
            raise ControlError("timeout", f"the daemon of {home_path} did not accept a connection within {timeout:g} s") from None
        except (FileNotFoundError, NotADirectoryError):
            raise DaemonNotRunning(f"no daemon is running on {home_path}") from None
        except ConnectionRefusedError:
            raise DaemonNotRunning(f"no daemon is running on {home_path} (nobody listens on {where})") from None
        except PermissionError:
            raise ControlError("forbidden", f"cannot connect to {where}: permission denied (is the daemon run by another user?)") from None
        except OSError as exc:
            raise ControlError("unavailable", f"cannot connect to the daemon of {home_path}: {exc.strerror or exc}") from None
        return cls(reader, writer, token, request_timeout)

    async def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Run ``op`` in the daemon and return its result; ControlError with the daemon's reason if it fails.

        ``timeout`` (default: the client's ``request_timeout``) bounds the whole
        exchange; when it runs out, ControlError("timeout", ...) is raised.
        """
        limit = self.request_timeout if timeout is None else timeout
        message: dict[str, Any] = {"op": op, "args": dict(args or {})}
        if self._token is not None:
            message["token"] = self._token
        try:
            body = pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ControlError("bad-request", f"cannot encode the arguments of {op!r}: {exc}") from None
        if len(body) > MAX_FRAME:
            raise ControlError("too-large", f"request {op!r} is {len(body)} bytes, over the {MAX_FRAME}-byte limit")
        try:
            async with asyncio.timeout(limit):
                async with self._lock:
                    reply = await self._exchange(body)
        except TimeoutError:
            raise ControlError("timeout", f"the daemon did not answer {op!r} within {limit:g} s") from None
        return _result(reply)

    async def _exchange(self, body: bytes) -> Any:
        writer = self._writer
        if writer is None:
            raise ControlError("closed", "the control connection is closed")
        finished = False
        try:
            writer.write(frame(body))
            await writer.drain()
            header = await self._reader.readexactly(HEADER)
            length = int.from_bytes(header, "big")
            if length > MAX_FRAME:
                raise ControlError("bad-reply", f"the daemon sent a reply of {length} bytes, over the {MAX_FRAME}-byte limit")
            data = await self._reader.readexactly(length)
            try:
                reply = unpack(data)
            except ValueError as exc:
                raise ControlError("bad-reply", f"the daemon's reply is {exc}") from None
            finished = True
            return reply
        except (asyncio.IncompleteReadError, OSError):
            raise ControlError("disconnected", "the daemon closed the control connection") from None
        finally:
            if not finished:  # timed out, cancelled or broken: the stream is out of step
                self._abort()

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _read_config(path: Path) -> tuple[int, str]:
    """Port and token from control.json, with a precise error if it is not one we wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError("unavailable", f"cannot read {path}: {exc}") from None
    port = data.get("port") if isinstance(data, dict) else None
    token = data.get("token") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("transport") != "tcp"
        or not isinstance(port, int)
        or not 0 < port < 65536
        or not isinstance(token, str)
    ):
        raise ControlError("unavailable", f"{path} is not a control file written by aether-node; remove it if no daemon runs")
    return port, token


def _result(reply: Any) -> Any:
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError("bad-reply", "the daemon's reply is not a control reply")
    if reply["ok"]:
        return reply.get("result")
    error = reply.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("reason"), str) or not isinstance(error.get("message"), str):
        raise ControlError("bad-reply", "the daemon's error reply has no reason and message")
    raise ControlError(error["reason"], error["message"])

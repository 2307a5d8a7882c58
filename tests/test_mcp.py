"""``aether-node mcp`` driven by the MCP SDK's own client over stdio.

The server is always the real program, spawned by the SDK's ``stdio_client``,
in front of real daemons on loopback (the three-daemon network of the CLI
pattern tests: A and B publish, C refuses replicas) or in front of a fake
control socket that misbehaves on purpose. Every request has a time bound;
no assert is about elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp_types import CallToolResult

from aether.node.control import frame, pack, unpack

from .corpus import corpus, invalid_corpus
from .test_cli_patterns import (  # noqa: F401  (net: the module's three daemons, started once)
    EXE,
    Daemon,
    Net,
    configure,
    init_homes,
    net,
    ok,
    pattern,
    publish_ok,
    sha,
    write,
)

TIMEOUT = 60
"""Upper bound of every MCP request."""
READ_TOOLS = {"search_patterns", "fetch_pattern", "list_local_patterns", "node_status"}


@asynccontextmanager
async def mcp_session(home: Path, *options: str) -> AsyncIterator[ClientSession]:
    """``aether-node --home HOME mcp OPTIONS`` as a subprocess, initialised; its stderr must hold no traceback."""
    async with launched(StdioServerParameters(command=str(EXE), args=["--home", str(home), "mcp", *options])) as s:
        yield s


@asynccontextmanager
async def launched(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    """The server ``params`` describe, started by the SDK's stdio client and initialised; no traceback on its stderr."""
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write_stream):
            async with ClientSession(read, write_stream, read_timeout_seconds=TIMEOUT) as session:
                await session.initialize()
                yield session
        errlog.seek(0)
        stderr = errlog.read()
    assert "Traceback" not in stderr, stderr


async def call_ok(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The structured result of a call that must succeed."""
    result = await session.call_tool(tool, arguments or {})
    assert isinstance(result, CallToolResult)
    assert not result.is_error, (tool, arguments, result.content)
    assert result.structured_content is not None
    return result.structured_content


async def call_error(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> str:
    """The message of a call that must fail as a tool error (a result with isError, not a dead server)."""
    result = await session.call_tool(tool, arguments or {})
    assert isinstance(result, CallToolResult)
    assert result.is_error, (tool, arguments, result)
    return "\n".join(c.text for c in result.content if c.type == "text")


# ---------------------------------------------------------------- tools
async def test_tools_are_listed_and_publish_only_with_allow_publish(net: Net) -> None:
    async def listed(*options: str) -> dict:
        async with mcp_session(net.c, *options) as session:
            assert session.server_info is not None and session.server_info.name == "aether-node"
            return {t.name: t for t in (await session.list_tools()).tools}

    plain, publishing = await asyncio.gather(listed(), listed("--allow-publish"))

    assert set(plain) == READ_TOOLS
    assert set(publishing) == READ_TOOLS | {"publish_pattern"}
    for tool in publishing.values():
        assert tool.description and len(tool.description) > 40, tool
        assert tool.output_schema is not None, tool.name
    for name in READ_TOOLS:
        assert plain[name].annotations.read_only_hint is True, name
    assert publishing["publish_pattern"].annotations.read_only_hint is False
    assert plain["fetch_pattern"].input_schema["required"] == ["ref"]
    assert set(plain["fetch_pattern"].input_schema["properties"]) == {"ref", "author"}
    assert publishing["publish_pattern"].input_schema["required"] == ["text"]


# ---------------------------------------------------------------- search and fetch
async def test_published_with_the_cli_then_searched_and_fetched_with_exact_text(net: Net, tmp_path: Path) -> None:
    cases = corpus()
    names = ["crlf", "bom", "unicode"]
    paths = [write(tmp_path, f"{name}.md", cases[name]) for name in names]
    publish_ok(net.a, *paths)
    author = net.id_of("a")

    async with mcp_session(net.c) as session:
        for name in names:
            data = cases[name]
            fetched = await call_ok(session, "fetch_pattern", {"ref": sha(data)})
            assert fetched["text"].encode("utf-8") == data, name
            assert fetched["hash"] == sha(data) and fetched["size"] == len(data)
            assert fetched["authors"] == [author] and fetched["signature_valid"] is True
            # The model reads the content: the metadata, then the document itself.
            result = await session.call_tool("fetch_pattern", {"ref": fetched["id"]})
            assert not result.is_error
            assert result.content[-1].text.encode("utf-8") == data
            assert json.loads(result.content[0].text)["hash"] == sha(data)

        crlf = cases["crlf"]
        by_words = await call_ok(session, "search_patterns", {"terms": "crlf throughout"})
        assert [(r["id"], r["hash"], r["author"]) for r in by_words["results"]] == [
            ("Pattern-EOL-001", sha(crlf), author)
        ]
        by_id = await call_ok(session, "search_patterns", {"terms": ["Pattern-EOL-001", "type:EOL"]})
        assert [r["hash"] for r in by_id["results"]] == [sha(crlf)]
        assert (await call_ok(session, "search_patterns", {"terms": ["crlf", "type:DHT"]}))["results"] == []

        # C cached what it fetched: its own list shows it.
        held = {p["hash"]: p for p in (await call_ok(session, "list_local_patterns"))["patterns"]}
        assert held[sha(crlf)]["role"] == "cache" and held[sha(crlf)]["complete"] is True


async def test_missing_pattern_is_a_tool_error_and_the_server_keeps_serving(net: Net) -> None:
    async with mcp_session(net.c) as session:
        missing_hash = sha(b"a pattern nobody ever published")
        assert "not-found" in await call_error(session, "fetch_pattern", {"ref": missing_hash})
        message = await call_error(session, "fetch_pattern", {"ref": "Pattern-NONE-999"})
        assert "not-found" in message and "Pattern-NONE-999" in message
        assert "patterns" in await call_ok(session, "list_local_patterns")


async def test_ambiguous_pattern_id_is_an_error_naming_the_author_argument(net: Net, tmp_path: Path) -> None:
    by_a = pattern("Pattern-MCP-010", "Two authors one ID", body="The text A wrote.")
    by_b = pattern("Pattern-MCP-010", "Two authors one ID", body="The text B wrote.")
    publish_ok(net.a, write(tmp_path / "a", "p.md", by_a))
    publish_ok(net.b, write(tmp_path / "b", "p.md", by_b))

    async with mcp_session(net.c) as session:
        message = await call_error(session, "fetch_pattern", {"ref": "Pattern-MCP-010"})
        assert "ambiguous" in message and "author" in message
        assert net.id_of("a")[:16] in message and net.id_of("b")[:16] in message
        chosen = await call_ok(session, "fetch_pattern", {"ref": "Pattern-MCP-010", "author": net.id_of("a")})
        assert chosen["text"].encode() == by_a
        chosen = await call_ok(session, "fetch_pattern", {"ref": "Pattern-MCP-010", "author": net.id_of("b")[:8]})
        assert chosen["text"].encode() == by_b


async def test_bad_arguments_are_tool_errors(net: Net) -> None:
    async with mcp_session(net.c) as session:
        assert "ref" in await call_error(session, "fetch_pattern", {})
        assert "ref" in await call_error(session, "fetch_pattern", {"ref": 42})
        assert "neither a 64-hex pattern hash nor a pattern ID" in await call_error(
            session, "fetch_pattern", {"ref": "not a reference"}
        )
        assert "terms" in await call_error(session, "search_patterns", {})
        assert "non-empty list" in await call_error(session, "search_patterns", {"terms": []})
        assert "no searchable word" in await call_error(session, "search_patterns", {"terms": "the"})
        assert "publish_pattern" in await call_error(session, "publish_pattern", {"text": "# Pattern-X-001: x\n"})
        assert "no_such_tool" in await call_error(session, "no_such_tool", {})
        assert "patterns" in await call_ok(session, "list_local_patterns")


# ---------------------------------------------------------------- status
async def test_node_status_is_the_daemons_status_as_the_cli_shows_it(net: Net) -> None:
    daemon = net.daemons["c"]
    async with mcp_session(net.c) as session:
        result = await session.call_tool("node_status", {})
        cli = json.loads((await asyncio.to_thread(ok, net.c, "status", as_json=True)).stdout)
    assert isinstance(result, CallToolResult) and not result.is_error, result.content
    status = result.structured_content
    # The model reads the same facts as text.
    assert json.loads(result.content[0].text) == status

    assert status["running"] is True
    assert status["node_id"] == daemon.node_id and status["identity"].startswith("aether1")
    assert status["pid"] == daemon.proc.pid and status["address"] == daemon.address
    assert status["role"] == "light"  # C is configured as a light client
    assert status["network"]["state"] == "joined" and status["network"]["last_error"] is None
    assert status["peers"]["contacts"] >= 2  # A and B
    assert status["storage"]["quota_bytes"] > 0
    assert status["uptime"] >= 0
    # Field for field what `aether-node --json status` says, but for the clock readings taken at each call.
    moving = {"uptime", "started_at"}
    assert set(status) == set(cli)
    assert {k: v for k, v in status.items() if k not in moving} == {k: v for k, v in cli.items() if k not in moving}


# ---------------------------------------------------------------- the README's registration
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_mcp_entry() -> dict[str, Any]:
    """The ``mcpServers`` entry the README tells users to give their MCP client."""
    block = re.search(r"```json\n(.*?)```", README.read_text(encoding="utf-8").split("(MCP)", 1)[1], re.S)
    return json.loads(block[1])["mcpServers"]["aether"]


def test_the_readme_names_the_default_home_of_a_linux_user(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the README's example path is the default home on Linux")
    entry = readme_mcp_entry()
    assert entry["command"] == "aether-node" and entry["args"][0] == "--home" and entry["args"][2:] == ["mcp"]
    readme_home = Path(entry["args"][1])
    env = {k: v for k, v in os.environ.items() if k not in ("AETHER_HOME", "XDG_DATA_HOME")}
    env["HOME"] = str(Path("/home") / readme_home.relative_to("/home").parts[0])
    default = subprocess.run(
        [sys.executable, "-c", "from aether.node.home import resolve_home; print(resolve_home())"],
        capture_output=True, text=True, env=env, timeout=TIMEOUT, check=True,
    ).stdout.strip()
    assert default == str(readme_home)


async def test_the_readme_entry_launched_as_an_mcp_client_would_serves_the_named_homes_daemon(net: Net) -> None:
    entry = readme_mcp_entry()
    args = [str(net.c) if arg == entry["args"][1] else arg for arg in entry["args"]]
    # A client launches the bare command name from the PATH it is given.
    params = StdioServerParameters(command=entry["command"], args=args,
                                   env={"PATH": f"{EXE.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    async with launched(params) as session:
        assert {t.name for t in (await session.list_tools()).tools} == READ_TOOLS
        assert (await call_ok(session, "node_status"))["node_id"] == net.id_of("c")


# ---------------------------------------------------------------- publish
async def test_publish_with_allow_publish_reaches_other_nodes(net: Net) -> None:
    text = pattern("Pattern-MCP-020", "Published through MCP", body="Naïve text, «quoted», ends here.").decode()
    data = text.encode("utf-8")
    bad_data, bad_problem = invalid_corpus()["bad_status"]

    async with mcp_session(net.a, "--allow-publish") as session:
        published = await call_ok(session, "publish_pattern", {"text": text})
        assert published == {"id": "Pattern-MCP-020", "hash": sha(data), "unchanged": False,
                              "replicas": published["replicas"]}
        again = await call_ok(session, "publish_pattern", {"text": text})
        assert again["unchanged"] is True and again["hash"] == sha(data)
        assert bad_problem in await call_error(session, "publish_pattern", {"text": bad_data.decode()})
        assert "text" in await call_error(session, "publish_pattern", {})
        held = {p["hash"]: p for p in (await call_ok(session, "list_local_patterns"))["patterns"]}
        assert held[sha(data)]["role"] == "own" and held[sha(data)]["pinned"] is True

    assert (await asyncio.to_thread(ok, net.b, "fetch", "Pattern-MCP-020", binary=True)).stdout == data


# ---------------------------------------------------------------- no daemon, a daemon that fails
async def test_no_daemon_is_a_tool_error_until_one_starts_and_again_after_it_stops(tmp_path: Path) -> None:
    home = tmp_path / "solo"
    await asyncio.to_thread(init_homes, home)
    configure(home)

    async with mcp_session(home) as session:
        assert {t.name for t in (await session.list_tools()).tools} == READ_TOOLS
        for tool in READ_TOOLS - {"fetch_pattern"}:
            message = await call_error(session, tool, {"terms": ["kademlia"]} if tool == "search_patterns" else {})
            assert f"no daemon is running on {home}" in message, message
            assert f"aether-node --home {home} daemon" in message, message

        daemon = Daemon(home)
        try:
            await asyncio.to_thread(daemon.wait_ready)
            assert await call_ok(session, "list_local_patterns") == {"patterns": []}
            status = await call_ok(session, "node_status")
            assert status["running"] is True and status["pid"] == daemon.proc.pid
            assert status["node_id"] == daemon.node_id and status["address"] == daemon.address
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.stderr()

        message = await call_error(session, "list_local_patterns")
        assert f"no daemon is running on {home}" in message


async def test_daemon_failures_are_tool_errors() -> None:
    """A control socket that knows no ``status``, never answers ``ls``, and garbles other replies."""
    connections: list[asyncio.Task] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(asyncio.current_task())
        try:
            while True:
                header = await reader.readexactly(4)
                op = unpack(await reader.readexactly(int.from_bytes(header, "big")))["op"]
                if op == "status":
                    writer.write(frame(pack({"ok": False, "error": {
                        "reason": "bad-request", "message": "unknown operation 'status'; known: fetch, ls"}})))
                elif op == "search":
                    writer.write(frame(b"\xc1 not msgpack"))
                elif op == "fetch":
                    writer.write(frame(pack({"ok": True, "result": {"unexpected": "shape"}})))
                # "ls" is never answered: the MCP server's --timeout runs out.
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    with tempfile.TemporaryDirectory(prefix="mcp") as folder:  # short: a Unix socket path has a length limit
        home = Path(folder)
        server = await asyncio.start_unix_server(serve, path=str(home / "control.sock"))
        try:
            async with mcp_session(home, "--timeout", "1") as session:
                assert "unknown operation 'status'" in await call_error(session, "node_status")
                message = await call_error(session, "list_local_patterns")
                assert "timeout" in message and "'ls'" in message
                assert "bad-reply" in await call_error(session, "search_patterns", {"terms": ["kademlia"]})
                assert "no document" in await call_error(session, "fetch_pattern", {"ref": "Pattern-DHT-001"})
                # Still serving after all of that.
                assert "unknown operation 'status'" in await call_error(session, "node_status")
        finally:
            server.close()
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

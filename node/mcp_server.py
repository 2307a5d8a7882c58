"""``aether-node mcp``: the home's daemon offered to AI coding tools over the Model Context Protocol.

The server speaks MCP on stdio (the transport every MCP client can launch)
and is built on the official SDK's ``MCPServer``, which derives each tool's
input and output JSON schemas from its signature, so what a client sees is
what the code accepts and returns.

It is a thin client of the home's running daemon: every tool is one request
on the home's control socket (``node/api.py``'s operations), on a connection
opened for that call and closed after it. Why one connection per call:

- the server starts, and lists its tools, whether or not a daemon runs; a
  tool called while none runs returns an error that says how to start one,
  and the next call works as soon as the daemon is up, or up again after a
  restart, with no reconnect logic to get wrong;
- a control connection carries one request at a time, so separate
  connections let a quick ``list_local_patterns`` proceed beside a slow
  network fetch;
- connecting to a local socket costs far less than any network operation.

It never runs a node of its own (as one-shot CLI commands do without a
daemon): a long-lived MCP server holding the home's lock would keep the
daemon from starting, and joining the network for every call would be slow.

Failures never end the server: no daemon, a pattern nobody holds, an
ambiguous pattern ID, bad arguments, a daemon that does not answer in time or
does not know an operation all come back as tool results with ``isError``
set and a message a model can act on, as the MCP specification asks for
tool execution errors. Publishing is a tool only when the server is started
with ``--allow-publish``, because it signs with the node's key and places
the text on the network for good.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from aether.node.control import CONNECT_TIMEOUT, ControlClient, ControlError, DaemonNotRunning

INSTRUCTIONS = """\
Patterns are Markdown documents describing reusable solutions (title line \
"# Pattern-TYPE-NNN: Name", fields such as STATUS and CATEGORY, sections such as \
Problem and Solution), shared over a peer-to-peer network with no server. \
Find them with search_patterns, read one with fetch_pattern (by the pattern ID \
from a search result, or by its 64-hex hash), and see what this device keeps \
with list_local_patterns. Every pattern is signed by its author; fetch_pattern \
reports whether the signature is valid."""

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
LOCAL_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                  open_world_hint=False)


# ---------------------------------------------------------------------- outputs
class TeamRef(BaseModel):
    """The team a team-private pattern belongs to."""

    name: str = Field(description="The team's name on this node.")
    id: str = Field(description="The team ID, 40 hex digits.")
    epoch: int = Field(description="The epoch whose key encrypts this pattern.")


class PatternSummary(BaseModel):
    """What the network says about one version of a pattern."""

    id: str = Field(description="Pattern ID, e.g. Pattern-DHT-001.")
    title: str = Field(description="The pattern's name, from its title line.")
    hash: str = Field(description="SHA-256 of the pattern's exact bytes, 64 lowercase hex; fetch_pattern accepts it.")
    date: str = Field(description="When this version was published, ISO 8601 UTC.")
    size: int = Field(description="Size of the document in bytes.")
    type: str = Field(description="The TYPE part of the pattern ID, e.g. DHT.")
    category: str = Field(description="The CATEGORY field, or empty.")
    status: str = Field(description="The STATUS field (Active, Deprecated, Superseded), or empty.")
    team: TeamRef | None = Field(default=None, description="For a team-private pattern, its team; else null.")


class FoundPattern(PatternSummary):
    author: str = Field(description="Node ID (40 hex) of the author who signed this version.")


class SearchResults(BaseModel):
    results: list[FoundPattern] = Field(description="Matching patterns, newest first; empty when none match.")


class HeldPattern(PatternSummary):
    role: str = Field(description="own (published here), replica (kept for the network) or cache (fetched here).")
    pinned: bool = Field(description="Kept here for good and announced by this node.")
    complete: bool = Field(description="Every block of the document is held here.")


class LocalPatterns(BaseModel):
    patterns: list[HeldPattern] = Field(description="Patterns held on this node.")


class FetchedPattern(PatternSummary):
    text: str = Field(description="The pattern document, exactly as published.")
    authors: list[str] = Field(description="Node IDs of the authors whose signatures name these exact bytes.")
    mirrors: list[str] = Field(description="Node IDs of nodes that pinned a copy.")
    signature_valid: bool = Field(description="The author's signature over these bytes checks out.")
    local: bool = Field(description="Read from this node's own store rather than from the network.")


class PublishedPattern(BaseModel):
    id: str = Field(description="The pattern ID read from the title line.")
    hash: str = Field(description="SHA-256 of the UTF-8 text, as fetch_pattern and other nodes know it.")
    unchanged: bool = Field(description="The same text was already published by this node; nothing was sent.")
    replicas: int = Field(description="Other nodes that acknowledged a complete copy.")


# ---------------------------------------------------------------------- daemon
class DaemonLink:
    """Runs one daemon operation per call on a fresh control connection, every failure a ToolError."""

    def __init__(self, home: Path, timeout: float):
        self.home = Path(home)
        self.timeout = timeout

    async def call(self, op: str, args: dict[str, Any]) -> Any:
        """The daemon's result for ``op``, or a ToolError whose message says what went wrong and what to do."""
        try:
            client = await ControlClient.connect(
                self.home, timeout=min(self.timeout, CONNECT_TIMEOUT), request_timeout=self.timeout
            )
        except DaemonNotRunning:
            raise ToolError(
                f"no daemon is running on {self.home}; start it with `aether-node --home {self.home} daemon`"
            ) from None
        except ControlError as exc:
            raise ToolError(f"{exc.reason}: {exc.message}") from None
        async with client:
            try:
                return await client.request(op, args)
            except ControlError as exc:
                raise ToolError(_explain(op, exc)) from None


def _explain(op: str, exc: ControlError) -> str:
    message = f"{exc.reason}: {exc.message}"
    if exc.reason == "ambiguous":
        return f"{message} (with fetch_pattern: pass one of those node IDs, or 8+ hex digits of it, as author)"
    if exc.reason == "disconnected":
        return f"{message} while running {op}; the daemon may have stopped or restarted, try again"
    return message


def _parse(model: type[BaseModel], result: Any) -> Any:
    """The daemon's reply read as ``model``; a reply of another shape is an error, not a crash."""
    try:
        return model.model_validate(result)
    except ValidationError as exc:
        raise ToolError(f"the daemon's reply has an unexpected shape: {exc}") from None


# ---------------------------------------------------------------------- server
def build_server(home: Path, *, allow_publish: bool = False, timeout: float = 60.0) -> MCPServer:
    """The MCP server for ``home``'s daemon; the publish tool exists only with ``allow_publish``."""
    try:
        own_version = version("aether-node")
    except PackageNotFoundError:
        own_version = ""
    server = MCPServer("aether-node", version=own_version, instructions=INSTRUCTIONS)
    daemon = DaemonLink(home, timeout)

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        # The docstring, without its source indentation, is the description a model reads.
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            server.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
            return fn

        return register

    @tool(READ_ONLY)
    async def search_patterns(
        terms: Annotated[list[str] | str, Field(description=(
            "Search terms, all of which must match: a word of the title (e.g. kademlia), a pattern ID "
            "(Pattern-DHT-001), or a field filter type:DHT, category:networking, status:active. "
            "A single string is split on whitespace."
        ))],
    ) -> SearchResults:
        """Search the pattern network for patterns matching every term.

        Returns each match's pattern ID, title, author, hash and date, newest
        first. Read a match with fetch_pattern (its ID, or its hash for that
        exact version).
        """
        words = terms.split() if isinstance(terms, str) else terms
        return _parse(SearchResults, await daemon.call("search", {"terms": words}))

    @tool(READ_ONLY)
    async def fetch_pattern(
        ref: Annotated[str, Field(description="A pattern ID like Pattern-DHT-001 (its newest version), or a "
                                              "64-hex SHA-256 hash (that exact version).")],
        author: Annotated[str | None, Field(description=(
            "Only when several authors publish different texts under the same pattern ID: the chosen "
            "author's node ID (or 8+ hex digits of it) or identity string."
        ))] = None,
    ) -> Annotated[CallToolResult, FetchedPattern]:
        """Fetch one pattern document: its exact Markdown text and who signed it.

        The text is checked against its SHA-256 hash and the author's
        signature before it is returned. The result's content holds the
        metadata (JSON) and then the document itself.
        """
        result = await daemon.call("fetch", {"ref": ref, "author": author})
        data = result.get("data") if isinstance(result, dict) else None
        if not isinstance(data, bytes):
            raise ToolError("the daemon's reply to fetch carries no document")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(
                f"pattern {result.get('hash')} is not UTF-8 text; save its bytes with "
                f"`aether-node fetch {result.get('hash')} -o FILE`"
            ) from None
        fetched = _parse(FetchedPattern, {**result, "text": text, "signature_valid": result.get("signature") == "valid"})
        metadata = fetched.model_dump(mode="json", exclude={"text"})
        return CallToolResult(
            content=[TextContent(type="text", text=json.dumps(metadata, indent=2)), TextContent(type="text", text=text)],
            structured_content=fetched.model_dump(mode="json"),
        )

    @tool(LOCAL_READ_ONLY)
    async def list_local_patterns() -> LocalPatterns:
        """List the patterns held on this device: published here, pinned, replicas kept for others, cached copies."""
        result = await daemon.call("ls", {})
        if isinstance(result, dict) and isinstance(result.get("patterns"), list):
            # Team patterns held for others are ciphertext this node cannot read: nothing to list.
            result = {**result, "patterns": [p for p in result["patterns"] if not isinstance(p, dict)
                                             or p.get("readable", True)]}
        return _parse(LocalPatterns, result)

    @tool(LOCAL_READ_ONLY)
    async def node_status() -> dict[str, Any]:
        """Show this device's node: its ID, listen address, uptime, peers, storage used and quota."""
        result = await daemon.call("status", {})
        if not isinstance(result, dict):
            raise ToolError("the daemon's reply to status is not a map")
        return result

    if allow_publish:
        @tool(ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True))
        async def publish_pattern(
            text: Annotated[str, Field(description=(
                "The whole pattern document in Markdown, starting with its title line "
                "\"# Pattern-TYPE-NNN: Name\". Published byte for byte as UTF-8, nothing added."
            ))],
        ) -> PublishedPattern:
            """Sign a pattern document with this node's key and publish it to the network.

            Anyone can then find it by its title words, type, category and status,
            and fetch it by its pattern ID or hash. Publishing cannot be undone;
            a later text with the same pattern ID becomes its newest version.
            An invalid document is refused with the line and the problem.
            """
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ToolError(f"text is not encodable as UTF-8: {exc.reason} at character {exc.start}") from None
            return _parse(PublishedPattern, await daemon.call("publish", {"data": data}))

    return server


def serve(home: Path, *, allow_publish: bool = False, timeout: float = 60.0) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin."""
    build_server(home, allow_publish=allow_publish, timeout=timeout).run("stdio")
